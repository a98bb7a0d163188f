//! The agent side: one session served to any number of connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerCommandOutput, RunnerError, RunnerErrorKind,
    RunnerEventStream, RunnerProcessEvent, RunnerResult, RunnerWatchStream, bytes_stream,
    collect_stream, empty_stream,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::conn::{
    Credit, Inbound, Lost, Mailbox, Outbound, Slot, mailbox, receive_bytes, send_bytes, send_error,
};
use crate::protocol::{
    AgentVersion, CONNECTION_ID, Frame, FrameKind, Hello, HelloReply, OutputHead, ProtocolError,
    ReadError, Reply, Request, STREAM_WINDOW_BYTES, SessionInfo, decode, decode_credit, encode,
    encode_output, mismatch_message,
};
use crate::stage::{STAGED_FILE, Stage, no_stage};
use crate::tunnel::{self, Side};
use runner_local::LocalSession;

/// How long a new connection may take to send its hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closing connection may take to send what it has queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one session to any number of connections, each over any byte
/// stream. The session lives here, not in a connection: a connection that
/// drops loses nothing (commands keep running, their numbered output and
/// open stdin stay), and the next connection sees the same session.
#[derive(Clone)]
pub struct AgentServer {
    shared: Arc<Shared>,
}

struct Shared {
    session: Arc<dyn RemoteRunnerSession>,
    /// The session as unix-local's own type, when it is one.
    local: Option<Arc<LocalSession>>,
    /// Where bulk transfers are staged (`serve --stage-dir`), if anywhere.
    stage: Option<Stage>,
    version: AgentVersion,
    /// Cancelled once the session was closed: connections end, the daemon exits.
    closed: CancellationToken,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("session_id", &self.shared.session.state().session_id)
            .field("version", &self.shared.version)
            .finish_non_exhaustive()
    }
}

impl AgentServer {
    /// A server of `session`, announcing `version` in every handshake and
    /// refusing a client that speaks another protocol than `version.protocol`.
    pub fn new(session: Arc<dyn RemoteRunnerSession>, version: AgentVersion) -> Self {
        Self {
            shared: Arc::new(Shared {
                session,
                version,
                local: None,
                stage: None,
                closed: CancellationToken::new(),
            }),
        }
    }

    /// A server of unix-local's own `session`, which also answers what only
    /// unix-local does ([`Request::ProtectEntries`]) and, with `stage_root`,
    /// stages bulk transfers there (made 0700 and emptied; see
    /// [`Request::StageUpload`]): a staged upload is moved into the
    /// workspace by [`LocalSession::install_file`], not copied.
    ///
    /// Errors: `PermissionDenied` for a staging root others may enter, the
    /// I/O error making it otherwise.
    pub fn local(
        session: Arc<LocalSession>,
        version: AgentVersion,
        stage_root: Option<&std::path::Path>,
    ) -> RunnerResult<Self> {
        let stage = stage_root.map(Stage::open).transpose()?;
        Ok(Self {
            shared: Arc::new(Shared {
                session: session.clone(),
                version,
                local: Some(session),
                stage,
                closed: CancellationToken::new(),
            }),
        })
    }

    /// The session served.
    pub fn session(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.shared.session
    }

    /// Whether the session was closed (by a client or [`close`](Self::close)).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Resolves once the session was closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Closes the session (every process ends) and ends every connection.
    pub async fn close(&self) -> RunnerResult<()> {
        let result = self.shared.session.close().await;
        self.shared.closed.cancel();
        result
    }

