//! The server and the client in one process, over in-memory byte streams
//! (each connection a fresh `tokio::io::duplex` to the same server), serving
//! unix-local's real session: errors cross unchanged, a failing upload body
//! leaves its target as it was, bytes round-trip in both forms, a dropped
//! stream cancels only itself, and a new connection sees the same session.

use std::sync::Arc;

use bytes::Bytes;
use runner_agent::{AgentConnection, AgentServer, AgentSession, AgentVersion, PROTOCOL_VERSION};
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerError, RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest, next_chunk,
};

struct Fixture {
    _root: tempfile::TempDir,
    root: std::path::PathBuf,
    direct: Arc<dyn RemoteRunnerSession>,
    session: AgentSession,
}

async fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let destination = RunnerDestination {
        id: "in-process".into(),
        provider_id: "unix-local".into(),
        config: serde_json::json!({ "root": root.path() }),
        default_manifest: Default::default(),
        artifacts: None,
    };
    let direct = runner_local::LocalProvider::default()
        .create_session(destination)
        .await
        .unwrap();
    let version = AgentVersion {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        binary_sha256: String::new(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    };
    let server = AgentServer::new(direct.clone(), version);
    let session = AgentSession::connect(move || {
        let (client, agent) = tokio::io::duplex(256 * 1024);
        let server = server.clone();
        tokio::spawn(async move { server.serve(agent).await });
        async move { Ok(Box::new(client) as AgentConnection) }
    })
    .await
    .unwrap();
    Fixture {
        root: root.path().to_path_buf(),
        _root: root,
        direct,
        session,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_cross_the_wire_with_kind_and_message_unchanged() {
    let f = fixture().await;
    let through = f.session.stat("missing.txt".as_ref()).await.unwrap_err();
    let direct = f.direct.stat("missing.txt".as_ref()).await.unwrap_err();
    assert_eq!(through.kind(), RunnerErrorKind::NotFound);
    assert_eq!(through.kind(), direct.kind());
    assert_eq!(through.message(), direct.message());
    f.session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upload_body_fails_the_write_and_leaves_the_target() {
    let f = fixture().await;
    f.session
        .write_file(RunnerFileWriteRequest::new("target.txt", b"old".to_vec()))
        .await
        .unwrap();
    let body: runner_api::RunnerByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from(vec![b'x'; 600 * 1024])),
        Err(RunnerError::new(
            RunnerErrorKind::Timeout,
            "source read timed out",
        )),
    ]));
    let err = f
        .session
        .write_file_stream(
            RunnerFileWriteRequest::new("target.txt", b"new".to_vec()),
            body,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::Timeout, "{err}");
    assert!(err.message().contains("source read timed out"), "{err}");
    assert_eq!(std::fs::read(f.root.join("target.txt")).unwrap(), b"old");
    f.session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_in_the_whole_and_the_stream_forms() {
    let f = fixture().await;
    let contents: Vec<u8> = (0..5 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    f.session
        .write_file(RunnerFileWriteRequest::new("a/whole.bin", contents.clone()))
        .await
        .unwrap();
    let read = f
        .session
        .read_file(RunnerFileReadRequest::new("a/whole.bin"))
        .await
        .unwrap();
    assert_eq!(read.contents, contents);
    let mut window = RunnerFileReadRequest::new("a/whole.bin");
    window.offset = Some(1_000_000);
    window.limit = Some(3_000_000);
    let mut file = f.session.read_file_stream(window).await.unwrap();
    assert_eq!(file.size, contents.len() as u64);
    let mut streamed = Vec::new();
    while let Some(chunk) = next_chunk(&mut file.bytes).await {
        streamed.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(streamed, contents[1_000_000..4_000_000]);
    let tar = f.session.download_archive("a".as_ref()).await.unwrap();
    f.session.upload_archive("b".as_ref(), tar).await.unwrap();
    assert_eq!(std::fs::read(f.root.join("b/whole.bin")).unwrap(), contents);
    let stdin = vec![b'z'; 2 * 1024 * 1024];
    let result = f
        .session
        .run_command(RunnerCommandRequest::new("wc", "wc", ["-c"]).with_stdin(stdin))
        .await
        .unwrap();
    assert_eq!(result.stdout.trim(), "2097152");
    f.session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_cancels_only_itself() {
    let f = fixture().await;
    std::fs::write(f.root.join("big"), vec![1u8; 8 * 1024 * 1024]).unwrap();
    let mut file = f
        .session
        .read_file_stream(RunnerFileReadRequest::new("big"))
        .await
        .unwrap();
    next_chunk(&mut file.bytes).await.unwrap().unwrap();
    drop(file);
    let stats = (0..50).map(|_| f.session.stat("big".as_ref()));
    for stat in futures_util::future::join_all(stats).await {
        assert_eq!(stat.unwrap().size, 8 * 1024 * 1024);
    }
    f.session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_sees_the_same_session() {
    let f = fixture().await;
    f.session
        .start_command(RunnerCommandRequest::new("sleeper", "sleep", ["30"]))
        .await
        .unwrap();
    f.session.client().disconnect().await;
    let listed = f.session.list_commands().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].command_id, "sleeper");
    assert!(f.session.cancel_command(&"sleeper".into()).await.unwrap());
    f.session.close().await.unwrap();
}
