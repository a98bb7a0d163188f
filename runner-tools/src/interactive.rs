//! The terminal tools (`terminal_start`, `terminal_send`, `terminal_read`,
//! `terminal_resize`) and the `watch` tool: their inputs, results and the
//! state a [`ToolSet`](crate::ToolSet) keeps for them.
//!
//! A terminal's screen is rendered on this side with the `vt100` terminal
//! emulator from the command's numbered output, so a model reads what a
//! person would see (cursor moves, redraws and colours applied), not raw
//! escape sequences. A watch runs in the background and keeps its events,
//! numbered, in a bounded buffer that the `watch` tool reads after a cursor.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use runner_api::{
    RunnerCommandId, RunnerCommandOutput, RunnerError, RunnerExitStatus, RunnerProcessState,
    RunnerResult, RunnerWatchEvent, RunnerWatchEventKind, RunnerWatchRequest, RunnerWatchStream,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

use crate::input::ContentEncoding;

/// Rows of a terminal that names none.
pub const DEFAULT_TERMINAL_ROWS: u16 = 24;
/// Columns of a terminal that names none.
pub const DEFAULT_TERMINAL_COLS: u16 = 80;
/// The most events one `watch` call returns; the next call continues.
pub const MAX_WATCH_EVENTS_PER_CALL: usize = 500;

/// Input of `terminal_start`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalStartInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// A shell script to run with `sh -c` on the terminal; default: an
    /// interactive shell (`sh -i`).
    #[serde(default)]
    pub command: Option<String>,
    /// Your id for the terminal (default: a fresh `term-…` id).
    #[serde(default)]
    pub command_id: Option<RunnerCommandId>,
    /// Rows of the terminal (default 24).
    #[serde(default)]
    pub rows: Option<u16>,
    /// Columns of the terminal (default 80).
    #[serde(default)]
    pub cols: Option<u16>,
    /// `TERM` for the program (default `xterm-256color`).
    #[serde(default)]
    pub term: Option<String>,
    /// Working directory; relative paths resolve under the workspace root.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Input of `terminal_send`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalSendInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// The terminal, as `terminal_start` returned it.
    pub command_id: RunnerCommandId,
    /// The keys, as `encoding` says: text is sent as typed, so end a line
    /// with `\r` (Enter); `\u0003` is Ctrl-C, `\u0004` Ctrl-D, `\u001b` Escape.
    pub data: String,
    /// How `data` is given: `utf-8` text (default) or `base64` for any bytes.
    #[serde(default)]
    pub encoding: ContentEncoding,
}

/// Input of `terminal_read`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalReadInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// The terminal, as `terminal_start` returned it.
    pub command_id: RunnerCommandId,
    /// The `next_after_seq` of the previous read (0 at first): `changed`
    /// says whether output arrived since, and `wait_ms` waits for some.
    #[serde(default)]
    pub after_seq: u64,
    /// Wait up to this many milliseconds (at most 60000) for output after
    /// `after_seq` or the program's exit (default 0: return at once).
    #[serde(default)]
    pub wait_ms: u64,
}

/// Input of `terminal_resize`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalResizeInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// The terminal, as `terminal_start` returned it.
    pub command_id: RunnerCommandId,
    /// New rows.
    pub rows: u16,
    /// New columns.
    pub cols: u16,
}

/// Input of `watch`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// Without a cursor: the directory to start watching (default: the
    /// workspace root). Ignored with a cursor.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Without a cursor: watch subdirectories too (default true).
    #[serde(default = "yes")]
    pub recursive: bool,
    /// The `cursor` of the previous call: returns the events after it.
    /// Without one, a new watch starts and its first cursor comes back.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Wait up to this many milliseconds (at most 60000) for an event after
    /// the cursor (default 0: return at once).
    #[serde(default)]
    pub wait_ms: u64,
    /// End the watch the cursor belongs to.
    #[serde(default)]
    pub stop: bool,
}

fn yes() -> bool {
    true
}

/// Result of `terminal_start`.
#[derive(Debug, Clone, Serialize)]
pub struct TerminalStarted {
    /// The terminal's id, for the other terminal tools.
    pub command_id: RunnerCommandId,
    /// Process id on the runner, when known.
    pub pid: Option<u32>,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// Pass as `after_seq` to the first `terminal_read`.
    pub next_after_seq: u64,
}

/// Result of `terminal_send`.
#[derive(Debug, Clone, Serialize)]
pub struct TerminalSent {
    /// The terminal's id.
    pub command_id: RunnerCommandId,
    /// Bytes sent.
    pub bytes_written: u64,
}

