//! Process bookkeeping shared by every provider.
//!
//! A provider knows how to start a process on its backend and how to signal its
//! process group; everything else lives here once: idempotent command ids,
//! timeouts that kill the whole tree (TERM, a grace, KILL), cancellation, the
//! head/tail view, the numbered output log, live event streams, pause/resume and
//! closing. A provider calls [`ProcessTable::start`] or [`ProcessTable::run`] with
//! a closure that spawns the process and feeds its output into an [`OutputSink`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::output::{HeadTailBuffer, OutputLog};
use runner_api::{
    RunnerCommandId, RunnerCommandOutput, RunnerCommandRequest, RunnerCommandResult, RunnerError,
    RunnerErrorKind, RunnerEventStream, RunnerExitStatus, RunnerOutputStream, RunnerProcessEvent,
    RunnerProcessInfo, RunnerProcessState, RunnerResult, RunnerSignal,
};

/// Provider-specific control over one spawned command.
#[async_trait]
pub trait ProcessControl: Send + Sync + 'static {
    /// Sends `signal` to the command's whole process group. A group that no
    /// longer exists is `Ok`.
    async fn signal(&self, signal: RunnerSignal) -> RunnerResult<()>;

    /// Writes to the command's stdin and closes it when `close` is set.
    /// The default refuses: stdin was not kept open.
    async fn write_stdin(&self, bytes: Vec<u8>, close: bool) -> RunnerResult<()> {
        let _ = (bytes, close);
        Err(RunnerError::invalid_request("stdin is not open"))
    }

    /// Changes the size of the command's terminal. The default refuses: the
    /// command does not run on a terminal.
    async fn resize(&self, rows: u16, cols: u16) -> RunnerResult<()> {
        let _ = (rows, cols);
        Err(RunnerError::invalid_request(
            "the command does not run on a terminal",
        ))
    }
}

/// How the backend saw a process end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawExit {
    /// Exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl RawExit {
    /// A wait status as shells (and Docker) report it: 129–192 means killed by
    /// signal `status - 128`; anything else is an exit code. A program that
    /// exits with such a code by itself is therefore reported as signalled.
    pub fn from_shell_status(status: i64) -> Self {
        if (129..=192).contains(&status) {
            Self {
                exit_code: None,
                signal: Some((status - 128) as i32),
            }
        } else {
            Self {
                exit_code: Some(i32::try_from(status).unwrap_or(i32::MAX)),
                signal: None,
            }
        }
    }
}

/// A process a provider has started.
pub struct SpawnedProcess {
    /// Process id on the runner, when known.
    pub pid: Option<u32>,
    /// How to signal it and write its stdin.
    pub control: Arc<dyn ProcessControl>,
    /// Resolves once the process has exited and its output has been pushed
    /// into the [`OutputSink`].
    pub exit: Pin<Box<dyn Future<Output = RunnerResult<RawExit>> + Send + 'static>>,
}

/// Where a spawned process's output goes. Cheap to clone.
#[derive(Clone)]
pub struct OutputSink(Arc<Record>);

impl OutputSink {
    /// Appends bytes of `stream`.
    pub fn push(&self, stream: RunnerOutputStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut st = self.0.lock();
        match stream {
            RunnerOutputStream::Stdout => st.stdout.push(bytes),
            RunnerOutputStream::Stderr => st.stderr.push(bytes),
        }
        let seq = st.log.push(stream, bytes.to_vec());
        drop(st);
        self.0.changed.send_replace(seq);
    }
}

/// Tuning of a [`ProcessTable`].
#[derive(Debug, Clone)]
pub struct ProcessTableConfig {
    /// Provider id, used in error messages.
    pub provider_id: String,
    /// Time between TERM and KILL when a tree is killed.
    pub kill_grace: Duration,
    /// Time to wait for a killed process to be reported exited before giving up on it.
    pub exit_wait: Duration,
    /// Bytes of numbered output chunks kept per command.
    pub log_bytes: usize,
    /// Finished commands kept for `command_status` and `command_output`; the oldest
    /// finished ones are forgotten first.
    pub retain_finished: usize,
    /// Whether the provider's spawn step honours `RunnerCommandRequest::user`
    /// (its `run_as_user` capability). Without it the table refuses a request
    /// naming a user with `Unsupported`, so no provider runs such a command as
    /// the session's user by mistake.
    pub run_as_user: bool,
}

