//! Tool inputs. Their JSON schemas are derived from these types, which reuse
//! (flatten, or build field by field) the runner-api request types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use runner_api::{
    RunnerCommandId, RunnerCommandRequest, RunnerError, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerOutputLimit, RunnerPortRequest, RunnerResult,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Input of `destinations_list`: no arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationsListInput {}

/// Input of `run_command`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandInput {
    /// Destination id from `destinations_list`; may be omitted when the server
    /// serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// A shell script, run with `sh -c`. Give either `command` or `program`.
    #[serde(default)]
    pub command: Option<String>,
    /// A program run directly (no shell) with `args`, looked up in `PATH`.
    #[serde(default)]
    pub program: Option<String>,
    /// Arguments for `program`, passed verbatim.
    #[serde(default)]
    pub args: Vec<String>,
    /// Id to poll and cancel the command by; generated when omitted. Starting a
    /// background command with an id that exists returns the existing command.
    #[serde(default)]
    pub command_id: Option<RunnerCommandId>,
    /// Working directory; relative paths resolve under the workspace root
    /// (the default), and it must stay inside the workspace.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the whole process tree after this many milliseconds. Foreground
    /// commands default to 120000; background commands have no limit by default.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Text written to the command's stdin, which is then closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Set TERM=dumb, NO_COLOR=1, PAGER=cat, GIT_EDITOR=true and friends so no
    /// tool waits for a terminal or an editor (default true).
    #[serde(default)]
    pub non_interactive: Option<bool>,
    /// Bytes of each stream kept from the start and the end of the output
    /// (default 16384 each); the middle is replaced by a note of what was omitted.
    #[serde(default)]
    pub output_limit: Option<RunnerOutputLimit>,
    /// Cut each output line longer than this many bytes to its first bytes
    /// (whole characters only) followed by ` [… N bytes of this line omitted …]`;
    /// `stdout_line_cut` and `stderr_line_cut` count the lines cut and the bytes
    /// left out (default 2048; 0 keeps lines whole). Applies to the foreground
    /// result; background output is cut by `command_output`.
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
    /// Start the command and return at once with its `command_id`; poll with
    /// `command_output`, stop with `cancel_command`.
    #[serde(default)]
    pub run_in_background: bool,
}

/// The timeout a foreground `run_command` gets when the input names none.
pub const DEFAULT_FOREGROUND_TIMEOUT_MS: u64 = 120_000;

impl RunCommandInput {
    /// The runner-api request this input stands for, with `command_id` as the id.
    ///
    /// Errors: `InvalidRequest` unless exactly one of `command` and `program` is
    /// given, or when `args` come with `command`.
    pub fn to_request(&self, command_id: RunnerCommandId) -> RunnerResult<RunnerCommandRequest> {
        let (program, args) = match (&self.command, &self.program) {
            (Some(script), None) if self.args.is_empty() => {
                ("sh".to_string(), vec!["-c".to_string(), script.clone()])
            }
            (Some(_), None) => {
                return Err(RunnerError::invalid_request(
                    "run_command: `args` go with `program`; put them into the `command` script",
                ));
            }
            (None, Some(program)) => (program.clone(), self.args.clone()),
            _ => {
                return Err(RunnerError::invalid_request(
                    "run_command: give either `command` (a shell script) or `program` (with `args`)",
                ));
            }
        };
        let timeout_ms = match (self.timeout_ms, self.run_in_background) {
            (None, false) => Some(DEFAULT_FOREGROUND_TIMEOUT_MS),
            (timeout, _) => timeout,
        };
        // Every field is named, so a new request field is a compile error here
        // until the tool decides how to expose it.
        Ok(RunnerCommandRequest {
            command_id,
            program,
            args,
            cwd: self.cwd.clone(),
            env: self.env.clone().into_iter().collect(),
            timeout_ms,
            stdin: self.stdin.clone().map(String::into_bytes),
            keep_stdin_open: false,
            output_limit: self.output_limit.unwrap_or_default(),
            non_interactive: self.non_interactive.unwrap_or(true),
            user: None,
        })
    }
}

/// Input of `command_output`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandOutputInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// The command's id, as `run_command` returned it.
    pub command_id: RunnerCommandId,
    /// Return output after this sequence number: 0 for all, then the
    /// `next_after_seq` of the previous call.
    #[serde(default)]
    pub after_seq: u64,
    /// Wait up to this many milliseconds (at most 60000) for new output or the
    /// command's exit before returning (default 0: return at once).
    #[serde(default)]
    pub wait_ms: u64,
    /// Cut each output line longer than this many bytes to its first bytes
    /// (whole characters only) followed by ` [… N bytes of this line omitted …]`;
    /// `stdout_line_cut` and `stderr_line_cut` count the lines cut and the bytes
    /// left out (default 2048; 0 keeps lines whole).
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
}

/// Input of `cancel_command`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelCommandInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// The command to kill, with its whole process tree.
    pub command_id: RunnerCommandId,
}

/// Input of `list_commands`, `snapshot`: only the destination.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
}

/// How file contents travel in `read_file` and `write_file`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ContentEncoding {
    /// UTF-8 text (the default). Reading bytes that are not UTF-8 replaces
    /// them with U+FFFD and sets `lossy`.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// Standard base64 with padding: any bytes, exactly.
    #[serde(rename = "base64")]
    Base64,
}

/// Input of `read_file`: the runner-api read request plus the destination.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ReadFileInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// How `content` is returned: `utf-8` text (default) or `base64` for
    /// binary files.
    #[serde(default)]
    pub encoding: ContentEncoding,
    /// Path, byte offset and byte limit (default limit 262144).
    #[serde(flatten)]
    pub request: RunnerFileReadRequest,
}

/// The byte limit of a `read_file` that names none.
pub const DEFAULT_READ_LIMIT: u64 = 256 * 1024;

/// Input of `write_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// Path; relative paths resolve under the workspace root. Parent
    /// directories are created.
    pub path: PathBuf,
    /// The whole new contents, as `encoding` says.
    pub content: String,
    /// How `content` is given: `utf-8` text (default) or `base64` for binary
    /// files.
    #[serde(default)]
    pub encoding: ContentEncoding,
    /// Permission bits as a decimal number (493 for 0o755); default: keep an
    /// existing file's mode, 0o644 for a new file.
    #[serde(default)]
    pub mode: Option<u32>,
}

impl WriteFileInput {
    /// The runner-api request this input stands for.
    ///
    /// Errors: `InvalidRequest` naming the path when `content` is not valid
    /// base64 under the `base64` encoding.
    pub fn to_request(&self) -> RunnerResult<RunnerFileWriteRequest> {
        let contents = match self.encoding {
            ContentEncoding::Utf8 => self.content.clone().into_bytes(),
            ContentEncoding::Base64 => BASE64.decode(&self.content).map_err(|e| {
                RunnerError::invalid_request(format!(
                    "write_file {}: content is not valid base64: {e}",
                    self.path.display()
                ))
            })?,
        };
        Ok(RunnerFileWriteRequest {
            path: self.path.clone(),
            contents,
            mode: self.mode,
            offset: None,
        })
    }
}

/// Input of `list_dir`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDirInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// Directory; relative paths resolve under the workspace root (default `.`).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// Input of `expose_port`: the runner-api port request plus the destination.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ExposePortInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// The port inside the runner and an optional label.
    #[serde(flatten)]
    pub request: RunnerPortRequest,
}
