//! Tool results, shaped for a model: text instead of byte arrays, head/tail
//! views and long lines cut with explicit notes and counters, and the id and
//! sequence number to poll.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use runner_api::{
    RemoteRunnerProviderId, RunnerCapabilities, RunnerCommandId, RunnerCommandOutput,
    RunnerCommandResult, RunnerError, RunnerErrorKind, RunnerExitStatus, RunnerFileReadResult,
    RunnerFileStat, RunnerOutputLimit, RunnerOutputStream, RunnerOutputTruncation,
    RunnerProcessInfo, RunnerProcessState,
};
use runner_kit::HeadTailBuffer;
use serde::Serialize;

use crate::input::ContentEncoding;
use crate::lines::{LineCut, cut_view};

/// A failed tool call as JSON: `{"kind": "permission_denied", "message": "…"}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ToolError {
    /// The error kind.
    pub kind: RunnerErrorKind,
    /// What failed, naming the operation and the path or id.
    pub message: String,
}

impl From<&RunnerError> for ToolError {
    fn from(error: &RunnerError) -> Self {
        Self {
            kind: error.kind(),
            message: error.message().to_string(),
        }
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// One destination in `destinations_list`.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationSummary {
    /// The id tools take as `destination`.
    pub id: String,
    /// The provider that serves it.
    pub provider_id: RemoteRunnerProviderId,
    /// The workspace root, once known (configured, or after the session opened).
    pub workspace: Option<PathBuf>,
    /// Extra paths reads may resolve under.
    pub read_roots: Vec<PathBuf>,
    /// Whether its session is open.
    pub open: bool,
    /// What the provider supports; `None` when it is not registered.
    pub capabilities: Option<RunnerCapabilities>,
}

/// Result of `destinations_list`.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationsList {
    /// Every destination, in config order.
    pub destinations: Vec<DestinationSummary>,
}

/// Result of a foreground `run_command`: the runner's result with each
/// stream's lines longer than `max_line_bytes` cut.
#[derive(Debug, Clone, Serialize)]
pub struct ForegroundResult {
    /// `command_id`, `exit_code`, `signal`, `timed_out`, `cancelled`,
    /// `duration_ms`, the head/tail `stdout` and `stderr` (long lines cut) and
    /// their `*_truncation`.
    #[serde(flatten)]
    pub result: RunnerCommandResult,
    /// What cutting long lines left out of `stdout`.
    pub stdout_line_cut: LineCut,
    /// What cutting long lines left out of `stderr`.
    pub stderr_line_cut: LineCut,
}

impl ForegroundResult {
    /// `result` with every line of its head/tail views longer than
    /// `max_line_bytes` cut (`0`: no cut). The omitted-middle line stays whole.
    pub fn new(mut result: RunnerCommandResult, max_line_bytes: usize) -> Self {
        let stdout_line_cut = cut_view(
            &mut result.stdout,
            &result.stdout_truncation,
            max_line_bytes,
        );
        let stderr_line_cut = cut_view(
            &mut result.stderr,
            &result.stderr_truncation,
            max_line_bytes,
        );
        Self {
            result,
            stdout_line_cut,
            stderr_line_cut,
        }
    }
}

/// Result of a background `run_command`.
#[derive(Debug, Clone, Serialize)]
pub struct BackgroundStarted {
    /// The command as the session tracks it (`command_id`, `state`, `pid`, …).
    #[serde(flatten)]
    pub process: RunnerProcessInfo,
    /// Pass to `command_output` as `after_seq` for the first poll.
    pub next_after_seq: u64,
}

/// Result of `command_output`: what arrived after `after_seq`.
#[derive(Debug, Clone, Serialize)]
pub struct CommandOutputView {
    /// The command's id.
    pub command_id: RunnerCommandId,
    /// Running or exited.
    pub state: RunnerProcessState,
    /// Exit code, signal, timed_out, cancelled and duration, once exited.
    pub status: Option<RunnerExitStatus>,
    /// New stdout, as a head/tail view when long.
    pub stdout: String,
    /// New stderr, as a head/tail view when long.
    pub stderr: String,
    /// What the new stdout view dropped.
    pub stdout_truncation: RunnerOutputTruncation,
    /// What the new stderr view dropped.
    pub stderr_truncation: RunnerOutputTruncation,
    /// What cutting long lines left out of `stdout`.
    pub stdout_line_cut: LineCut,
    /// What cutting long lines left out of `stderr`.
    pub stderr_line_cut: LineCut,
    /// Pass this as `after_seq` next time.
    pub next_after_seq: u64,
    /// Set when output after `after_seq` was already dropped from the bounded
    /// log, saying how to see the rest.
    pub note: Option<String>,
}

