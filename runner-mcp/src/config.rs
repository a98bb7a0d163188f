//! Reading the destinations config file (JSON or TOML).

use std::path::Path;

use runner_api::{RunnerError, RunnerResult};
use runner_tools::ToolsConfig;

/// Reads a destinations config: TOML when the file name ends in `.toml`, JSON
/// otherwise. See [`ToolsConfig`] for the fields.
///
/// Errors: `NotFound` (no such file), `InvalidRequest` naming the file and what
/// does not parse or validate.
pub fn load_config(path: &Path) -> RunnerResult<ToolsConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunnerError::from_io("read config", path.display(), e))?;
    let is_toml = path.extension().is_some_and(|ext| ext == "toml");
    let config = if is_toml {
        toml::from_str::<ToolsConfig>(&text).map_err(|e| {
            RunnerError::invalid_request(format!("config {}: invalid TOML: {e}", path.display()))
        })?
    } else {
        serde_json::from_str::<ToolsConfig>(&text).map_err(|e| {
            RunnerError::invalid_request(format!("config {}: invalid JSON: {e}", path.display()))
        })?
    };
    config
        .validate()
        .map_err(|e| e.context(format!("config {}", path.display())))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_give_the_same_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let toml_path = dir.path().join("servers.toml");
        std::fs::write(
            &toml_path,
            r#"
[[destinations]]
id = "local"
provider_id = "unix-local"
workspace = "/tmp/project"
read_roots = ["/usr/share/doc"]
config = { root = "/tmp/project", env = { NO_COLOR = "1" } }
"#,
        )
        .expect("write toml");
        let json_path = dir.path().join("servers.json");
        std::fs::write(
            &json_path,
            r#"{ "destinations": [ { "id": "local", "provider_id": "unix-local",
                 "workspace": "/tmp/project", "read_roots": ["/usr/share/doc"],
                 "config": { "root": "/tmp/project", "env": { "NO_COLOR": "1" } } } ] }"#,
        )
        .expect("write json");
        let from_toml = load_config(&toml_path).expect("toml");
        assert_eq!(from_toml, load_config(&json_path).expect("json"));
        assert_eq!(
            from_toml.destinations[0].destination.config["env"]["NO_COLOR"],
            "1"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "destinations = 3").expect("write");
        let err = load_config(&path).expect_err("bad");
        assert!(err.message().contains("bad.toml"), "{err}");
        let missing = load_config(&dir.path().join("missing.json")).expect_err("missing");
        assert_eq!(missing.kind(), runner_api::RunnerErrorKind::NotFound);
    }
}
