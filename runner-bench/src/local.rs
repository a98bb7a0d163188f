//! unix-local against tokio's own process and file APIs.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use runner_api::{RemoteRunnerSession, RunnerDestination};
use runner_local::LocalProvider;
use tokio::io::AsyncReadExt;

use crate::generic::{Target, request, round_trip, write_read};
use crate::rss;
use crate::stats::{Better, Group, Samples, Spec, throughput_mib_s, time_ms};
use crate::{Figures, Plan};

const GIB: u64 = 1 << 30;
const FILE_BYTES: usize = 100 << 20;

/// The unix-local target with workspaces under `dir`.
pub(crate) fn target(dir: &std::path::Path) -> Target {
    Target {
        label: "unix-local".into(),
        provider: Arc::new(LocalProvider::default()),
        destination: RunnerDestination {
            id: "bench-local".into(),
            provider_id: "unix-local".into(),
            config: serde_json::json!({
                "workspaces_dir": dir.join("workspaces"),
                "snapshot_dir": dir.join("snapshots"),
            }),
            default_manifest: Default::default(),
            artifacts: None,
        },
    }
}

/// Round trip, 1 GiB of output, 100 MiB file write and read.
pub(crate) async fn run(plan: &Plan, target: &Target, scratch: &std::path::Path) -> Figures {
    let mut group = Group::new("unix-local");
    let session = target.session().await?;

    let ours = round_trip(&session, plan.round_trips).await?;
    let baseline = time_ms(plan.round_trips, |_| async {
        let output = tokio::process::Command::new("true").output().await?;
        if !output.status.success() {
            bail!("true failed");
        }
        Ok(())
    })
    .await?;
    group.add(
        Spec {
            name: "run_command(true) round trip",
            unit: "ms",
            better: Better::Lower,
            baseline: "tokio::process::Command::output()",
        },
        &ours,
        &baseline,
        0,
    );

    let (ours_ms, ours_rss) = gib_through_session(&session, plan.gib_reps).await?;
    let (base_ms, base_rss) = gib_through_pipe(plan.gib_reps).await?;
    group.add(
        Spec {
            name: "1 GiB of output: throughput",
            unit: "MiB/s",
            better: Better::Higher,
            baseline: "tokio child stdout read and discarded",
        },
        &throughput_mib_s(&ours_ms, GIB),
        &throughput_mib_s(&base_ms, GIB),
        0,
    );
    let buffered_rss = gib_buffered_rss().await?;
    group.add(
        Spec {
            name: "1 GiB of output: peak RSS",
            unit: "MiB",
            better: Better::Lower,
            baseline: "tokio::process::Command::output() (keeps all output)",
        },
        &ours_rss,
        &buffered_rss,
        0,
    );
    eprintln!(
        "  (streaming read-and-discard baseline peaked at {:.1} MiB)",
        base_rss.median()
    );

    let contents = Arc::new(pattern(FILE_BYTES));
    let (write, read) = write_read(&session, "bench-100mib.bin", &contents, plan.file_reps).await?;
    let path = scratch.join("tokio-100mib.bin");
    let base_write = time_ms(plan.file_reps, |_| {
        let (path, contents) = (path.clone(), contents.clone());
        async move { Ok(tokio::fs::write(&path, contents.as_slice()).await?) }
    })
    .await?;
    let base_read = time_ms(plan.file_reps, |_| {
        let path = path.clone();
        async move {
            let bytes = tokio::fs::read(&path).await?;
            if bytes.len() != FILE_BYTES {
                bail!("read {} bytes", bytes.len());
            }
            Ok(())
        }
    })
    .await?;
    group.add_transfers(
        FILE_BYTES as u64,
        [
            (
                "write_file 100 MiB",
                &write,
                &base_write,
                "tokio::fs::write",
            ),
            ("read_file 100 MiB", &read, &base_read, "tokio::fs::read"),
        ],
    );
    session.close().await?;
    Ok(group.into_figures())
}

/// `reps` runs of a command printing 1 GiB through `run_command`: durations
/// (ms) and the peak RSS of this process during each (MiB).
async fn gib_through_session(
    session: &Arc<dyn RemoteRunnerSession>,
    reps: usize,
) -> anyhow::Result<(Samples, Samples)> {
    let mut durations = Samples::default();
    let mut peaks = Samples::default();
    let count = GIB.to_string();
    for _ in 0..reps {
        rss::reset_peak()?;
        let start = Instant::now();
        let result = session
            .run_command(request("head", &["-c", &count, "/dev/zero"]))
            .await?;
        durations.push(start.elapsed().as_secs_f64() * 1000.0);
        peaks.push(rss::peak_mib()?);
        if result.stdout_truncation.bytes_seen != GIB {
            bail!(
                "the session saw {} bytes of output, expected {GIB}",
                result.stdout_truncation.bytes_seen
            );
        }
    }
    Ok((durations, peaks))
}

/// The same command read straight from a tokio child's stdout and discarded.
async fn gib_through_pipe(reps: usize) -> anyhow::Result<(Samples, Samples)> {
    let mut durations = Samples::default();
    let mut peaks = Samples::default();
    for _ in 0..reps {
        rss::reset_peak()?;
        let start = Instant::now();
        let mut child = tokio::process::Command::new("head")
            .args(["-c", &GIB.to_string(), "/dev/zero"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdout = child.stdout.take().context("child stdout")?;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        child.wait().await?;
        durations.push(start.elapsed().as_secs_f64() * 1000.0);
        peaks.push(rss::peak_mib()?);
        if total != GIB {
            bail!("read {total} bytes, expected {GIB}");
        }
    }
    Ok((durations, peaks))
}

/// Peak RSS (MiB) of `Command::output()` of the 1 GiB command, once.
async fn gib_buffered_rss() -> anyhow::Result<Samples> {
    rss::reset_peak()?;
    let output = tokio::process::Command::new("head")
        .args(["-c", &GIB.to_string(), "/dev/zero"])
        .output()
        .await?;
    let peak = rss::peak_mib()?;
    if output.stdout.len() as u64 != GIB {
        bail!("output() returned {} bytes", output.stdout.len());
    }
    drop(output);
    Ok(Samples(vec![peak]))
}

/// `len` bytes of a repeating non-zero pattern.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Peak RSS (MiB) of `sessions` concurrent `Command::output()` calls printing
/// `bytes` each: what keeping every byte of output costs.
pub(crate) async fn buffered_output_rss(sessions: usize, bytes: u64) -> anyhow::Result<Samples> {
    rss::reset_peak()?;
    let count = bytes.to_string();
    let tasks: Vec<_> = (0..sessions)
        .map(|_| {
            let count = count.clone();
            tokio::spawn(async move {
                tokio::process::Command::new("head")
                    .args(["-c", &count, "/dev/zero"])
                    .output()
                    .await
            })
        })
        .collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await??);
    }
    let peak = rss::peak_mib()?;
    drop(outputs);
    Ok(Samples(vec![peak]))
}
