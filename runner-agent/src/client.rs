//! The client side: a [`RemoteRunnerSession`] over connections to an agent.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use runner_api::{
    RemoteRunnerSession, RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerByteStream,
    RunnerCapabilities, RunnerCommandId, RunnerCommandOutput, RunnerCommandRequest,
    RunnerCommandResult, RunnerError, RunnerErrorKind, RunnerEventStream, RunnerExecutionLease,
    RunnerFileReadRequest, RunnerFileReadResult, RunnerFileStat, RunnerFileStream,
    RunnerFileWriteRequest, RunnerLeaseRequest, RunnerListeningPort, RunnerManifestEntry,
    RunnerOutputStream, RunnerPortRequest, RunnerPortResult, RunnerProcessEvent, RunnerProcessInfo,
    RunnerResult, RunnerSessionState, RunnerSignal, RunnerSnapshotRef, RunnerWatchRequest,
    RunnerWatchStream, bytes_stream, collect_stream, prepend,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::{
    Credit, Inbound, Lost, Mailbox, Outbound, Slot, mailbox, receive_bytes, send_bytes, wire_error,
};
use crate::protocol::{
    AgentVersion, CONNECTION_ID, Frame, FrameKind, Hello, HelloReply, HelloReplyHead,
    ProtocolError, ReadError, Reply, Request, check_protocol, decode, decode_credit, decode_output,
    encode,
};
use crate::tunnel::{self, Side};

/// How long a connector may take to connect, and the agent to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to an agent: a docker exec's stdio, an ssh channel, a
/// WebSocket, a child process's pipes.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentIo for T {}

/// A connection to an agent, as a connector returns it.
pub type AgentConnection = Box<dyn AgentIo>;

/// The future an [`AgentConnector`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<AgentConnection>> + Send>>;

/// Makes a new connection to the agent: called for the first connection and
/// again whenever the last one was lost. Any closure
/// `Fn() -> impl Future<Output = io::Result<AgentConnection>>` is one.
pub trait AgentConnector: Send + Sync + 'static {
    /// Opens a new byte stream to the agent.
    fn connect(&self) -> ConnectFuture;
}

impl<F, Fut> AgentConnector for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<AgentConnection>> + Send + 'static,
{
    fn connect(&self) -> ConnectFuture {
        Box::pin(self())
    }
}

/// Connections to one agent: made through the caller's connector, one at a
/// time, again after a loss. Many requests share a connection, answered in
/// any order.
///
/// A call that finds the connection lost reconnects (one retry per call,
/// then `Unavailable` naming the operation); a request in flight when the
/// connection drops fails with `Unavailable`, and streams in flight end with
/// an `Unavailable` item. Nothing is lost in the agent: a resumed
/// `command_output` or `stream_command` from the last sequence number seen
/// gets everything it retained.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    connector: Box<dyn AgentConnector>,
    current: tokio::sync::Mutex<Option<Arc<Connection>>>,
    hello: Mutex<HelloReply>,
    /// Set by `close`, or when the agent says its session was closed.
    closed: Arc<AtomicBool>,
    /// The caller-side listeners of exposed ports.
    forwards: Forwards,
}

