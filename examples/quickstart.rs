//! Quickstart: a unix-local session in a temporary workspace.
//!
//! Runs a command, writes and reads a file, starts a background command and
//! reads its numbered output, then closes the session.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::Arc;
use std::time::Duration;

use runner_api::{
    RemoteRunnerProvider, RunnerCommandRequest, RunnerDestination, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerProcessState, RunnerResult, ThreadRunnerBinding,
};
use runner_local::LocalProvider;
use runner_stack::RunnerRegistry;

#[tokio::main]
async fn main() -> RunnerResult<()> {
    let dir =
        tempfile::tempdir().map_err(|e| runner_api::RunnerError::from_io("tempdir", "", e))?;
    let root = dir.path().join("workspace");

    // A registry knows every provider and wraps each in the layer stack; it validates a
    // destination before creating a session.
    let mut registry = RunnerRegistry::new();
    let provider: Arc<dyn RemoteRunnerProvider> = Arc::new(LocalProvider::default());
    registry.register(provider)?;
    let destination = RunnerDestination {
        id: "quickstart".into(),
        provider_id: "unix-local".into(),
        config: serde_json::json!({ "root": root }),
        default_manifest: Default::default(),
        artifacts: None,
    };
    // The thread's binding: where its tools run and the workspace they are confined to. The
    // session comes back composed once: closed-session and capability checks, tracing,
    // confinement to `workspace`, mounts and artifacts, then unix-local's own session.
    let workspace = registry
        .open(ThreadRunnerBinding {
            destination,
            workspace: root.clone(),
            read_roots: Vec::new(),
        })
        .await?;
    println!(
        "session {} in {}",
        workspace.state().session_id,
        workspace.workspace_root().display()
    );

    // 1. A foreground command: stdout and stderr stay apart; a non-zero exit is a result.
    let result = workspace
        .run_command(RunnerCommandRequest::shell(
            "hello",
            "echo hello from $(pwd); echo oops >&2; exit 3",
        ))
        .await?;
    println!(
        "run_command: exit {:?}, stdout {:?}, stderr {:?}, {} ms",
        result.exit_code, result.stdout, result.stderr, result.duration_ms
    );

    // 2. Files: an atomic write, then a read.
    workspace
        .write_file(RunnerFileWriteRequest::new(
            "notes/todo.txt",
            "write the report\n",
        ))
        .await?;
    let read = workspace
        .read_file(RunnerFileReadRequest::new("notes/todo.txt"))
        .await?;
    println!(
        "read_file notes/todo.txt: {:?}",
        String::from_utf8_lossy(&read.contents)
    );

    // A path outside the workspace is refused with a typed error.
    let refused = workspace
        .read_file(RunnerFileReadRequest::new("../../etc/passwd"))
        .await;
    if let Err(e) = refused {
        println!(
            "read_file ../../etc/passwd refused: {} ({})",
            e.message(),
            e.kind()
        );
    }

    // 3. A background command, its numbered output read in two steps.
    let script = "for i in 1 2 3; do echo tick $i; sleep 0.2; done";
    let info = workspace
        .start_command(RunnerCommandRequest::shell("ticker", script))
        .await?;
    println!(
        "start_command: {} running as pid {:?}",
        info.command_id, info.pid
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = workspace.command_output(&info.command_id, 0).await?;
    print_chunks("first read", &first.chunks);
    loop {
        let status = workspace.command_status(&info.command_id).await?;
        if status.state == RunnerProcessState::Exited {
            println!(
                "ticker exited: {:?}",
                status.status.and_then(|s| s.exit_code)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = workspace
        .command_output(&info.command_id, first.next_after_seq)
        .await?;
    print_chunks("resumed after seq", &rest.chunks);

    workspace.close().await?;
    println!("session closed");
    Ok(())
}

fn print_chunks(label: &str, chunks: &[runner_api::RunnerOutputChunk]) {
    for chunk in chunks {
        println!(
            "{label}: seq {} {:?} {:?}",
            chunk.seq,
            chunk.stream,
            String::from_utf8_lossy(&chunk.bytes).trim_end()
        );
    }
}
