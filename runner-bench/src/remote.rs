//! docker and ssh through the runner agent, against unix-local measured in
//! the same run: the cost of the transport and the agent over the same
//! implementation running in-process.
//!
//! Per remote target: `run_command(true)` (goal: at most 2x unix-local), 64
//! concurrent commands on one session (goal: at most 3x unix-local's
//! figure), `stat` and a 4 KiB `read_file` (goal: p50 at most 2 ms). On
//! docker also 200 HTTP requests through an `expose_port` URL to busybox
//! httpd in the container, against the same requests sent straight to the
//! container's address (goal: at most 2x). And the peak RSS of the caller
//! and of the agent (its VmHWM) while a command prints 1 GiB (bound: 32 MiB
//! each).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use runner_api::{
    RemoteRunnerSession, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerPortRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::generic::{Target, concurrent_commands, request, round_trip};
use crate::stats::{Better, Group, Samples, Spec, time_ms};
use crate::{Figures, Plan, cli, docker, rss};

/// Commands started at once on one session.
const CONCURRENT: usize = 64;
/// Bytes of the small file read.
const SMALL_FILE: usize = 4096;
/// The port busybox httpd listens on inside the container.
const HTTP_PORT: u16 = 8080;
/// HTTP requests per measurement.
const HTTP_REQUESTS: usize = 200;
/// The bound on the caller's and the agent's peak RSS while a command prints 1 GiB.
const PRINT_RSS_BOUND_MIB: f64 = 32.0;
/// Bytes the printing command writes: 1 GiB.
const GIB: u64 = 1 << 30;

/// The figures of one session: round trip, 64 concurrent, stat, 4 KiB read.
struct SessionFigures {
    round_trip: Samples,
    concurrent: Samples,
    concurrent_errors: u64,
    stat: Samples,
    read_small: Samples,
}

async fn measure(plan: &Plan, target: &Target) -> anyhow::Result<SessionFigures> {
    let session = target.session().await?;
    let figures = measure_session(plan, &session).await;
    session.close().await?;
    figures
}

async fn measure_session(
    plan: &Plan,
    session: &Arc<dyn RemoteRunnerSession>,
) -> anyhow::Result<SessionFigures> {
    let round_trip = round_trip(session, plan.round_trips).await?;
    let (concurrent, concurrent_errors) = concurrent_commands(session, CONCURRENT).await;
    let path = "bench-4kib.bin";
    session
        .write_file(RunnerFileWriteRequest::new(path, vec![7u8; SMALL_FILE]))
        .await?;
    let stat = time_ms(plan.round_trips, |_| async {
        session.stat(Path::new(path)).await?;
        Ok(())
    })
    .await?;
    let read_small = time_ms(plan.round_trips, |_| async {
        let read = session.read_file(RunnerFileReadRequest::new(path)).await?;
        if read.contents.len() != SMALL_FILE {
            bail!("read {} bytes of {SMALL_FILE}", read.contents.len());
        }
        Ok(())
    })
    .await?;
    Ok(SessionFigures {
        round_trip,
        concurrent,
        concurrent_errors,
        stat,
        read_small,
    })
}

/// Every remote target's figures next to unix-local's, and docker's port relay.
pub(crate) async fn run(plan: &Plan, local: &Target, remotes: &[Target]) -> Figures {
    let mut group = Group::new("agent");
    if remotes.is_empty() {
        eprintln!("== agent: skipped (no docker or ssh target requested)");
        return Ok(Vec::new());
    }
    eprintln!("== agent: unix-local in-process, the baseline");
    let base = measure(plan, local).await?;
    for target in remotes {
        eprintln!("== agent: {}", target.label);
        let ours = measure(plan, target).await?;
        let label = &target.label;
        let rows: [(String, &Samples, &Samples, u64, &str); 4] = [
            (
                format!("{label}: run_command(true) round trip"),
                &ours.round_trip,
                &base.round_trip,
                0,
                "unix-local run_command(true), same run",
            ),
            (
                format!("{label}: {CONCURRENT} concurrent commands, latency"),
                &ours.concurrent,
                &base.concurrent,
                ours.concurrent_errors,
                "unix-local, 64 concurrent, same run",
            ),
            (
                format!("{label}: stat"),
                &ours.stat,
                &base.stat,
                0,
                "unix-local stat, same run",
            ),
            (
                format!("{label}: read_file 4 KiB"),
                &ours.read_small,
                &base.read_small,
                0,
                "unix-local read_file 4 KiB, same run",
            ),
        ];
        for (name, ours, baseline, errors, baseline_is) in rows {
            group.add(
                Spec {
                    name: &name,
                    unit: "ms",
                    better: Better::Lower,
                    baseline: baseline_is,
                },
                ours,
                baseline,
                errors,
            );
        }
        let (caller, agent) = print_peaks(plan, target).await?;
        for (whose, peaks) in [
            ("caller's peak RSS above its RSS before", &caller),
            ("agent's peak RSS", &agent),
        ] {
            group.add_bounded(
                Spec {
                    name: &format!("{label}: {whose}, a command printing 1 GiB"),
                    unit: "MiB",
                    better: Better::Lower,
                    baseline: "the bound (VmHWM, reset per run)",
                },
                peaks,
                PRINT_RSS_BOUND_MIB,
            );
        }
        if target.label == "docker" {
            let (relayed, direct) = port_relay(target).await?;
            group.add(
                Spec {
                    name: "docker: HTTP request through expose_port",
                    unit: "ms",
                    better: Better::Lower,
                    baseline: "the same request to the container's address",
                },
                &relayed,
                &direct,
                0,
            );
        }
    }
    Ok(group.into_figures())
}

