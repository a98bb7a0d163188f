//! Measurements that work on any provider through the two traits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerFileReadRequest, RunnerFileWriteRequest,
};
use runner_stack::Stack;

use crate::rss;
use crate::stats::{Samples, time_ms, time_ms_prepared};

/// A provider with the destination its sessions are created from.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) label: String,
    pub(crate) provider: Arc<dyn RemoteRunnerProvider>,
    pub(crate) destination: RunnerDestination,
}

impl Target {
    pub(crate) async fn session(&self) -> anyhow::Result<Arc<dyn RemoteRunnerSession>> {
        self.provider
            .create_session(self.destination.clone())
            .await
            .with_context(|| format!("creating a {} session", self.label))
    }

    /// The same target with its provider in the layer stack every user gets
    /// (`runner_stack::Stack`: correctness, tracing, workspace confinement,
    /// mounts), so a measurement covers every layer a transfer crosses.
    pub(crate) fn stacked(&self) -> Self {
        Self {
            provider: Stack::new().provider(self.provider.clone()),
            ..self.clone()
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A command request with an id no other request of this run uses.
pub(crate) fn request(program: &str, args: &[&str]) -> RunnerCommandRequest {
    let id = format!("bench-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    RunnerCommandRequest::new(
        id,
        program,
        args.iter().map(|a| a.to_string()).collect::<Vec<String>>(),
    )
}

/// Runs `program args` and fails unless it exits with 0.
pub(crate) async fn run_ok(
    session: &Arc<dyn RemoteRunnerSession>,
    program: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let result = session.run_command(request(program, args)).await?;
    if result.exit_code != Some(0) {
        bail!(
            "{program} {args:?} exited with {:?}: {}",
            result.exit_code,
            result.stderr
        );
    }
    Ok(())
}

/// `run_command` of `true`, `n` times in a row.
pub(crate) async fn round_trip(
    session: &Arc<dyn RemoteRunnerSession>,
    n: usize,
) -> anyhow::Result<Samples> {
    run_ok(session, "true", &[]).await?; // warm-up
    time_ms(n, |_| run_ok(session, "true", &[])).await
}

/// `write_file` then `read_file` of `contents` at `path`, `reps` times.
pub(crate) async fn write_read(
    session: &Arc<dyn RemoteRunnerSession>,
    path: &str,
    contents: &Arc<Vec<u8>>,
    reps: usize,
) -> anyhow::Result<(Samples, Samples)> {
    // The caller holds the bytes already: building the request is not timed.
    let write = time_ms_prepared(
        reps,
        || RunnerFileWriteRequest::new(path, contents.to_vec()),
        |request| async {
            session.write_file(request).await?;
            Ok(())
        },
    )
    .await?;
    let read = time_ms(reps, |_| async {
        let result = session.read_file(RunnerFileReadRequest::new(path)).await?;
        if result.contents.len() != contents.len() {
            bail!(
                "read {} bytes, wrote {}",
                result.contents.len(),
                contents.len()
            );
        }
        Ok(())
    })
    .await?;
    Ok((write, read))
}

/// `n` concurrent `run_command`s of `true` on one session: the latency of each
/// and the number of errors.
pub(crate) async fn concurrent_commands(
    session: &Arc<dyn RemoteRunnerSession>,
    n: usize,
) -> (Samples, u64) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                run_ok(&session, "true", &[])
                    .await
                    .map(|()| start.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    collect(tasks).await
}

/// `n` concurrent sessions, each created, running `true` and closed: the
/// latency of each and the number of errors.
pub(crate) async fn concurrent_sessions(target: &Target, n: usize) -> (Samples, u64) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                one_session(&target)
                    .await
                    .map(|()| start.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    collect(tasks).await
}

/// One session created, running `true` and closed, in milliseconds.
pub(crate) async fn one_session(target: &Target) -> anyhow::Result<()> {
    let session = target.session().await?;
    let outcome = run_ok(&session, "true", &[]).await;
    session.close().await?;
    outcome
}

/// Peak RSS of this process (MiB) while `sessions` sessions each run a command
/// printing `bytes`, and the number of errors.
pub(crate) async fn output_memory(
    target: &Target,
    sessions: usize,
    bytes: u64,
) -> anyhow::Result<(f64, u64)> {
    let mut opened = Vec::new();
    for _ in 0..sessions {
        opened.push(target.session().await?);
    }
    let count = bytes.to_string();
    rss::reset_peak()?;
    let tasks: Vec<_> = opened
        .iter()
        .map(|session| {
            let session = session.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                run_ok(&session, "head", &["-c", &count, "/dev/zero"])
                    .await
                    .map(|()| start.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let (_, errors) = collect(tasks).await;
    let peak = rss::peak_mib()?;
    for session in opened {
        session.close().await?;
    }
    Ok((peak, errors))
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<f64>>>) -> (Samples, u64) {
    let mut samples = Samples::default();
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(ms)) => samples.push(ms),
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("  error: {e:#}");
            }
            Err(e) => {
                errors += 1;
                eprintln!("  error: task failed: {e}");
            }
        }
    }
    (samples, errors)
}
