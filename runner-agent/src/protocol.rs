//! The agent protocol: frames, control messages and their encoding.
//!
//! `docs/agent-protocol.md` specifies it; this module is its one
//! implementation. A connection is a sequence of frames, each a u32 big-endian
//! length (tokio-util's [`LengthDelimitedCodec`]) followed by a kind byte, a
//! u64 big-endian request id and a payload. Control messages (the handshake,
//! requests, replies, errors, events) are MessagePack (`rmp-serde`, maps with
//! field names); bytes (file, archive and output chunks, stdin) travel raw in
//! `Data` and `Output` frames.

use std::path::PathBuf;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use runner_api::{
    RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerCapabilities,
    RunnerCommandOutput, RunnerCommandRequest, RunnerCommandResult, RunnerError, RunnerErrorKind,
    RunnerExecutionLease, RunnerExitStatus, RunnerFileReadRequest, RunnerFileStat,
    RunnerFileWriteRequest, RunnerLeaseRequest, RunnerListeningPort, RunnerOutputChunk,
    RunnerOutputStream, RunnerOutputTruncation, RunnerPortRequest, RunnerPortResult,
    RunnerProcessInfo, RunnerProcessState, RunnerResult, RunnerSessionState, RunnerSignal,
    RunnerSnapshotRef, RunnerWatchRequest,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The protocol version both sides must speak; the handshake refuses any other.
/// Version 2 added [`Request::OpenTunnel`], version 4
/// [`Request::ResizeTerminal`] and [`Request::Watch`].
pub const PROTOCOL_VERSION: u32 = 4;

/// This crate's version, sent as the client or agent version in the handshake.
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Bytes of a frame before its payload: the kind byte and the u64 request id.
pub const HEADER_BYTES: usize = 9;

/// The largest payload one frame carries: 1 MiB. Larger messages are split
/// into fragments (see [`MORE`]).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The largest frame (kind, id and payload, without the length prefix). A
/// peer announcing a bigger one is a protocol error that closes the connection.
pub const MAX_FRAME_BYTES: usize = MAX_PAYLOAD_BYTES + HEADER_BYTES;

/// The largest control message reassembled from fragments: 128 MiB (a command
/// result's head/tail views at their maximum budget, with every invalid byte
/// replaced, fit well inside).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// The most bytes of unfinished fragmented messages one connection holds.
pub const MAX_PENDING_BYTES: usize = MAX_MESSAGE_BYTES;

/// Size of the `Data` frames a sender cuts byte streams into: 256 KiB.
pub const DATA_CHUNK_BYTES: usize = 256 * 1024;

/// The credit each stream direction starts with, in payload bytes: 1 MiB.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// A receiver returns credit once it has consumed this many bytes: 256 KiB.
pub const CREDIT_RETURN_BYTES: u32 = STREAM_WINDOW_BYTES / 4;

/// The window of a `watch` stream, far smaller than [`STREAM_WINDOW_BYTES`]:
/// events a slow reader has not taken wait in the agent's bounded queue,
/// which reports an overflow, instead of in flight. The receiver returns
/// credit every quarter window, as for other streams.
pub const WATCH_WINDOW_BYTES: u32 = 64 * 1024;

/// The request id of connection-level frames: the handshake and fatal errors.
pub const CONNECTION_ID: u64 = 0;

/// Set on the kind byte of every fragment of a message but its last.
pub const MORE: u8 = 0x80;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// The handshake: [`Hello`] from the client, [`HelloReply`] from the agent.
    Hello = 1,
    /// A [`Request`] from the client.
    Request = 2,
    /// The agent's [`Reply`] to a request.
    Reply = 3,
    /// A [`WireError`]: the request failed (from the agent), an upload body
    /// failed (from the client), or, on id 0, the connection is refused.
    Error = 4,
    /// Raw bytes of the id's byte stream (file, archive, stdin).
    Data = 5,
    /// One output chunk: u64 sequence number, a stream byte, raw bytes.
    Output = 6,
    /// A [`RunnerProcessEvent`](runner_api::RunnerProcessEvent) other than output.
    Event = 7,
    /// The sender's stream for the id ended normally.
    End = 8,
    /// u32: the receiver of the id's stream may be sent this many more bytes.
    Credit = 9,
    /// The client no longer wants the id's answer: stop the work.
    Cancel = 10,
}

impl FrameKind {
    /// The kind of a kind byte (without [`MORE`]).
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Hello,
            2 => Self::Request,
            3 => Self::Reply,
            4 => Self::Error,
            5 => Self::Data,
            6 => Self::Output,
            7 => Self::Event,
            8 => Self::End,
            9 => Self::Credit,
            10 => Self::Cancel,
            _ => return None,
        })
    }

    /// Whether messages of this kind may be split into fragments.
    pub fn is_fragmentable(self) -> bool {
        matches!(
            self,
            Self::Hello | Self::Request | Self::Reply | Self::Error | Self::Output | Self::Event
        )
    }

    /// Whether frames of this kind spend the credit of their stream.
    pub fn spends_credit(self) -> bool {
        matches!(self, Self::Data | Self::Output | Self::Event)
    }
}

