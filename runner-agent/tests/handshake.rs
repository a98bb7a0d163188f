//! The handshake and the frame rules, against a real agent daemon: a
//! version-mismatched peer is refused on both sides with an error naming both
//! versions; an oversize frame and a garbage frame close only their own
//! connection.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use runner_agent::protocol::{
    AgentVersion, CONNECTION_ID, Frame, FrameCodec, FrameKind, Hello, HelloReply, MAX_FRAME_BYTES,
    PROTOCOL_VERSION, SessionInfo, WireError, decode, encode,
};
use runner_agent::{AgentConnection, AgentSession};
use runner_api::{RemoteRunnerSession, RunnerCommandRequest, RunnerError, RunnerErrorKind};
use support::{Agent, ConnectPids, Launcher};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

async fn agent(launcher: &Launcher, root: &std::path::Path) -> Agent {
    let destination = support::root_destination("handshake", root);
    launcher.launch(&destination, None).await.unwrap()
}

/// A raw connection to the agent's socket.
async fn raw(agent: &Agent) -> Framed<UnixStream, FrameCodec> {
    let stream = UnixStream::connect(&agent.socket).await.unwrap();
    Framed::new(stream, FrameCodec::default())
}

async fn hello(framed: &mut Framed<UnixStream, FrameCodec>, hello: &Hello) -> Frame {
    let payload = encode("hello", hello).unwrap();
    framed
        .send(Frame::new(FrameKind::Hello, CONNECTION_ID, payload))
        .await
        .unwrap();
    framed.next().await.expect("an answer").expect("a frame")
}

/// The connection-level error the agent sent, then the end of the connection.
async fn refusal(framed: &mut Framed<UnixStream, FrameCodec>, first: Option<Frame>) -> RunnerError {
    let frame = match first {
        Some(frame) => frame,
        None => framed
            .next()
            .await
            .expect("an error frame")
            .expect("a frame"),
    };
    assert_eq!((frame.kind, frame.id), (FrameKind::Error, CONNECTION_ID));
    let error: RunnerError = decode::<WireError>("error", &frame.payload).unwrap().into();
    let rest = framed.next().await;
    assert!(rest.is_none(), "the agent closes the connection: {rest:?}");
    error
}

