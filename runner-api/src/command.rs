//! Commands: requests, results, background processes and their output events.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::RunnerCommandId;

/// The environment `non_interactive` adds (a caller's own `env` wins).
pub const NON_INTERACTIVE_ENV: &[(&str, &str)] = &[
    ("TERM", "dumb"),
    ("NO_COLOR", "1"),
    ("PAGER", "cat"),
    ("GIT_EDITOR", "true"),
    ("GIT_TERMINAL_PROMPT", "0"),
    ("DEBIAN_FRONTEND", "noninteractive"),
];

/// The variables of the embedding process that a command started on the same
/// machine may inherit: everything else (credentials such as
/// `RUNNER_SECRET_*`, bearer tokens, cloud keys) stays out. `LC_*` names are
/// matched by [`host_env_allowed`].
pub const HOST_ENV_ALLOWLIST: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
];

/// Whether a variable of the embedding process may pass to a command:
/// [`HOST_ENV_ALLOWLIST`] and every `LC_*` locale variable.
pub fn host_env_allowed(name: &str) -> bool {
    HOST_ENV_ALLOWLIST.contains(&name) || name.starts_with("LC_")
}

/// The embedding process's variables a command starts from (see
/// [`host_env_allowed`]); a provider clears the environment of the process it
/// spawns and adds these, then the destination's and the request's.
pub fn inherited_host_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| host_env_allowed(name))
        .collect()
}

/// A command to run. `program` is executed directly with `args` (no shell);
/// run `sh -c` yourself when you want one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerCommandRequest {
    /// Caller-chosen id; an idempotency key for `start_command`.
    pub command_id: RunnerCommandId,
    /// The program, looked up in `PATH` when it has no slash.
    pub program: String,
    /// Arguments, passed verbatim.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory; relative paths resolve under the workspace root.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables, in order (JSON: `[["K","V"], …]`).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Kill the whole process tree after this many milliseconds (`None`: no limit).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes written to the command's stdin, then stdin is closed
    /// (unless `keep_stdin_open`). `None` with `keep_stdin_open == false`
    /// gives the command an empty stdin.
    #[serde(default)]
    pub stdin: Option<Vec<u8>>,
    /// Keep stdin open after `stdin` so `write_stdin` can feed the running command
    /// until it closes stdin.
    #[serde(default)]
    pub keep_stdin_open: bool,
    /// How much of each stream the head/tail view keeps.
    #[serde(default)]
    pub output_limit: RunnerOutputLimit,
    /// Add [`NON_INTERACTIVE_ENV`] so tools never wait for a terminal or an editor.
    #[serde(default)]
    pub non_interactive: bool,
    /// Run as this user (a name, or a numeric uid) instead of the session's
    /// user. Requires the `run_as_user` capability; `None` is the session's
    /// user.
    ///
    /// Errors: `Unsupported` without the capability; `NotFound` naming the
    /// user when the runner has no such user; `PermissionDenied` naming the
    /// user when the session may not switch to it (a provider running as a
    /// non-root user can only run commands as itself).
    #[serde(default)]
    pub user: Option<String>,
    /// Start the program on a new pseudo-terminal of this size instead of
    /// pipes. Requires the `pty` capability. The program is a session leader
    /// with the terminal as its controlling terminal; stdout and stderr are one
    /// stream (reported as stdout), `write_stdin` sends raw bytes (0x03
    /// interrupts the foreground job) and `resize_terminal` changes the size.
    #[serde(default)]
    pub terminal: Option<RunnerTerminal>,
}

/// The terminal a command runs on (see [`RunnerCommandRequest::terminal`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerTerminal {
    /// Rows, 1 to [`RunnerTerminal::MAX_SIZE`].
    pub rows: u16,
    /// Columns, 1 to [`RunnerTerminal::MAX_SIZE`].
    pub cols: u16,
    /// `TERM` for the program; `None` is [`RunnerTerminal::DEFAULT_TERM`]. A
    /// `TERM` in the request's `env` wins over both.
    #[serde(default)]
    pub term: Option<String>,
}

