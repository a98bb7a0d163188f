//! Commands on the remote host: each runs under `setsid`, so its process
//! group can be signalled through a second short command over the master.
//! Each also carries a session mark and a command mark in its environment
//! ([`SESSION_MARK`], `RUNNER_SSH_COMMAND`), set after the request's env, so
//! signals, cancellation, timeouts, `close` and the orphan sweep also reach
//! the processes that left the group (`setsid`, double forks), found by
//! their `/proc/<pid>/environ`.
//!
//! Foreground commands stream stdout and stderr through the ssh channel.
//! Background commands are detached from the channel: their output, process
//! group and exit status live in files of a remote command directory, and the
//! provider follows those files, so output survives a dropped connection and
//! a rejoin from another provider instance.

use openssh::Stdio;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use openssh::Session;
use runner_api::{
    RunnerCommandId, RunnerCommandRequest, RunnerError, RunnerErrorKind, RunnerFileReadRequest,
    RunnerOutputStream, RunnerResult, RunnerSignal,
};
use runner_kit::{OutputSink, ProcessControl, RawExit, SpawnedProcess, StdinPipe};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, Link};
use crate::error::transport_error;
use crate::files::{self, read_at};
use crate::script::{quote, quote_path, run_script};

/// Size of the buffers foreground output is read with.
const READ_CHUNK: usize = 64 * 1024;

/// Most bytes one poll of a background command reads per stream.
const POLL_READ: u64 = 1 << 20;

/// How long foreground output may stay silent after the command exited before
/// reading stops: a background grandchild that inherited the channel would
/// keep it open. While output keeps arriving, reading goes on (up to
/// [`READER_LIMIT`]), so a slow master never cuts the tail of the output.
const READER_GRACE: Duration = Duration::from_secs(5);

/// The longest foreground output is read after the command exited.
const READER_LIMIT: Duration = Duration::from_secs(30);

/// The word of the line `exited <status>` the foreground wrapper adds to the
/// command's record file once the command exited; the file then reads
/// `done <status>` ([`DONE`]) when the group is gone.
const EXITED: &str = "exited";

/// The word of the line `done <status>` the record file of a foreground
/// command whose process group is gone reads.
const DONE: &str = "done";

/// How often, at first and at most, a foreground command whose output
/// streams stay open is checked for having exited.
const WATCH_MIN: Duration = Duration::from_millis(200);
const WATCH_MAX: Duration = Duration::from_secs(1);

/// Once asked to stop, a reader still takes every byte that arrives within
/// this much of the previous one, so output that is already waiting (on a
/// machine too busy to run the readers for a while) is never cut.
const READER_QUIET: Duration = Duration::from_millis(250);

/// How long stopped readers may take to drain what is waiting before they are
/// cut off (a process that keeps writing into the channel forever).
const READER_STOP_LIMIT: Duration = Duration::from_secs(5);

/// Fastest and slowest polling of a background command's files.
const POLL_MIN: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);

/// Name of the file listing a background command's numbered chunks.
const CHUNK_INDEX: &str = "chunks";

/// The variable every command's environment gets with the session id, after
/// the destination's and the request's env (so neither replaces it): `close`
/// and the orphan sweep find every process of the session by it, including
/// those that left the command's process group (`setsid`, daemons).
pub(crate) const SESSION_MARK: &str = "RUNNER_SSH_SESSION";

/// The variable every command's environment gets with the name of its record
/// (the uuid of its `run/` file or `cmd/` directory), set last like
/// [`SESSION_MARK`]: signals, cancellation and timeouts reach every process
/// that carries it.
const COMMAND_MARK: &str = "RUNNER_SSH_COMMAND";

/// Rounds of KILL a mark scan makes at most: a process forking while it is
/// killed leaves children with the same mark, which the next round finds.
const KILL_ROUNDS: u32 = 10;

/// Shell that sends `signal` to every process whose environment holds
/// `var=value` (`/proc/<pid>/environ`, one `grep` over all of them; other
/// users' processes are unreadable and skipped). KILL is repeated until no
/// such process is left, at most [`KILL_ROUNDS`] times. A process that
/// cleared its environment (`env -i`) is not found.
pub(crate) fn signal_marked(var: &str, value: &str, signal: RunnerSignal) -> String {
    let rounds = if signal == RunnerSignal::Kill {
        KILL_ROUNDS
    } else {
        1
    };
    format!(
        "n=0; while [ $n -lt {rounds} ]; do \
         m=$(grep -l -z -x -F -e {mark} /proc/[0-9]*/environ 2>/dev/null); [ -z \"$m\" ] && break; \
         for f in $m; do p=${{f#/proc/}}; kill -s {sig} \"${{p%/environ}}\" 2>/dev/null; done; \
         n=$((n+1)); done; ",
        mark = quote(&format!("{var}={value}")),
        sig = signal.name(),
    )
}

