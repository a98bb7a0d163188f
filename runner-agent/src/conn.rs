//! What both ends of a connection share: the writer task and its queues, the
//! frame reader, and the credit of each stream direction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use runner_api::{RunnerByteStream, RunnerError};

use crate::protocol::{
    CREDIT_RETURN_BYTES, DATA_CHUNK_BYTES, Frame, FrameCodec, FrameKind, MAX_MESSAGE_BYTES,
    ProtocolError, ReadError, Reassembly, STREAM_WINDOW_BYTES, WireError, decode, encode,
};

/// Frames the writer's bounded queue holds: with [`DATA_CHUNK_BYTES`](crate::protocol::DATA_CHUNK_BYTES)
/// frames a few MiB at most, and every stream's share is also bounded by its credit.
const QUEUE_FRAMES: usize = 16;

/// Frames the writer sends before it flushes.
const BATCH_FRAMES: usize = 32;

/// A frame for the writer, and who to tell once it was written and flushed.
struct Outgoing {
    frame: Frame,
    written: Option<oneshot::Sender<()>>,
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Self {
            frame,
            written: None,
        }
    }
}

/// The connection is gone: nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost;

/// The sending half of a connection: one writer task owns the transport and
/// drains a bounded queue of frames, and before it an unbounded queue of small
/// control frames (credit, cancel, a fatal error) that never waits, so a
/// reader returning credit can never block on a full queue.
#[derive(Clone)]
pub(crate) struct Outbound {
    frames: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Outgoing>,
    stop: CancellationToken,
    /// Cancelled when the writer task has ended (the transport is closed).
    finished: CancellationToken,
}

impl Outbound {
    /// Starts the writer task on `io`.
    pub(crate) fn spawn<W>(io: W) -> Self
    where
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (frames, frames_rx) = mpsc::channel(QUEUE_FRAMES);
        let (control, control_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let finished = CancellationToken::new();
        tokio::spawn(write_loop(
            FramedWrite::new(io, FrameCodec::default()),
            frames_rx,
            control_rx,
            stop.clone(),
            finished.clone(),
        ));
        Self {
            frames,
            control,
            stop,
            finished,
        }
    }

    /// Queues one frame, waiting while the queue is full.
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), Lost> {
        self.enqueue(frame.into()).await
    }

    async fn enqueue(&self, outgoing: Outgoing) -> Result<(), Lost> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => Err(Lost),
            sent = self.frames.send(outgoing) => sent.map_err(|_| Lost),
        }
    }

    /// Sends a message and waits until the transport took all of it: `Lost`
    /// means the peer cannot have read it whole (a request lost so is safe
    /// to send again on a new connection).
    pub(crate) async fn message_written(
        &self,
        kind: FrameKind,
        id: u64,
        payload: Bytes,
    ) -> Result<(), Lost> {
        let mut frames = Frame::fragments(kind, id, payload);
        let last = frames
            .pop()
            .unwrap_or_else(|| Frame::new(kind, id, Bytes::new()));
        for frame in frames {
            self.send(frame).await?;
        }
        let (written, done) = oneshot::channel();
        self.enqueue(Outgoing {
            frame: last,
            written: Some(written),
        })
        .await?;
        done.await.map_err(|_| Lost)
    }

    /// Queues a message, split into fragments when it is large.
    pub(crate) async fn message(
        &self,
        kind: FrameKind,
        id: u64,
        payload: Bytes,
    ) -> Result<(), Lost> {
        for frame in Frame::fragments(kind, id, payload) {
            self.send(frame).await?;
        }
        Ok(())
    }

    /// Queues a control frame ahead of the others, without waiting. A lost
    /// connection drops it.
    pub(crate) fn control(&self, frame: Frame) {
        let _ = self.control.send(frame.into());
    }

    /// Sends what is queued, then closes the transport; later sends fail.
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }

    /// Whether the connection can no longer send.
    pub(crate) fn is_closed(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the connection can no longer send.
    pub(crate) async fn closed(&self) {
        self.stop.cancelled().await
    }

    /// Resolves once the writer has sent what it could and closed the transport.
    pub(crate) async fn finished(&self) {
        self.finished.cancelled().await
    }
}

