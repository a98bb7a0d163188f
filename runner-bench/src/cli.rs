//! Baselines that are command-line tools (`docker`, `ssh`, `scp`).

use std::process::Stdio;

use anyhow::{Context, bail};

/// Runs `program args` to completion; fails unless it exits with 0.
pub(crate) async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    capture(program, args).await.map(drop)
}

/// Runs `program args` and returns its trimmed stdout; fails unless it exits
/// with 0.
pub(crate) async fn capture(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Whether the run asked for a backend through `RUNNER_TEST_<NAME>=1`.
pub(crate) fn requested(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// The value of a variable the provisioning script exports.
pub(crate) fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set (scripts/test.sh --bench provisions the backends and sets it)")
    })
}