impl ProcessTableConfig {
    /// Defaults: 1 s grace, 10 s exit wait, 1 MiB log per command, 64 finished
    /// kept, no `run_as_user`.
    pub fn new(provider_id: impl Into<String>) -> Self {
        Self {
            provider_id: provider_id.into(),
            kill_grace: Duration::from_secs(1),
            exit_wait: Duration::from_secs(10),
            log_bytes: 1 << 20,
            retain_finished: 64,
            run_as_user: false,
        }
    }
}

struct RecordState {
    stdout: HeadTailBuffer,
    stderr: HeadTailBuffer,
    log: OutputLog,
    pid: Option<u32>,
    status: Option<RunnerExitStatus>,
    timed_out: bool,
    cancel_requested: bool,
}

struct Record {
    request: RunnerCommandRequest,
    started_at_ms: u64,
    started: Instant,
    state: Mutex<RecordState>,
    changed: watch::Sender<u64>,
    control: OnceLock<Arc<dyn ProcessControl>>,
}

impl Record {
    fn lock(&self) -> MutexGuard<'_, RecordState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_running(&self) -> bool {
        self.lock().status.is_none()
    }

    fn info(&self) -> RunnerProcessInfo {
        let st = self.lock();
        RunnerProcessInfo {
            command_id: self.request.command_id.clone(),
            program: self.request.program.clone(),
            args: self.request.args.clone(),
            pid: st.pid,
            state: if st.status.is_some() {
                RunnerProcessState::Exited
            } else {
                RunnerProcessState::Running
            },
            started_at_ms: self.started_at_ms,
            status: st.status,
            stdout_bytes: st.stdout.bytes_seen(),
            stderr_bytes: st.stderr.bytes_seen(),
            last_seq: st.log.last_seq(),
        }
    }

    fn finish(&self, raw: RawExit) {
        let mut st = self.lock();
        if st.status.is_some() {
            return;
        }
        st.status = Some(RunnerExitStatus {
            exit_code: raw.exit_code,
            signal: raw.signal,
            timed_out: st.timed_out,
            cancelled: st.cancel_requested && !st.timed_out,
            duration_ms: self.started.elapsed().as_millis() as u64,
        });
        let seq = st.log.last_seq();
        drop(st);
        tracing::debug!(command_id = %self.request.command_id, ?raw, "command exited");
        self.changed.send_replace(seq);
    }

    fn result(&self) -> RunnerCommandResult {
        let st = self.lock();
        let status = st.status.unwrap_or_default();
        let (stdout, stdout_truncation) = st.stdout.render();
        let (stderr, stderr_truncation) = st.stderr.render();
        RunnerCommandResult {
            command_id: self.request.command_id.clone(),
            exit_code: status.exit_code,
            stdout,
            stderr,
            signal: status.signal,
            timed_out: status.timed_out,
            cancelled: status.cancelled,
            duration_ms: status.duration_ms,
            stdout_truncation,
            stderr_truncation,
        }
    }

    async fn wait_exit(&self) {
        let mut rx = self.changed.subscribe();
        while self.is_running() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// TERM (and CONT, in case the group is stopped) to the group, wait up to
    /// `grace` for the command to exit, then KILL the group to catch every
    /// process that ignored TERM.
    async fn kill_tree(&self, grace: Duration) {
        let Some(control) = self.control.get().cloned() else {
            return;
        };
        let id = &self.request.command_id;
        for signal in [RunnerSignal::Terminate, RunnerSignal::Continue] {
            if let Err(e) = control.signal(signal).await {
                tracing::warn!(command_id = %id, error = %e, "sending {} failed", signal.name());
            }
        }
        let _ = tokio::time::timeout(grace, self.wait_exit()).await;
        if let Err(e) = control.signal(RunnerSignal::Kill).await {
            tracing::warn!(command_id = %id, error = %e, "sending KILL failed");
        }
    }
}

#[derive(Default)]
struct TableState {
    records: HashMap<RunnerCommandId, Arc<Record>>,
    order: Vec<RunnerCommandId>,
    paused: bool,
}

