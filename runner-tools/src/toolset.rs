//! `ToolSet`: destinations → sessions, and the JSON dispatcher over them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use runner_api::{
    RemoteRunnerSession, RemoteWorkspace, RunnerError, RunnerErrorKind, RunnerRegistry,
    RunnerResult,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::{ToolDestination, ToolsConfig};
use crate::input::{
    CancelCommandInput, CommandOutputInput, DEFAULT_READ_LIMIT, DestinationInput,
    DestinationsListInput, ExposePortInput, ListDirInput, ReadFileInput, RunCommandInput,
    WriteFileInput,
};
use crate::lines::DEFAULT_MAX_LINE_BYTES;
use crate::output::{
    BackgroundStarted, CancelResult, CommandList, CommandOutputView, DestinationSummary,
    DestinationsList, DirListing, FileContent, ForegroundResult, WriteResult,
};
use crate::tool::{Tool, ToolSpec, tool_specs};

/// The longest `command_output` waits for new output.
pub const MAX_WAIT_MS: u64 = 60_000;

/// How often `command_output` looks for new output while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

struct Entry {
    config: ToolDestination,
    session: OnceCell<RemoteWorkspace>,
}

/// The tool set over configured destinations: a JSON-in/JSON-out dispatcher.
///
/// Each destination's session opens on first use, through the registry (so the
/// destination is validated first), wrapped in a [`RemoteWorkspace`] confined to
/// the destination's workspace and read roots; it stays open until
/// [`close`](Self::close).
///
/// ```no_run
/// # async fn demo(registry: runner_api::RunnerRegistry, config: runner_tools::ToolsConfig)
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
            })
            .collect();
        Ok(Self {
            registry,
            entries,
            closed: AtomicBool::new(false),
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
    /// not match the schema, unknown destination), and the runner's error for the
    /// operation, such as `PermissionDenied` for a path outside the workspace.
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
        let arguments = match arguments {
            Value::Null => Value::Object(Default::default()),
            other => other,
        };
        let op = tool.name();
        match tool {
            Tool::DestinationsList => {
                let _: DestinationsListInput = parse(op, arguments)?;
                to_json(op, &self.destinations_list())
            }
            Tool::RunCommand => self.run_command(parse(op, arguments)?).await,
            Tool::CommandOutput => self.command_output(parse(op, arguments)?).await,
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
                let request = input.to_request()?;
                let bytes_written = request.contents.len() as u64;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                ws.write_file(request).await?;
                to_json(
                    op,
                    &WriteResult {
                        path: input.path,
                        bytes_written,
                    },
                )
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
            Tool::Snapshot => {
                let input: DestinationInput = parse(op, arguments)?;
                let ws = self.workspace(op, input.destination.as_deref()).await?;
                to_json(op, &ws.snapshot().await?)
            }
        }
    }

    /// Closes every open session. Later calls fail with `SessionClosed`.
    /// Returns the first error after trying every session.
    pub async fn close(&self) -> RunnerResult<()> {
        self.closed.store(true, Ordering::SeqCst);
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
                        .map(|ws| ws.root.clone())
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
        let wait = Duration::from_millis(input.wait_ms.min(MAX_WAIT_MS));
        let deadline = tokio::time::Instant::now() + wait;
        let output = loop {
            let output = ws
                .command_output(&input.command_id, input.after_seq)
                .await?;
            let settled =
                !output.chunks.is_empty() || output.state == runner_api::RunnerProcessState::Exited;
            if settled || tokio::time::Instant::now() >= deadline {
                break output;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let view = if input.after_seq == 0 {
            CommandOutputView::whole(output)
        } else {
            CommandOutputView::new(output, input.after_seq)
        };
        let max_line_bytes = input.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
        to_json(op, &view.cut_long_lines(max_line_bytes))
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

    /// The destination's workspace, opening its session on first use.
    async fn workspace(
        &self,
        op: &str,
        destination: Option<&str>,
    ) -> RunnerResult<&RemoteWorkspace> {
        let entry = self.entry(op, destination)?;
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
                let session = self
                    .registry
                    .create_session(entry.config.destination.clone())
                    .await
                    .map_err(|e| {
                        e.context(format!(
                            "{op}: open destination {:?}",
                            entry.config.destination.id
                        ))
                    })?;
                let root = entry
                    .config
                    .workspace
                    .clone()
                    .unwrap_or_else(|| session.workspace_root());
                Ok(RemoteWorkspace::new(session, root)
                    .with_read_roots(entry.config.read_roots.iter().cloned()))
            })
            .await
    }
}

fn parse<T: DeserializeOwned>(op: &str, arguments: Value) -> RunnerResult<T> {
    serde_json::from_value(arguments)
        .map_err(|e| RunnerError::invalid_request(format!("{op}: invalid arguments: {e}")))
}

fn to_json<T: Serialize>(op: &str, value: &T) -> RunnerResult<Value> {
    serde_json::to_value(value)
        .map_err(|e| RunnerError::provider(format!("{op}: cannot encode the result: {e}")))
}
