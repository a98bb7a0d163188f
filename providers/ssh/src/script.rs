//! Remote shell scripts: quoting, and running a short script over the master.

use openssh::Stdio;
use std::path::Path;

use openssh::Session;
use runner_api::{RunnerError, RunnerResult};
use tokio::io::AsyncWriteExt;

use crate::connection::Link;
use crate::error::transport_error;

/// Quotes `text` for a POSIX shell (single quotes).
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quotes a remote path; non-UTF-8 bytes are refused.
pub(crate) fn quote_path(operation: &str, path: &Path) -> RunnerResult<String> {
    let text = path.to_str().ok_or_else(|| {
        RunnerError::invalid_request(format!(
            "{operation} {}: the ssh provider needs UTF-8 paths",
            path.display()
        ))
    })?;
    Ok(quote(text))
}

/// What a short script printed and how it exited.
pub(crate) struct ScriptOutput {
    /// Exit code (`None` when the remote shell did not report one).
    pub(crate) code: Option<i32>,
    /// Everything on stdout.
    pub(crate) stdout: Vec<u8>,
    /// Everything on stderr.
    pub(crate) stderr: Vec<u8>,
}

impl ScriptOutput {
    /// Stderr as text, for messages.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Runs `script` with the remote user's shell, feeding `stdin`, and collects
/// its output. Errors: `Unavailable` when the master cannot run it.
pub(crate) async fn run_script(
    link: &Link,
    operation: &str,
    script: &str,
    stdin: Option<&[u8]>,
) -> RunnerResult<ScriptOutput> {
    let mut command = Session::to_raw_command(link.session.clone(), script);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .await
        .map_err(|e| transport_error(operation, e))?;
    let writer = match (child.stdin().take(), stdin) {
        (Some(mut pipe), Some(bytes)) => {
            let bytes = bytes.to_vec();
            Some(tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            }))
        }
        _ => None,
    };
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| transport_error(operation, e))?;
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    Ok(ScriptOutput {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

/// Runs `script` and requires exit code 0. Errors: `Provider` with its stderr.
pub(crate) async fn run_checked(
    link: &Link,
    operation: &str,
    script: &str,
    stdin: Option<&[u8]>,
) -> RunnerResult<ScriptOutput> {
    let out = run_script(link, operation, script, stdin).await?;
    if out.code != Some(0) {
        return Err(RunnerError::provider(format!(
            "{operation}: remote command failed (exit {:?}): {}",
            out.code,
            out.stderr_text()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_single_quotes() {
        assert_eq!(quote("a'b"), "'a'\\''b'");
        assert_eq!(quote(""), "''");
    }
}