/// What every command of one session shares.
pub(crate) struct ExecContext {
    /// The shared master.
    pub(crate) conn: Arc<Connection>,
    /// The session id, the value of [`SESSION_MARK`].
    pub(crate) session_id: String,
    /// Environment from `SshConfig.env`.
    pub(crate) env: BTreeMap<String, String>,
    /// Absolute remote workspace root (the default cwd).
    pub(crate) workspace: PathBuf,
    /// Absolute remote session directory.
    pub(crate) session_dir: PathBuf,
    /// Set to `true` when the handle detaches or closes: followers stop.
    pub(crate) stopped: watch::Sender<bool>,
}

impl ExecContext {
    /// Where background commands keep their files.
    pub(crate) fn commands_dir(&self) -> PathBuf {
        self.session_dir.join("cmd")
    }
}

/// What a background command's directory records about it, for a rejoin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommandMeta {
    /// The request, without its stdin bytes.
    pub(crate) request: RunnerCommandRequest,
    /// Start time, milliseconds since the Unix epoch.
    pub(crate) started_at_ms: u64,
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `K='V' … setsid 'program' 'arg' …`: the session's env, then the request's,
/// then the session and command marks (`mark` is the command's record name),
/// as assignments for the command alone (names that are not shell identifiers
/// go through `env`). The last assignment of a name wins, so the marks cannot
/// be replaced by the request.
fn command_words(ctx: &ExecContext, request: &RunnerCommandRequest, mark: &str) -> String {
    let mut assignments = Vec::new();
    let mut via_env = Vec::new();
    let marks = [
        (SESSION_MARK.to_string(), ctx.session_id.clone()),
        (COMMAND_MARK.to_string(), mark.to_string()),
    ];
    for (key, value) in ctx
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(request.effective_env())
        .chain(marks)
    {
        if is_identifier(&key) {
            assignments.push(format!("{key}={}", quote(&value)));
        } else {
            via_env.push(quote(&format!("{key}={value}")));
        }
    }
    let mut words = assignments;
    words.push("setsid".to_string());
    if !via_env.is_empty() {
        words.push("env".to_string());
        words.extend(via_env);
    }
    words.push(quote(&request.program));
    words.extend(request.args.iter().map(|a| quote(a)));
    words.join(" ")
}

/// The remote shell's command line: it reads the real script from the first
/// line of stdin (octal escapes, decoded by `printf`) and evaluates it, so the
/// program, its arguments and its environment never show in the command line
/// of a wrapper shell. Whatever follows that line is the script's stdin.
const BOOTSTRAP: &str = "IFS= read -r l && eval \"$(printf \"$l\")\"";

/// The first stdin line that carries `script` to [`BOOTSTRAP`].
fn bootstrap_line(script: &str) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(script.len() * 4 + 1);
    for byte in script.bytes() {
        let _ = write!(line, "\\{byte:03o}");
    }
    line.push('\n');
    line.into_bytes()
}

/// Checks the user, the working directory and the program before anything
/// runs; prints `E nouser`, `E otheruser <login user>`, `E nocwd`,
/// `E noprog` or `E noexec` and exits when one is wrong.
///
/// The user (a name or a uid) is looked up with the host's `id -u`; only the
/// login user's own uid is accepted: the provider switches to no other user
/// (no `sudo`). Without a user nothing is looked up.
fn preflight(cwd: &str, program: &str, user: Option<&str>) -> String {
    let p = quote(program);
    let user = user.map_or_else(String::new, |user| {
        format!(
            "u=$(id -u -- {u} 2>/dev/null) || {{ printf 'E nouser\\n'; exit 0; }}; \
             [ \"$u\" = \"$(id -u)\" ] || {{ printf 'E otheruser %s\\n' \"$(id -un)\"; exit 0; }}; ",
            u = quote(user)
        )
    });
    format!(
        "{user}cd -- {cwd} 2>/dev/null || {{ printf 'E nocwd\\n'; exit 0; }}; \
         case {p} in */*) if [ ! -e {p} ]; then printf 'E noprog\\n'; exit 0; \
         elif [ -d {p} ] || [ ! -x {p} ]; then printf 'E noexec\\n'; exit 0; fi;; \
         *) command -v {p} >/dev/null 2>&1 || {{ printf 'E noprog\\n'; exit 0; }};; esac; "
    )
}

fn cwd_of(ctx: &ExecContext, request: &RunnerCommandRequest) -> PathBuf {
    match &request.cwd {
        Some(cwd) if cwd.is_absolute() => cwd.clone(),
        Some(cwd) => ctx.workspace.join(cwd),
        None => ctx.workspace.clone(),
    }
}