impl RunnerTerminal {
    /// The largest number of rows or columns a terminal may have.
    pub const MAX_SIZE: u16 = 4096;

    /// `TERM` when the request names none.
    pub const DEFAULT_TERM: &'static str = "xterm-256color";

    /// A terminal of `rows` x `cols` with the default `TERM`.
    pub fn new(rows: u16, cols: u16) -> Self {
        Self {
            rows,
            cols,
            term: None,
        }
    }

    /// The `TERM` value the program gets.
    pub fn term(&self) -> &str {
        self.term.as_deref().unwrap_or(Self::DEFAULT_TERM)
    }

    /// Refuses a size of 0 or over [`RunnerTerminal::MAX_SIZE`] with
    /// `InvalidRequest` naming `operation` and the command.
    pub fn check_size(
        operation: &str,
        command_id: &str,
        rows: u16,
        cols: u16,
    ) -> crate::RunnerResult<()> {
        let valid = |n: u16| (1..=Self::MAX_SIZE).contains(&n);
        if valid(rows) && valid(cols) {
            Ok(())
        } else {
            Err(crate::RunnerError::new(
                crate::RunnerErrorKind::InvalidRequest,
                format!(
                    "{operation} {command_id}: a terminal of {rows}x{cols} is out of range \
                     (rows and columns 1 to {})",
                    Self::MAX_SIZE
                ),
            ))
        }
    }
}

impl RunnerCommandRequest {
    /// A request for `program` with `args` and defaults for everything else.
    pub fn new(
        command_id: impl Into<String>,
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            command_id: command_id.into(),
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: None,
            env: Vec::new(),
            timeout_ms: None,
            stdin: None,
            keep_stdin_open: false,
            output_limit: RunnerOutputLimit::default(),
            non_interactive: false,
            user: None,
            terminal: None,
        }
    }

    /// Runs the command on a pseudo-terminal of `rows` x `cols`.
    pub fn with_terminal(mut self, rows: u16, cols: u16) -> Self {
        self.terminal = Some(RunnerTerminal::new(rows, cols));
        self
    }

    /// A request that runs `script` with `sh -c`.
    pub fn shell(command_id: impl Into<String>, script: impl Into<String>) -> Self {
        Self::new(command_id, "sh", ["-c".to_string(), script.into()])
    }

    /// Sets `timeout_ms`.
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// Sets `stdin`.
    pub fn with_stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// Sets `cwd`.
    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Appends one environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The environment to apply, in order: the non-interactive defaults (when
    /// asked for), the terminal's `TERM` (for a terminal request) and then the
    /// caller's `env`, so the caller's values win.
    pub fn effective_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = if self.non_interactive {
            NON_INTERACTIVE_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(terminal) = &self.terminal {
            env.push(("TERM".to_string(), terminal.term().to_string()));
        }
        env.extend(self.env.iter().cloned());
        env
    }
}

/// Head and tail byte budgets per stream for the head/tail view of output.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct RunnerOutputLimit {
    /// Bytes kept from the start of the stream.
    #[serde(default = "RunnerOutputLimit::default_bytes")]
    pub head_bytes: usize,
    /// Bytes kept from the end of the stream.
    #[serde(default = "RunnerOutputLimit::default_bytes")]
    pub tail_bytes: usize,
}

impl RunnerOutputLimit {
    /// 16 KiB, the default head and tail budget.
    pub const DEFAULT_BYTES: usize = 16 * 1024;

    /// 8 MiB, the largest head or tail budget a request may ask for
    /// (enforced by [`validate_command_request`](runner_kit::validate_command_request)).
    pub const MAX_BYTES: usize = 8 * 1024 * 1024;

    fn default_bytes() -> usize {
        Self::DEFAULT_BYTES
    }
}

impl Default for RunnerOutputLimit {
    fn default() -> Self {
        Self {
            head_bytes: Self::DEFAULT_BYTES,
            tail_bytes: Self::DEFAULT_BYTES,
        }
    }
}