async fn write_loop<W>(
    mut sink: FramedWrite<W, FrameCodec>,
    mut frames: mpsc::Receiver<Outgoing>,
    mut control: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
    finished: CancellationToken,
) where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let result: std::io::Result<()> = async {
        let mut written = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                outgoing = control.recv() => outgoing,
                outgoing = frames.recv() => outgoing,
                () = stop.cancelled() => None,
            };
            if first.is_none() {
                break;
            }
            let mut next = first;
            let mut batch = 0;
            while let Some(outgoing) = next.take() {
                written.extend(outgoing.written);
                sink.feed(outgoing.frame).await?;
                batch += 1;
                if batch < BATCH_FRAMES {
                    next = control.try_recv().or_else(|_| frames.try_recv()).ok();
                }
            }
            sink.flush().await?;
            for done in written.drain(..) {
                let _ = done.send(());
            }
        }
        // Closing: what was queued still goes out (a final error frame).
        while let Ok(outgoing) = control.try_recv().or_else(|_| frames.try_recv()) {
            sink.feed(outgoing.frame).await?;
        }
        sink.close().await
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "agent connection: writing failed");
    }
    stop.cancel();
    finished.cancel();
}

/// The receiving half of a connection: whole messages, fragments joined.
pub(crate) struct Inbound<R> {
    frames: FramedRead<R, FrameCodec>,
    assembly: Reassembly,
}

impl<R: AsyncRead + Unpin> Inbound<R> {
    /// Reads frames from `io`.
    pub(crate) fn new(io: R) -> Self {
        Self {
            frames: FramedRead::new(io, FrameCodec::default()),
            assembly: Reassembly::default(),
        }
    }

    /// The next message; `None` when the peer closed the connection.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let Some(frame) = self.frames.next().await.transpose()? else {
                return Ok(None);
            };
            if let Some(message) = self.assembly.push(frame).map_err(ReadError::Protocol)? {
                return Ok(Some(message));
            }
        }
    }
}

/// The credit a sender has for one stream direction: it starts at
/// [`STREAM_WINDOW_BYTES`]; a frame may be sent while it is positive and
/// spends its payload length (so it can go negative by one frame); the
/// receiver's `Credit` frames add to it.
pub(crate) struct Credit {
    state: Mutex<CreditState>,
    changed: Notify,
}

struct CreditState {
    available: i64,
    closed: bool,
}

impl Credit {
    /// A full window of [`STREAM_WINDOW_BYTES`].
    pub(crate) fn new() -> Arc<Self> {
        Self::with_window(STREAM_WINDOW_BYTES)
    }