/// Maps a preflight refusal (its code and what follows it) to an error.
fn refusal(operation: &str, request: &RunnerCommandRequest, cwd: &Path, line: &str) -> RunnerError {
    let id = &request.command_id;
    let program = &request.program;
    let (code, detail) = line.split_once(' ').unwrap_or((line, ""));
    let user = request.user.as_deref().unwrap_or_default();
    match code {
        "nouser" => RunnerError::not_found(format!(
            "{operation} {id}: user {user:?} not found on the host"
        )),
        "otheruser" => RunnerError::permission_denied(format!(
            "{operation} {id}: cannot run as user {user:?}: the ssh provider runs commands only \
             as the login user ({detail:?}) and offers no sudo or other escalation"
        )),
        "nocwd" => RunnerError::not_found(format!(
            "{operation} {id}: working directory {} not found",
            cwd.display()
        )),
        "noprog" => {
            RunnerError::not_found(format!("{operation} {id}: program {program} not found"))
        }
        "noexec" => RunnerError::permission_denied(format!(
            "{operation} {id}: program {program} is not executable (permission denied)"
        )),
        _ => RunnerError::provider(format!("{operation} {id}: launch failed: {line}")),
    }
}

/// Reads the one-line header the launch script prints; returns it and any
/// bytes that followed it.
async fn read_header(
    reader: &mut (impl AsyncRead + Unpin),
) -> io::Result<(Option<String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok((None, buf));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let rest = buf.split_off(pos + 1);
            buf.truncate(pos);
            return Ok((Some(String::from_utf8_lossy(&buf).into_owned()), rest));
        }
        if buf.len() > 1024 {
            return Ok((None, buf));
        }
    }
}

/// The script that signals the process group recorded in the file `file`
/// (waiting briefly for a command that is still starting to record it), then
/// every process carrying the command's `mark` (those that left the group).
fn signal_script(file: &str, mark: &str, signal: RunnerSignal) -> String {
    format!(
        "f={file}; i=0; while [ ! -s \"$f\" ] && [ $i -lt 100 ]; do \
         sleep 0.05; i=$((i+1)); done; read p < \"$f\" 2>/dev/null; \
         case \"$p\" in ''|*[!0-9]*) ;; *) kill -s {sig} -- -\"$p\" 2>/dev/null;; esac; \
         {marked}exit 0",
        sig = signal.name(),
        marked = signal_marked(COMMAND_MARK, mark, signal),
    )
}

/// Signals a command's remote process group; writes its stdin.
struct RemoteControl {
    conn: Arc<Connection>,
    /// The file holding the command's process group id, quoted.
    pgid_file: String,
    /// The command's [`COMMAND_MARK`] value.
    mark: String,
    /// The command's remote directory, quoted (used for the stdin FIFO of
    /// background commands).
    dir: String,
    /// Foreground stdin through the channel, with the command id its errors
    /// name.
    stdin: Option<(RunnerCommandId, StdinPipe)>,
    /// Background stdin kept open through a FIFO in the command directory.
    fifo: bool,
}

#[async_trait]
impl ProcessControl for RemoteControl {
    async fn signal(&self, signal: RunnerSignal) -> RunnerResult<()> {
        let script = signal_script(&self.pgid_file, &self.mark, signal);
        self.conn
            .with_link(|link| {
                let script = script.clone();
                async move {
                    run_script(&link, "signal_command", &script, None).await?;
                    Ok(())
                }
            })
            .await
    }

    async fn write_stdin(&self, bytes: Vec<u8>, close: bool) -> RunnerResult<()> {
        if let Some((command_id, stdin)) = &self.stdin {
            return stdin.write(command_id, bytes, close).await;
        }
        if !self.fifo {
            return Err(RunnerError::invalid_request(
                "stdin is closed (or was not kept open with keep_stdin_open)",
            ));
        }
        write_fifo(&self.conn, &self.dir, bytes, close).await
    }
}