/// How much of one stream the head/tail view dropped.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerOutputTruncation {
    /// Every byte the stream produced.
    #[serde(default)]
    pub bytes_seen: u64,
    /// Bytes left out of the view (between head and tail, plus any partial
    /// UTF-8 sequence at a cut).
    #[serde(default)]
    pub bytes_dropped: u64,
}

impl RunnerOutputTruncation {
    /// Whether anything was dropped.
    pub fn is_truncated(&self) -> bool {
        self.bytes_dropped > 0
    }

    /// The line (without its newline) that separates head and tail in a
    /// truncated view: `[… N bytes omitted …]`; `None` when nothing was dropped.
    pub fn omitted_marker(&self) -> Option<String> {
        self.is_truncated()
            .then(|| format!("[… {} bytes omitted …]", self.bytes_dropped))
    }
}

/// The outcome of a finished command. A non-zero exit code is a result, not an error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerCommandResult {
    /// The request's id.
    pub command_id: RunnerCommandId,
    /// Exit code; `None` when a signal ended the process.
    pub exit_code: Option<i32>,
    /// Head/tail view of stdout (UTF-8, invalid bytes replaced). When truncated,
    /// a line `[… N bytes omitted …]` separates head and tail.
    pub stdout: String,
    /// Head/tail view of stderr, as `stdout`.
    pub stderr: String,
    /// The signal that ended the process, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The command ran past `timeout_ms` and its process tree was killed.
    #[serde(default)]
    pub timed_out: bool,
    /// `cancel_command` killed it.
    #[serde(default)]
    pub cancelled: bool,
    /// Wall time from start to exit.
    #[serde(default)]
    pub duration_ms: u64,
    /// What the stdout view dropped.
    #[serde(default)]
    pub stdout_truncation: RunnerOutputTruncation,
    /// What the stderr view dropped.
    #[serde(default)]
    pub stderr_truncation: RunnerOutputTruncation,
}

impl RunnerCommandResult {
    /// Exit code 0, no signal, not timed out, not cancelled.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerExitStatus {
    /// Exit code; `None` when a signal ended the process.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Killed for running past its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// Killed by `cancel_command`.
    #[serde(default)]
    pub cancelled: bool,
    /// Wall time from start to exit.
    #[serde(default)]
    pub duration_ms: u64,
}

/// Whether a command is still running.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunnerProcessState {
    /// Still running.
    Running,
    /// Finished; see [`RunnerProcessInfo::status`].
    Exited,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunnerOutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A background or foreground command as the session tracks it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerProcessInfo {
    /// The caller's id.
    pub command_id: RunnerCommandId,
    /// Program and arguments, for display.
    pub program: String,
    /// Arguments, for display.
    #[serde(default)]
    pub args: Vec<String>,
    /// Process id on the runner, when the provider knows it.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Running or exited.
    pub state: RunnerProcessState,
    /// Start time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// How it ended, once exited.
    #[serde(default)]
    pub status: Option<RunnerExitStatus>,
    /// Bytes of stdout produced so far.
    #[serde(default)]
    pub stdout_bytes: u64,
    /// Bytes of stderr produced so far.
    #[serde(default)]
    pub stderr_bytes: u64,
    /// Sequence number of the newest output chunk (0 before any output).
    #[serde(default)]
    pub last_seq: u64,
}

/// One numbered chunk of output. Sequence numbers start at 1 and are shared by
/// both streams of a command, so they give the order in which output arrived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerOutputChunk {
    /// Sequence number.
    pub seq: u64,
    /// Which stream.
    pub stream: RunnerOutputStream,
    /// The bytes, unmodified.
    pub bytes: Vec<u8>,
}