/// The ports exposed through this client: one caller-side listener per
/// sandbox port, each relaying its connections through tunnels.
#[derive(Default)]
struct Forwards {
    /// Sandbox port → the caller-side URL that reaches it.
    urls: Mutex<HashMap<u16, String>>,
    /// Cancelled when the session is closed or the last handle dropped:
    /// every listener and relay stops.
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for ClientInner {
    /// The last handle is gone: its listeners stop and its connection closes
    /// (the agent and its session go on, as after [`AgentClient::disconnect`]).
    fn drop(&mut self) {
        self.forwards.stop.cancel();
        if let Some(connection) = self.current.get_mut().take() {
            connection.outbound.close();
        }
    }
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("agent", &self.agent())
            .field("session_id", &self.hello().session.state.session_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(message: String) -> RunnerError {
    RunnerError::new(RunnerErrorKind::Unavailable, message)
}

impl AgentClient {
    /// Connects through `connector` and shakes hands with the agent.
    ///
    /// Errors: `Unavailable` (the connector failed, the agent closed the
    /// stream), `Unsupported` naming both versions when the agent speaks
    /// another protocol version, `SessionClosed` when the agent's session
    /// was closed, `Timeout` when the agent does not answer.
    pub async fn connect(connector: impl AgentConnector) -> RunnerResult<Self> {
        let connector: Box<dyn AgentConnector> = Box::new(connector);
        let closed = Arc::new(AtomicBool::new(false));
        let (connection, hello) =
            dial(connector.as_ref(), "agent handshake", closed.clone()).await?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                connector,
                current: tokio::sync::Mutex::new(Some(connection)),
                hello: Mutex::new(hello),
                closed,
                forwards: Forwards::default(),
            }),
        })
    }

    /// The agent's versions and binary hash, from the last handshake.
    pub fn agent(&self) -> AgentVersion {
        self.hello().agent
    }

    /// The session over this client.
    pub fn session(&self) -> AgentSession {
        AgentSession {
            client: self.clone(),
        }
    }

    /// Drops the current connection; the agent, its session and its
    /// commands go on, and the next call connects again.
    pub async fn disconnect(&self) {
        if let Some(connection) = self.inner.current.lock().await.take() {
            connection.outbound.close();
        }
    }

    fn hello(&self) -> HelloReply {
        lock(&self.inner.hello).clone()
    }

    fn set_state(&self, state: &RunnerSessionState) {
        lock(&self.inner.hello).session.state = state.clone();
    }

    /// The live connection, connecting first when there is none.
    async fn connection(&self, operation: &str) -> RunnerResult<Arc<Connection>> {
        let mut current = self.inner.current.lock().await;
        if let Some(connection) = current.as_ref()
            && !connection.outbound.is_closed()
        {
            return Ok(connection.clone());
        }
        *current = None;
        let (connection, hello) = dial(
            self.inner.connector.as_ref(),
            operation,
            self.inner.closed.clone(),
        )
        .await?;
        let expected = self.hello().session.state.session_id;
        let found = &hello.session.state.session_id;
        if *found != expected {
            connection.outbound.close();
            return Err(RunnerError::not_found(format!(
                "{operation}: session {expected} is gone: the agent now serves session {found}"
            )));
        }
        *lock(&self.inner.hello) = hello;
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Sends `request`, reconnecting once when the connection is lost before
    /// the request went out.
    async fn open(&self, request: &Request) -> RunnerResult<Exchange> {
        let operation = request.operation();
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(RunnerError::session_closed(
                operation,
                &self.hello().session.state.session_id,
            ));
        }
        let payload = encode(operation, request)?;
        let mut last = None;
        for _ in 0..2 {
            // The agent said its session was closed: no new connection finds it.
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(last.unwrap_or_else(|| {
                    RunnerError::session_closed(operation, &self.hello().session.state.session_id)
                }));
            }
            let connection = match self.connection(operation).await {
                Ok(connection) => connection,
                Err(e) if e.kind() == RunnerErrorKind::Unavailable => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match connection
                .start(
                    operation,
                    payload.clone(),
                    request.has_body(),
                    request.stream_window(),
                )
                .await
            {
                Ok(exchange) => return Ok(exchange),
                Err(Lost) => {
                    let lost = connection.lost(operation);
                    if lost.kind() == RunnerErrorKind::SessionClosed {
                        return Err(lost);
                    }
                    last = Some(lost);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| unavailable(format!("{operation}: the agent cannot be reached"))))
    }

    /// One request, one reply.
    async fn call(&self, request: Request) -> RunnerResult<Reply> {
        let mut exchange = self.open(&request).await?;
        let reply = exchange.reply().await;
        exchange.mailbox.finish();
        reply
    }

    /// One request with `body` as its byte stream, one reply. The reply may
    /// come before the body is sent (an early refusal); the rest is dropped.
    async fn call_with_body(
        &self,
        request: Request,
        body: RunnerByteStream,
    ) -> RunnerResult<Reply> {
        let mut exchange = self.open(&request).await?;
        let outbound = exchange.connection.outbound.clone();
        let credit = exchange.credit.clone().unwrap_or_else(Credit::new);
        let id = exchange.mailbox.id();
        let pump = send_bytes(&outbound, id, &credit, body);
        tokio::pin!(pump);
        let mut pumping = true;
        loop {
            tokio::select! {
                _ = &mut pump, if pumping => pumping = false,
                reply = exchange.reply() => {
                    exchange.mailbox.finish();
                    return reply;
                }
            }
        }
    }

    /// A request answered by a reply and then a stream: the reply, and the
    /// exchange to read the stream from.
    async fn call_stream(&self, request: Request) -> RunnerResult<(Reply, Exchange)> {
        let mut exchange = self.open(&request).await?;
        let reply = exchange.reply().await?;
        Ok((reply, exchange))
    }
}

impl AgentClient {
    /// The caller-side URL of sandbox `port`: a listener on `127.0.0.1` bound
    /// the first time (later calls return the same URL) whose accepted
    /// connections are relayed one tunnel each over the current connection.
    ///
    /// Errors: `Provider` naming the port when no local port can be bound.
    fn forward(&self, port: u16) -> RunnerResult<String> {
        let mut urls = lock(&self.inner.forwards.urls);
        if let Some(url) = urls.get(&port) {
            return Ok(url.clone());
        }
        let bind = |e| RunnerError::from_io("expose_port: listen on the caller's side", port, e);
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let url = format!("http://{local}");
        tokio::spawn(accept_tunnels(
            Arc::downgrade(&self.inner),
            listener,
            port,
            self.inner.forwards.stop.clone(),
        ));
        urls.insert(port, url.clone());
        Ok(url)
    }

