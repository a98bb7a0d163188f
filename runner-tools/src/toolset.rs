//! `ToolSet`: destinations → sessions, and the JSON dispatcher over them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use runner_api::{
    RemoteRunnerSession, RunnerCommandRequest, RunnerError, RunnerErrorKind, RunnerProcessState,
    RunnerResult, RunnerSnapshotRef, RunnerTerminal, RunnerWatchRequest, ThreadRunnerBinding,
};
use runner_stack::RunnerRegistry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::{ToolDestination, ToolsConfig};
use crate::input::check_chunk;
use crate::input::{
    CancelCommandInput, CommandOutputInput, DEFAULT_READ_LIMIT, DestinationInput,
    DestinationsListInput, ExposePortInput, ListDirInput, ReadFileInput, RunCommandInput,
    WriteFileInput, WriteStdinInput,
};
use crate::interactive::{
    DEFAULT_TERMINAL_COLS, DEFAULT_TERMINAL_ROWS, Interactive, TerminalReadInput,
    TerminalResizeInput, TerminalResized, TerminalSendInput, TerminalSent, TerminalStartInput,
    TerminalStarted, WatchEvents, WatchInput, terminal_size,
};
use crate::lines::DEFAULT_MAX_LINE_BYTES;
use crate::output::{
    BackgroundStarted, CancelResult, CommandList, CommandOutputView, DestinationSummary,
    DestinationsList, DirListing, FileContent, ForegroundResult, SnapshotTaken, StdinWritten,
};
use crate::tool::{Tool, ToolSpec, tool_specs};

/// The longest `command_output` waits for new output.
pub const MAX_WAIT_MS: u64 = 60_000;

/// The deepest nesting of arrays and objects a tool's arguments may have
/// (`{}` is 1 deep, `{"env": {}}` 2). Every tool's input is at most 3 deep;
/// arguments arrive as a `Value` that no parser's recursion limit has bounded,
/// and deserializing one (serde buffers flattened inputs recursively) or
/// dropping it would otherwise recurse as deep as the caller nested it.
pub const MAX_ARGUMENT_DEPTH: usize = 32;

/// How often `command_output` looks for new output while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

struct Entry {
    config: ToolDestination,
    session: OnceCell<Arc<dyn RemoteRunnerSession>>,
    /// The full references of the snapshots taken through the tools, by
    /// snapshot id: the tools return only the id, since the metadata may hold
    /// the destination's config.
    snapshots: Mutex<HashMap<String, RunnerSnapshotRef>>,
}

impl Entry {
    /// The snapshots taken of this destination; nothing panics while the lock
    /// is held, so a poisoned lock still holds whole entries.
    fn snapshots(&self) -> MutexGuard<'_, HashMap<String, RunnerSnapshotRef>> {
        self.snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The tool set over configured destinations: a JSON-in/JSON-out dispatcher.
///
/// Each destination's session opens on first use with
/// [`RunnerRegistry::open`] (so the destination is validated first), composed
/// once by the registry's stack and confined to the destination's workspace
/// and read roots; it stays open until [`close`](Self::close).
///
/// ```no_run
/// # async fn demo(registry: runner_stack::RunnerRegistry, config: runner_tools::ToolsConfig)
/// # -> runner_api::RunnerResult<()> {
/// let tools = runner_tools::ToolSet::new(registry, config).await?;
/// for spec in tools.tools() {
///     // register spec.name, spec.description, spec.input_schema with the framework
/// #   let _ = spec;
/// }
/// let result = tools
///     .call("run_command", serde_json::json!({ "command": "ls -la" }))
///     .await?;
/// println!("{}", result["stdout"]);
/// tools.close().await?;
/// # Ok(()) }
/// ```
pub struct ToolSet {
    registry: RunnerRegistry,
    entries: Vec<Entry>,
    closed: AtomicBool,
    /// Terminal screens and watches.
    interactive: Interactive,
}

impl ToolSet {
    /// A tool set serving `config`'s destinations with `registry`'s providers.
    /// Checks the config and validates every destination with its provider; no
    /// session is opened yet.
    ///
    /// Errors: `InvalidRequest` (bad config), `NotFound` (unknown provider), and
    /// the providers' validation errors.
    pub async fn new(registry: RunnerRegistry, config: ToolsConfig) -> RunnerResult<Self> {
        config.validate()?;
        for entry in &config.destinations {
            registry
                .validate_destination(&entry.destination)
                .await
                .map_err(|e| e.context(format!("destination {:?}", entry.destination.id)))?;
        }
        let entries = config
            .destinations
            .into_iter()
            .map(|config| Entry {
                config,
                session: OnceCell::new(),
                snapshots: Mutex::default(),
            })
            .collect();
        Ok(Self {
            registry,
            entries,
            closed: AtomicBool::new(false),
            interactive: Interactive::default(),
        })
    }