/// A violation of the protocol by the peer; the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "agent protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

impl From<ProtocolError> for RunnerError {
    fn from(error: ProtocolError) -> Self {
        RunnerError::invalid_request(error.to_string())
    }
}

/// One frame: a kind, whether more fragments follow, a request id, a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// More fragments of the same message follow.
    pub more: bool,
    /// The request the frame belongs to ([`CONNECTION_ID`] for the connection).
    pub id: u64,
    /// At most [`MAX_PAYLOAD_BYTES`].
    pub payload: Bytes,
}

impl Frame {
    /// A whole (last) frame.
    pub fn new(kind: FrameKind, id: u64, payload: impl Into<Bytes>) -> Self {
        Self {
            kind,
            more: false,
            id,
            payload: payload.into(),
        }
    }

    /// A `Credit` frame granting `bytes`.
    pub fn credit(id: u64, bytes: u32) -> Self {
        Self::new(FrameKind::Credit, id, bytes.to_be_bytes().to_vec())
    }

    /// The frames of one message: one frame, or fragments of at most
    /// [`MAX_PAYLOAD_BYTES`] with [`MORE`] on all but the last.
    pub fn fragments(kind: FrameKind, id: u64, mut payload: Bytes) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(payload.len() / MAX_PAYLOAD_BYTES + 1);
        while payload.len() > MAX_PAYLOAD_BYTES {
            frames.push(Frame {
                kind,
                more: true,
                id,
                payload: payload.split_to(MAX_PAYLOAD_BYTES),
            });
        }
        frames.push(Frame::new(kind, id, payload));
        frames
    }

    /// Parses a frame (without its length prefix).
    ///
    /// Errors: a frame shorter than its header, an unknown kind, [`MORE`] on
    /// a kind that is never fragmented.
    pub fn decode(mut bytes: BytesMut) -> Result<Self, ProtocolError> {
        if bytes.len() < HEADER_BYTES {
            return Err(ProtocolError(format!(
                "a frame of {} bytes is shorter than its {HEADER_BYTES}-byte header",
                bytes.len()
            )));
        }
        let byte = bytes.get_u8();
        let id = bytes.get_u64();
        let kind = FrameKind::from_byte(byte & !MORE)
            .ok_or_else(|| ProtocolError(format!("unknown frame kind {byte:#04x} (id {id})")))?;
        let more = byte & MORE != 0;
        if more && !kind.is_fragmentable() {
            return Err(ProtocolError(format!(
                "a {kind:?} frame (id {id}) cannot be fragmented"
            )));
        }
        Ok(Self {
            kind,
            more,
            id,
            payload: bytes.freeze(),
        })
    }

    /// The frame's bytes (without the length prefix).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_BYTES + self.payload.len());
        out.put_u8(self.kind as u8 | if self.more { MORE } else { 0 });
        out.put_u64(self.id);
        out.extend_from_slice(&self.payload);
        out.freeze()
    }
}

/// The framing of a connection: [`LengthDelimitedCodec`] with a u32
/// big-endian length and [`MAX_FRAME_BYTES`] as its maximum, carrying
/// [`Frame`]s.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self {
            inner: LengthDelimitedCodec::builder()
                .length_field_type::<u32>()
                .big_endian()
                .max_frame_length(MAX_FRAME_BYTES)
                .new_codec(),
        }
    }
}