    /// Opens a tunnel to sandbox `port`: the exchange once the request is
    /// out. The caller's bytes follow at once, without waiting for the
    /// agent's reply (it holds them under the stream's credit until it is
    /// connected), so a request costs no extra round trip; the reply comes
    /// first on the exchange ([`tunnel::relay`] takes it), or an error that
    /// closes the caller's connection.
    async fn open_tunnel(&self, port: u16) -> RunnerResult<Exchange> {
        self.open(&Request::OpenTunnel { port }).await
    }
}

/// Accepts connections for sandbox `port` until `stop`, relaying each
/// through its own tunnel. Holds the client weakly: its last handle going
/// stops the listener.
async fn accept_tunnels(
    client: Weak<ClientInner>,
    listener: tokio::net::TcpListener,
    port: u16,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept.
                tracing::debug!(port, error = %e, "expose_port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(inner) = client.upgrade() else {
            return;
        };
        let client = AgentClient { inner };
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let opened = client.open_tunnel(port).await;
            drop(client);
            match opened {
                Ok(exchange) => {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = exchange.relay(stream) => {}
                    }
                }
                // The caller's connection closes: nothing reached the port.
                Err(e) => {
                    tracing::debug!(port, error = %e, "expose_port: no tunnel");
                    if e.kind() == RunnerErrorKind::SessionClosed {
                        stop.cancel();
                    }
                }
            }
        });
    }
}

/// Opens a connection and shakes hands.
async fn dial(
    connector: &dyn AgentConnector,
    operation: &str,
    session_closed: Arc<AtomicBool>,
) -> RunnerResult<(Arc<Connection>, HelloReply)> {
    let io = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect())
        .await
        .map_err(|_| {
            RunnerError::new(
                RunnerErrorKind::Timeout,
                format!("{operation}: connecting to the agent did not finish within 30 s"),
            )
        })?
        .map_err(|e| unavailable(format!("{operation}: connecting to the agent: {e}")))?;
    let (reader, writer) = tokio::io::split(io);
    let outbound = Outbound::spawn(writer);
    let mut inbound = Inbound::new(reader);
    let handshake = async {
        let hello = encode("agent handshake", &Hello::current())?;
        outbound
            .message(FrameKind::Hello, CONNECTION_ID, hello)
            .await
            .map_err(|Lost| unavailable(format!("{operation}: the agent closed the connection")))?;
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.next())
            .await
            .map_err(|_| {
                RunnerError::new(
                    RunnerErrorKind::Timeout,
                    format!("{operation}: the agent did not answer the handshake within 30 s"),
                )
            })?
            .map_err(|e| read_failure(operation, e))?;
        accept_hello(operation, first)
    };
    let hello = match handshake.await {
        Ok(hello) => hello,
        Err(e) => {
            outbound.close();
            return Err(e);
        }
    };
    let connection = Arc::new(Connection {
        outbound,
        pending: Mutex::default(),
        next_id: AtomicU64::new(1),
        failure: Mutex::default(),
        session_closed,
    });
    tokio::spawn(read_loop(connection.clone(), inbound));
    Ok((connection, hello))
}

fn read_failure(operation: &str, error: ReadError) -> RunnerError {
    match error {
        ReadError::Protocol(e) => RunnerError::from(e).context(operation),
        ReadError::Io(e) => unavailable(format!("{operation}: reading from the agent: {e}")),
    }
}

/// The agent's answer to our hello: its reply, or the error it refused with.
fn accept_hello(operation: &str, first: Option<Frame>) -> RunnerResult<HelloReply> {
    let Some(first) = first else {
        return Err(unavailable(format!(
            "{operation}: the agent closed the connection during the handshake"
        )));
    };
    match first.kind {
        FrameKind::Error if first.id == CONNECTION_ID => Err(wire_error(&first.payload)),
        FrameKind::Hello if first.id == CONNECTION_ID => {
            let head: HelloReplyHead = decode("hello reply", &first.payload)?;
            check_protocol(head.agent.protocol, &head.agent.agent_version)?;
            Ok(decode("hello reply", &first.payload)?)
        }
        kind => Err(ProtocolError(format!(
            "the agent answered the hello with a {kind:?} frame on id {}",
            first.id
        ))
        .into()),
    }
}

/// One connection: the writer, and the requests waiting for answers.
struct Connection {
    outbound: Outbound,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Why the connection ended, when the agent said or broke the protocol.
    failure: Mutex<Option<RunnerError>>,
    /// The client's flag, set when the agent ends the connection because
    /// its session was closed.
    session_closed: Arc<AtomicBool>,
}

struct Pending {
    slot: Slot,
    /// The credit of the request's body, when it has one.
    credit: Option<Arc<Credit>>,
}