    /// Serves one connection until the peer closes it, the session is
    /// closed, or the peer breaks the protocol (answered with an `Error`
    /// frame on id 0 before the connection closes). Requests still in flight
    /// are cancelled; the session and its commands go on.
    ///
    /// Errors: the protocol violation or transport failure that ended the
    /// connection.
    pub async fn serve<S>(&self, io: S) -> RunnerResult<()>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let outbound = Outbound::spawn(writer);
        let mut inbound = Inbound::new(reader);
        let connection = Connection {
            shared: self.shared.clone(),
            outbound: outbound.clone(),
            tasks: Arc::default(),
        };
        let result = connection.run(&mut inbound).await;
        connection.cancel_all();
        match &result {
            Err(refusal) => outbound.control(error_frame(CONNECTION_ID, refusal)),
            // The session was closed: tell the client, after the answers
            // already queued (the reply to `close`), so it does not reconnect.
            Ok(()) if self.is_closed() => {
                let session_id = self.shared.session.state().session_id;
                let closed = RunnerError::new(
                    RunnerErrorKind::SessionClosed,
                    format!("session {session_id} was closed"),
                );
                let notice = outbound.send(error_frame(CONNECTION_ID, &closed));
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, notice).await;
            }
            Ok(()) => {}
        }
        outbound.close();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, outbound.finished()).await;
        result
    }
}

/// A request in flight on one connection.
struct Task {
    abort: Option<AbortHandle>,
    /// Where the request's body goes until its `End`; dropping it ends the
    /// body with a "cancelled" error.
    body: Option<Slot>,
    /// The credit of the request's answer stream.
    credit: Arc<Credit>,
}

type Tasks = Arc<Mutex<HashMap<u64, Task>>>;

fn lock(tasks: &Tasks) -> MutexGuard<'_, HashMap<u64, Task>> {
    tasks.lock().unwrap_or_else(|p| p.into_inner())
}

struct Connection {
    shared: Arc<Shared>,
    outbound: Outbound,
    tasks: Tasks,
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(&self, inbound: &mut Inbound<R>) -> RunnerResult<()> {
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.next())
            .await
            .map_err(|_| {
                RunnerError::new(
                    RunnerErrorKind::Timeout,
                    "agent handshake: no hello within 30 s",
                )
            })?
            .map_err(read_error)?;
        let Some(first) = first else { return Ok(()) };
        self.handshake(first).await?;
        loop {
            let next = tokio::select! {
                next = inbound.next() => next,
                () = self.shared.closed.cancelled() => return Ok(()),
            };
            match next.map_err(read_error)? {
                Some(message) => self.dispatch(message)?,
                None => return Ok(()),
            }
        }
    }

    async fn handshake(&self, first: Frame) -> RunnerResult<()> {
        if first.kind != FrameKind::Hello || first.id != CONNECTION_ID {
            return Err(ProtocolError(format!(
                "the first frame must be a hello on id 0, not a {:?} frame on id {}",
                first.kind, first.id
            ))
            .into());
        }
        let hello: Hello = decode("hello", &first.payload)?;
        let version = &self.shared.version;
        if hello.protocol != version.protocol {
            return Err(RunnerError::new(
                RunnerErrorKind::Unsupported,
                mismatch_message(version.protocol, &version.agent_version, &hello),
            ));
        }
        let session = &self.shared.session;
        if self.shared.closed.is_cancelled() {
            return Err(RunnerError::session_closed(
                "agent handshake",
                &session.state().session_id,
            ));
        }
        let reply = HelloReply {
            agent: self.shared.version.clone(),
            session: SessionInfo {
                capabilities: session.capabilities(),
                state: session.state(),
                workspace_root: session.workspace_root(),
                stages: self.shared.stage.is_some() && self.shared.local.is_some(),
            },
        };
        let payload = encode("agent handshake", &reply)?;
        self.outbound
            .message(FrameKind::Hello, CONNECTION_ID, payload)
            .await
            .map_err(|Lost| lost("agent handshake"))
    }

    fn dispatch(&self, message: Frame) -> RunnerResult<()> {
        let id = message.id;
        match message.kind {
            FrameKind::Request if id != CONNECTION_ID => {
                let request: Request = decode("request", &message.payload)?;
                self.start(id, request)
            }
            FrameKind::Data | FrameKind::End | FrameKind::Error if id != CONNECTION_ID => {
                let mut tasks = lock(&self.tasks);
                let Some(task) = tasks.get_mut(&id) else {
                    return Ok(()); // cancelled or answered already
                };
                let last = message.kind != FrameKind::Data;
                if let Some(body) = &task.body {
                    body.deliver(message)?;
                }
                if last {
                    task.body = None;
                }
                Ok(())
            }
            FrameKind::Credit => {
                let bytes = decode_credit(&message.payload)?;
                if let Some(task) = lock(&self.tasks).get(&id) {
                    task.credit.grant(bytes);
                }
                Ok(())
            }
            FrameKind::Cancel => {
                self.cancel(id);
                Ok(())
            }
            kind => {
                Err(ProtocolError(format!("a {kind:?} frame on id {id} from the client")).into())
            }
        }
    }

    fn start(&self, id: u64, request: Request) -> RunnerResult<()> {
        let mut tasks = lock(&self.tasks);
        if tasks.contains_key(&id) {
            return Err(ProtocolError(format!("request id {id} is already in flight")).into());
        }
        let (slot, body) = if request.has_body() {
            let (slot, body) = mailbox(self.outbound.clone(), id, STREAM_WINDOW_BYTES);
            (Some(slot), Some(body))
        } else {
            (None, None)
        };
        let credit = Credit::with_window(request.stream_window());
        let work = answer(
            self.shared.clone(),
            self.outbound.clone(),
            self.tasks.clone(),
            id,
            request,
            body,
            credit.clone(),
        );
        let handle = tokio::spawn(work);
        tasks.insert(
            id,
            Task {
                abort: Some(handle.abort_handle()),
                body: slot,
                credit,
            },
        );
        Ok(())
    }

    /// Stops the work of `id`: an upload's body ends with an error (so the
    /// operation fails and leaves its target as it was); anything else is
    /// dropped. A dropped `run_command` does not kill its command: that is
    /// `cancel_command`.
    fn cancel(&self, id: u64) {
        let Some(task) = lock(&self.tasks).remove(&id) else {
            return;
        };
        task.credit.close();
        if task.body.is_none()
            && let Some(abort) = task.abort
        {
            abort.abort();
        }
    }

    fn cancel_all(&self) {
        let ids: Vec<u64> = lock(&self.tasks).keys().copied().collect();
        for id in ids {
            self.cancel(id);
        }
    }
}