/// Why a connection's frames could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The transport failed.
    Io(std::io::Error),
    /// The peer broke the protocol.
    Protocol(ProtocolError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading from the connection: {e}"),
            Self::Protocol(e) => e.fmt(f),
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(error: std::io::Error) -> Self {
        let oversize = error
            .get_ref()
            .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
        if oversize {
            Self::Protocol(ProtocolError(format!(
                "a frame is larger than the maximum of {MAX_FRAME_BYTES} bytes"
            )))
        } else {
            Self::Io(error)
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ReadError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ReadError> {
        match self.inner.decode(src)? {
            Some(bytes) => Frame::decode(bytes).map(Some).map_err(ReadError::Protocol),
            None => Ok(None),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.inner.encode(frame.encode(), dst)
    }
}

/// Joins fragments back into messages, bounding what unfinished messages hold.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: std::collections::HashMap<u64, (FrameKind, BytesMut)>,
    pending: usize,
}

impl Reassembly {
    /// Adds a frame; a complete message (or an unfragmented frame) comes back.
    ///
    /// Errors: a fragment of another kind than the message it continues, a
    /// message over [`MAX_MESSAGE_BYTES`], unfinished messages over
    /// [`MAX_PENDING_BYTES`].
    pub fn push(&mut self, frame: Frame) -> Result<Option<Frame>, ProtocolError> {
        let Frame {
            kind,
            more,
            id,
            payload,
        } = frame;
        // Data, End, Credit and Cancel frames are never fragmented and may
        // pass between the fragments of a message of the same id.
        if !kind.is_fragmentable() {
            return Ok(Some(Frame::new(kind, id, payload)));
        }
        let Some((started, mut buf)) = self.partial.remove(&id) else {
            if !more {
                return Ok(Some(Frame::new(kind, id, payload)));
            }
            self.pending += payload.len();
            self.partial
                .insert(id, (kind, BytesMut::from(&payload[..])));
            return self.check(id, kind);
        };
        self.pending -= buf.len();
        if started != kind {
            return Err(ProtocolError(format!(
                "a {kind:?} frame (id {id}) interrupts a fragmented {started:?} message"
            )));
        }
        buf.extend_from_slice(&payload);
        if more {
            self.pending += buf.len();
            self.partial.insert(id, (kind, buf));
            return self.check(id, kind);
        }
        Ok(Some(Frame::new(kind, id, buf.freeze())))
    }

    fn check(&self, id: u64, kind: FrameKind) -> Result<Option<Frame>, ProtocolError> {
        let len = self.partial.get(&id).map_or(0, |(_, buf)| buf.len());
        if len > MAX_MESSAGE_BYTES {
            return Err(ProtocolError(format!(
                "a {kind:?} message (id {id}) exceeds the maximum of {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        if self.pending > MAX_PENDING_BYTES {
            return Err(ProtocolError(format!(
                "unfinished fragmented messages exceed {MAX_PENDING_BYTES} bytes"
            )));
        }
        Ok(None)
    }
}

/// Encodes a control message as MessagePack (a map with field names).
///
/// Errors: `InvalidRequest` naming `operation` for a value MessagePack cannot
/// hold (a path that is not UTF-8).
pub fn encode<T: Serialize>(operation: &str, value: &T) -> Result<Bytes, RunnerError> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| {
            RunnerError::invalid_request(format!("{operation}: cannot encode the message: {e}"))
        })
}

/// Decodes a control message of type `T`.
pub fn decode<T: DeserializeOwned>(what: &str, payload: &[u8]) -> Result<T, ProtocolError> {
    rmp_serde::from_slice(payload).map_err(|e| ProtocolError(format!("undecodable {what}: {e}")))
}

/// The payload of a `Credit` frame.
pub fn decode_credit(payload: &[u8]) -> Result<u32, ProtocolError> {
    let bytes: [u8; 4] = payload
        .try_into()
        .map_err(|_| ProtocolError(format!("a credit of {} bytes, not 4", payload.len())))?;
    Ok(u32::from_be_bytes(bytes))
}

/// The payload of an `Output` frame: sequence number, stream, bytes.
pub fn encode_output(seq: u64, stream: RunnerOutputStream, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + bytes.len());
    out.put_u64(seq);
    out.put_u8(match stream {
        RunnerOutputStream::Stdout => 1,
        RunnerOutputStream::Stderr => 2,
    });
    out.extend_from_slice(bytes);
    out.freeze()
}

/// Parses an `Output` frame's payload.
pub fn decode_output(mut payload: Bytes) -> Result<RunnerOutputChunk, ProtocolError> {
    if payload.len() < 9 {
        return Err(ProtocolError(format!(
            "an output frame of {} bytes",
            payload.len()
        )));
    }
    let seq = payload.get_u64();
    let stream = match payload.get_u8() {
        1 => RunnerOutputStream::Stdout,
        2 => RunnerOutputStream::Stderr,
        other => return Err(ProtocolError(format!("unknown output stream {other}"))),
    };
    Ok(RunnerOutputChunk {
        seq,
        stream,
        bytes: payload.to_vec(),
    })
}

/// The client's handshake: the first frame it sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub protocol: u32,
    /// The client's crate version.
    pub client_version: String,
}

impl Hello {
    /// This build's handshake.
    pub fn current() -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            client_version: CRATE_VERSION.to_string(),
        }
    }
}

/// Who the agent is: what `runner-agent version` prints and the handshake
/// reply starts with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentVersion {
    /// The protocol version the agent speaks.
    pub protocol: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// Hex sha256 of the agent's own binary (`/proc/self/exe`), so a provider
    /// can check that the binary it delivered is the one running.
    #[serde(default)]
    pub binary_sha256: String,
    /// The operating system the agent was built for (`linux`).
    #[serde(default)]
    pub os: String,
    /// The architecture the agent was built for (`x86_64`, `aarch64`).
    #[serde(default)]
    pub arch: String,
}

/// The session an agent serves, as the handshake reply describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// What the session can do.
    pub capabilities: RunnerCapabilities,
    /// Its durable state.
    pub state: RunnerSessionState,
    /// Its workspace root inside the sandbox.
    pub workspace_root: PathBuf,
    /// Whether the agent stages bulk transfers ([`Request::StageUpload`]).
    pub stages: bool,
}

/// The agent's handshake reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloReply {
    /// The agent's versions and binary.
    pub agent: AgentVersion,
    /// The session it serves.
    pub session: SessionInfo,
}

/// The part of a [`HelloReply`] every protocol version keeps, read first so
/// that a mismatch is reported by name whatever else changed.
#[derive(Debug, Clone, Deserialize)]
pub struct HelloReplyHead {
    /// The agent's versions.
    pub agent: AgentVersionHead,
}