async fn write_fifo(conn: &Connection, dir: &str, bytes: Vec<u8>, close: bool) -> RunnerResult<()> {
    let mut script =
        format!("d={dir}; [ -e \"$d/stdin.closed\" ] && exit 3; [ -e \"$d/exit\" ] && exit 4; ");
    if !bytes.is_empty() {
        script.push_str("cat > \"$d/stdin.fifo\" || exit 5; ");
    }
    if close {
        script.push_str(
            ": > \"$d/stdin.closed\"; h=$(cat \"$d/stdin.holder\" 2>/dev/null); \
             [ -n \"$h\" ] && kill \"$h\" 2>/dev/null; ",
        );
    }
    script.push_str("exit 0");
    let out = conn
        .with_link(|link| {
            let script = script.clone();
            let bytes = bytes.clone();
            async move {
                let stdin = if bytes.is_empty() {
                    None
                } else {
                    Some(bytes.as_slice())
                };
                run_script(&link, "write_stdin", &script, stdin).await
            }
        })
        .await?;
    match out.code {
        Some(0) => Ok(()),
        Some(3) => Err(RunnerError::invalid_request("stdin is already closed")),
        Some(4) => Err(RunnerError::invalid_request("the command has exited")),
        _ => Err(RunnerError::provider(format!(
            "writing stdin failed: {}",
            out.stderr_text()
        ))),
    }
}