impl CommandOutputView {
    /// Renders the chunks of `output` (already after `after_seq`) per stream
    /// through a head/tail buffer with the default budgets.
    pub fn new(output: RunnerCommandOutput, after_seq: u64) -> Self {
        let mut stdout = HeadTailBuffer::new(RunnerOutputLimit::default());
        let mut stderr = HeadTailBuffer::new(RunnerOutputLimit::default());
        for chunk in &output.chunks {
            match chunk.stream {
                RunnerOutputStream::Stdout => stdout.push(&chunk.bytes),
                RunnerOutputStream::Stderr => stderr.push(&chunk.bytes),
            }
        }
        // `after_seq` is the caller's number: u64::MAX has no next chunk, so
        // nothing after it can have been dropped.
        let note = after_seq
            .checked_add(1)
            .filter(|&first_missed| {
                output.first_retained_seq > first_missed && output.next_after_seq > after_seq
            })
            .map(|first_missed| {
                format!(
                    "chunks {first_missed} to {} were dropped from the bounded output log; \
                     call command_output with after_seq 0 for the head/tail of all output",
                    output.first_retained_seq - 1
                )
            });
        let (stdout, stdout_truncation) = stdout.render();
        let (stderr, stderr_truncation) = stderr.render();
        Self {
            command_id: output.command_id,
            state: output.state,
            status: output.status,
            stdout,
            stderr,
            stdout_truncation,
            stderr_truncation,
            stdout_line_cut: LineCut::default(),
            stderr_line_cut: LineCut::default(),
            next_after_seq: output.next_after_seq,
            note,
        }
    }

    /// The whole-output head/tail view of `output`, for `after_seq == 0`.
    pub fn whole(output: RunnerCommandOutput) -> Self {
        Self {
            command_id: output.command_id,
            state: output.state,
            status: output.status,
            stdout: output.stdout,
            stderr: output.stderr,
            stdout_truncation: output.stdout_truncation,
            stderr_truncation: output.stderr_truncation,
            stdout_line_cut: LineCut::default(),
            stderr_line_cut: LineCut::default(),
            next_after_seq: output.next_after_seq,
            note: None,
        }
    }

    /// The view with every line of `stdout` and `stderr` longer than
    /// `max_line_bytes` cut (`0`: no cut), counted in `*_line_cut` (which
    /// this sets). The omitted-middle line stays whole.
    pub fn cut_long_lines(mut self, max_line_bytes: usize) -> Self {
        self.stdout_line_cut = cut_view(&mut self.stdout, &self.stdout_truncation, max_line_bytes);
        self.stderr_line_cut = cut_view(&mut self.stderr, &self.stderr_truncation, max_line_bytes);
        self
    }
}

/// Result of `cancel_command`.
#[derive(Debug, Clone, Serialize)]
pub struct CancelResult {
    /// The command's id.
    pub command_id: RunnerCommandId,
    /// Whether a running command was killed (false: unknown or already finished).
    pub cancelled: bool,
}

/// Result of `list_commands`.
#[derive(Debug, Clone, Serialize)]
pub struct CommandList {
    /// Every command the session tracks, oldest first.
    pub commands: Vec<RunnerProcessInfo>,
}

/// Result of `read_file`.
#[derive(Debug, Clone, Serialize)]
pub struct FileContent {
    /// The path as requested.
    pub path: PathBuf,
    /// The bytes read, as `encoding` says. Under `utf-8`, bytes that are not
    /// UTF-8 are replaced with U+FFFD (`lossy` is then true).
    pub content: String,
    /// How `content` is encoded, as the read asked.
    pub encoding: ContentEncoding,
    /// Whether invalid UTF-8 was replaced (never under `base64`).
    pub lossy: bool,
    /// Byte offset the read started at.
    pub offset: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// The file's whole size.
    pub size: u64,
    /// Set when bytes remain after this read: the `offset` for the next read.
    pub next_offset: Option<u64>,
}