/// The commands of one session: what is running, what finished, their output.
pub struct ProcessTable {
    config: ProcessTableConfig,
    state: Mutex<TableState>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks a command request: non-empty id and program, no NUL bytes anywhere,
/// environment keys without `=`, output budgets within
/// [`RunnerOutputLimit::MAX_BYTES`].
pub fn validate_command_request(request: &RunnerCommandRequest) -> RunnerResult<()> {
    let id = &request.command_id;
    let bad = |what: &str| RunnerError::invalid_request(format!("command {id:?}: {what}"));
    if id.is_empty() {
        return Err(RunnerError::invalid_request("command: command_id is empty"));
    }
    if id.contains('\0') || id.chars().any(char::is_control) {
        return Err(RunnerError::invalid_request(
            "command: command_id contains control characters",
        ));
    }
    if request.program.is_empty() {
        return Err(bad("program is empty"));
    }
    if request.program.contains('\0') || request.args.iter().any(|a| a.contains('\0')) {
        return Err(bad("program or an argument contains a NUL byte"));
    }
    for (key, value) in &request.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(bad(&format!("environment key {key:?} is invalid")));
        }
        if value.contains('\0') {
            return Err(bad(&format!(
                "environment value of {key} contains a NUL byte"
            )));
        }
    }
    if let Some(cwd) = &request.cwd {
        runner_api::reject_nul_path(&format!("command {id:?}: cwd"), cwd)?;
    }
    if request.timeout_ms == Some(0) {
        return Err(bad("timeout_ms must be greater than 0"));
    }
    let limit = request.output_limit;
    let max = runner_api::RunnerOutputLimit::MAX_BYTES;
    if limit.head_bytes > max || limit.tail_bytes > max {
        return Err(bad(&format!(
            "output_limit head_bytes {} / tail_bytes {} exceed the maximum of {max} bytes each",
            limit.head_bytes, limit.tail_bytes
        )));
    }
    Ok(())
}