fn read_error(error: ReadError) -> RunnerError {
    match error {
        ReadError::Protocol(e) => e.into(),
        ReadError::Io(e) => RunnerError::from_io("agent connection", "read", e),
    }
}

fn lost(operation: &str) -> RunnerError {
    RunnerError::new(
        RunnerErrorKind::Unavailable,
        format!("{operation}: the connection was lost"),
    )
}

fn error_frame(id: u64, error: &RunnerError) -> Frame {
    let payload = encode("error", &crate::protocol::WireError::from(error)).unwrap_or_default();
    Frame::new(FrameKind::Error, id, payload)
}

/// The frames of a streamed answer: each one's kind and payload.
type FrameStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = RunnerResult<(FrameKind, Bytes)>> + Send>>;

/// `stream_command`'s events as frames: output chunks as `Output`, the rest as `Event`.
fn event_frames(operation: &'static str, events: RunnerEventStream) -> FrameStream {
    use runner_api::RunnerOutputStream as S;
    Box::pin(events.map(move |event| {
        Ok(match event? {
            RunnerProcessEvent::Stdout { seq, bytes } => {
                (FrameKind::Output, encode_output(seq, S::Stdout, &bytes))
            }
            RunnerProcessEvent::Stderr { seq, bytes } => {
                (FrameKind::Output, encode_output(seq, S::Stderr, &bytes))
            }
            other => (FrameKind::Event, encode(operation, &other)?),
        })
    }))
}

/// `watch`'s events as `Event` frames.
fn watch_frames(operation: &'static str, events: RunnerWatchStream) -> FrameStream {
    Box::pin(events.map(move |event| Ok((FrameKind::Event, encode(operation, &event?)?))))
}