/// The version fields of an [`AgentVersion`].
#[derive(Debug, Clone, Deserialize)]
pub struct AgentVersionHead {
    /// The protocol version the agent speaks.
    pub protocol: u32,
    /// The agent's crate version.
    pub agent_version: String,
}

/// Refuses an agent that speaks another protocol than this build's:
/// `Unsupported`, with [`mismatch_message`]. `Ok` for this build's version.
pub fn check_protocol(agent_protocol: u32, agent_version: &str) -> RunnerResult<()> {
    if agent_protocol == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(RunnerError::new(
        RunnerErrorKind::Unsupported,
        mismatch_message(agent_protocol, agent_version, &Hello::current()),
    ))
}

impl AgentVersion {
    /// Refuses this agent when it speaks another protocol than this build's
    /// ([`check_protocol`]): what a provider checks as soon as it reads an
    /// agent's version (`runner-agent version`, the status line), before it
    /// starts or connects to it.
    pub fn check_protocol(&self) -> RunnerResult<()> {
        check_protocol(self.protocol, &self.agent_version)
    }
}

/// The message naming both sides of a protocol mismatch.
pub fn mismatch_message(agent_protocol: u32, agent_version: &str, client: &Hello) -> String {
    format!(
        "runner-agent protocol mismatch: the agent {agent_version} speaks protocol \
         {agent_protocol}, the client {} speaks protocol {}; deliver the agent built from the \
         client's release",
        client.client_version, client.protocol
    )
}

/// An error as it crosses the wire: the kind and the message, unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    /// [`RunnerErrorKind::as_str`]; a kind this side does not know is `provider`.
    pub kind: String,
    /// The error's message.
    pub message: String,
}

impl From<&RunnerError> for WireError {
    fn from(error: &RunnerError) -> Self {
        Self {
            kind: error.kind().as_str().to_string(),
            message: error.message().to_string(),
        }
    }
}

impl From<WireError> for RunnerError {
    fn from(error: WireError) -> Self {
        use serde::de::IntoDeserializer;
        let kind: Result<RunnerErrorKind, serde::de::value::Error> =
            RunnerErrorKind::deserialize(error.kind.as_str().into_deserializer());
        RunnerError::new(kind.unwrap_or(RunnerErrorKind::Provider), error.message)
    }
}