/// Copies one output stream into `sink` until its end. Once `stop` is
/// cancelled it ends at the first pause of [`READER_QUIET`].
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    sink: OutputSink,
    stream: RunnerOutputStream,
    progress: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = tokio::select! {
            biased;
            read = reader.read(&mut buf) => read,
            () = stop.cancelled() => {
                match tokio::time::timeout(READER_QUIET, reader.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => return,
                }
            }
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                progress.fetch_add(n as u64, Ordering::Relaxed);
                sink.push(stream, &buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The wait status a foreground command's record file holds once the command
/// exited (a line `exited <status>` or `done <status>`), `None` before.
fn recorded_status(record: &str) -> Option<i64> {
    record.lines().find_map(|line| {
        let (word, status) = line.split_once(' ')?;
        if word == EXITED || word == DONE {
            status.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The wait status the wrapper recorded in the foreground command's `record`
/// file, `None` while the command runs or when the file cannot be read.
async fn command_status(conn: &Connection, record: &Path) -> Option<i64> {
    let link = conn.link().await.ok()?;
    let text = read_small(&link, record).await.ok()??;
    recorded_status(&text)
}

/// The exit of a foreground command from the channel's `status`. When the
/// channel gives none, the status the wrapper recorded in `record` is taken:
/// openssh's native-mux `wait()` turns exit status 127 into an error ("remote
/// command not found") although it is the program's own (`sh -c missing`).
async fn foreground_exit(
    command_id: &str,
    status: Result<std::process::ExitStatus, openssh::Error>,
    conn: &Connection,
    record: &Path,
) -> RunnerResult<RawExit> {
    let channel = status
        .as_ref()
        .ok()
        .and_then(std::process::ExitStatus::code);
    if let Some(code) = channel {
        return Ok(RawExit::from_shell_status(i64::from(code)));
    }
    if let Some(code) = command_status(conn, record).await {
        return Ok(RawExit::from_shell_status(code));
    }
    Err(match status {
        Err(e) => transport_error(&format!("run_command {command_id}: waiting"), e),
        Ok(_) => RunnerError::new(
            RunnerErrorKind::Unavailable,
            format!("run_command {command_id}: the connection ended without an exit status"),
        ),
    })
}

/// Reads a foreground command's output to the end of both streams before its
/// exit status is taken: the master drops whatever it still holds for the
/// channel once the exit status has been collected, and ssh may deliver the
/// exit status before the last output. When the streams stay open (a
/// background process inherited them), the command's `record` file tells when
/// it exited; from then on the readers stop once no byte arrived for
/// [`READER_GRACE`], or after [`READER_LIMIT`] in all. Stopped readers still
/// read what is already waiting (so a reader the runtime could not schedule
/// for a while loses nothing) and end at their first pause, or are cut off
/// after [`READER_STOP_LIMIT`].
async fn collect(
    readers: Vec<JoinHandle<()>>,
    progress: &AtomicU64,
    stop: CancellationToken,
    conn: &Connection,
    record: &Path,
) {
    let aborts: Vec<_> = readers.iter().map(JoinHandle::abort_handle).collect();
    let finished = async move {
        for reader in readers {
            let _ = reader.await;
        }
    };
    tokio::pin!(finished);
    let mut watch = WATCH_MIN;
    loop {
        if tokio::time::timeout(watch, &mut finished).await.is_ok() {
            return;
        }
        if command_status(conn, record).await.is_some() {
            break;
        }
        watch = (watch * 2).min(WATCH_MAX);
    }
    let deadline = tokio::time::Instant::now() + READER_LIMIT;
    loop {
        let seen = progress.load(Ordering::Relaxed);
        if tokio::time::timeout(READER_GRACE, &mut finished)
            .await
            .is_ok()
        {
            return;
        }
        if progress.load(Ordering::Relaxed) == seen || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    stop.cancel();
    let cut = tokio::time::timeout(READER_STOP_LIMIT, &mut finished)
        .await
        .is_err();
    if cut {
        for abort in aborts {
            abort.abort();
        }
    }
    tracing::warn!(
        bytes_read = progress.load(Ordering::Relaxed),
        cut,
        "stopped reading a foreground command's output after it exited: the channel stayed \
         open (a background process still holds it?); later output is not collected"
    );
}

/// Starts a foreground command: output comes back through the channel.
///
/// Errors: `NotFound` (cwd or program missing), `PermissionDenied` (program not
/// executable), `Unavailable` (no connection), `Provider` otherwise.
pub(crate) async fn start_foreground(
    ctx: Arc<ExecContext>,
    request: RunnerCommandRequest,
    stdin: Option<Vec<u8>>,
    sink: OutputSink,
) -> RunnerResult<SpawnedProcess> {
    let operation = "run_command";
    let cwd = cwd_of(&ctx, &request);
    let mark = uuid::Uuid::new_v4().simple().to_string();
    let pgid_file = ctx.session_dir.join("run").join(&mark);
    let file_q = quote_path(operation, &pgid_file)?;
    let keep_open = request.keep_stdin_open;
    let piped = stdin.is_some() || keep_open;
    let script = format!(
        "f={file_q}; [ -d \"${{f%/*}}\" ] || mkdir -p \"${{f%/*}}\" || exit 125; \
         {pre}printf 'R\\n'; exec 3<&0; \
         {words} {input} 3<&- & echo $! > \"$f\"; exec 2>/dev/null; wait $!; st=$?; \
         echo \"{EXITED} $st\" >> \"$f\"; \
         kill -s 0 -- -$! 2>/dev/null || echo \"{DONE} $st\" > \"$f\"; exit $st",
        pre = preflight(
            &quote_path(operation, &cwd)?,
            &request.program,
            request.user.as_deref()
        ),
        words = command_words(&ctx, &request, &mark),
        input = if piped { "<&3" } else { "</dev/null" },
    );
    let mut child = ctx
        .conn
        .with_link(|link| async move {
            let mut command = Session::to_raw_command(link.session.clone(), BOOTSTRAP);
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            command
                .spawn()
                .await
                .map_err(|e| transport_error("run_command: starting the remote shell", e))
        })
        .await?;
    let mut pipe = child
        .stdin()
        .take()
        .ok_or_else(|| RunnerError::provider("run_command: no stdin pipe"))?;
    let line = bootstrap_line(&script);
    let sent = async {
        pipe.write_all(&line).await?;
        pipe.flush().await
    };
    sent.await.map_err(|e| {
        RunnerError::from_io(
            "run_command: sending the launch script",
            &request.command_id,
            e,
        )
    })?;
    let pipe = if piped { Some(pipe) } else { None };
    let mut stdout = child
        .stdout()
        .take()
        .ok_or_else(|| RunnerError::provider("run_command: no stdout pipe"))?;
    let stderr = child.stderr().take();
    let (header, rest) = read_header(&mut stdout).await.map_err(|e| {
        RunnerError::from_io(
            "run_command: reading the launch header",
            &request.command_id,
            e,
        )
    })?;
    match header.as_deref() {
        Some("R") => {}
        Some(line) => {
            let _ = child.wait().await;
            return Err(refusal(
                operation,
                &request,
                &cwd,
                line.trim_start_matches("E "),
            ));
        }
        None => {
            let mut err = Vec::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_end(&mut err).await;
            }
            let status = child.wait().await;
            return Err(RunnerError::new(
                if status.is_err() {
                    RunnerErrorKind::Unavailable
                } else {
                    RunnerErrorKind::Provider
                },
                format!(
                    "run_command {}: the remote shell ended before starting the command: {}",
                    request.command_id,
                    String::from_utf8_lossy(&err).trim()
                ),
            ));
        }
    }
    sink.push(RunnerOutputStream::Stdout, &rest);

    let stdin = StdinPipe::start(pipe, stdin, keep_open);
    let progress = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let readers: Vec<JoinHandle<()>> = [
        Some(tokio::spawn(pump(
            stdout,
            sink.clone(),
            RunnerOutputStream::Stdout,
            progress.clone(),
            stop.clone(),
        ))),
        stderr.map(|err| {
            tokio::spawn(pump(
                err,
                sink,
                RunnerOutputStream::Stderr,
                progress.clone(),
                stop.clone(),
            ))
        }),
    ]
    .into_iter()
    .flatten()
    .collect();

    let command_id = request.command_id.clone();
    let exit_stdin = stdin.clone();
    let conn = ctx.conn.clone();
    let exit = Box::pin(async move {
        collect(readers, &progress, stop, &conn, &pgid_file).await;
        exit_stdin.release();
        let status = child.wait().await;
        foreground_exit(&command_id, status, &conn, &pgid_file).await
    });
    Ok(SpawnedProcess {
        pid: None,
        control: Arc::new(RemoteControl {
            conn: ctx.conn.clone(),
            pgid_file: file_q.clone(),
            mark,
            dir: file_q,
            stdin: Some((request.command_id.clone(), stdin)),
            fifo: false,
        }),
        exit,
    })
}

/// Starts a background command detached from the channel, writing its output
/// to files of its command directory, and follows those files.
///
/// Errors: as [`start_foreground`].
pub(crate) async fn start_background(
    ctx: Arc<ExecContext>,
    request: RunnerCommandRequest,
    stdin: Option<Vec<u8>>,
    sink: OutputSink,
) -> RunnerResult<SpawnedProcess> {
    let operation = "start_command";
    let cwd = cwd_of(&ctx, &request);
    let mark = uuid::Uuid::new_v4().simple().to_string();
    let dir = ctx.commands_dir().join(&mark);
    let meta = CommandMeta {
        request: request.clone(),
        started_at_ms: now_ms(),
    };
    let meta_json = serde_json::to_vec(&meta).map_err(|e| {
        RunnerError::provider(format!("{operation}: encoding command metadata: {e}"))
    })?;
    let dir_q = quote_path(operation, &dir)?;
    let keep_open = request.keep_stdin_open;
    let with_bytes = stdin.is_some() && !keep_open;
    // A launch repeated after a lost connection finds `launched` and only
    // reports the process group, so the command never starts twice.
    let mut script = format!(
        "d={dir_q}; if [ -e \"$d/launched\" ]; then \
         i=0; while [ ! -s \"$d/pgid\" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done; \
         read p < \"$d/pgid\"; printf 'R %s\\n' \"$p\"; exit 0; fi; : > \"$d/launched\"; {pre}",
        pre = preflight(
            &quote_path(operation, &cwd)?,
            &request.program,
            request.user.as_deref()
        )
    );
    if with_bytes {
        script.push_str("cat > \"$d/stdin\" || exit 125; in=\"$d/stdin\"; ");
    } else if keep_open {
        script.push_str(
            "mkfifo \"$d/stdin.fifo\" || exit 125; \
             sleep 2147483647 3<>\"$d/stdin.fifo\" </dev/null >/dev/null 2>&1 & \
             echo $! > \"$d/stdin.holder\"; in=\"$d/stdin.fifo\"; ",
        );
    } else {
        script.push_str("in=/dev/null; ");
    }
    script.push_str(&format!(
        ": > \"$d/stdout\"; : > \"$d/stderr\"; \
         ( {words} <\"$in\" >\"$d/stdout\" 2>\"$d/stderr\" & \
           echo $! > \"$d/pgid.tmp\"; mv \"$d/pgid.tmp\" \"$d/pgid\"; wait $!; \
           echo $? > \"$d/exit.tmp\"; mv \"$d/exit.tmp\" \"$d/exit\"; \
           h=$(cat \"$d/stdin.holder\" 2>/dev/null); [ -n \"$h\" ] && kill \"$h\" 2>/dev/null ) \
         </dev/null >/dev/null 2>&1 & \
         i=0; while [ ! -s \"$d/pgid\" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done; \
         printf 'R %s\\n' \"$(cat \"$d/pgid\" 2>/dev/null)\"",
        words = command_words(&ctx, &request, &mark),
    ));
    let mut launch_input = bootstrap_line(&script);
    if with_bytes && let Some(bytes) = &stdin {
        launch_input.extend_from_slice(bytes);
    }
    let out = ctx
        .conn
        .with_link(|link| {
            let dir = dir.clone();
            let meta_json = meta_json.clone();
            let launch_input = &launch_input;
            async move {
                files::make_dirs(&link, &dir).await?;
                files::write_small_file(&link, &dir.join("meta.json"), &meta_json, Some(0o600))
                    .await?;
                run_script(&link, operation, BOOTSTRAP, Some(launch_input)).await
            }
        })
        .await?;
    let header = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let pid = match header.strip_prefix("R") {
        Some(pgid) => pgid.trim().parse::<u32>().ok(),
        None => {
            let cleanup = format!("rm -rf -- {dir_q}");
            let _ = ctx
                .conn
                .with_link(|link| {
                    let cleanup = cleanup.clone();
                    async move { run_script(&link, operation, &cleanup, None).await }
                })
                .await;
            return Err(match header.strip_prefix("E ") {
                Some(code) => refusal(operation, &request, &cwd, code),
                None => RunnerError::provider(format!(
                    "{operation} {}: launch failed (exit {:?}): {}",
                    request.command_id,
                    out.code,
                    out.stderr_text()
                )),
            });
        }
    };
    if keep_open && let Some(bytes) = stdin.filter(|b| !b.is_empty()) {
        write_fifo(&ctx.conn, &dir_q, bytes, false).await?;
    }
    Follower::new(ctx, dir).spawned(operation, dir_q, pid, keep_open, sink)
}

/// Takes over a background command found in the session directory (after a
/// rejoin): replays its numbered chunks, then follows its files.
pub(crate) async fn adopt_background(
    ctx: Arc<ExecContext>,
    dir: PathBuf,
    keep_open: bool,
    sink: OutputSink,
) -> RunnerResult<SpawnedProcess> {
    let operation = "rejoin_session";
    let dir_q = quote_path(operation, &dir)?;
    let mut follower = Follower::new(ctx.clone(), dir);
    let link = ctx.conn.link().await?;
    follower.replay(&link, &sink).await?;
    let pid = read_small(&link, &follower.dir.join("pgid"))
        .await?
        .and_then(|text| text.trim().parse::<u32>().ok());
    follower.spawned(operation, dir_q, pid, keep_open, sink)
}

/// Reads a small remote file (its first 64 KiB); `None` when it does not
/// exist.
pub(crate) async fn read_small(link: &Link, path: &Path) -> RunnerResult<Option<String>> {
    Ok(read_optional(link, path, Some(64 * 1024))
        .await?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Reads a remote regular file, at most `limit` bytes (without one, up to
/// [`runner_api::MAX_READ_BYTES`]); `None` when it does not exist.
async fn read_optional(
    link: &Link,
    path: &Path,
    limit: Option<u64>,
) -> RunnerResult<Option<Bytes>> {
    let request = RunnerFileReadRequest {
        path: path.to_path_buf(),
        offset: None,
        limit,
    };
    match files::read_small_file(link, path, &request).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == RunnerErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Follows a background command's files and numbers its output.
///
/// Chunk numbering: each chunk the follower reads is first appended to the
/// command directory's `chunks` file as `<o|e> <offset> <length>`, and only
/// then delivered; line *n* of that file is chunk *n*. Within one poll stdout
/// is read before stderr. A later reader (another provider instance) replays
/// the same lines, so sequence numbers are the same whether output was seen
/// live or read back.
struct Follower {
    ctx: Arc<ExecContext>,
    dir: PathBuf,
    out: u64,
    err: u64,
    index: u64,
}

impl Follower {
    /// Follows the command directory `dir` from its first chunk.
    fn new(ctx: Arc<ExecContext>, dir: PathBuf) -> Self {
        Self {
            ctx,
            dir,
            out: 0,
            err: 0,
            index: 0,
        }
    }

    /// The tracked process of the followed command: signals go to the group
    /// recorded in its directory (`dir_q`, quoted) and to the processes
    /// carrying its mark (the directory's name), its exit is the end of the
    /// followed output.
    fn spawned(
        self,
        operation: &str,
        dir_q: String,
        pid: Option<u32>,
        keep_open: bool,
        sink: OutputSink,
    ) -> RunnerResult<SpawnedProcess> {
        Ok(SpawnedProcess {
            pid,
            control: Arc::new(RemoteControl {
                conn: self.ctx.conn.clone(),
                pgid_file: quote_path(operation, &self.dir.join("pgid"))?,
                mark: self
                    .dir
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                dir: dir_q,
                stdin: None,
                fifo: keep_open,
            }),
            exit: Box::pin(self.follow(sink)),
        })
    }

    /// Pushes every chunk listed in the index into `sink`.
    async fn replay(&mut self, link: &Link, sink: &OutputSink) -> RunnerResult<()> {
        let index_path = self.dir.join(CHUNK_INDEX);
        let Some(index) = read_optional(link, &index_path, None).await? else {
            return Ok(());
        };
        self.index = index.len() as u64;
        let text = String::from_utf8_lossy(&index);
        let mut stdout = None;
        let mut stderr = None;
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some(stream), Some(Ok(offset)), Some(Ok(len))) = (
                parts.next(),
                parts.next().map(str::parse::<u64>),
                parts.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            let (file, name, kind) = match stream {
                "o" => (&mut stdout, "stdout", RunnerOutputStream::Stdout),
                _ => (&mut stderr, "stderr", RunnerOutputStream::Stderr),
            };
            if file.is_none() {
                let path = self.dir.join(name);
                *file = Some(files::open_regular(link, "rejoin", &path, None).await?.0);
            }
            let Some(handle) = file.as_mut() else {
                continue;
            };
            let bytes = read_at(link, handle, &self.dir.join(name), offset, len).await?;
            sink.push(kind, &bytes);
            match kind {
                RunnerOutputStream::Stdout => self.out = offset + len,
                RunnerOutputStream::Stderr => self.err = offset + len,
            }
        }
        Ok(())
    }

    /// One look at the files: new output is indexed and delivered. Returns
    /// whether output arrived, and the exit once the command has exited and
    /// all its output was delivered.
    async fn poll(
        &mut self,
        link: &Link,
        sink: &OutputSink,
    ) -> RunnerResult<(bool, Option<RawExit>)> {
        let exit = read_small(link, &self.dir.join("exit")).await?;
        let mut got = false;
        for (name, kind) in [
            ("stdout", RunnerOutputStream::Stdout),
            ("stderr", RunnerOutputStream::Stderr),
        ] {
            let path = self.dir.join(name);
            let offset = match kind {
                RunnerOutputStream::Stdout => self.out,
                RunnerOutputStream::Stderr => self.err,
            };
            let mut file = match files::open_regular(link, "follow output", &path, None).await {
                Ok((file, _)) => file,
                Err(e) if e.kind() == RunnerErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let bytes = read_at(link, &mut file, &path, offset, POLL_READ).await?;
            drop(file);
            if bytes.is_empty() {
                continue;
            }
            let tag = if kind == RunnerOutputStream::Stdout {
                "o"
            } else {
                "e"
            };
            let line = format!("{tag} {offset} {}\n", bytes.len());
            self.append_index(link, line.as_bytes()).await?;
            sink.push(kind, &bytes);
            match kind {
                RunnerOutputStream::Stdout => self.out += bytes.len() as u64,
                RunnerOutputStream::Stderr => self.err += bytes.len() as u64,
            }
            got = true;
        }
        let exit = match exit {
            Some(text) if !got => Some(RawExit::from_shell_status(
                text.trim().parse::<i64>().map_err(|_| {
                    RunnerError::provider(format!("follow output: bad exit status {text:?}"))
                })?,
            )),
            _ => None,
        };
        Ok((got, exit))
    }

    async fn append_index(&mut self, link: &Link, line: &[u8]) -> RunnerResult<()> {
        let path = self.dir.join(CHUNK_INDEX);
        let mut options = link.sftp.options();
        options.write(true).create(true);
        let (file, _) = files::open_regular(link, "index output", &path, Some(options)).await?;
        let body = runner_api::bytes_stream(line.to_vec());
        files::write_body(link, "index output", &path, &file, self.index, body).await?;
        drop(file);
        self.index += line.len() as u64;
        Ok(())
    }

    /// Polls until the command has exited (or the handle stops).
    async fn follow(mut self, sink: OutputSink) -> RunnerResult<RawExit> {
        let mut stopped = self.ctx.stopped.subscribe();
        let mut delay = POLL_MIN;
        loop {
            if *stopped.borrow() {
                return Err(RunnerError::session_closed(
                    "follow output",
                    &self.dir.display().to_string(),
                ));
            }
            let outcome = match self.ctx.conn.link().await {
                Ok(link) => match self.poll(&link, &sink).await {
                    Err(e) if e.kind() == RunnerErrorKind::Unavailable => {
                        let _ = self.ctx.conn.recover(&link).await;
                        Err(e)
                    }
                    other => other,
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok((_, Some(exit))) => return Ok(exit),
                Ok((true, None)) => delay = POLL_MIN,
                Ok((false, None)) => delay = (delay * 2).min(POLL_MAX),
                Err(e) => {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "following command output failed; retrying");
                    delay = POLL_MAX;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_status_is_read_once_the_command_exited() {
        assert_eq!(recorded_status("4242\n"), None);
        assert_eq!(recorded_status("4242\nexited 127\n"), Some(127));
        assert_eq!(recorded_status("done 0\n"), Some(0));
        assert_eq!(recorded_status("done 255"), Some(255));
        assert_eq!(recorded_status("exited x\n"), None);
    }

    #[test]
    fn user_refusals_name_the_user() {
        let mut request = RunnerCommandRequest::shell("c", "true");
        request.user = Some("root".into());
        let cwd = Path::new("/w");
        let denied = refusal("run_command", &request, cwd, "otheruser runner-test");
        assert_eq!(denied.kind(), RunnerErrorKind::PermissionDenied);
        assert!(
            denied.message().contains("\"root\""),
            "{}",
            denied.message()
        );
        assert!(
            denied.message().contains("runner-test"),
            "{}",
            denied.message()
        );
        request.user = Some("ghost".into());
        let missing = refusal("start_command", &request, cwd, "nouser");
        assert_eq!(missing.kind(), RunnerErrorKind::NotFound);
        assert!(
            missing.message().contains("\"ghost\""),
            "{}",
            missing.message()
        );
    }
}