/// What a request answers with.
enum Response {
    /// One reply.
    Reply(Reply),
    /// A reply, then a byte stream.
    Bytes(Reply, RunnerByteStream),
    /// `Unit`, then frames each spending the stream's credit
    /// (`stream_command`'s events, `watch`'s events), then `End`.
    Frames(FrameStream),
    /// `command_output`'s head, then its chunks.
    Output(RunnerCommandOutput),
    /// `open_tunnel`'s connection and the client's side of it.
    Tunnel(tokio::net::TcpStream, Mailbox),
}

/// Runs one request and sends its answer.
async fn answer(
    shared: Arc<Shared>,
    outbound: Outbound,
    tasks: Tasks,
    id: u64,
    request: Request,
    body: Option<Mailbox>,
    credit: Arc<Credit>,
) {
    let operation = request.operation();
    let closes = matches!(request, Request::Close);
    let session = shared.session.clone();
    let result = if shared.closed.is_cancelled() {
        Err(RunnerError::session_closed(
            operation,
            &session.state().session_id,
        ))
    } else {
        respond(&shared, request, body).await
    };
    let sent = match result {
        Ok(response) => send_response(&outbound, id, &credit, operation, response).await,
        Err(e) => send_error(&outbound, id, &e).await,
    };
    if sent.is_err() {
        tracing::debug!(id, operation, "agent: the answer's connection was lost");
    }
    lock(&tasks).remove(&id);
    if closes {
        shared.closed.cancel();
    }
}

/// The request's body as a stream; ended early, it fails with `Cancelled`.
fn body_stream(operation: &'static str, body: Option<Mailbox>) -> RunnerByteStream {
    match body {
        Some(body) => receive_bytes(body, move || {
            RunnerError::new(
                RunnerErrorKind::Cancelled,
                format!(
                    "{operation}: the client's upload ended before its end (cancelled, or its \
                     connection was lost)"
                ),
            )
        }),
        None => empty_stream(),
    }
}

/// The whole body in one buffer (the whole-buffer methods and stdin).
async fn body_bytes(operation: &'static str, body: Option<Mailbox>) -> RunnerResult<Vec<u8>> {
    collect_stream(
        operation,
        "request body",
        body_stream(operation, body),
        u64::MAX,
    )
    .await
}