/// A request: one method of the session trait.
///
/// Requests marked *body* are followed by the client's byte stream for the
/// same id (`Data` frames, then `End`, or `Error` when the caller's body
/// failed). Replies marked *stream* are followed by the agent's frames for the
/// id, then `End` (or `Error`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// `pause` → [`Reply::State`].
    Pause,
    /// `resume` → [`Reply::State`].
    Resume,
    /// `detach` → [`Reply::State`].
    Detach,
    /// `close` → [`Reply::Unit`]; the agent then stops.
    Close,
    /// `run_command` → [`Reply::CommandResult`]. The request's `stdin` is
    /// empty on the wire; with `stdin` set it follows as the body.
    RunCommand {
        /// The command, `stdin` cleared.
        request: RunnerCommandRequest,
        /// Whether the request had `stdin` (sent as the body).
        stdin: bool,
    },
    /// `cancel_command` → [`Reply::Bool`].
    CancelCommand {
        /// The command.
        command_id: String,
    },
    /// `start_command` → [`Reply::Process`]; stdin as for `RunCommand`.
    StartCommand {
        /// The command, `stdin` cleared.
        request: RunnerCommandRequest,
        /// Whether the request had `stdin` (sent as the body).
        stdin: bool,
    },
    /// `list_commands` → [`Reply::Processes`].
    ListCommands,
    /// `command_status` → [`Reply::Process`].
    CommandStatus {
        /// The command.
        command_id: String,
    },
    /// `command_output` → [`Reply::Output`], *stream* of `Output` frames.
    CommandOutput {
        /// The command.
        command_id: String,
        /// Chunks after this sequence number.
        after_seq: u64,
    },
    /// `stream_command` → [`Reply::Unit`], *stream* of `Output` and `Event` frames.
    StreamCommand {
        /// The command.
        command_id: String,
        /// Events after this sequence number.
        after_seq: u64,
    },
    /// `write_stdin` with the bytes as *body* → [`Reply::Unit`].
    WriteStdin {
        /// The command.
        command_id: String,
        /// Close stdin after the bytes.
        close: bool,
    },
    /// `signal_command` → [`Reply::Unit`].
    SignalCommand {
        /// The command.
        command_id: String,
        /// The signal.
        signal: RunnerSignal,
    },
    /// `resize_terminal` → [`Reply::Unit`].
    ResizeTerminal {
        /// The command.
        command_id: String,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// `watch` → [`Reply::Unit`], *stream* of `Event` frames, each a
    /// [`RunnerWatchEvent`](runner_api::RunnerWatchEvent).
    Watch {
        /// The watch.
        request: RunnerWatchRequest,
    },
    /// `read_file` (`whole`) or `read_file_stream` → [`Reply::File`], *stream*
    /// of `Data` frames.
    ReadFile {
        /// The read.
        request: RunnerFileReadRequest,
        /// The caller used the whole-buffer method.
        whole: bool,
    },
    /// `write_file` (`whole`) or `write_file_stream` with the contents as
    /// *body* → [`Reply::Unit`].
    WriteFile {
        /// The write, `contents` empty.
        request: RunnerFileWriteRequest,
        /// The caller used the whole-buffer method.
        whole: bool,
    },
    /// A bulk upload's first step → [`Reply::Staged`] (`size` 0): a new
    /// directory of the agent's staging root where the provider puts the
    /// file [`STAGED_FILE`](crate::stage::STAGED_FILE) through the sandbox's
    /// own copy API. `Unsupported` when the agent stages nothing.
    StageUpload,
    /// A bulk upload's second step → [`Reply::Unit`]: `write_file` of the
    /// staged file's bytes (every check of `write_file`, as the session's
    /// user); the staged directory is removed whatever the outcome.
    CommitUpload {
        /// The write, `contents` empty.
        request: RunnerFileWriteRequest,
        /// The staged directory's id.
        stage: String,
    },
    /// A bulk download → [`Reply::Staged`]: the bytes `read_file` gives for
    /// `request` (its checks and bounds), written to a staged file the
    /// provider fetches through the sandbox's copy API, then drops with
    /// [`Request::DropStage`]. A read of fewer than `min_bytes` is answered
    /// as `read_file` is: [`Reply::File`], *stream*.
    StageDownload {
        /// The read.
        request: RunnerFileReadRequest,
        /// Reads smaller than this come back inline.
        min_bytes: u64,
    },
    /// Removes a staged directory → [`Reply::Unit`] (an unknown id too).
    DropStage {
        /// The staged directory's id.
        stage: String,
    },
    /// Makes the `writable: false` manifest entries among `entries`,
    /// already placed in the workspace through the file API, read-only as
    /// unix-local's own entries are ([`LocalSession::protect_entries`]) →
    /// [`Reply::Unit`]. `Unsupported` when the agent's session is not
    /// unix-local's.
    ///
    /// [`LocalSession::protect_entries`]: runner_local::LocalSession::protect_entries
    ProtectEntries {
        /// The manifest's entries (sources are not read).
        entries: Vec<runner_api::RunnerManifestEntry>,
    },
    /// `list_dir` → [`Reply::Stats`].
    ListDir {
        /// The directory.
        path: PathBuf,
    },
    /// `stat` → [`Reply::Stat`].
    Stat {
        /// The path.
        path: PathBuf,
    },
    /// `remove` → [`Reply::Unit`].
    Remove {
        /// The path.
        path: PathBuf,
        /// Remove a directory's contents too.
        recursive: bool,
    },
    /// `make_dir` → [`Reply::Unit`].
    MakeDir {
        /// The directory.
        path: PathBuf,
    },
    /// `rename` → [`Reply::Unit`].
    Rename {
        /// The source.
        from: PathBuf,
        /// The target.
        to: PathBuf,
    },
    /// `canonicalize` → [`Reply::Path`].
    Canonicalize {
        /// The path.
        path: PathBuf,
    },
    /// `upload_archive` (`whole`) or `upload_archive_stream` with the tar as
    /// *body* → [`Reply::Unit`].
    UploadArchive {
        /// The directory to unpack into.
        target: PathBuf,
        /// The caller used the whole-buffer method.
        whole: bool,
    },
    /// `download_archive` (`whole`) or `download_archive_stream` →
    /// [`Reply::Unit`], *stream* of `Data` frames.
    DownloadArchive {
        /// The directory or file.
        path: PathBuf,
        /// The caller used the whole-buffer method.
        whole: bool,
    },
    /// `expose_port` → [`Reply::Port`].
    ExposePort {
        /// The port.
        request: RunnerPortRequest,
    },
    /// `list_listening_ports` → [`Reply::Ports`].
    ListListeningPorts,
    /// `snapshot` → [`Reply::Snapshot`].
    Snapshot,
    /// `sync_mounts` → [`Reply::Unit`].
    SyncMounts,
    /// `export_artifact` → [`Reply::Artifact`].
    ExportArtifact {
        /// The export.
        request: RunnerArtifactExportRequest,
    },
    /// Not a session method: a TCP connection from the agent to `port` on
    /// the sandbox's loopback (`127.0.0.1`, then `[::1]` when refused),
    /// relayed over the request's id → [`Reply::Unit`] once connected. Then
    /// both sides send the connection's bytes as `Data` frames, each
    /// direction under its own credit, and `End` when their side stopped
    /// writing (a half-close). `Error` from either side, `Cancel` or a lost
    /// connection end the tunnel.
    OpenTunnel {
        /// The port inside the sandbox.
        port: u16,
    },
    /// `acquire_workspace_execution_lease` → [`Reply::Lease`].
    AcquireLease {
        /// The lease wanted.
        request: RunnerLeaseRequest,
    },
    /// `renew_workspace_execution_lease` → [`Reply::Lease`].
    RenewLease {
        /// The lease held.
        lease: RunnerExecutionLease,
        /// The new time to live.
        ttl_ms: u64,
    },
    /// `release_workspace_execution_lease` → [`Reply::Unit`].
    ReleaseLease {
        /// The lease held.
        lease: RunnerExecutionLease,
    },
}