/// Result of `terminal_read`: the screen as a terminal shows it now.
#[derive(Debug, Clone, Serialize)]
pub struct TerminalScreen {
    /// The terminal's id.
    pub command_id: RunnerCommandId,
    /// The visible screen, one line per row, trailing blanks trimmed.
    pub screen: String,
    /// Cursor row (0-based).
    pub cursor_row: u16,
    /// Cursor column (0-based).
    pub cursor_col: u16,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// Output arrived after `after_seq`.
    pub changed: bool,
    /// Pass as `after_seq` next time.
    pub next_after_seq: u64,
    /// `false` when output the screen needed was dropped from the bounded
    /// output log before it was read (the screen may miss old text).
    pub complete: bool,
    /// Running or exited.
    pub state: RunnerProcessState,
    /// How it ended, once exited.
    pub status: Option<RunnerExitStatus>,
}

/// Result of `terminal_resize`.
#[derive(Debug, Clone, Serialize)]
pub struct TerminalResized {
    /// The terminal's id.
    pub command_id: RunnerCommandId,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Result of `watch`.
#[derive(Debug, Clone, Serialize)]
pub struct WatchEvents {
    /// Pass as `cursor` next time.
    pub cursor: String,
    /// The events after the cursor, oldest first (at most 500 a call).
    pub events: Vec<RunnerWatchEvent>,
    /// Events after the cursor were lost (the watch's buffer or queue
    /// overflowed): list the directory again.
    pub overflow: bool,
    /// The watch has ended (stopped, or its session closed); no more events.
    pub ended: bool,
}

/// The screen of one terminal: a terminal emulator fed with the command's
/// output, and how far it was fed.
struct Screen {
    parser: vt100::Parser,
    fed_seq: u64,
    complete: bool,
}

/// Rows and columns of a terminal, checked as `RunnerTerminal::check_size` does.
///
/// Errors: `InvalidRequest` naming `operation` and the terminal for a size
/// of 0 or over `RunnerTerminal::MAX_SIZE`.
pub(crate) fn terminal_size(
    operation: &str,
    id: &str,
    rows: u16,
    cols: u16,
) -> RunnerResult<(NonZeroU16, NonZeroU16)> {
    runner_api::RunnerTerminal::check_size(operation, id, rows, cols)?;
    match (NonZeroU16::new(rows), NonZeroU16::new(cols)) {
        (Some(rows), Some(cols)) => Ok((rows, cols)),
        _ => Err(RunnerError::invalid_request(format!(
            "{operation} {id}: a terminal of {rows}x{cols}"
        ))),
    }
}

/// The terminals and watches of one tool set.
#[derive(Default)]
pub(crate) struct Interactive {
    screens: Mutex<HashMap<(String, RunnerCommandId), Screen>>,
    watches: Mutex<HashMap<String, Arc<WatchBuffer>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Interactive {
    /// Remembers the screen of a terminal just started, of `size` (rows, columns).
    pub(crate) fn add_screen(&self, destination: &str, id: &str, size: (NonZeroU16, NonZeroU16)) {
        let screen = Screen {
            parser: vt100::Parser::new(size.0, size.1, 0),
            fed_seq: 0,
            complete: true,
        };
        lock(&self.screens).insert((destination.to_string(), id.to_string()), screen);
    }

    /// Feeds `output` (read after the screen's `fed_seq`) into the screen and
    /// renders it.
    pub(crate) fn render(
        &self,
        destination: &str,
        output: RunnerCommandOutput,
        after_seq: u64,
    ) -> TerminalScreen {
        let mut screens = lock(&self.screens);
        let key = (destination.to_string(), output.command_id.clone());
        let screen = screens.entry(key).or_insert_with(|| Screen {
            parser: vt100::Parser::default(),
            fed_seq: 0,
            complete: true,
        });
        if output.first_retained_seq > screen.fed_seq + 1 && !output.chunks.is_empty() {
            screen.complete = false;
        }
        for chunk in &output.chunks {
            if chunk.seq > screen.fed_seq {
                screen.parser.process(&chunk.bytes);
                screen.fed_seq = chunk.seq;
            }
        }
        screen.fed_seq = screen.fed_seq.max(output.next_after_seq);
        let view = screen.parser.screen();
        let (rows, cols) = view.size();
        let (cursor_row, cursor_col) = view.cursor_position();
        TerminalScreen {
            command_id: output.command_id,
            screen: view.contents(),
            cursor_row,
            cursor_col,
            rows: rows.get(),
            cols: cols.get(),
            changed: output.next_after_seq > after_seq,
            next_after_seq: output.next_after_seq,
            complete: screen.complete,
            state: output.state,
            status: output.status,
        }
    }

    /// How far the screen of `id` was fed (0 for an unknown terminal).
    pub(crate) fn fed_seq(&self, destination: &str, id: &str) -> u64 {
        lock(&self.screens)
            .get(&(destination.to_string(), id.to_string()))
            .map_or(0, |s| s.fed_seq)
    }

    /// Resizes the screen of `id`, once the terminal itself was resized.
    pub(crate) fn resize_screen(&self, destination: &str, id: &str, rows: u16, cols: u16) {
        if let (Some(r), Some(c)) = (NonZeroU16::new(rows), NonZeroU16::new(cols))
            && let Some(screen) =
                lock(&self.screens).get_mut(&(destination.to_string(), id.to_string()))
        {
            screen.parser.set_size(r, c);
        }
    }

    /// Starts following `stream` in the background; returns the watch's id.
    pub(crate) fn add_watch(&self, destination: &str, stream: RunnerWatchStream) -> String {
        let id = format!("watch-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let buffer = Arc::new(WatchBuffer {
            destination: destination.to_string(),
            state: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            task: Mutex::new(None),
        });
        let follower = buffer.clone();
        let task = tokio::spawn(async move { follower.follow(stream).await });
        *lock(&buffer.task) = Some(task.abort_handle());
        lock(&self.watches).insert(id.clone(), buffer);
        id
    }

