//! Baselines that are command-line tools (`docker`, `ssh`, `scp`).

use std::process::{Output, Stdio};

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use crate::stats::{Samples, time_ms};

/// Runs `program args` to completion; fails unless it exits with 0.
pub(crate) async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    capture(program, args).await.map(drop)
}

/// Runs `program args` and returns its trimmed stdout; fails unless it exits
/// with 0.
pub(crate) async fn capture(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = output(program, args, None).await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Runs `program args` with `stdin` written to its standard input (closed
/// after it; `None`: no input) and returns what it printed; fails unless it
/// exits with 0.
pub(crate) async fn output(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> anyhow::Result<Output> {
    let output = status_output(program, args, stdin).await?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Like [`output`], but returns whatever the exit status.
pub(crate) async fn status_output(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> anyhow::Result<Output> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    // Written while the output is read, so neither pipe can fill up and stall.
    let pipe = child.stdin.take();
    let feed = async move {
        if let (Some(bytes), Some(mut pipe)) = (stdin, pipe) {
            pipe.write_all(bytes).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let (fed, output) = tokio::join!(feed, child.wait_with_output());
    fed.with_context(|| format!("writing the standard input of {program}"))?;
    output.with_context(|| format!("running {program}"))
}

/// Runs `program args… from to` (a copy tool: `cp`, `docker cp`, `scp`)
/// `reps` times in a row: the duration of each in milliseconds.
pub(crate) async fn copy_times(
    program: &str,
    args: &[&str],
    from: &str,
    to: &str,
    reps: usize,
) -> anyhow::Result<Samples> {
    let mut argv = args.to_vec();
    argv.extend([from, to]);
    time_ms(reps, |_| run(program, &argv)).await
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