async fn respond(
    shared: &Shared,
    request: Request,
    body: Option<Mailbox>,
) -> RunnerResult<Response> {
    let op = request.operation();
    let session = shared.session.as_ref();
    let local = || {
        shared.local.as_ref().ok_or_else(|| {
            RunnerError::new(
                RunnerErrorKind::Unsupported,
                format!("{op}: this agent's session is not unix-local's"),
            )
        })
    };
    let stage = || match (&shared.stage, &shared.local) {
        (Some(stage), Some(local)) => Ok((stage, local)),
        _ => Err(no_stage(op)),
    };
    let reply = match request {
        Request::Pause => Reply::State(session.pause().await?),
        Request::Resume => Reply::State(session.resume().await?),
        Request::Detach => Reply::State(session.detach().await?),
        Request::Close => {
            session.close().await?;
            Reply::Unit
        }
        Request::RunCommand { mut request, stdin } => {
            if stdin {
                request.stdin = Some(body_bytes(op, body).await?);
            }
            Reply::CommandResult(session.run_command(request).await?)
        }
        Request::CancelCommand { command_id } => {
            Reply::Bool(session.cancel_command(&command_id).await?)
        }
        Request::StartCommand { mut request, stdin } => {
            if stdin {
                request.stdin = Some(body_bytes(op, body).await?);
            }
            Reply::Process(session.start_command(request).await?)
        }
        Request::ListCommands => Reply::Processes(session.list_commands().await?),
        Request::CommandStatus { command_id } => {
            Reply::Process(session.command_status(&command_id).await?)
        }
        Request::CommandOutput {
            command_id,
            after_seq,
        } => {
            let output = session.command_output(&command_id, after_seq).await?;
            return Ok(Response::Output(output));
        }
        Request::StreamCommand {
            command_id,
            after_seq,
        } => {
            let events = session.stream_command(&command_id, after_seq).await?;
            return Ok(Response::Frames(event_frames(op, events)));
        }
        Request::WriteStdin { command_id, close } => {
            let bytes = body_bytes(op, body).await?;
            session.write_stdin(&command_id, bytes, close).await?;
            Reply::Unit
        }
        Request::SignalCommand { command_id, signal } => {
            session.signal_command(&command_id, signal).await?;
            Reply::Unit
        }
        Request::ResizeTerminal {
            command_id,
            rows,
            cols,
        } => {
            session.resize_terminal(&command_id, rows, cols).await?;
            Reply::Unit
        }
        Request::Watch { request } => {
            return Ok(Response::Frames(watch_frames(
                op,
                session.watch(request).await?,
            )));
        }
        Request::ReadFile {
            request,
            whole: true,
        } => {
            let read = session.read_file(request).await?;
            let head = Reply::File {
                path: read.path,
                size: read.size,
            };
            return Ok(Response::Bytes(head, bytes_stream(read.contents)));
        }
        Request::ReadFile { request, .. } => {
            let file = session.read_file_stream(request).await?;
            let head = Reply::File {
                path: file.path,
                size: file.size,
            };
            return Ok(Response::Bytes(head, file.bytes));
        }
        // unix-local's write_file is its write_file_stream (the trait's
        // default): its body goes to the file as it arrives, not gathered first.
        Request::WriteFile {
            mut request,
            whole: true,
        } if shared.local.is_none() => {
            request.contents = body_bytes(op, body).await?;
            session.write_file(request).await?;
            Reply::Unit
        }
        Request::WriteFile { request, .. } => {
            session
                .write_file_stream(request, body_stream(op, body))
                .await?;
            Reply::Unit
        }
        Request::StageUpload => {
            let (stage, _) = stage()?;
            let (stage_id, dir) = stage.create(op)?;
            Reply::Staged {
                stage: stage_id,
                path: dir.join(STAGED_FILE),
                size: 0,
            }
        }
        Request::CommitUpload {
            request,
            stage: stage_id,
        } => {
            let (stage, local) = stage()?;
            let written = match stage.file(op, &stage_id) {
                Ok(file) => local.install_file(request, file).await,
                Err(e) => Err(e),
            };
            stage.remove(&stage_id);
            written?;
            Reply::Unit
        }
        Request::StageDownload { request, min_bytes } => {
            let (stage, _) = stage()?;
            let file = session.read_file_stream(request.clone()).await?;
            // The bounds of a whole-buffer read, checked before a byte moves.
            let window = runner_api::read_window(op, &request, file.size)?;
            if window.len < min_bytes {
                let head = Reply::File {
                    path: file.path,
                    size: file.size,
                };
                return Ok(Response::Bytes(head, file.bytes));
            }
            let (stage_id, path, size) = stage.fill(op, file.bytes).await?;
            Reply::Staged {
                stage: stage_id,
                path,
                size,
            }
        }
        Request::DropStage { stage: stage_id } => {
            if let Some(stage) = &shared.stage {
                stage.remove(&stage_id);
            }
            Reply::Unit
        }
        Request::ProtectEntries { entries } => {
            local()?.protect_entries(entries).await?;
            Reply::Unit
        }
        Request::ListDir { path } => Reply::Stats(session.list_dir(&path).await?),
        Request::Stat { path } => Reply::Stat(session.stat(&path).await?),
        Request::Remove { path, recursive } => {
            session.remove(&path, recursive).await?;
            Reply::Unit
        }
        Request::MakeDir { path } => {
            session.make_dir(&path).await?;
            Reply::Unit
        }
        Request::Rename { from, to } => {
            session.rename(&from, &to).await?;
            Reply::Unit
        }
        Request::Canonicalize { path } => Reply::Path(session.canonicalize(&path).await?),
        Request::UploadArchive {
            target,
            whole: true,
        } => {
            let archive = body_bytes(op, body).await?;
            session.upload_archive(&target, archive).await?;
            Reply::Unit
        }
        Request::UploadArchive { target, .. } => {
            session
                .upload_archive_stream(&target, body_stream(op, body))
                .await?;
            Reply::Unit
        }
        Request::DownloadArchive { path, whole: true } => {
            let archive = session.download_archive(&path).await?;
            return Ok(Response::Bytes(Reply::Unit, bytes_stream(archive)));
        }
        Request::DownloadArchive { path, .. } => {
            let archive = session.download_archive_stream(&path).await?;
            return Ok(Response::Bytes(Reply::Unit, archive));
        }
        Request::ExposePort { request } => Reply::Port(session.expose_port(request).await?),
        Request::ListListeningPorts => Reply::Ports(session.list_listening_ports().await?),
        Request::OpenTunnel { port } => {
            let stream = tunnel::connect(port).await?;
            let Some(body) = body else {
                return Err(RunnerError::invalid_request(format!(
                    "{op} {port}: the tunnel has no client side"
                )));
            };
            return Ok(Response::Tunnel(stream, body));
        }
        Request::Snapshot => Reply::Snapshot(session.snapshot().await?),
        Request::SyncMounts => {
            session.sync_mounts().await?;
            Reply::Unit
        }
        Request::ExportArtifact { request } => {
            Reply::Artifact(session.export_artifact(request).await?)
        }
        Request::AcquireLease { request } => {
            Reply::Lease(session.acquire_workspace_execution_lease(request).await?)
        }
        Request::RenewLease { lease, ttl_ms } => Reply::Lease(
            session
                .renew_workspace_execution_lease(&lease, ttl_ms)
                .await?,
        ),
        Request::ReleaseLease { lease } => {
            session.release_workspace_execution_lease(&lease).await?;
            Reply::Unit
        }
    };
    Ok(Response::Reply(reply))
}

