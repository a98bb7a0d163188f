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
    /// Written to the command's stdin, as `stdin_encoding` says; stdin is
    /// then closed, unless `keep_stdin_open`.
    #[serde(default)]
    pub stdin: Option<String>,
    /// How `stdin` is given: `utf-8` text (default) or `base64` for any
    /// bytes. Decoded before the command starts.
    #[serde(default)]
    pub stdin_encoding: ContentEncoding,
    /// Keep stdin open after `stdin`, so `write_stdin` can feed the command
    /// until a call closes it. Background commands only (`run_in_background`).
    #[serde(default)]
    pub keep_stdin_open: bool,
    /// Run as this user (a name or a numeric uid) instead of the session's
    /// user, where the destination's `run_as_user` capability allows it.
    #[serde(default)]
    pub user: Option<String>,
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
    /// given, when `args` come with `command`, when `stdin` is not valid
    /// base64 under the `base64` encoding, or when `keep_stdin_open` comes
    /// without `run_in_background`.
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
        if self.keep_stdin_open && !self.run_in_background {
            return Err(RunnerError::invalid_request(format!(
                "run_command {command_id:?}: keep_stdin_open needs run_in_background \
                 (write_stdin feeds a background command)"
            )));
        }
        let stdin = self
            .stdin
            .as_deref()
            .map(|text| {
                self.stdin_encoding
                    .decode(text, || format!("run_command {command_id:?}: stdin"))
            })
            .transpose()?;
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
            stdin,
            keep_stdin_open: self.keep_stdin_open,
            output_limit: self.output_limit.unwrap_or_default(),
            non_interactive: self.non_interactive.unwrap_or(true),
            user: self.user.clone(),
            // Terminals have tools of their own (terminal_start and the rest).
            terminal: None,
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

/// Input of `write_stdin`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteStdinInput {
    /// Destination id; may be omitted when the server serves a single destination.
    #[serde(default)]
    pub destination: Option<String>,
    /// The command, started by `run_command` with `run_in_background` and
    /// `keep_stdin_open`.
    pub command_id: RunnerCommandId,
    /// Bytes for the command's stdin, as `encoding` says; at most 16 MiB
    /// (`MAX_CHUNK_BYTES`) per call after decoding. May be empty (to only close).
    #[serde(default)]
    pub data: String,
    /// How `data` is given: `utf-8` text (default) or `base64` for any bytes.
    #[serde(default)]
    pub encoding: ContentEncoding,
    /// Close stdin after `data` (the command sees end of input).
    #[serde(default)]
    pub close: bool,
}

impl WriteStdinInput {
    /// `data`, decoded.
    ///
    /// Errors: `InvalidRequest` naming the command when `data` is not valid
    /// base64 under the `base64` encoding or holds more than
    /// [`MAX_CHUNK_BYTES`].
    pub fn bytes(&self) -> RunnerResult<Vec<u8>> {
        let what = || format!("write_stdin {:?}: data", self.command_id);
        let bytes = self.encoding.decode(&self.data, what)?;
        check_chunk(bytes.len(), what)?;
        Ok(bytes)
    }
}