impl Connection {
    /// Registers a new request and sends it.
    async fn start(
        self: &Arc<Self>,
        operation: &'static str,
        payload: Bytes,
        has_body: bool,
        window: u32,
    ) -> Result<Exchange, Lost> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (slot, mut mailbox) = mailbox(self.outbound.clone(), id, window);
        let credit = has_body.then(Credit::new);
        lock(&self.pending).insert(
            id,
            Pending {
                slot,
                credit: credit.clone(),
            },
        );
        let weak: Weak<Self> = Arc::downgrade(self);
        mailbox.on_drop(move |finished| {
            if let Some(connection) = weak.upgrade() {
                lock(&connection.pending).remove(&id);
                if !finished {
                    connection
                        .outbound
                        .control(Frame::new(FrameKind::Cancel, id, Bytes::new()));
                }
            }
        });
        let exchange = Exchange {
            mailbox,
            credit,
            connection: self.clone(),
            operation,
        };
        if self.outbound.is_closed() {
            return Err(Lost);
        }
        self.outbound
            .message_written(FrameKind::Request, id, payload)
            .await?;
        Ok(exchange)
    }

    /// The error of a call whose connection was lost: `SessionClosed` when
    /// the agent ended it because the session was closed, else `Unavailable`.
    fn lost(&self, operation: &str) -> RunnerError {
        match lock(&self.failure).as_ref() {
            Some(failure) if failure.kind() == RunnerErrorKind::SessionClosed => RunnerError::new(
                RunnerErrorKind::SessionClosed,
                format!("{operation}: {}", failure.message()),
            ),
            Some(failure) => unavailable(format!(
                "{operation}: the connection to the agent was lost: {}",
                failure.message()
            )),
            None => unavailable(format!("{operation}: the connection to the agent was lost")),
        }
    }

    /// Hands one message from the agent to its request.
    fn route(&self, message: Frame) -> RunnerResult<()> {
        let id = message.id;
        match message.kind {
            FrameKind::Error if id == CONNECTION_ID => Err(wire_error(&message.payload)),
            FrameKind::Credit => {
                let bytes = decode_credit(&message.payload)?;
                if let Some(credit) = lock(&self.pending).get(&id).and_then(|p| p.credit.clone()) {
                    credit.grant(bytes);
                }
                Ok(())
            }
            FrameKind::Reply
            | FrameKind::Error
            | FrameKind::Data
            | FrameKind::Output
            | FrameKind::Event
            | FrameKind::End
                if id != CONNECTION_ID =>
            {
                if let Some(pending) = lock(&self.pending).get(&id) {
                    pending.slot.deliver(message)?;
                }
                Ok(())
            }
            kind => {
                Err(ProtocolError(format!("a {kind:?} frame on id {id} from the agent")).into())
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(connection: Arc<Connection>, mut inbound: Inbound<R>) {
    let failure = loop {
        tokio::select! {
            next = inbound.next() => match next {
                Ok(Some(message)) => {
                    if let Err(e) = connection.route(message) {
                        break Some(e);
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(read_failure("agent connection", e)),
            },
            () = connection.outbound.closed() => break None,
        }
    };
    if let Some(failure) = failure {
        tracing::debug!(error = %failure, "agent connection ended");
        if failure.kind() == RunnerErrorKind::SessionClosed {
            connection.session_closed.store(true, Ordering::SeqCst);
        }
        *lock(&connection.failure) = Some(failure);
    }
    connection.outbound.close();
    let pending = std::mem::take(&mut *lock(&connection.pending));
    for credit in pending.values().filter_map(|p| p.credit.as_ref()) {
        credit.close();
    }
}

/// One request in flight: its mailbox (dropping it unfinished cancels the
/// request in the agent) and, for an upload, its credit.
struct Exchange {
    mailbox: Mailbox,
    credit: Option<Arc<Credit>>,
    connection: Arc<Connection>,
    operation: &'static str,
}

impl Exchange {
    async fn next(&mut self) -> RunnerResult<Frame> {
        match self.mailbox.recv().await {
            Some(message) => Ok(message),
            None => Err(self.connection.lost(self.operation)),
        }
    }

    /// The reply, or the error the agent answered with.
    async fn reply(&mut self) -> RunnerResult<Reply> {
        let message = self.next().await?;
        match message.kind {
            FrameKind::Reply => Ok(decode("reply", &message.payload)?),
            FrameKind::Error => {
                self.mailbox.finish();
                Err(wire_error(&message.payload))
            }
            kind => Err(ProtocolError(format!(
                "{}: a {kind:?} frame before the reply",
                self.operation
            ))
            .into()),
        }
    }

    /// Relays `stream` through the exchange's tunnel until both directions
    /// ended (or either side broke it).
    async fn relay(mut self, stream: tokio::net::TcpStream) {
        let outbound = self.connection.outbound.clone();
        let credit = self.credit.clone().unwrap_or_else(Credit::new);
        let id = self.mailbox.id();
        if tunnel::relay(
            Side::Client,
            &outbound,
            id,
            &credit,
            stream,
            &mut self.mailbox,
        )
        .await
        {
            self.mailbox.finish();
        }
    }

    /// The rest of the exchange as a byte stream.
    fn into_bytes(self) -> RunnerByteStream {
        let (connection, operation) = (self.connection, self.operation);
        receive_bytes(self.mailbox, move || connection.lost(operation))
    }

    /// The rest of `stream_command` as events.
    fn into_events(self) -> RunnerEventStream {
        Box::pin(self.into_items(|message| match message.kind {
            FrameKind::Output => decode_output(message.payload).map(|chunk| match chunk.stream {
                RunnerOutputStream::Stdout => RunnerProcessEvent::Stdout {
                    seq: chunk.seq,
                    bytes: chunk.bytes,
                },
                RunnerOutputStream::Stderr => RunnerProcessEvent::Stderr {
                    seq: chunk.seq,
                    bytes: chunk.bytes,
                },
            }),
            FrameKind::Event => decode("event", &message.payload),
            kind => Err(ProtocolError(format!(
                "a {kind:?} frame in an event stream"
            ))),
        }))
    }

    /// The rest of `watch` as events.
    fn into_watch_events(self) -> RunnerWatchStream {
        Box::pin(self.into_items(|message| match message.kind {
            FrameKind::Event => decode("watch event", &message.payload),
            kind => Err(ProtocolError(format!("a {kind:?} frame in a watch"))),
        }))
    }

    /// The rest of the exchange as items, each frame other than `End` and
    /// `Error` decoded by `item`; a frame it refuses ends the stream with
    /// its error.
    fn into_items<T: Send + 'static>(
        self,
        item: fn(Frame) -> Result<T, ProtocolError>,
    ) -> impl futures_util::Stream<Item = RunnerResult<T>> + Send + 'static {
        futures_util::stream::unfold(Some(self), move |state| async move {
            let mut exchange = state?;
            let message = match exchange.next().await {
                Ok(message) => message,
                Err(e) => return Some((Err(e), None)),
            };
            match message.kind {
                FrameKind::End => {
                    exchange.mailbox.finish();
                    None
                }
                FrameKind::Error => {
                    exchange.mailbox.finish();
                    Some((Err(wire_error(&message.payload)), None))
                }
                _ => match item(message) {
                    Ok(value) => Some((Ok(value), Some(exchange))),
                    Err(e) => Some((Err(e.into()), None)),
                },
            }
        })
    }
}

/// The error for a reply of the wrong variant.
fn unexpected(operation: &str, reply: &Reply) -> RunnerError {
    ProtocolError(format!("{operation}: unexpected reply {reply:?}")).into()
}

/// Takes the variant `$pat` out of a reply, or fails naming the operation.
macro_rules! expect {
    ($reply:expr, $operation:expr, $pat:pat => $out:expr) => {
        match $reply {
            $pat => Ok($out),
            other => Err(unexpected($operation, &other)),
        }
    };
}

/// What [`AgentSession::stage_download`] answers.
#[derive(Debug)]
pub enum Download {
    /// The read was small: its bytes.
    Inline(RunnerFileReadResult),
    /// The bytes wait in a staged file.
    Staged(Staged),
}

/// A staged transfer of the agent (see [`AgentSession::stage_upload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The staged directory's id.
    pub stage: String,
    /// The staged file's path inside the sandbox.
    pub path: PathBuf,
    /// Its size in bytes (0 for an upload not yet put).
    pub size: u64,
}

/// A [`RemoteRunnerSession`] served by an agent: every method is one request
/// over the [`AgentClient`]'s connection. State, capabilities and workspace
/// root come from the handshake (state kept current by `pause`/`resume`).
#[derive(Clone, Debug)]
pub struct AgentSession {
    client: AgentClient,
}

impl AgentSession {
    /// Connects through `connector` (see [`AgentClient::connect`]).
    pub async fn connect(connector: impl AgentConnector) -> RunnerResult<Self> {
        Ok(AgentClient::connect(connector).await?.session())
    }

    /// The client the session runs over.
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// Whether the agent stages bulk transfers (`serve --stage-dir`): the
    /// `stage_*` methods work.
    pub fn stages(&self) -> bool {
        self.client.hello().session.stages
    }

    /// A bulk upload's first step: a fresh staged directory; the caller puts
    /// the file's bytes at [`Staged::path`] through the sandbox's own copy
    /// API, then calls [`commit_upload`](Self::commit_upload).
    ///
    /// Errors: `Unsupported` when the agent stages nothing, the I/O error
    /// making the directory.
    pub async fn stage_upload(&self) -> RunnerResult<Staged> {
        self.staged(Request::StageUpload).await
    }

    /// A bulk upload's second step: `write_file(request)` with the staged
    /// file's bytes as the contents (`request.contents` is ignored), checked
    /// and written by the agent as the session's user; the staged directory
    /// is removed whatever the outcome.
    ///
    /// Errors: `write_file`'s, `NotFound` for an unknown stage or a missing
    /// staged file.
    pub async fn commit_upload(
        &self,
        mut request: RunnerFileWriteRequest,
        stage: &str,
    ) -> RunnerResult<()> {
        request.contents = Vec::new();
        self.unit(Request::CommitUpload {
            request,
            stage: stage.to_string(),
        })
        .await
    }

    /// A bulk download: the agent reads `request` (every check and bound of
    /// `read_file`) into a staged file the caller fetches through the
    /// sandbox's copy API and then drops with [`drop_stage`](Self::drop_stage);
    /// a read of fewer than `min_bytes` comes back inline instead.
    ///
    /// Errors: `read_file`'s, `Unsupported` when the agent stages nothing.
    pub async fn stage_download(
        &self,
        request: RunnerFileReadRequest,
        min_bytes: u64,
    ) -> RunnerResult<Download> {
        let what = request.path.display().to_string();
        let wire = Request::StageDownload { request, min_bytes };
        let operation = wire.operation();
        let (reply, mut exchange) = self.client.call_stream(wire).await?;
        match reply {
            Reply::Staged { stage, path, size } => {
                exchange.mailbox.finish();
                Ok(Download::Staged(Staged { stage, path, size }))
            }
            reply => {
                let (path, size) =
                    expect!(reply, operation, Reply::File { path, size } => (path, size))?;
                let contents =
                    collect_stream(operation, &what, exchange.into_bytes(), u64::MAX).await?;
                Ok(Download::Inline(RunnerFileReadResult {
                    path,
                    contents,
                    size,
                }))
            }
        }
    }

    /// Removes a staged directory (an unknown one too).
    pub async fn drop_stage(&self, stage: &str) -> RunnerResult<()> {
        self.unit(Request::DropStage {
            stage: stage.to_string(),
        })
        .await
    }

    /// Makes the `writable: false` entries among `entries`, already placed
    /// in the workspace through the file API, read-only in the agent, as
    /// entries the agent copied itself are: refused by every later write of
    /// the file API, checked where the agent resolves the path.
    ///
    /// Errors: `NotFound` for a target that is not there, `Unsupported` when
    /// the agent does not serve unix-local.
    pub async fn protect_entries(&self, entries: Vec<RunnerManifestEntry>) -> RunnerResult<()> {
        self.unit(Request::ProtectEntries { entries }).await
    }

    async fn staged(&self, request: Request) -> RunnerResult<Staged> {
        let operation = request.operation();
        expect!(self.client.call(request).await?, operation,
            Reply::Staged { stage, path, size } => Staged { stage, path, size })
    }

    async fn unit(&self, request: Request) -> RunnerResult<()> {
        let operation = request.operation();
        expect!(self.client.call(request).await?, operation, Reply::Unit => ())
    }

    async fn state_call(&self, request: Request) -> RunnerResult<RunnerSessionState> {
        let operation = request.operation();
        let state = expect!(self.client.call(request).await?, operation, Reply::State(s) => s)?;
        self.client.set_state(&state);
        Ok(state)
    }

    async fn command(&self, mut request: RunnerCommandRequest, start: bool) -> RunnerResult<Reply> {
        let stdin = request.stdin.take();
        let has_stdin = stdin.is_some();
        let wire = if start {
            Request::StartCommand {
                request,
                stdin: has_stdin,
            }
        } else {
            Request::RunCommand {
                request,
                stdin: has_stdin,
            }
        };
        match stdin {
            Some(stdin) => self.client.call_with_body(wire, bytes_stream(stdin)).await,
            None => self.client.call(wire).await,
        }
    }

    async fn read(
        &self,
        request: RunnerFileReadRequest,
        whole: bool,
    ) -> RunnerResult<RunnerFileStream> {
        let wire = Request::ReadFile { request, whole };
        let operation = wire.operation();
        let (reply, exchange) = self.client.call_stream(wire).await?;
        let (path, size) = expect!(reply, operation, Reply::File { path, size } => (path, size))?;
        Ok(RunnerFileStream {
            path,
            size,
            bytes: exchange.into_bytes(),
        })
    }

    async fn write(
        &self,
        mut request: RunnerFileWriteRequest,
        body: RunnerByteStream,
        whole: bool,
    ) -> RunnerResult<()> {
        let contents = std::mem::take(&mut request.contents);
        let wire = Request::WriteFile { request, whole };
        let operation = wire.operation();
        let reply = self
            .client
            .call_with_body(wire, prepend(contents, body))
            .await?;
        expect!(reply, operation, Reply::Unit => ())
    }

    async fn download(&self, path: &Path, whole: bool) -> RunnerResult<RunnerByteStream> {
        let wire = Request::DownloadArchive {
            path: path.to_path_buf(),
            whole,
        };
        let operation = wire.operation();
        let (reply, exchange) = self.client.call_stream(wire).await?;
        expect!(reply, operation, Reply::Unit => exchange.into_bytes())
    }

    async fn upload(&self, target: &Path, body: RunnerByteStream, whole: bool) -> RunnerResult<()> {
        let wire = Request::UploadArchive {
            target: target.to_path_buf(),
            whole,
        };
        let operation = wire.operation();
        let reply = self.client.call_with_body(wire, body).await?;
        expect!(reply, operation, Reply::Unit => ())
    }
}

#[async_trait]
impl RemoteRunnerSession for AgentSession {
    fn state(&self) -> RunnerSessionState {
        self.client.hello().session.state
    }

    fn capabilities(&self) -> RunnerCapabilities {
        self.client.hello().session.capabilities
    }

    fn workspace_root(&self) -> PathBuf {
        self.client.hello().session.workspace_root
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        self.state_call(Request::Pause).await
    }

    async fn resume(&self) -> RunnerResult<RunnerSessionState> {
        self.state_call(Request::Resume).await
    }

    async fn detach(&self) -> RunnerResult<RunnerSessionState> {
        self.state_call(Request::Detach).await
    }

    /// Closes the agent's session (every process ends) and the agent exits;
    /// later calls are `SessionClosed`. Closing twice is `Ok`.
    async fn close(&self) -> RunnerResult<()> {
        if self.client.inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        match self.unit(Request::Close).await {
            Err(e) if e.kind() != RunnerErrorKind::SessionClosed => return Err(e),
            _ => {}
        }
        self.client.inner.closed.store(true, Ordering::SeqCst);
        self.client.inner.forwards.stop.cancel();
        self.client.disconnect().await;
        Ok(())
    }

    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        let reply = self.command(request, false).await?;
        expect!(reply, "run_command", Reply::CommandResult(r) => r)
    }

    async fn cancel_command(&self, command_id: &RunnerCommandId) -> RunnerResult<bool> {
        let request = Request::CancelCommand {
            command_id: command_id.clone(),
        };
        expect!(self.client.call(request).await?, "cancel_command", Reply::Bool(b) => b)
    }

    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        let reply = self.command(request, true).await?;
        expect!(reply, "start_command", Reply::Process(p) => p)
    }

    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        let reply = self.client.call(Request::ListCommands).await?;
        expect!(reply, "list_commands", Reply::Processes(p) => p)
    }

    async fn command_status(
        &self,
        command_id: &RunnerCommandId,
    ) -> RunnerResult<RunnerProcessInfo> {
        let request = Request::CommandStatus {
            command_id: command_id.clone(),
        };
        expect!(self.client.call(request).await?, "command_status", Reply::Process(p) => p)
    }

    async fn command_output(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerCommandOutput> {
        const OP: &str = "command_output";
        let request = Request::CommandOutput {
            command_id: command_id.clone(),
            after_seq,
        };
        let (reply, mut exchange) = self.client.call_stream(request).await?;
        let head = expect!(reply, OP, Reply::Output(head) => head)?;
        let mut chunks = Vec::new();
        loop {
            let message = exchange.next().await?;
            match message.kind {
                FrameKind::Output => chunks.push(decode_output(message.payload)?),
                FrameKind::End => break,
                FrameKind::Error => {
                    exchange.mailbox.finish();
                    return Err(wire_error(&message.payload));
                }
                kind => {
                    return Err(
                        ProtocolError(format!("{OP}: a {kind:?} frame among chunks")).into(),
                    );
                }
            }
        }
        exchange.mailbox.finish();
        Ok(head.join(chunks))
    }

    async fn stream_command(
        &self,
        command_id: &RunnerCommandId,
        after_seq: u64,
    ) -> RunnerResult<RunnerEventStream> {
        let request = Request::StreamCommand {
            command_id: command_id.clone(),
            after_seq,
        };
        let (reply, exchange) = self.client.call_stream(request).await?;
        expect!(reply, "stream_command", Reply::Unit => exchange.into_events())
    }

    async fn write_stdin(
        &self,
        command_id: &RunnerCommandId,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        let request = Request::WriteStdin {
            command_id: command_id.clone(),
            close,
        };
        let reply = self
            .client
            .call_with_body(request, bytes_stream(bytes))
            .await?;
        expect!(reply, "write_stdin", Reply::Unit => ())
    }

    async fn signal_command(
        &self,
        command_id: &RunnerCommandId,
        signal: RunnerSignal,
    ) -> RunnerResult<()> {
        self.unit(Request::SignalCommand {
            command_id: command_id.clone(),
            signal,
        })
        .await
    }

    async fn resize_terminal(
        &self,
        command_id: &RunnerCommandId,
        rows: u16,
        cols: u16,
    ) -> RunnerResult<()> {
        self.unit(Request::ResizeTerminal {
            command_id: command_id.clone(),
            rows,
            cols,
        })
        .await
    }

    async fn watch(&self, request: RunnerWatchRequest) -> RunnerResult<RunnerWatchStream> {
        let (reply, exchange) = self.client.call_stream(Request::Watch { request }).await?;
        expect!(reply, "watch", Reply::Unit => exchange.into_watch_events())
    }

    /// The agent's own `read_file` (a provider may make it faster for small
    /// files than its stream), its bytes in `Data` frames.
    async fn read_file(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileReadResult> {
        let what = request.path.display().to_string();
        let file = self.read(request, true).await?;
        let contents = collect_stream("read_file", &what, file.bytes, u64::MAX).await?;
        Ok(RunnerFileReadResult {
            path: file.path,
            contents,
            size: file.size,
        })
    }

    async fn read_file_stream(
        &self,
        request: RunnerFileReadRequest,
    ) -> RunnerResult<RunnerFileStream> {
        self.read(request, false).await
    }

    /// The agent's own `write_file`, the contents in `Data` frames.
    async fn write_file(&self, request: RunnerFileWriteRequest) -> RunnerResult<()> {
        self.write(request, runner_api::empty_stream(), true).await
    }

    async fn write_file_stream(
        &self,
        request: RunnerFileWriteRequest,
        body: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.write(request, body, false).await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let request = Request::ListDir {
            path: path.to_path_buf(),
        };
        expect!(self.client.call(request).await?, "list_dir", Reply::Stats(s) => s)
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        let request = Request::Stat {
            path: path.to_path_buf(),
        };
        expect!(self.client.call(request).await?, "stat", Reply::Stat(s) => s)
    }

    async fn remove(&self, path: &Path, recursive: bool) -> RunnerResult<()> {
        self.unit(Request::Remove {
            path: path.to_path_buf(),
            recursive,
        })
        .await
    }

    async fn make_dir(&self, path: &Path) -> RunnerResult<()> {
        self.unit(Request::MakeDir {
            path: path.to_path_buf(),
        })
        .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> RunnerResult<()> {
        self.unit(Request::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        })
        .await
    }

    async fn canonicalize(&self, path: &Path) -> RunnerResult<PathBuf> {
        let request = Request::Canonicalize {
            path: path.to_path_buf(),
        };
        expect!(self.client.call(request).await?, "canonicalize", Reply::Path(p) => p)
    }

    /// The agent's own `upload_archive`, the tar in `Data` frames.
    async fn upload_archive(&self, target: &Path, archive: Vec<u8>) -> RunnerResult<()> {
        self.upload(target, bytes_stream(archive), true).await
    }

    async fn upload_archive_stream(
        &self,
        target: &Path,
        archive: RunnerByteStream,
    ) -> RunnerResult<()> {
        self.upload(target, archive, false).await
    }

    /// The agent's own `download_archive`, the tar in `Data` frames.
    async fn download_archive(&self, path: &Path) -> RunnerResult<Vec<u8>> {
        let what = path.display().to_string();
        let stream = self.download(path, true).await?;
        collect_stream("download_archive", &what, stream, u64::MAX).await
    }

    async fn download_archive_stream(&self, path: &Path) -> RunnerResult<RunnerByteStream> {
        self.download(path, false).await
    }

    /// Asks the agent (which checks the port), then returns a URL on the
    /// caller's side: `http://127.0.0.1:<local>`, a listener relaying each
    /// connection through a tunnel to the port inside the sandbox. The same
    /// port exposed again gets the same URL; the listener stops when the
    /// session is closed or its last handle dropped.
    async fn expose_port(&self, request: RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
        let port = request.port;
        let request = Request::ExposePort { request };
        let reply = self.client.call(request).await?;
        let mut exposed = expect!(reply, "expose_port", Reply::Port(p) => p)?;
        exposed.url = Some(self.client.forward(port)?);
        Ok(exposed)
    }

    async fn list_listening_ports(&self) -> RunnerResult<Vec<RunnerListeningPort>> {
        let reply = self.client.call(Request::ListListeningPorts).await?;
        expect!(reply, "list_listening_ports", Reply::Ports(p) => p)
    }

    async fn snapshot(&self) -> RunnerResult<RunnerSnapshotRef> {
        let reply = self.client.call(Request::Snapshot).await?;
        expect!(reply, "snapshot", Reply::Snapshot(s) => s)
    }

    async fn sync_mounts(&self) -> RunnerResult<()> {
        self.unit(Request::SyncMounts).await
    }

    async fn export_artifact(
        &self,
        request: RunnerArtifactExportRequest,
    ) -> RunnerResult<RunnerArtifactExportResult> {
        let request = Request::ExportArtifact { request };
        expect!(self.client.call(request).await?, "export_artifact", Reply::Artifact(a) => a)
    }

    async fn acquire_workspace_execution_lease(
        &self,
        request: RunnerLeaseRequest,
    ) -> RunnerResult<RunnerExecutionLease> {
        let request = Request::AcquireLease { request };
        let reply = self.client.call(request).await?;
        expect!(reply, "acquire_workspace_execution_lease", Reply::Lease(l) => l)
    }

    async fn renew_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
        ttl_ms: u64,
    ) -> RunnerResult<RunnerExecutionLease> {
        let request = Request::RenewLease {
            lease: lease.clone(),
            ttl_ms,
        };
        let reply = self.client.call(request).await?;
        expect!(reply, "renew_workspace_execution_lease", Reply::Lease(l) => l)
    }

    async fn release_workspace_execution_lease(
        &self,
        lease: &RunnerExecutionLease,
    ) -> RunnerResult<()> {
        self.unit(Request::ReleaseLease {
            lease: lease.clone(),
        })
        .await
    }
}