impl ProcessTable {
    /// An empty table.
    pub fn new(config: ProcessTableConfig) -> Self {
        Self {
            config,
            state: Mutex::new(TableState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, operation: &str, command_id: &str) -> RunnerResult<Arc<Record>> {
        self.lock().records.get(command_id).cloned().ok_or_else(|| {
            RunnerError::not_found(format!("{operation}: no command with id {command_id:?}"))
        })
    }

    /// Whether the table is paused (see [`ProcessTable::pause`]).
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Starts a command in the background with `spawn`, unless its id exists:
    /// then the existing command's info is returned and `spawn` is not called.
    ///
    /// Errors: `InvalidRequest` (bad request, paused), and whatever `spawn` returns.
    pub async fn start<F, Fut>(
        &self,
        request: RunnerCommandRequest,
        spawn: F,
    ) -> RunnerResult<RunnerProcessInfo>
    where
        F: FnOnce(OutputSink) -> Fut,
        Fut: Future<Output = RunnerResult<SpawnedProcess>>,
    {
        let record = match self.register(request, false)? {
            Registered::Existing(record) => return Ok(record.info()),
            Registered::New(record) => record,
        };
        self.launch(&record, spawn).await?;
        Ok(record.info())
    }

    /// Runs a command in the foreground and returns its result. An id that is
    /// still running gives `AlreadyExists`; a finished id is replaced.
    pub async fn run<F, Fut>(
        &self,
        request: RunnerCommandRequest,
        spawn: F,
    ) -> RunnerResult<RunnerCommandResult>
    where
        F: FnOnce(OutputSink) -> Fut,
        Fut: Future<Output = RunnerResult<SpawnedProcess>>,
    {
        let record = match self.register(request, true)? {
            Registered::New(record) => record,
            Registered::Existing(record) => {
                return Err(RunnerError::new(
                    RunnerErrorKind::AlreadyExists,
                    format!(
                        "run_command: command {:?} is already running",
                        record.request.command_id
                    ),
                ));
            }
        };
        self.launch(&record, spawn).await?;
        record.wait_exit().await;
        Ok(record.result())
    }

    fn register(
        &self,
        mut request: RunnerCommandRequest,
        replace_finished: bool,
    ) -> RunnerResult<Registered> {
        validate_command_request(&request)?;
        if let Some(user) = &request.user
            && !self.config.run_as_user
        {
            return Err(RunnerError::new(
                runner_api::RunnerErrorKind::Unsupported,
                format!(
                    "command {:?}: {} cannot run commands as another user ({user:?}); \
                     run_as_user is not supported",
                    request.command_id, self.config.provider_id
                ),
            ));
        }
        let mut table = self.lock();
        // An existing id is answered before the paused check: it starts nothing.
        let replaced = match table.records.get(&request.command_id) {
            Some(existing) if !replace_finished || existing.is_running() => {
                return Ok(Registered::Existing(existing.clone()));
            }
            Some(_) => true,
            None => false,
        };
        if table.paused {
            return Err(RunnerError::invalid_request(format!(
                "command {:?}: the session is paused; resume it first",
                request.command_id
            )));
        }
        if replaced {
            let id = request.command_id.clone();
            table.order.retain(|o| o != &id);
        }
        // The spawn closure owns what it writes to stdin; a retained record
        // must not keep those bytes alive.
        request.stdin = None;
        let limit = request.output_limit;
        let record = Arc::new(Record {
            started_at_ms: now_ms(),
            started: Instant::now(),
            state: Mutex::new(RecordState {
                stdout: HeadTailBuffer::new(limit),
                stderr: HeadTailBuffer::new(limit),
                log: OutputLog::new(self.config.log_bytes),
                pid: None,
                status: None,
                timed_out: false,
                cancel_requested: false,
            }),
            changed: watch::channel(0).0,
            control: OnceLock::new(),
            request,
        });
        let id = record.request.command_id.clone();
        table.records.insert(id.clone(), record.clone());
        table.order.push(id);
        self.evict_finished(&mut table);
        Ok(Registered::New(record))
    }

    fn evict_finished(&self, table: &mut TableState) {
        let finished: Vec<RunnerCommandId> = table
            .order
            .iter()
            .filter(|id| table.records.get(*id).is_some_and(|r| !r.is_running()))
            .cloned()
            .collect();
        let excess = finished.len().saturating_sub(self.config.retain_finished);
        for id in finished.into_iter().take(excess) {
            table.records.remove(&id);
            table.order.retain(|o| o != &id);
        }
    }

    async fn launch<F, Fut>(&self, record: &Arc<Record>, spawn: F) -> RunnerResult<()>
    where
        F: FnOnce(OutputSink) -> Fut,
        Fut: Future<Output = RunnerResult<SpawnedProcess>>,
    {
        let id = record.request.command_id.clone();
        let spawned = match spawn(OutputSink(record.clone())).await {
            Ok(spawned) => spawned,
            Err(e) => {
                let mut table = self.lock();
                table.records.remove(&id);
                table.order.retain(|o| o != &id);
                return Err(e);
            }
        };
        tracing::info!(command_id = %id, program = %record.request.program, pid = ?spawned.pid, "command started");
        record.lock().pid = spawned.pid;
        let _ = record.control.set(spawned.control);
        let cancel_early = record.lock().cancel_requested;
        let grace = self.config.kill_grace;
        let exit_wait = self.config.exit_wait;
        let timeout = record.request.timeout_ms.map(Duration::from_millis);
        let monitor = record.clone();
        let exit = spawned.exit;
        tokio::spawn(async move {
            monitor_exit(monitor, exit, timeout, grace, exit_wait).await;
        });
        if cancel_early {
            let record = record.clone();
            tokio::spawn(async move { record.kill_tree(grace).await });
        }
        Ok(())
    }

    /// Kills a running command's process tree and waits for it to be reported
    /// exited. `false` for an unknown or finished id.
    pub async fn cancel(&self, command_id: &str) -> RunnerResult<bool> {
        let Some(record) = self.lock().records.get(command_id).cloned() else {
            return Ok(false);
        };
        {
            let mut st = record.lock();
            if st.status.is_some() {
                return Ok(false);
            }
            st.cancel_requested = true;
        }
        tracing::info!(command_id, "cancelling command");
        record.kill_tree(self.config.kill_grace).await;
        let _ = tokio::time::timeout(self.config.exit_wait, record.wait_exit()).await;
        Ok(true)
    }

    /// Every tracked command, oldest first.
    pub fn list(&self) -> Vec<RunnerProcessInfo> {
        let table = self.lock();
        table
            .order
            .iter()
            .filter_map(|id| table.records.get(id).map(|r| r.info()))
            .collect()
    }

    /// One command's info. Errors: `NotFound`.
    pub fn status(&self, command_id: &str) -> RunnerResult<RunnerProcessInfo> {
        Ok(self.get("command_status", command_id)?.info())
    }

    /// Waits until a command has exited and returns its result. Errors: `NotFound`.
    pub async fn wait(&self, command_id: &str) -> RunnerResult<RunnerCommandResult> {
        let record = self.get("wait", command_id)?;
        record.wait_exit().await;
        Ok(record.result())
    }

    /// Chunks after `after_seq` and the head/tail view. Errors: `NotFound`.
    pub fn output(&self, command_id: &str, after_seq: u64) -> RunnerResult<RunnerCommandOutput> {
        let record = self.get("command_output", command_id)?;
        let st = record.lock();
        let chunks = st.log.after(after_seq);
        let (stdout, stdout_truncation) = st.stdout.render();
        let (stderr, stderr_truncation) = st.stderr.render();
        Ok(RunnerCommandOutput {
            command_id: record.request.command_id.clone(),
            next_after_seq: chunks.last().map_or(after_seq, |c| c.seq),
            first_retained_seq: st.log.first_retained_seq(),
            chunks,
            stdout,
            stderr,
            stdout_truncation,
            stderr_truncation,
            state: if st.status.is_some() {
                RunnerProcessState::Exited
            } else {
                RunnerProcessState::Running
            },
            status: st.status,
        })
    }

    /// Live events after `after_seq`, ending with `Exited`. Errors: `NotFound`.
    pub fn stream(&self, command_id: &str, after_seq: u64) -> RunnerResult<RunnerEventStream> {
        let record = self.get("stream_command", command_id)?;
        let rx = record.changed.subscribe();
        let state = StreamState {
            record,
            rx,
            last_seq: after_seq,
            pending: Vec::new(),
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(state, next_event)))
    }

    /// Writes to a running command's stdin. Errors: `NotFound`, `InvalidRequest`.
    pub async fn write_stdin(
        &self,
        command_id: &str,
        bytes: Vec<u8>,
        close: bool,
    ) -> RunnerResult<()> {
        let record = self.get("write_stdin", command_id)?;
        let control = self.running_control(&record, "write_stdin")?;
        control
            .write_stdin(bytes, close)
            .await
            .map_err(|e| e.context(format!("write_stdin {command_id:?}")))
    }

    /// Resizes a running terminal command's terminal. Errors: `NotFound`,
    /// `InvalidRequest` (exited, not on a terminal).
    pub async fn resize(&self, command_id: &str, rows: u16, cols: u16) -> RunnerResult<()> {
        let record = self.get("resize_terminal", command_id)?;
        let control = self.running_control(&record, "resize_terminal")?;
        control
            .resize(rows, cols)
            .await
            .map_err(|e| e.context(format!("resize_terminal {command_id:?}")))
    }

    /// Signals a running command's process group. Errors: `NotFound`, `InvalidRequest`.
    pub async fn signal(&self, command_id: &str, signal: RunnerSignal) -> RunnerResult<()> {
        let record = self.get("signal_command", command_id)?;
        let control = self.running_control(&record, "signal_command")?;
        control.signal(signal).await
    }

    fn running_control(
        &self,
        record: &Record,
        operation: &str,
    ) -> RunnerResult<Arc<dyn ProcessControl>> {
        let id = &record.request.command_id;
        if !record.is_running() {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: command {id:?} has exited"
            )));
        }
        record.control.get().cloned().ok_or_else(|| {
            RunnerError::invalid_request(format!("{operation}: command {id:?} is still starting"))
        })
    }

    fn running(&self) -> Vec<Arc<Record>> {
        self.lock()
            .records
            .values()
            .filter(|r| r.is_running())
            .cloned()
            .collect()
    }

    /// Stops every running command (SIGSTOP to each group) and refuses new ones
    /// until [`resume`](Self::resume).
    pub async fn pause(&self) -> RunnerResult<()> {
        self.lock().paused = true;
        self.signal_running(RunnerSignal::Stop).await
    }

    /// Continues every stopped command and accepts new ones again.
    pub async fn resume(&self) -> RunnerResult<()> {
        self.signal_running(RunnerSignal::Continue).await?;
        self.lock().paused = false;
        Ok(())
    }

    async fn signal_running(&self, signal: RunnerSignal) -> RunnerResult<()> {
        for record in self.running() {
            if let Some(control) = record.control.get() {
                control.signal(signal).await?;
            }
        }
        Ok(())
    }

    /// Kills every running command's tree (in parallel) and waits for each to be
    /// reported exited. Used by `close`.
    pub async fn kill_all(&self) {
        let grace = self.config.kill_grace;
        let exit_wait = self.config.exit_wait;
        let kills = self.running().into_iter().map(|record| async move {
            record.lock().cancel_requested = true;
            record.kill_tree(grace).await;
            let _ = tokio::time::timeout(exit_wait, record.wait_exit()).await;
        });
        futures_util::future::join_all(kills).await;
    }

    /// Process ids of running commands, for providers that inspect them.
    pub fn running_pids(&self) -> Vec<u32> {
        self.running().iter().filter_map(|r| r.lock().pid).collect()
    }
}