async fn send_reply(
    outbound: &Outbound,
    id: u64,
    operation: &str,
    reply: &Reply,
) -> Result<(), Lost> {
    match encode(operation, reply) {
        Ok(payload) => outbound.message(FrameKind::Reply, id, payload).await,
        Err(e) => send_error(outbound, id, &e).await,
    }
}

async fn send_response(
    outbound: &Outbound,
    id: u64,
    credit: &Credit,
    operation: &str,
    response: Response,
) -> Result<(), Lost> {
    match response {
        Response::Reply(reply) => send_reply(outbound, id, operation, &reply).await,
        Response::Bytes(head, bytes) => {
            send_reply(outbound, id, operation, &head).await?;
            send_bytes(outbound, id, credit, bytes).await
        }
        Response::Frames(mut frames) => {
            send_reply(outbound, id, operation, &Reply::Unit).await?;
            while let Some(frame) = frames.next().await {
                match frame {
                    Ok((kind, payload)) => {
                        credit.spend(payload.len()).await?;
                        outbound.message(kind, id, payload).await?;
                    }
                    Err(e) => return send_error(outbound, id, &e).await,
                }
            }
            outbound
                .send(Frame::new(FrameKind::End, id, Bytes::new()))
                .await
        }
        Response::Tunnel(stream, mut body) => {
            send_reply(outbound, id, operation, &Reply::Unit).await?;
            crate::tunnel::relay(Side::Agent, outbound, id, credit, stream, &mut body).await;
            Ok(())
        }
        Response::Output(output) => {
            let (head, chunks) = OutputHead::split(output);
            send_reply(outbound, id, operation, &Reply::Output(head)).await?;
            for chunk in chunks {
                let payload = encode_output(chunk.seq, chunk.stream, &chunk.bytes);
                credit.spend(payload.len()).await?;
                outbound.message(FrameKind::Output, id, payload).await?;
            }
            outbound
                .send(Frame::new(FrameKind::End, id, Bytes::new()))
                .await
        }
    }
}