impl Request {
    /// The credit window of the stream the agent answers with.
    pub fn stream_window(&self) -> u32 {
        match self {
            Self::Watch { .. } => WATCH_WINDOW_BYTES,
            _ => STREAM_WINDOW_BYTES,
        }
    }

    /// The session method the request calls, for messages.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Detach => "detach",
            Self::Close => "close",
            Self::RunCommand { .. } => "run_command",
            Self::CancelCommand { .. } => "cancel_command",
            Self::StartCommand { .. } => "start_command",
            Self::ListCommands => "list_commands",
            Self::CommandStatus { .. } => "command_status",
            Self::CommandOutput { .. } => "command_output",
            Self::StreamCommand { .. } => "stream_command",
            Self::WriteStdin { .. } => "write_stdin",
            Self::SignalCommand { .. } => "signal_command",
            Self::ResizeTerminal { .. } => "resize_terminal",
            Self::Watch { .. } => "watch",
            Self::ReadFile { whole: true, .. } => "read_file",
            Self::ReadFile { .. } => "read_file_stream",
            Self::WriteFile { whole: true, .. } => "write_file",
            Self::WriteFile { .. } => "write_file_stream",
            Self::StageUpload | Self::CommitUpload { .. } => "write_file",
            Self::StageDownload { .. } => "read_file",
            Self::DropStage { .. } => "drop_stage",
            Self::ProtectEntries { .. } => "protect_entries",
            Self::ListDir { .. } => "list_dir",
            Self::Stat { .. } => "stat",
            Self::Remove { .. } => "remove",
            Self::MakeDir { .. } => "make_dir",
            Self::Rename { .. } => "rename",
            Self::Canonicalize { .. } => "canonicalize",
            Self::UploadArchive { whole: true, .. } => "upload_archive",
            Self::UploadArchive { .. } => "upload_archive_stream",
            Self::DownloadArchive { whole: true, .. } => "download_archive",
            Self::DownloadArchive { .. } => "download_archive_stream",
            Self::ExposePort { .. } => "expose_port",
            Self::ListListeningPorts => "list_listening_ports",
            Self::OpenTunnel { .. } => "open_tunnel",
            Self::Snapshot => "snapshot",
            Self::SyncMounts => "sync_mounts",
            Self::ExportArtifact { .. } => "export_artifact",
            Self::AcquireLease { .. } => "acquire_workspace_execution_lease",
            Self::RenewLease { .. } => "renew_workspace_execution_lease",
            Self::ReleaseLease { .. } => "release_workspace_execution_lease",
        }
    }

    /// Whether the client's byte stream follows the request.
    pub fn has_body(&self) -> bool {
        match self {
            Self::RunCommand { stdin, .. } | Self::StartCommand { stdin, .. } => *stdin,
            Self::WriteStdin { .. }
            | Self::WriteFile { .. }
            | Self::UploadArchive { .. }
            | Self::OpenTunnel { .. } => true,
            _ => false,
        }
    }
}

/// The agent's answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Done, nothing to return (or a stream follows).
    Unit,
    /// A session state.
    State(RunnerSessionState),
    /// A finished command.
    CommandResult(RunnerCommandResult),
    /// `cancel_command`'s answer.
    Bool(bool),
    /// One process.
    Process(RunnerProcessInfo),
    /// Every process.
    Processes(Vec<RunnerProcessInfo>),
    /// `command_output` without its chunks (they follow as `Output` frames).
    Output(OutputHead),
    /// A directory listing.
    Stats(Vec<RunnerFileStat>),
    /// One path's metadata.
    Stat(RunnerFileStat),
    /// A resolved path.
    Path(PathBuf),
    /// A file being read (its bytes follow as `Data` frames).
    File {
        /// The path as requested.
        path: PathBuf,
        /// The file's whole size.
        size: u64,
    },
    /// A staged transfer: its directory's id, the staged file's path inside
    /// the sandbox, and its size.
    Staged {
        /// The directory's id.
        stage: String,
        /// The staged file (for an upload: where to put it).
        path: PathBuf,
        /// Its bytes (0 for an upload's directory).
        size: u64,
    },
    /// An exposed port.
    Port(RunnerPortResult),
    /// Listening ports.
    Ports(Vec<RunnerListeningPort>),
    /// A snapshot taken.
    Snapshot(RunnerSnapshotRef),
    /// An exported artifact.
    Artifact(RunnerArtifactExportResult),
    /// A lease.
    Lease(RunnerExecutionLease),
}