enum Registered {
    New(Arc<Record>),
    Existing(Arc<Record>),
}

async fn monitor_exit(
    record: Arc<Record>,
    exit: Pin<Box<dyn Future<Output = RunnerResult<RawExit>> + Send>>,
    timeout: Option<Duration>,
    grace: Duration,
    exit_wait: Duration,
) {
    let mut exit = exit;
    let outcome = match timeout {
        None => exit.await,
        Some(limit) => match tokio::time::timeout(limit, &mut exit).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::info!(command_id = %record.request.command_id, "command timed out; killing its process tree");
                record.lock().timed_out = true;
                let killer = record.clone();
                tokio::spawn(async move { killer.kill_tree(grace).await });
                match tokio::time::timeout(grace + exit_wait, &mut exit).await {
                    Ok(outcome) => outcome,
                    Err(_) => Ok(RawExit {
                        exit_code: None,
                        signal: Some(RunnerSignal::Kill.number()),
                    }),
                }
            }
        },
    };
    let raw = outcome.unwrap_or_else(|e| {
        tracing::warn!(command_id = %record.request.command_id, error = %e, "waiting for command failed");
        RawExit::default()
    });
    record.finish(raw);
}

struct StreamState {
    record: Arc<Record>,
    rx: watch::Receiver<u64>,
    last_seq: u64,
    pending: Vec<RunnerProcessEvent>,
    done: bool,
}