/// Output of a command after a sequence number, plus its head/tail view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerCommandOutput {
    /// The command's id.
    pub command_id: RunnerCommandId,
    /// Chunks with `seq > after_seq` still retained, in order.
    pub chunks: Vec<RunnerOutputChunk>,
    /// The oldest sequence number still retained; when it is greater than
    /// `after_seq + 1`, chunks in between were dropped from the bounded log.
    pub first_retained_seq: u64,
    /// Pass this as `after_seq` next time.
    pub next_after_seq: u64,
    /// Head/tail view of all stdout so far.
    pub stdout: String,
    /// Head/tail view of all stderr so far.
    pub stderr: String,
    /// What the stdout view dropped.
    pub stdout_truncation: RunnerOutputTruncation,
    /// What the stderr view dropped.
    pub stderr_truncation: RunnerOutputTruncation,
    /// Running or exited.
    pub state: RunnerProcessState,
    /// How it ended, once exited.
    #[serde(default)]
    pub status: Option<RunnerExitStatus>,
}

/// A live output event of `stream_command`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunnerProcessEvent {
    /// A chunk of stdout.
    Stdout {
        /// Sequence number.
        seq: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A chunk of stderr.
    Stderr {
        /// Sequence number.
        seq: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The command ended; the last event of a stream.
    Exited {
        /// How it ended.
        status: RunnerExitStatus,
    },
}

/// A signal to send to a command's process group.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunnerSignal {
    /// SIGHUP (1).
    Hangup,
    /// SIGINT (2).
    Interrupt,
    /// SIGQUIT (3).
    Quit,
    /// SIGKILL (9).
    Kill,
    /// SIGUSR1 (10).
    User1,
    /// SIGUSR2 (12).
    User2,
    /// SIGTERM (15).
    Terminate,
    /// SIGCONT (18).
    Continue,
    /// SIGSTOP (19).
    Stop,
}

impl RunnerSignal {
    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Self::Hangup => 1,
            Self::Interrupt => 2,
            Self::Quit => 3,
            Self::Kill => 9,
            Self::User1 => 10,
            Self::User2 => 12,
            Self::Terminate => 15,
            Self::Continue => 18,
            Self::Stop => 19,
        }
    }

    /// The conventional name without the `SIG` prefix (`"TERM"`), as `kill -s` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hangup => "HUP",
            Self::Interrupt => "INT",
            Self::Quit => "QUIT",
            Self::Kill => "KILL",
            Self::User1 => "USR1",
            Self::User2 => "USR2",
            Self::Terminate => "TERM",
            Self::Continue => "CONT",
            Self::Stop => "STOP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_command_request_deserializes() {
        let req: RunnerCommandRequest = serde_json::from_value(serde_json::json!({
            "command_id": "cmd-1", "program": "sh", "args": ["-lc", "echo hi"],
            "cwd": "workspace", "env": [["RUST_LOG", "info"]]
        }))
        .expect("seed request");
        assert_eq!(req.env, vec![("RUST_LOG".to_string(), "info".to_string())]);
        assert_eq!(req.output_limit, RunnerOutputLimit::default());
        assert!(req.stdin.is_none() && !req.non_interactive && req.timeout_ms.is_none());
    }

    #[test]
    fn seed_command_result_deserializes() {
        let res: RunnerCommandResult = serde_json::from_value(serde_json::json!({
            "command_id": "c", "exit_code": 0, "stdout": "hi\n", "stderr": ""
        }))
        .expect("seed result");
        assert!(res.success());
        assert!(!res.stdout_truncation.is_truncated());
    }

    #[test]
    fn caller_env_overrides_non_interactive_defaults() {
        let mut req = RunnerCommandRequest::new("c", "env", Vec::<String>::new());
        req.non_interactive = true;
        req.env.push(("TERM".into(), "xterm".into()));
        let env = req.effective_env();
        let last_term = env
            .iter()
            .rev()
            .find(|(k, _)| k == "TERM")
            .map(|(_, v)| v.as_str());
        assert_eq!(last_term, Some("xterm"));
        assert!(env.iter().any(|(k, v)| k == "GIT_EDITOR" && v == "true"));
    }

    #[test]
    fn events_are_tagged() {
        let ev = RunnerProcessEvent::Stdout {
            seq: 1,
            bytes: b"a".to_vec(),
        };
        let json = serde_json::to_value(&ev).expect("encode");
        assert_eq!(json["type"], "stdout");
    }
}