/// The agent's session still answers on another connection.
async fn still_serves(session: &AgentSession) {
    let result = session
        .run_command(RunnerCommandRequest::new("probe", "echo", ["alive"]))
        .await
        .unwrap();
    assert_eq!(result.stdout, "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_client_of_another_protocol_version_naming_both() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = agent(&launcher, root.path()).await;
    let mut framed = raw(&agent).await;
    let answer = hello(
        &mut framed,
        &Hello {
            protocol: PROTOCOL_VERSION + 98,
            client_version: "9.9.9".into(),
        },
    )
    .await;
    let error = refusal(&mut framed, Some(answer)).await;
    assert_eq!(error.kind(), RunnerErrorKind::Unsupported, "{error}");
    let message = error.message();
    for part in [
        format!("protocol {}", PROTOCOL_VERSION + 98),
        format!("protocol {PROTOCOL_VERSION}"),
        "9.9.9".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    ] {
        assert!(message.contains(&part), "{message:?} names {part:?}");
    }
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    still_serves(&session).await;
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_an_agent_of_another_protocol_version_naming_both() {
    // A peer speaking a future protocol version answers every hello.
    let (client_io, agent_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut framed = Framed::new(agent_io, FrameCodec::default());
        let Some(Ok(_hello)) = framed.next().await else {
            return;
        };
        let reply = HelloReply {
            agent: AgentVersion {
                protocol: PROTOCOL_VERSION + 1,
                agent_version: "7.0.0".into(),
                binary_sha256: String::new(),
                os: "linux".into(),
                arch: "x86_64".into(),
            },
            session: SessionInfo {
                capabilities: Default::default(),
                state: runner_api::RunnerSessionState {
                    provider_id: "unix-local".into(),
                    session_id: "s".into(),
                    destination_id: "d".into(),
                    snapshot: None,
                    metadata: serde_json::Value::Null,
                },
                workspace_root: "/w".into(),
                stages: false,
            },
        };
        let payload = encode("hello", &reply).unwrap();
        let _ = framed
            .send(Frame::new(FrameKind::Hello, CONNECTION_ID, payload))
            .await;
        let _ = framed.next().await;
    });
    let io = std::sync::Mutex::new(Some(client_io));
    let error = AgentSession::connect(move || {
        let io = io.lock().unwrap().take();
        async move {
            io.map(|io| Box::new(io) as AgentConnection)
                .ok_or_else(|| std::io::Error::other("one connection only"))
        }
    })
    .await
    .unwrap_err();
    assert_eq!(error.kind(), RunnerErrorKind::Unsupported, "{error}");
    let message = error.message();
    for part in [
        format!("protocol {}", PROTOCOL_VERSION + 1),
        format!("protocol {PROTOCOL_VERSION}"),
        "7.0.0".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    ] {
        assert!(message.contains(&part), "{message:?} names {part:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_closes_only_its_connection() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = agent(&launcher, root.path()).await;
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    still_serves(&session).await;

    let mut framed = raw(&agent).await;
    let answer = hello(&mut framed, &Hello::current()).await;
    assert_eq!(answer.kind, FrameKind::Hello);
    let reply: HelloReply = decode("hello", &answer.payload).unwrap();
    assert_eq!(reply.session.state.session_id, agent.session_id);
    assert_eq!(reply.agent.binary_sha256.len(), 64);
    // A length prefix one byte over the maximum, then the start of a body.
    let mut oversize = BytesMut::new();
    oversize.put_u32((MAX_FRAME_BYTES + 1) as u32);
    oversize.put_u8(FrameKind::Data as u8);
    oversize.put_u64(1);
    framed.get_mut().write_all(&oversize).await.unwrap();
    let error = refusal(&mut framed, None).await;
    assert_eq!(error.kind(), RunnerErrorKind::InvalidRequest, "{error}");
    assert!(
        error
            .message()
            .contains(&format!("maximum of {MAX_FRAME_BYTES} bytes")),
        "{error}"
    );
    still_serves(&session).await;
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_frame_closes_only_its_connection() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = agent(&launcher, root.path()).await;
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();

    // Garbage after a good handshake: an unknown frame kind.
    let mut framed = raw(&agent).await;
    hello(&mut framed, &Hello::current()).await;
    let mut garbage = BytesMut::new();
    garbage.put_u32(12);
    garbage.put_u8(0x7e);
    garbage.put_u64(5);
    garbage.put_slice(b"xyz");
    framed.get_mut().write_all(&garbage).await.unwrap();
    let error = refusal(&mut framed, None).await;
    assert!(
        error.message().contains("unknown frame kind 0x7e"),
        "{error}"
    );
    still_serves(&session).await;

    // A request that is not MessagePack.
    let mut framed = raw(&agent).await;
    hello(&mut framed, &Hello::current()).await;
    framed
        .send(Frame::new(
            FrameKind::Request,
            1,
            Bytes::from_static(b"\xc1\xc1"),
        ))
        .await
        .unwrap();
    let error = refusal(&mut framed, None).await;
    assert!(error.message().contains("undecodable request"), "{error}");
    still_serves(&session).await;

    // Something other than a hello first.
    let mut framed = raw(&agent).await;
    framed
        .send(Frame::new(FrameKind::Request, 1, Bytes::new()))
        .await
        .unwrap();
    let error = refusal(&mut framed, None).await;
    assert!(
        error.message().contains("first frame must be a hello"),
        "{error}"
    );
    still_serves(&session).await;
    session.close().await.unwrap();
}