    /// Every tool's name, description and input schema.
    pub fn tools(&self) -> Vec<ToolSpec> {
        tool_specs()
    }

    /// Calls the tool `name` with JSON `arguments` (an object; `null` counts as
    /// `{}`) and returns its JSON result.
    ///
    /// Errors: `NotFound` (no such tool), `InvalidRequest` (arguments that do
    /// not match the schema or are nested deeper than [`MAX_ARGUMENT_DEPTH`],
    /// unknown destination), and the runner's error for the operation, such as
    /// `PermissionDenied` for a path outside the workspace.
    pub async fn call(&self, name: &str, arguments: Value) -> RunnerResult<Value> {
        let tool = Tool::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Tool::ALL.iter().map(|t| t.name()).collect();
            RunnerError::not_found(format!(
                "call {name:?}: no such tool (tools: {})",
                names.join(", ")
            ))
        })?;
        self.call_tool(tool, arguments).await
    }

    /// Calls `tool` with JSON `arguments`; see [`call`](Self::call).
    pub async fn call_tool(&self, tool: Tool, arguments: Value) -> RunnerResult<Value> {
        let op = tool.name();
        let arguments = match arguments {
            Value::Null => Value::Object(Default::default()),
            other => within_depth(op, other)?,
        };
        match tool {
            Tool::DestinationsList => {
                let _: DestinationsListInput = parse(op, arguments)?;
                to_json(op, &self.destinations_list())
            }
            Tool::RunCommand => self.run_command(parse(op, arguments)?).await,
            Tool::CommandOutput => self.command_output(parse(op, arguments)?).await,
            Tool::WriteStdin => {
                let input: WriteStdinInput = parse(op, arguments)?;
                let bytes = input.bytes()?;
                let bytes_written = bytes.len() as u64;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                ws.write_stdin(&input.command_id, bytes, input.close)
                    .await?;
                to_json(
                    op,
                    &StdinWritten {
                        command_id: input.command_id,
                        bytes_written,
                        closed: input.close,
                    },
                )
            }
            Tool::CancelCommand => {
                let input: CancelCommandInput = parse(op, arguments)?;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                let cancelled = ws.cancel_command(&input.command_id).await?;
                to_json(
                    op,
                    &CancelResult {
                        command_id: input.command_id,
                        cancelled,
                    },
                )
            }
            Tool::ListCommands => {
                let input: DestinationInput = parse(op, arguments)?;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                let commands = ws.list_commands().await?;
                to_json(op, &CommandList { commands })
            }
            Tool::ReadFile => {
                let mut input: ReadFileInput = parse(op, arguments)?;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                let offset = input.request.offset.unwrap_or(0);
                input.request.limit = Some(input.request.limit.unwrap_or(DEFAULT_READ_LIMIT));
                let result = ws.read_file(input.request).await?;
                to_json(op, &FileContent::new(result, offset, input.encoding))
            }
            Tool::WriteFile => {
                let input: WriteFileInput = parse(op, arguments)?;
                // Bad content is refused before a session is opened.
                input.to_request()?;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                to_json(op, &crate::upload::write_file(ws.as_ref(), &input).await?)
            }
            Tool::ListDir => {
                let input: ListDirInput = parse(op, arguments)?;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                let path = input.path.unwrap_or_else(|| ".".into());
                let entries = ws.list_dir(&path).await?;
                to_json(op, &DirListing { path, entries })
            }
            Tool::ExposePort => {
                let input: ExposePortInput = parse(op, arguments)?;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                to_json(op, &ws.expose_port(input.request).await?)
            }
            Tool::TerminalStart => self.terminal_start(parse(op, arguments)?).await,
            Tool::TerminalSend => {
                let input: TerminalSendInput = parse(op, arguments)?;
                let what = || format!("terminal_send {:?}: data", input.command_id);
                let bytes = input.encoding.decode(&input.data, what)?;
                check_chunk(bytes.len(), what)?;
                let bytes_written = bytes.len() as u64;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                ws.write_stdin(&input.command_id, bytes, false).await?;
                to_json(
                    op,
                    &TerminalSent {
                        command_id: input.command_id,
                        bytes_written,
                    },
                )
            }
            Tool::TerminalRead => self.terminal_read(parse(op, arguments)?).await,
            Tool::TerminalResize => {
                let input: TerminalResizeInput = parse(op, arguments)?;
                let entry = self.entry(op, input.destination.as_deref())?;
                let ws = self.open(op, entry).await?;
                ws.resize_terminal(&input.command_id, input.rows, input.cols)
                    .await?;
                let destination = &entry.config.destination.id;
                self.interactive.resize_screen(
                    destination,
                    &input.command_id,
                    input.rows,
                    input.cols,
                );
                to_json(
                    op,
                    &TerminalResized {
                        command_id: input.command_id,
                        rows: input.rows,
                        cols: input.cols,
                    },
                )
            }
            Tool::Watch => self.watch(parse(op, arguments)?).await,
            Tool::Snapshot => {
                let input: DestinationInput = parse(op, arguments)?;
                let entry = self.entry(op, input.destination.as_deref())?;
                let snapshot = self.open(op, entry).await?.snapshot().await?;
                let taken = SnapshotTaken {
                    destination: entry.config.destination.id.clone(),
                    provider_id: snapshot.provider_id.clone(),
                    snapshot_id: snapshot.snapshot_id.clone(),
                };
                entry
                    .snapshots()
                    .insert(snapshot.snapshot_id.clone(), snapshot);
                to_json(op, &taken)
            }
        }
    }

    /// The full reference of a snapshot the `snapshot` tool took of
    /// `destination`, by the `snapshot_id` it returned; for the embedding
    /// program (to resume from it), never for the model, since its metadata may
    /// hold the destination's config. `None` when no such snapshot was taken
    /// through this tool set.
    pub fn snapshot_ref(&self, destination: &str, snapshot_id: &str) -> Option<RunnerSnapshotRef> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.config.destination.id == destination)?;
        entry.snapshots().get(snapshot_id).cloned()
    }

    /// Closes every open session. Later calls fail with `SessionClosed`.
    /// Returns the first error after trying every session.
    pub async fn close(&self) -> RunnerResult<()> {
        self.closed.store(true, Ordering::SeqCst);
        self.interactive.stop_all();
        let mut first_error = None;
        for entry in &self.entries {
            if let Some(ws) = entry.session.get()
                && let Err(e) = ws.close().await
            {
                first_error.get_or_insert(e.context(format!(
                    "close destination {:?}",
                    entry.config.destination.id
                )));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn destinations_list(&self) -> DestinationsList {
        let destinations = self
            .entries
            .iter()
            .map(|entry| {
                let open = entry.session.get();
                DestinationSummary {
                    id: entry.config.destination.id.clone(),
                    provider_id: entry.config.destination.provider_id.clone(),
                    workspace: open
                        .map(|ws| ws.workspace_root())
                        .or_else(|| entry.config.workspace.clone()),
                    read_roots: entry.config.read_roots.clone(),
                    open: open.is_some(),
                    capabilities: self
                        .registry
                        .get(&entry.config.destination.provider_id)
                        .map(|p| p.capabilities()),
                }
            })
            .collect();
        DestinationsList { destinations }
    }

    async fn run_command(&self, input: RunCommandInput) -> RunnerResult<Value> {
        let op = Tool::RunCommand.name();
        let command_id = input
            .command_id
            .clone()
            .unwrap_or_else(|| format!("cmd-{}", uuid::Uuid::new_v4().simple()));
        let request = input.to_request(command_id)?;
        let ws = self.workspace(op, input.destination.as_deref()).await?;
        if input.run_in_background {
            let process = ws.start_command(request).await?;
            to_json(
                op,
                &BackgroundStarted {
                    process,
                    next_after_seq: 0,
                },
            )
        } else {
            let max_line_bytes = input.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
            let result = ws.run_command(request).await?;
            to_json(op, &ForegroundResult::new(result, max_line_bytes))
        }
    }

    async fn command_output(&self, input: CommandOutputInput) -> RunnerResult<Value> {
        let op = Tool::CommandOutput.name();
        let ws = self.workspace(op, input.destination.as_deref()).await?;
        let output = poll(
            input.wait_ms,
            || ws.command_output(&input.command_id, input.after_seq),
            |output| !output.chunks.is_empty() || output.state == RunnerProcessState::Exited,
        )
        .await?;
        let view = if input.after_seq == 0 {
            CommandOutputView::whole(output)
        } else {
            CommandOutputView::new(output, input.after_seq)
        };
        let max_line_bytes = input.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
        to_json(op, &view.cut_long_lines(max_line_bytes))
    }

    async fn terminal_start(&self, input: TerminalStartInput) -> RunnerResult<Value> {
        let op = Tool::TerminalStart.name();
        let command_id = input
            .command_id
            .clone()
            .unwrap_or_else(|| format!("term-{}", uuid::Uuid::new_v4().simple()));
        let rows = input.rows.unwrap_or(DEFAULT_TERMINAL_ROWS);
        let cols = input.cols.unwrap_or(DEFAULT_TERMINAL_COLS);
        // Refused before a session is opened.
        let size = terminal_size(op, &command_id, rows, cols)?;
        let mut request = match &input.command {
            Some(script) => RunnerCommandRequest::shell(command_id.clone(), script.clone()),
            None => RunnerCommandRequest::new(command_id.clone(), "sh", ["-i"]),
        };
        request.cwd = input.cwd.clone();
        request.env = input.env.clone().into_iter().collect();
        request.keep_stdin_open = true;
        request.terminal = Some(RunnerTerminal {
            rows,
            cols,
            term: input.term.clone(),
        });
        let entry = self.entry(op, input.destination.as_deref())?;
        let ws = self.open(op, entry).await?;
        let process = ws.start_command(request).await?;
        self.interactive
            .add_screen(&entry.config.destination.id, &command_id, size);
        to_json(
            op,
            &TerminalStarted {
                command_id: process.command_id,
                pid: process.pid,
                rows,
                cols,
                next_after_seq: 0,
            },
        )
    }

    async fn terminal_read(&self, input: TerminalReadInput) -> RunnerResult<Value> {
        let op = Tool::TerminalRead.name();
        let entry = self.entry(op, input.destination.as_deref())?;
        let ws = self.open(op, entry).await?;
        let destination = &entry.config.destination.id;
        let screen = poll(
            input.wait_ms,
            || async {
                let fed = self.interactive.fed_seq(destination, &input.command_id);
                let output = ws.command_output(&input.command_id, fed).await?;
                Ok(self
                    .interactive
                    .render(destination, output, input.after_seq))
            },
            |screen| screen.changed || screen.state == RunnerProcessState::Exited,
        )
        .await?;
        to_json(op, &screen)
    }

    async fn watch(&self, input: WatchInput) -> RunnerResult<Value> {
        let op = Tool::Watch.name();
        let entry = self.entry(op, input.destination.as_deref())?;
        let destination = &entry.config.destination.id;
        let Some(cursor) = &input.cursor else {
            if input.stop {
                return Err(RunnerError::invalid_request(
                    "watch: stop needs the cursor of the watch to end",
                ));
            }
            let ws = self.open(op, entry).await?;
            let path = input.path.clone().unwrap_or_else(|| ".".into());
            let stream = ws
                .watch(RunnerWatchRequest::new(path, input.recursive))
                .await?;
            let id = self.interactive.add_watch(destination, stream);
            let started = WatchEvents {
                cursor: format!("{id}:0"),
                events: Vec::new(),
                overflow: false,
                ended: false,
            };
            return to_json(op, &started);
        };
        let (id, buffer, after) = self.interactive.watch_of(destination, cursor)?;
        if input.stop {
            self.interactive.stop_watch(&id);
            let mut last = buffer.read(&id, after);
            last.events.clear();
            last.ended = true;
            return to_json(op, &last);
        }
        let wait = Duration::from_millis(input.wait_ms.min(MAX_WAIT_MS));
        buffer.wait(after, tokio::time::Instant::now() + wait).await;
        to_json(op, &buffer.read(&id, after))
    }

    fn entry(&self, op: &str, destination: Option<&str>) -> RunnerResult<&Entry> {
        let ids = || {
            self.entries
                .iter()
                .map(|e| e.config.destination.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match destination {
            Some(id) => self
                .entries
                .iter()
                .find(|e| e.config.destination.id == id)
                .ok_or_else(|| {
                    RunnerError::invalid_request(format!(
                        "{op}: unknown destination {id:?} (destinations: {})",
                        ids()
                    ))
                }),
            None => match self.entries.as_slice() {
                [only] => Ok(only),
                _ => Err(RunnerError::invalid_request(format!(
                    "{op}: name a `destination` (destinations: {})",
                    ids()
                ))),
            },
        }
    }

    /// The workspace of the destination named `destination` (see
    /// [`entry`](Self::entry)), opening its session on first use.
    async fn workspace(
        &self,
        op: &str,
        destination: Option<&str>,
    ) -> RunnerResult<&Arc<dyn RemoteRunnerSession>> {
        self.open(op, self.entry(op, destination)?).await
    }

    /// `entry`'s session, opening it on first use.
    async fn open<'a>(
        &self,
        op: &str,
        entry: &'a Entry,
    ) -> RunnerResult<&'a Arc<dyn RemoteRunnerSession>> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(RunnerError::new(
                RunnerErrorKind::SessionClosed,
                format!(
                    "{op}: the tool set is closed (destination {:?})",
                    entry.config.destination.id
                ),
            ));
        }
        entry
            .session
            .get_or_try_init(|| async {
                let binding = ThreadRunnerBinding {
                    destination: entry.config.destination.clone(),
                    // The empty path: the session's own workspace root.
                    workspace: entry.config.workspace.clone().unwrap_or_default(),
                    read_roots: entry.config.read_roots.clone(),
                };
                self.registry.open(binding).await.map_err(|e| {
                    e.context(format!(
                        "{op}: open destination {:?}",
                        entry.config.destination.id
                    ))
                })
            })
            .await
    }
}

