//! What the ssh provider's integration tests share: the test server's
//! settings (`RUNNER_TEST_SSH_*`, exported by `scripts/test.sh`) as a
//! destination config.

use runner_api::RunnerDestination;

/// A setting of the test server.
pub(crate) fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} must be set when RUNNER_TEST_SSH=1"))
}

/// The test server's config (host, port, user, key, known_hosts), with
/// `overrides` merged in.
pub(crate) fn config(overrides: serde_json::Value) -> Result<serde_json::Value, String> {
    let port: u16 = var("RUNNER_TEST_SSH_PORT")?
        .parse()
        .map_err(|e| format!("RUNNER_TEST_SSH_PORT: {e}"))?;
    let mut config = serde_json::json!({
        "host": var("RUNNER_TEST_SSH_HOST")?,
        "port": port,
        "user": var("RUNNER_TEST_SSH_USER")?,
        "identity_file": var("RUNNER_TEST_SSH_KEY")?,
        "known_hosts_file": var("RUNNER_TEST_SSH_KNOWN_HOSTS")?,
    });
    if let (Some(base), Some(extra)) = (config.as_object_mut(), overrides.as_object()) {
        for (key, value) in extra {
            base.insert(key.clone(), value.clone());
        }
    }
    Ok(config)
}

/// The ssh destination `id` with `config`.
pub(crate) fn destination(id: &str, config: serde_json::Value) -> RunnerDestination {
    RunnerDestination {
        id: id.into(),
        provider_id: "ssh".into(),
        config,
        default_manifest: Default::default(),
        artifacts: None,
    }
}
