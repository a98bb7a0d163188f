//! Flow control holds memory on both sides: a client reading a 1 GiB file
//! slowly, a client writing 1 GiB, and a client slowly streaming a command
//! that prints 1 GiB leave the agent's peak RSS (VmHWM) and the test
//! process's growth each under 32 MiB. (One test in this binary,
//! so no other test moves the process's peak.)

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerCommandRequest, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerProcessEvent, next_chunk,
};
use support::{ConnectPids, Launcher};

const GIB: u64 = 1024 * 1024 * 1024;
const BOUND: u64 = 32 * 1024 * 1024;

/// VmHWM of `pid` in bytes.
fn peak_rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

/// 1 GiB of zeros in 1 MiB chunks of one shared buffer (the caller holds 1 MiB).
fn gibibyte_body() -> RunnerByteStream {
    let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
    Box::pin(futures_util::stream::iter(
        (0..1024).map(move |_| Ok(chunk.clone())),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_and_big_writes_keep_both_sides_bounded() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let destination = support::root_destination("flow", root.path());
    let agent = launcher.launch(&destination, None).await.unwrap();
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    let agent_pid = agent.pid.to_string();
    let baseline = peak_rss("self");

    // A sparse 1 GiB file, read slowly.
    std::fs::File::create(root.path().join("big"))
        .unwrap()
        .set_len(GIB)
        .unwrap();
    let mut file = session
        .read_file_stream(RunnerFileReadRequest::new("big"))
        .await
        .unwrap();
    assert_eq!(file.size, GIB);
    let (mut total, mut since_pause) = (0u64, 0u64);
    while let Some(chunk) = next_chunk(&mut file.bytes).await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|b| *b == 0));
        total += chunk.len() as u64;
        since_pause += chunk.len() as u64;
        if since_pause >= 16 * 1024 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(total, GIB);
    let agent_peak = peak_rss(&agent_pid);
    assert!(
        agent_peak < BOUND,
        "agent VmHWM {agent_peak} after a 1 GiB read"
    );
    let growth = peak_rss("self").saturating_sub(baseline);
    assert!(
        growth < BOUND,
        "the client grew by {growth} bytes reading 1 GiB"
    );

    // 1 GiB written through the stream form.
    session
        .write_file_stream(
            RunnerFileWriteRequest::new("written", Vec::new()),
            gibibyte_body(),
        )
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(root.path().join("written"))
            .unwrap()
            .len(),
        GIB
    );
    let agent_peak = peak_rss(&agent_pid);
    assert!(
        agent_peak < BOUND,
        "agent VmHWM {agent_peak} after a 1 GiB write"
    );
    let growth = peak_rss("self").saturating_sub(baseline);
    assert!(
        growth < BOUND,
        "the client grew by {growth} bytes writing 1 GiB"
    );

    // A command printing 1 GiB, streamed by a slow reader: the reader gets
    // ordered output (a lagging reader skips what the bounded log dropped).
    let printer = RunnerCommandRequest::new("printer", "head", ["-c", "1073741824", "/dev/zero"]);
    session.start_command(printer).await.unwrap();
    let mut events = session.stream_command(&"printer".into(), 0).await.unwrap();
    let (mut last_seq, mut since_pause) = (0u64, 0usize);
    let status = loop {
        match events.next().await.expect("events until exit").unwrap() {
            RunnerProcessEvent::Stdout { seq, bytes } => {
                assert!(seq > last_seq, "sequence numbers increase");
                last_seq = seq;
                since_pause += bytes.len();
                if since_pause >= 16 * 1024 * 1024 {
                    since_pause = 0;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            RunnerProcessEvent::Exited { status } => break status,
            other => panic!("unexpected event {other:?}"),
        }
    };
    assert_eq!(status.exit_code, Some(0));
    let info = session.command_status(&"printer".into()).await.unwrap();
    assert_eq!(info.stdout_bytes, GIB);
    let agent_peak = peak_rss(&agent_pid);
    assert!(
        agent_peak < BOUND,
        "agent VmHWM {agent_peak} after 1 GiB of output"
    );
    let growth = peak_rss("self").saturating_sub(baseline);
    assert!(
        growth < BOUND,
        "the client grew by {growth} bytes streaming 1 GiB"
    );
    println!(
        "agent VmHWM {} KiB, client growth {} KiB",
        agent_peak / 1024,
        growth / 1024
    );
    session.close().await.unwrap();
}