/// The pid of the agent serving `socket` on this host: the `serve` process
/// (not docker's `init` above it) whose arguments name the socket.
fn agent_pid(socket: &str) -> anyhow::Result<String> {
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"serve"[..]) && args.contains(&socket.as_bytes()) {
            return Ok(pid);
        }
    }
    bail!("no agent process serves {socket} on this host")
}

/// `reps` commands printing 1 GiB through `run_command`, each with both
/// peaks reset first: how far the caller's RSS rose above what it held
/// before the command (the benchmark process keeps the memory of earlier
/// sections), and the agent's peak RSS (MiB).
async fn print_peaks(plan: &Plan, target: &Target) -> anyhow::Result<(Samples, Samples)> {
    let session = target.session().await?;
    let measured = async {
        let state = session.state();
        let socket = state.metadata["socket"]
            .as_str()
            .context("the session state names no agent socket")?;
        let pid = agent_pid(socket)?;
        let (mut caller, mut agent) = (Samples::default(), Samples::default());
        let count = GIB.to_string();
        for _ in 0..plan.gib_reps {
            rss::reset_peak()?;
            rss::reset_peak_of(&pid)?;
            let before = rss::current_mib()?;
            let result = session
                .run_command(request("head", &["-c", &count, "/dev/zero"]))
                .await?;
            caller.push(rss::peak_mib()? - before);
            agent.push(rss::peak_mib_of(&pid)?);
            if result.stdout_truncation.bytes_seen != GIB {
                bail!(
                    "the session saw {} bytes of output, expected {GIB}",
                    result.stdout_truncation.bytes_seen
                );
            }
        }
        Ok((caller, agent))
    }
    .await;
    session.close().await?;
    measured
}

/// 200 requests through the exposed URL and 200 straight to the container.
async fn port_relay(target: &Target) -> anyhow::Result<(Samples, Samples)> {
    let session = target.session().await?;
    let measured = port_relay_session(&session).await;
    session.close().await?;
    measured
}

async fn port_relay_session(
    session: &Arc<dyn RemoteRunnerSession>,
) -> anyhow::Result<(Samples, Samples)> {
    session
        .write_file(RunnerFileWriteRequest::new(
            "www/index.html",
            b"hello from the sandbox\n".to_vec(),
        ))
        .await?;
    let root = session.workspace_root().join("www");
    let port = HTTP_PORT.to_string();
    let root = root.to_string_lossy();
    session
        .start_command(request("httpd", &["-f", "-p", &port, "-h", &root]))
        .await?;
    let exposed = session
        .expose_port(RunnerPortRequest {
            port: HTTP_PORT,
            label: None,
        })
        .await?;
    let url = exposed.url.context("expose_port returned no URL")?;
    let relayed_addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let container = docker::container_id(session)?;
    let ip = cli::capture(
        "docker",
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container,
        ],
    )
    .await?;
    let ip = ip.trim();
    if ip.is_empty() {
        bail!("container {container} has no address on a docker network");
    }
    let direct_addr = format!("{ip}:{HTTP_PORT}");
    wait_for_http(&direct_addr).await?;
    get(&relayed_addr).await?; // warm-up
    // Interleaved, so that both see the same moments of the machine.
    let (mut relayed, mut direct) = (Samples::default(), Samples::default());
    for _ in 0..HTTP_REQUESTS {
        relayed
            .0
            .extend(time_ms(1, |_| get(&relayed_addr)).await?.0);
        direct.0.extend(time_ms(1, |_| get(&direct_addr)).await?.0);
    }
    Ok((relayed, direct))
}

async fn wait_for_http(addr: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if get(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing answers HTTP at {addr}")
}

/// One `GET /index.html` on a new connection, read to its end; fails unless
/// the status is 200.
async fn get(addr: &str) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.0 200") && !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "{addr} answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(64)])
        );
    }
    Ok(())
}