/// Most bytes one `write_stdin` call, or one chunk of a chunked
/// `write_file`, carries after decoding: 16 MiB; more goes in several calls.
/// Over MCP a whole request is at most 16 MiB of JSON (runner-mcp's
/// `MAX_REQUEST_BYTES`), so there a base64 chunk holds at most about 12 MiB;
/// chunks of a few MiB are the usual choice.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// Refuses `len` bytes of data above [`MAX_CHUNK_BYTES`].
///
/// Errors: `InvalidRequest` naming `what` (such as `write_stdin "cmd": data`),
/// the size and the limit.
pub(crate) fn check_chunk(len: usize, what: impl FnOnce() -> String) -> RunnerResult<()> {
    if len > MAX_CHUNK_BYTES {
        return Err(RunnerError::invalid_request(format!(
            "{}: {len} bytes exceed the limit of {MAX_CHUNK_BYTES} bytes per call; \
             send the data in several calls",
            what()
        )));
    }
    Ok(())
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

impl ContentEncoding {
    /// The bytes `text` stands for under this encoding.
    ///
    /// Errors: `InvalidRequest` saying that `what` (such as
    /// `write_file a.bin: content`) is not valid base64.
    pub(crate) fn decode(self, text: &str, what: impl FnOnce() -> String) -> RunnerResult<Vec<u8>> {
        match self {
            ContentEncoding::Utf8 => Ok(text.as_bytes().to_vec()),
            ContentEncoding::Base64 => BASE64.decode(text).map_err(|e| {
                RunnerError::invalid_request(format!("{} is not valid base64: {e}", what()))
            }),
        }
    }
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
    /// The whole new contents (or, with `offset`, one chunk of them), as
    /// `encoding` says.
    pub content: String,
    /// How `content` is given: `utf-8` text (default) or `base64` for binary
    /// files.
    #[serde(default)]
    pub encoding: ContentEncoding,
    /// Permission bits as a decimal number (493 for 0o755); default: keep an
    /// existing file's mode, 0o644 for a new file. In a chunked write, only
    /// with the first chunk (`offset` 0).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Write in chunks of at most 16 MiB: `content` is the chunk at this byte
    /// offset (0 for the first, then each result's `next_offset`). Chunks go
    /// to the staging file `.<name>.runner-upload` next to `path`; the file
    /// at `path` is untouched until the call with `complete`. A chunk that
    /// failed is sent again at the same offset; offset 0 starts over.
    #[serde(default)]
    pub offset: Option<u64>,
    /// With `offset`: this is the last chunk. The staging file, now the whole
    /// file, replaces `path` in one rename. No effect without `offset`.
    #[serde(default)]
    pub complete: bool,
}

impl WriteFileInput {
    /// The runner-api request this input stands for: the whole file at
    /// `path`, or for a chunk (`offset` given) the chunk at its offset of
    /// the staging file ([`staging_path`](Self::staging_path)). The first
    /// chunk (offset 0) replaces the staging file whole, so an upload that
    /// starts over never keeps bytes of an earlier one.
    ///
    /// Errors: `InvalidRequest` naming the path when `content` is not valid
    /// base64 under the `base64` encoding, when a chunk holds more than
    /// [`MAX_CHUNK_BYTES`], or when `mode` comes with a chunk other than the
    /// first.
    pub fn to_request(&self) -> RunnerResult<RunnerFileWriteRequest> {
        let what = || format!("write_file {}: content", self.path.display());
        let contents = self.encoding.decode(&self.content, what)?;
        let Some(offset) = self.offset else {
            return Ok(RunnerFileWriteRequest {
                path: self.path.clone(),
                contents,
                mode: self.mode,
                offset: None,
            });
        };
        check_chunk(contents.len(), what)?;
        if offset > 0 && self.mode.is_some() {
            return Err(RunnerError::invalid_request(format!(
                "write_file {}: `mode` goes with the first chunk (offset 0), not with offset \
                 {offset}",
                self.path.display()
            )));
        }
        Ok(RunnerFileWriteRequest {
            path: self.staging_path()?,
            contents,
            mode: self.mode,
            offset: (offset > 0).then_some(offset),
        })
    }

    /// Where the chunks of a chunked write of `path` are staged:
    /// `.<name>.runner-upload` in the same directory, the same for every
    /// call, so an upload resumes after an error.
    ///
    /// Errors: `InvalidRequest` when `path` has no file name (`.`, `..`, `/`).
    pub fn staging_path(&self) -> RunnerResult<PathBuf> {
        let name = match self.path.components().next_back() {
            Some(std::path::Component::Normal(name)) => name,
            _ => {
                return Err(RunnerError::invalid_request(format!(
                    "write_file {}: a chunked write needs a path that names a file",
                    self.path.display()
                )));
            }
        };
        let mut staging = std::ffi::OsString::from(".");
        staging.push(name);
        staging.push(STAGING_SUFFIX);
        Ok(self.path.with_file_name(staging))
    }
}

/// The end of a staging file's name: `.<name>.runner-upload`.
const STAGING_SUFFIX: &str = ".runner-upload";

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