async fn next_event(mut s: StreamState) -> Option<(RunnerResult<RunnerProcessEvent>, StreamState)> {
    loop {
        if let Some(event) = s.pending.pop() {
            return Some((Ok(event), s));
        }
        if s.done {
            return None;
        }
        let status = {
            let st = s.record.lock();
            let chunks = st.log.after(s.last_seq);
            if let Some(last) = chunks.last() {
                s.last_seq = last.seq;
            }
            // `pending` is popped from the back: store in reverse order.
            s.pending = chunks
                .into_iter()
                .rev()
                .map(|c| match c.stream {
                    RunnerOutputStream::Stdout => RunnerProcessEvent::Stdout {
                        seq: c.seq,
                        bytes: c.bytes,
                    },
                    RunnerOutputStream::Stderr => RunnerProcessEvent::Stderr {
                        seq: c.seq,
                        bytes: c.bytes,
                    },
                })
                .collect();
            st.status
        };
        if !s.pending.is_empty() {
            continue;
        }
        if let Some(status) = status {
            s.done = true;
            return Some((Ok(RunnerProcessEvent::Exited { status }), s));
        }
        if s.rx.changed().await.is_err() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn shell_statuses_above_128_are_signals() {
        let killed = RawExit::from_shell_status(137);
        assert_eq!((killed.exit_code, killed.signal), (None, Some(9)));
        assert_eq!(RawExit::from_shell_status(143).signal, Some(15));
        assert_eq!(RawExit::from_shell_status(192).signal, Some(64));
        assert_eq!(RawExit::from_shell_status(128).exit_code, Some(128));
        assert_eq!(RawExit::from_shell_status(255).exit_code, Some(255));
        assert_eq!(RawExit::from_shell_status(0).exit_code, Some(0));
    }

    struct NoopControl;

    #[async_trait]
    impl ProcessControl for NoopControl {
        async fn signal(&self, _signal: RunnerSignal) -> RunnerResult<()> {
            Ok(())
        }
    }

    fn spawn_echo(
        lines: &'static [&'static str],
        code: i32,
    ) -> impl FnOnce(OutputSink) -> std::future::Ready<RunnerResult<SpawnedProcess>> {
        move |sink| {
            std::future::ready(Ok(SpawnedProcess {
                pid: Some(1),
                control: Arc::new(NoopControl),
                exit: Box::pin(async move {
                    for line in lines {
                        sink.push(RunnerOutputStream::Stdout, line.as_bytes());
                        sink.push(RunnerOutputStream::Stderr, b"e");
                    }
                    Ok(RawExit {
                        exit_code: Some(code),
                        signal: None,
                    })
                }),
            }))
        }
    }

    #[tokio::test]
    async fn run_collects_output_and_exit_code() {
        let table = ProcessTable::new(ProcessTableConfig::new("test"));
        let req = RunnerCommandRequest::new("c1", "echo", ["x"]);
        let res = table
            .run(req, spawn_echo(&["a", "b"], 3))
            .await
            .expect("run");
        assert_eq!(res.exit_code, Some(3));
        assert_eq!(res.stdout, "ab");
        assert_eq!(res.stderr, "ee");
    }

    #[tokio::test]
    async fn start_is_idempotent_and_output_resumes() {
        let table = ProcessTable::new(ProcessTableConfig::new("test"));
        let req = RunnerCommandRequest::new("bg", "echo", ["x"]);
        table
            .start(req.clone(), spawn_echo(&["1", "2", "3"], 0))
            .await
            .expect("start");
        let again = table
            .start(req, |_| async {
                Err::<SpawnedProcess, _>(RunnerError::provider("must not spawn"))
            })
            .await
            .expect("idempotent");
        assert_eq!(again.command_id, "bg");
        table.wait("bg").await.expect("wait");
        let out = table.output("bg", 2).expect("output");
        let seqs: Vec<u64> = out.chunks.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5, 6]);
        assert_eq!(out.next_after_seq, 6);
        let events: Vec<_> = table.stream("bg", 4).expect("stream").collect().await;
        assert_eq!(events.len(), 3);
        assert!(matches!(
            events.last(),
            Some(Ok(RunnerProcessEvent::Exited { .. }))
        ));
    }

    #[tokio::test]
    async fn paused_table_answers_existing_ids_and_refuses_new_ones() {
        let table = ProcessTable::new(ProcessTableConfig::new("test"));
        let req = RunnerCommandRequest::new("bg", "echo", ["x"]).with_stdin(b"payload".to_vec());
        table
            .start(req.clone(), spawn_echo(&["1"], 0))
            .await
            .expect("start");
        table.pause().await.expect("pause");
        let again = table
            .start(req, |_| async {
                Err::<SpawnedProcess, _>(RunnerError::provider("must not spawn"))
            })
            .await
            .expect("an existing id is answered while paused");
        assert_eq!(again.command_id, "bg");
        let fresh = RunnerCommandRequest::new("new", "echo", ["x"]);
        let refused = table
            .start(fresh, spawn_echo(&["1"], 0))
            .await
            .expect_err("a new id is refused while paused");
        assert_eq!(refused.kind(), RunnerErrorKind::InvalidRequest);
    }

    #[tokio::test]
    async fn timeout_marks_result_even_if_backend_hangs() {
        let mut config = ProcessTableConfig::new("test");
        config.kill_grace = Duration::from_millis(10);
        config.exit_wait = Duration::from_millis(10);
        let table = ProcessTable::new(config);
        let req = RunnerCommandRequest::new("slow", "sleep", ["9"]).with_timeout_ms(20);
        let res = table
            .run(req, |_| async {
                Ok(SpawnedProcess {
                    pid: None,
                    control: Arc::new(NoopControl),
                    exit: Box::pin(std::future::pending()),
                })
            })
            .await
            .expect("run");
        assert!(res.timed_out);
        assert_eq!(res.signal, Some(9));
    }

    #[test]
    fn bad_requests_are_invalid() {
        let mut req = RunnerCommandRequest::new("", "x", Vec::<String>::new());
        assert_eq!(
            validate_command_request(&req).map_err(|e| e.kind()),
            Err(RunnerErrorKind::InvalidRequest)
        );
        req.command_id = "ok".into();
        req.args.push("a\0b".into());
        assert_eq!(
            validate_command_request(&req).map_err(|e| e.kind()),
            Err(RunnerErrorKind::InvalidRequest)
        );
    }
}