    /// A full window of `window` bytes.
    pub(crate) fn with_window(window: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(CreditState {
                available: i64::from(window),
                closed: false,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CreditState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for positive credit, then spends `bytes`.
    pub(crate) async fn spend(&self, bytes: usize) -> Result<(), Lost> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Lost);
                }
                if state.available > 0 {
                    state.available -= i64::try_from(bytes).unwrap_or(i64::MAX);
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    /// Adds the receiver's grant.
    pub(crate) fn grant(&self, bytes: u32) {
        self.lock().available += i64::from(bytes);
        self.changed.notify_waiters();
    }

    /// Fails every wait: the stream or its connection ended.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }
}

/// The most bytes a stream's receiver may hold before the sender has broken
/// the credit rule: a window plus one message.
const MAX_BUFFERED: usize = STREAM_WINDOW_BYTES as usize + MAX_MESSAGE_BYTES;

/// Where the reader puts the messages of one request id; the matching
/// [`Mailbox`] takes them out and returns credit as it does.
pub(crate) struct Slot {
    tx: mpsc::UnboundedSender<Frame>,
    buffered: Arc<AtomicUsize>,
}

impl Slot {
    /// Delivers a message.
    ///
    /// Errors: the peer sent more than its credit allowed.
    pub(crate) fn deliver(&self, message: Frame) -> Result<(), ProtocolError> {
        if message.kind.spends_credit() {
            let held = self
                .buffered
                .fetch_add(message.payload.len(), Ordering::SeqCst)
                + message.payload.len();
            if held > MAX_BUFFERED {
                return Err(ProtocolError(format!(
                    "the peer sent {held} bytes on stream {} past its credit",
                    message.id
                )));
            }
        }
        let _ = self.tx.send(message);
        Ok(())
    }
}

/// The messages of one request id, in order, returning credit for the bytes
/// taken out. `None` from [`recv`](Self::recv) means the slot was dropped:
/// the connection was lost (or, on the agent, the request was cancelled).
pub(crate) struct Mailbox {
    rx: mpsc::UnboundedReceiver<Frame>,
    buffered: Arc<AtomicUsize>,
    outbound: Outbound,
    id: u64,
    unreturned: u32,
    /// Credit goes back once this many bytes were taken out.
    return_at: u32,
    /// The last message of the exchange has arrived.
    finished: bool,
    /// Runs on drop with `finished`: the client forgets the id there and
    /// cancels an unfinished request.
    on_drop: Option<Box<dyn FnOnce(bool) + Send + Sync>>,
}

/// A slot and its mailbox for request `id`, whose sender has a window of
/// `window` bytes.
pub(crate) fn mailbox(outbound: Outbound, id: u64, window: u32) -> (Slot, Mailbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let buffered = Arc::new(AtomicUsize::new(0));
    let slot = Slot {
        tx,
        buffered: buffered.clone(),
    };
    let mailbox = Mailbox {
        rx,
        buffered,
        outbound,
        id,
        unreturned: 0,
        return_at: (window / 4).clamp(1, CREDIT_RETURN_BYTES),
        finished: false,
        on_drop: None,
    };
    (slot, mailbox)
}

impl Mailbox {
    /// The next message, credit returned for its bytes.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        let message = self.rx.recv().await?;
        if message.kind.spends_credit() {
            let len = message.payload.len();
            self.buffered.fetch_sub(len, Ordering::SeqCst);
            self.unreturned = self
                .unreturned
                .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
            if self.unreturned >= self.return_at {
                self.outbound
                    .control(Frame::credit(self.id, std::mem::take(&mut self.unreturned)));
            }
        }
        Some(message)
    }

    /// The request id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Marks the exchange complete: its last message arrived.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// Runs `hook` when the mailbox is dropped, telling it whether the
    /// exchange finished.
    pub(crate) fn on_drop(&mut self, hook: impl FnOnce(bool) + Send + Sync + 'static) {
        self.on_drop = Some(Box::new(hook));
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if let Some(hook) = self.on_drop.take() {
            hook(self.finished);
        }
    }
}

/// Sends `stream` as the id's byte stream: `Data` frames of at most
/// [`DATA_CHUNK_BYTES`], each after its credit, then `End`; an `Err` item of
/// the stream is sent as an `Error` frame and ends it.
pub(crate) async fn send_bytes(
    outbound: &Outbound,
    id: u64,
    credit: &Credit,
    mut stream: RunnerByteStream,
) -> Result<(), Lost> {
    while let Some(item) = runner_api::next_chunk(&mut stream).await {
        let mut chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => return send_error(outbound, id, &e).await,
        };
        while !chunk.is_empty() {
            let piece = chunk.split_to(chunk.len().min(DATA_CHUNK_BYTES));
            credit.spend(piece.len()).await?;
            outbound
                .send(Frame::new(FrameKind::Data, id, piece))
                .await?;
        }
    }
    outbound
        .send(Frame::new(FrameKind::End, id, Bytes::new()))
        .await
}

/// Sends `error` as the id's `Error` message.
pub(crate) async fn send_error(
    outbound: &Outbound,
    id: u64,
    error: &RunnerError,
) -> Result<(), Lost> {
    let payload = encode("error", &WireError::from(error)).unwrap_or_default();
    outbound.message(FrameKind::Error, id, payload).await
}

/// The id's byte stream as the receiver sees it: `Data` frames until `End`;
/// an `Error` frame ends it with that error; a mailbox that closes before
/// (connection lost, request cancelled) ends it with `lost()`.
pub(crate) fn receive_bytes(
    mailbox: Mailbox,
    lost: impl Fn() -> RunnerError + Send + Sync + 'static,
) -> RunnerByteStream {
    Box::pin(futures_util::stream::unfold(
        Some((mailbox, lost)),
        |state| async move {
            let (mut mailbox, lost) = state?;
            let Some(message) = mailbox.recv().await else {
                return Some((Err(lost()), None));
            };
            match message.kind {
                FrameKind::Data => Some((Ok(message.payload), Some((mailbox, lost)))),
                FrameKind::End => {
                    mailbox.finish();
                    None
                }
                FrameKind::Error => {
                    mailbox.finish();
                    Some((Err(wire_error(&message.payload)), None))
                }
                other => Some((
                    Err(ProtocolError(format!("a {other:?} frame in a byte stream")).into()),
                    None,
                )),
            }
        },
    ))
}

/// The error an `Error` frame carries.
pub(crate) fn wire_error(payload: &[u8]) -> RunnerError {
    match decode::<WireError>("error", payload) {
        Ok(error) => error.into(),
        Err(e) => e.into(),
    }
}
