//! Path helpers shared by every layer and provider: lexical folding and the NUL check.

use std::path::{Component, Path, PathBuf};

use crate::{RunnerError, RunnerResult};
/// Folds `.` and `..` of an absolute path without touching the filesystem
/// (`/..` stays `/`).
pub fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Refuses a path containing a NUL byte, which no runner filesystem can name.
///
/// Errors: `InvalidRequest` naming `operation` and the path.
pub fn reject_nul_path(operation: &str, path: &Path) -> RunnerResult<()> {
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(RunnerError::invalid_request(format!(
            "{operation} {:?}: path contains a NUL byte",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalization_folds_dots() {
        assert_eq!(
            normalize_lexically(Path::new("/w/a/../b/./c")),
            PathBuf::from("/w/b/c")
        );
        assert_eq!(normalize_lexically(Path::new("/../..")), PathBuf::from("/"));
    }
}