impl FileContent {
    /// The view, in `encoding`, of a read that started at `offset`.
    pub fn new(result: RunnerFileReadResult, offset: u64, encoding: ContentEncoding) -> Self {
        let bytes_read = result.contents.len() as u64;
        // `offset` is the caller's number; a provider never returns bytes
        // past u64::MAX, so saturating only matters for a misbehaving one.
        let end = offset.saturating_add(bytes_read);
        let (content, lossy) = match encoding {
            ContentEncoding::Base64 => (BASE64.encode(&result.contents), false),
            ContentEncoding::Utf8 => match String::from_utf8(result.contents) {
                Ok(text) => (text, false),
                Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
            },
        };
        Self {
            path: result.path,
            content,
            encoding,
            lossy,
            offset,
            bytes_read,
            size: result.size,
            next_offset: (end < result.size).then_some(end),
        }
    }
}

/// Result of `snapshot`: an opaque reference, without the provider's
/// metadata (which may hold the destination's config: env, binds, hosts,
/// paths). The embedding program gets the full reference back with
/// [`ToolSet::snapshot_ref`](crate::ToolSet::snapshot_ref).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotTaken {
    /// The destination it was taken of.
    pub destination: String,
    /// The provider that can restore it.
    pub provider_id: RemoteRunnerProviderId,
    /// The snapshot's id.
    pub snapshot_id: String,
}

/// Result of `write_file`.
#[derive(Debug, Clone, Serialize)]
pub struct WriteResult {
    /// The path as requested.
    pub path: PathBuf,
    /// Bytes written: the whole file, or in a chunked write this chunk.
    pub bytes_written: u64,
    /// In a chunked write that is not complete yet: the `offset` of the next
    /// chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    /// When a chunked write completes: the size of the file now at `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Result of `write_stdin`.
#[derive(Debug, Clone, Serialize)]
pub struct StdinWritten {
    /// The command's id.
    pub command_id: RunnerCommandId,
    /// Bytes written to its stdin by this call.
    pub bytes_written: u64,
    /// Whether this call closed stdin.
    pub closed: bool,
}

/// Result of `list_dir`.
#[derive(Debug, Clone, Serialize)]
pub struct DirListing {
    /// The directory as requested.
    pub path: PathBuf,
    /// Entries sorted by name; symlinks are not followed.
    pub entries: Vec<RunnerFileStat>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerOutputChunk;

    fn output(chunks: Vec<RunnerOutputChunk>, first_retained_seq: u64) -> RunnerCommandOutput {
        let next = chunks.last().map_or(first_retained_seq, |c| c.seq);
        RunnerCommandOutput {
            command_id: "c".into(),
            chunks,
            first_retained_seq,
            next_after_seq: next,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncation: RunnerOutputTruncation::default(),
            stderr_truncation: RunnerOutputTruncation::default(),
            state: RunnerProcessState::Running,
            status: None,
        }
    }

    #[test]
    fn new_output_is_split_by_stream_and_notes_dropped_chunks() {
        let chunk = |seq, stream, text: &str| RunnerOutputChunk {
            seq,
            stream,
            bytes: text.as_bytes().to_vec(),
        };
        let view = CommandOutputView::new(
            output(
                vec![
                    chunk(5, RunnerOutputStream::Stdout, "a"),
                    chunk(6, RunnerOutputStream::Stderr, "b"),
                    chunk(7, RunnerOutputStream::Stdout, "c"),
                ],
                5,
            ),
            2,
        );
        assert_eq!((view.stdout.as_str(), view.stderr.as_str()), ("ac", "b"));
        assert_eq!(view.next_after_seq, 7);
        assert!(view.note.expect("note").contains("chunks 3 to 4"));
    }

    #[test]
    fn the_largest_after_seq_gives_an_empty_view_without_a_note() {
        let view = CommandOutputView::new(output(vec![], 3), u64::MAX);
        assert_eq!((view.stdout.as_str(), view.note), ("", None));
    }

    #[test]
    fn partial_reads_say_where_to_continue() {
        let result = RunnerFileReadResult {
            path: "f".into(),
            contents: vec![b'x', 0xff],
            size: 10,
        };
        let view = FileContent::new(result, 4, ContentEncoding::Utf8);
        assert!(view.lossy);
        assert_eq!(view.next_offset, Some(6));
    }
}
