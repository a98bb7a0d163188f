//! Keystroke to echo through a pseudo-terminal: one byte written with
//! `write_stdin` to `cat` on a terminal, until the terminal's echo of it
//! comes back on `stream_command`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use runner_api::{RunnerEventStream, RunnerProcessEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::generic::{Target, request};
use crate::stats::{Better, Group, Samples};
use crate::{Figures, Plan};

/// How long one echo may take before the run fails.
const ECHO_LIMIT: Duration = Duration::from_secs(10);

/// Keystroke-to-echo latency on each of `targets` (the first is unix-local):
/// unix-local against a terminal this process opens itself, every other
/// provider against unix-local's figure of the same run.
pub(crate) async fn run(plan: &Plan, targets: &[Target]) -> Figures {
    let mut group = Group::new("terminal");
    let raw = raw_echo(plan.round_trips).await?;
    let mut local: Option<Samples> = None;
    for target in targets {
        eprintln!("== terminal: {}", target.label);
        let samples = echo(target, plan.round_trips).await?;
        let (baseline, against) = match &local {
            None => (
                &raw,
                "a terminal this process opens (pty-process), cat echoing",
            ),
            Some(local) => (local, "unix-local's figure in this run"),
        };
        group.add(
            crate::stats::Spec {
                name: &format!("{}: keystroke to echo through a terminal", target.label),
                unit: "ms",
                better: Better::Lower,
                baseline: against,
            },
            &samples,
            baseline,
            0,
        );
        local.get_or_insert(samples);
    }
    Ok(group.into_figures())
}

/// `n` echoes through a terminal command of `target`'s session.
async fn echo(target: &Target, n: usize) -> anyhow::Result<Samples> {
    let session = target.session().await?;
    let mut cat = request("cat", &[]).with_terminal(24, 80);
    cat.keep_stdin_open = true;
    let id = cat.command_id.clone();
    session.start_command(cat).await?;
    let mut events = session.stream_command(&id, 0).await?;
    let mut samples = Samples::default();
    for i in 0..=n {
        let start = Instant::now();
        session.write_stdin(&id, b"x".to_vec(), false).await?;
        wait_echo(&mut events).await?;
        if i > 0 {
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    session.cancel_command(&id).await?;
    session.close().await?;
    Ok(samples)
}

/// Waits for the next output event holding an `x`.
async fn wait_echo(events: &mut RunnerEventStream) -> anyhow::Result<()> {
    loop {
        let event = tokio::time::timeout(ECHO_LIMIT, events.next())
            .await
            .context("no echo within 10 s")?;
        match event {
            Some(Ok(RunnerProcessEvent::Stdout { bytes, .. })) if bytes.contains(&b'x') => {
                return Ok(());
            }
            Some(Ok(RunnerProcessEvent::Exited { status })) => {
                bail!("cat on the terminal exited: {status:?}")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the output stream ended"),
        }
    }
}

/// `n` echoes through a terminal opened by this process with `cat` on it.
async fn raw_echo(n: usize) -> anyhow::Result<Samples> {
    let (pty, pts) = pty_process::open()?;
    pty.resize(pty_process::Size::new(24, 80))?;
    let mut child = pty_process::Command::new("cat").spawn(pts)?;
    let (mut read, mut write) = pty.into_split();
    let mut buf = [0u8; 256];
    let mut samples = Samples::default();
    for i in 0..=n {
        let start = Instant::now();
        write.write_all(b"x").await?;
        loop {
            let got = tokio::time::timeout(ECHO_LIMIT, read.read(&mut buf))
                .await
                .context("no echo within 10 s")??;
            if got == 0 {
                bail!("the terminal closed");
            }
            if buf[..got].contains(&b'x') {
                break;
            }
        }
        if i > 0 {
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    child.start_kill()?;
    child.wait().await?;
    Ok(samples)
}