/// [`RunnerCommandOutput`] without its chunks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputHead {
    /// The command's id.
    pub command_id: String,
    /// The oldest sequence number still retained.
    pub first_retained_seq: u64,
    /// Pass this as `after_seq` next time.
    pub next_after_seq: u64,
    /// Head/tail view of stdout.
    pub stdout: String,
    /// Head/tail view of stderr.
    pub stderr: String,
    /// What the stdout view dropped.
    pub stdout_truncation: RunnerOutputTruncation,
    /// What the stderr view dropped.
    pub stderr_truncation: RunnerOutputTruncation,
    /// Running or exited.
    pub state: RunnerProcessState,
    /// How it ended, once exited.
    pub status: Option<RunnerExitStatus>,
}

impl OutputHead {
    /// Splits an output into its head and its chunks.
    pub fn split(output: RunnerCommandOutput) -> (Self, Vec<RunnerOutputChunk>) {
        let RunnerCommandOutput {
            command_id,
            chunks,
            first_retained_seq,
            next_after_seq,
            stdout,
            stderr,
            stdout_truncation,
            stderr_truncation,
            state,
            status,
        } = output;
        let head = Self {
            command_id,
            first_retained_seq,
            next_after_seq,
            stdout,
            stderr,
            stdout_truncation,
            stderr_truncation,
            state,
            status,
        };
        (head, chunks)
    }