    /// The watch a cursor names, and the sequence number in it.
    ///
    /// Errors: `InvalidRequest` for a malformed cursor or one ahead of the
    /// watch's newest event; `NotFound` for a watch
    /// this tool set does not have (stopped, or of another destination).
    pub(crate) fn watch_of(
        &self,
        destination: &str,
        cursor: &str,
    ) -> RunnerResult<(String, Arc<WatchBuffer>, u64)> {
        let (id, seq) = cursor
            .rsplit_once(':')
            .and_then(|(id, seq)| Some((id, seq.parse::<u64>().ok()?)))
            .ok_or_else(|| {
                RunnerError::invalid_request(format!(
                    "watch: cursor {cursor:?} is not one a watch call returned"
                ))
            })?;
        let watch = lock(&self.watches)
            .get(id)
            .filter(|w| w.destination == destination)
            .cloned()
            .ok_or_else(|| {
                RunnerError::not_found(format!(
                    "watch: no watch {id:?} on destination {destination:?} (stopped, or never started)"
                ))
            })?;
        let last_seq = lock(&watch.state).last_seq;
        if seq > last_seq {
            return Err(RunnerError::invalid_request(format!(
                "watch: cursor {cursor:?} is ahead of watch {id:?}, which has {last_seq} events"
            )));
        }
        Ok((id.to_string(), watch, seq))
    }

    /// Ends a watch.
    pub(crate) fn stop_watch(&self, id: &str) {
        if let Some(watch) = lock(&self.watches).remove(id) {
            watch.stop();
        }
    }

    /// Ends every watch.
    pub(crate) fn stop_all(&self) {
        for (_, watch) in lock(&self.watches).drain() {
            watch.stop();
        }
    }
}

/// The events of one watch, numbered from 1, the newest
/// [`RunnerWatchRequest::MAX_QUEUED_EVENTS`] kept.
pub(crate) struct WatchBuffer {
    destination: String,
    state: Mutex<BufferState>,
    changed: tokio::sync::Notify,
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct BufferState {
    /// (sequence number, event), oldest first.
    events: VecDeque<(u64, RunnerWatchEvent)>,
    /// The sequence number of the newest event.
    last_seq: u64,
    /// The watch ended (stream over, error or stop).
    ended: bool,
}

impl WatchBuffer {
    async fn follow(&self, mut stream: RunnerWatchStream) {
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { break };
            let mut state = lock(&self.state);
            state.last_seq += 1;
            let seq = state.last_seq;
            if state.events.len() >= RunnerWatchRequest::MAX_QUEUED_EVENTS {
                state.events.pop_front();
            }
            state.events.push_back((seq, event));
            drop(state);
            self.changed.notify_waiters();
        }
        lock(&self.state).ended = true;
        self.changed.notify_waiters();
    }

    fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        lock(&self.state).ended = true;
        self.changed.notify_waiters();
    }

    /// Waits until an event after `after` exists, the watch ended or
    /// `deadline` passed.
    pub(crate) async fn wait(&self, after: u64, deadline: tokio::time::Instant) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = lock(&self.state);
                if state.last_seq > after || state.ended {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// The events after `after` (at most [`MAX_WATCH_EVENTS_PER_CALL`]) and
    /// the cursor after them.
    pub(crate) fn read(&self, id: &str, after: u64) -> WatchEvents {
        let state = lock(&self.state);
        let first_kept = state.events.front().map_or(state.last_seq + 1, |(s, _)| *s);
        let lost = first_kept > after.saturating_add(1);
        let events: Vec<(u64, RunnerWatchEvent)> = state
            .events
            .iter()
            .filter(|(seq, _)| *seq > after)
            .take(MAX_WATCH_EVENTS_PER_CALL)
            .cloned()
            .collect();
        let next = events.last().map_or(after.max(first_kept - 1), |(s, _)| *s);
        let events: Vec<RunnerWatchEvent> = events.into_iter().map(|(_, e)| e).collect();
        let reported = events
            .iter()
            .any(|e| e.kind == RunnerWatchEventKind::Overflow);
        WatchEvents {
            cursor: format!("{id}:{next}"),
            events,
            overflow: lost || reported,
            ended: state.ended && next >= state.last_seq,
        }
    }
}