/// Calls `attempt` every [`POLL_INTERVAL`] until `settled` accepts its result
/// or `wait_ms` (at most [`MAX_WAIT_MS`]) passed; returns the last result.
async fn poll<T, Fut>(
    wait_ms: u64,
    mut attempt: impl FnMut() -> Fut,
    settled: impl Fn(&T) -> bool,
) -> RunnerResult<T>
where
    Fut: std::future::Future<Output = RunnerResult<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
    loop {
        let result = attempt().await?;
        if settled(&result) || tokio::time::Instant::now() >= deadline {
            return Ok(result);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `arguments` when no array or object in it is nested deeper than
/// [`MAX_ARGUMENT_DEPTH`]. Measured and, when refused, taken apart without
/// recursion.
///
/// Errors: `InvalidRequest` naming the tool and the limit.
fn within_depth(op: &str, arguments: Value) -> RunnerResult<Value> {
    if !deeper_than(&arguments, MAX_ARGUMENT_DEPTH) {
        return Ok(arguments);
    }
    let mut parts = vec![arguments];
    while let Some(value) = parts.pop() {
        match value {
            Value::Array(items) => parts.extend(items),
            Value::Object(map) => parts.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
    Err(RunnerError::invalid_request(format!(
        "{op}: invalid arguments: nested deeper than {MAX_ARGUMENT_DEPTH} levels of arrays and objects"
    )))
}

/// Whether an array or object in `value` is nested deeper than `max`.
fn deeper_than(value: &Value, max: usize) -> bool {
    let mut pending = vec![(value, 1)];
    while let Some((value, depth)) = pending.pop() {
        match value {
            Value::Array(_) | Value::Object(_) if depth > max => return true,
            Value::Array(items) => pending.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => pending.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    false
}

fn parse<T: DeserializeOwned>(op: &str, arguments: Value) -> RunnerResult<T> {
    serde_json::from_value(arguments)
        .map_err(|e| RunnerError::invalid_request(format!("{op}: invalid arguments: {e}")))
}

fn to_json<T: Serialize>(op: &str, value: &T) -> RunnerResult<Value> {
    serde_json::to_value(value)
        .map_err(|e| RunnerError::provider(format!("{op}: cannot encode the result: {e}")))
}