    /// The output with `chunks`.
    pub fn join(self, chunks: Vec<RunnerOutputChunk>) -> RunnerCommandOutput {
        RunnerCommandOutput {
            command_id: self.command_id,
            chunks,
            first_retained_seq: self.first_retained_seq,
            next_after_seq: self.next_after_seq,
            stdout: self.stdout,
            stderr: self.stderr,
            stdout_truncation: self.stdout_truncation,
            stderr_truncation: self.stderr_truncation,
            state: self.state,
            status: self.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerProcessEvent;

    fn roundtrip(frame: &Frame) -> Frame {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(frame.clone(), &mut buf).unwrap();
        assert_eq!(
            &buf[..4],
            &((HEADER_BYTES + frame.payload.len()) as u32).to_be_bytes()
        );
        let decoded = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        decoded
    }

    #[test]
    fn frames_roundtrip_through_the_codec() {
        let frame = Frame::new(FrameKind::Data, 7, vec![0u8, 255, 1]);
        assert_eq!(roundtrip(&frame), frame);
        let credit = Frame::credit(u64::MAX, 4096);
        let back = roundtrip(&credit);
        assert_eq!(back.id, u64::MAX);
        assert_eq!(decode_credit(&back.payload).unwrap(), 4096);
    }

    #[test]
    fn an_oversize_frame_is_a_protocol_error_naming_the_maximum() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_BYTES + 1) as u32);
        buf.put_u8(FrameKind::Data as u8);
        let err = codec.decode(&mut buf).unwrap_err();
        match err {
            ReadError::Protocol(e) => assert!(e.0.contains(&MAX_FRAME_BYTES.to_string()), "{e}"),
            ReadError::Io(e) => panic!("expected a protocol error, got {e}"),
        }
    }

    #[test]
    fn garbage_frames_are_refused() {
        let short = Frame::decode(BytesMut::from(&[1u8, 2][..])).unwrap_err();
        assert!(short.0.contains("shorter"), "{}", short.0);
        let mut unknown = BytesMut::new();
        unknown.put_u8(0x7e);
        unknown.put_u64(1);
        assert!(
            Frame::decode(unknown)
                .unwrap_err()
                .0
                .contains("unknown frame kind")
        );
        let mut fragmented_credit = BytesMut::new();
        fragmented_credit.put_u8(FrameKind::Credit as u8 | MORE);
        fragmented_credit.put_u64(1);
        assert!(Frame::decode(fragmented_credit).is_err());
    }

    #[test]
    fn large_messages_fragment_and_reassemble() {
        let payload = Bytes::from(
            (0..(MAX_PAYLOAD_BYTES * 2 + 10))
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        let frames = Frame::fragments(FrameKind::Reply, 3, payload.clone());
        assert_eq!(frames.len(), 3);
        assert!(frames[0].more && frames[1].more && !frames[2].more);
        let mut assembly = Reassembly::default();
        // Another id's frame may come between fragments.
        assert!(assembly.push(frames[0].clone()).unwrap().is_none());
        let other = Frame::new(FrameKind::Data, 4, vec![1u8]);
        assert_eq!(assembly.push(other.clone()).unwrap(), Some(other));
        assert!(assembly.push(frames[1].clone()).unwrap().is_none());
        let whole = assembly.push(frames[2].clone()).unwrap().unwrap();
        assert_eq!(whole.kind, FrameKind::Reply);
        assert_eq!(whole.payload, payload);
        assert_eq!(assembly.pending, 0);
    }

    #[test]
    fn a_fragment_of_another_kind_is_refused() {
        let mut assembly = Reassembly::default();
        let first = Frame {
            kind: FrameKind::Reply,
            more: true,
            id: 1,
            payload: Bytes::from_static(b"ab"),
        };
        assembly.push(first).unwrap();
        let err = assembly
            .push(Frame::new(FrameKind::Event, 1, Bytes::new()))
            .unwrap_err();
        assert!(err.0.contains("interrupts"), "{}", err.0);
    }

    #[test]
    fn requests_with_json_values_roundtrip_in_messagepack() {
        let request = Request::RenewLease {
            lease: RunnerExecutionLease {
                lease_id: "l".into(),
                holder: "h".into(),
                workspace: "/w".into(),
                acquired_at_ms: 1,
                expires_at_ms: u64::MAX,
            },
            ttl_ms: 5,
        };
        let bytes = encode("renew", &request).unwrap();
        assert_eq!(decode::<Request>("request", &bytes).unwrap(), request);
        let state = RunnerSessionState {
            provider_id: "unix-local".into(),
            session_id: "s".into(),
            destination_id: "d".into(),
            snapshot: None,
            metadata: serde_json::json!({"root": "/w", "n": -3, "big": u64::MAX, "f": 1.5,
                                         "list": [null, true, "x"]}),
        };
        let reply = Reply::State(state);
        let bytes = encode("pause", &reply).unwrap();
        assert_eq!(decode::<Reply>("reply", &bytes).unwrap(), reply);
        let event = RunnerProcessEvent::Exited {
            status: RunnerExitStatus {
                exit_code: Some(3),
                ..Default::default()
            },
        };
        let bytes = encode("event", &event).unwrap();
        assert_eq!(
            decode::<RunnerProcessEvent>("event", &bytes).unwrap(),
            event
        );
    }

    #[test]
    fn errors_keep_kind_and_message_and_unknown_kinds_are_provider() {
        let error = RunnerError::not_found("stat a.txt: missing");
        let wire = WireError::from(&error);
        let back: RunnerError = decode::<WireError>("error", &encode("e", &wire).unwrap())
            .unwrap()
            .into();
        assert_eq!(back.kind(), RunnerErrorKind::NotFound);
        assert_eq!(back.message(), "stat a.txt: missing");
        let future = RunnerError::from(WireError {
            kind: "quota_exceeded".into(),
            message: "m".into(),
        });
        assert_eq!(future.kind(), RunnerErrorKind::Provider);
    }

    #[test]
    fn the_documented_exchange_has_these_sizes() {
        // docs/agent-protocol.md, "An exchange".
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            client_version: "0.1.0".into(),
        };
        let frame = Frame::new(FrameKind::Hello, 0, encode("hello", &hello).unwrap());
        assert_eq!(frame.encode().len(), 41);
        let stat = Request::Stat {
            path: "a.txt".into(),
        };
        let frame = Frame::new(FrameKind::Request, 1, encode("stat", &stat).unwrap());
        assert_eq!(frame.encode().len(), 27);
        let run = Request::RunCommand {
            request: RunnerCommandRequest::new("c1", "true", Vec::<String>::new()),
            stdin: false,
        };
        let len = encode("run_command", &run).unwrap().len();
        assert!((150..=250).contains(&len), "{len} bytes");
    }

    #[test]
    fn output_frames_carry_raw_bytes() {
        let payload = encode_output(42, RunnerOutputStream::Stderr, b"\0\xff");
        assert_eq!(payload.len(), 11);
        let chunk = decode_output(payload).unwrap();
        assert_eq!(chunk.seq, 42);
        assert_eq!(chunk.stream, RunnerOutputStream::Stderr);
        assert_eq!(chunk.bytes, b"\0\xff");
        assert!(decode_output(Bytes::from_static(b"short")).is_err());
    }

    #[test]
    fn a_newer_hello_reply_still_names_its_versions() {
        #[derive(Serialize)]
        struct Future {
            agent: serde_json::Value,
            something_else: u8,
        }
        let bytes = encode(
            "hello",
            &Future {
                agent: serde_json::json!({"protocol": 9, "agent_version": "9.0.0", "new": 1}),
                something_else: 1,
            },
        )
        .unwrap();
        let head: HelloReplyHead = decode("hello", &bytes).unwrap();
        assert_eq!(head.agent.protocol, 9);
        assert_eq!(head.agent.agent_version, "9.0.0");
        let message = mismatch_message(9, "9.0.0", &Hello::current());
        assert!(
            message.contains("protocol 9")
                && message.contains(&format!("protocol {PROTOCOL_VERSION}"))
        );
    }

    #[test]
    fn check_protocol_refuses_only_another_version() {
        let mut version = AgentVersion {
            protocol: PROTOCOL_VERSION,
            agent_version: CRATE_VERSION.into(),
            binary_sha256: String::new(),
            os: "linux".into(),
            arch: "x86_64".into(),
        };
        assert!(version.check_protocol().is_ok());
        version.protocol = PROTOCOL_VERSION + 1;
        version.agent_version = "9.0.0".into();
        let error = version.check_protocol().unwrap_err();
        assert_eq!(error.kind(), RunnerErrorKind::Unsupported);
        assert!(error.message().contains("protocol mismatch"), "{error}");
        assert!(error.message().contains("9.0.0"), "{error}");
    }
}
