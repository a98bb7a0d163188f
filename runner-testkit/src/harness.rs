//! Running the catalogue as libtest-mimic trials against one provider.

use std::any::Any;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use runner_api::{RemoteRunnerProvider, RunnerDestination};
use runner_stack::Stack;

use crate::catalogue::{Area, Check, checks};
use crate::context::{Cleanup, ConnectionBreaker, Cx, Hooks};
use crate::context::{NO_BREAKER, NO_SKEWED_AGENT, NO_STORE};
use crate::outcome::CheckResult;
use crate::store::ObjectStoreTarget;

/// The conformance suite for one provider and destination.
///
/// The kit checks a provider as users get it: it takes the bare provider and
/// runs every check against [`runner_stack::Stack`] wrapped around it, so
/// every session comes composed (the correctness layer's closed-session and
/// capability checks, tracing, confinement to the workspace root, object-store
/// mounts and artifact export) exactly as `RunnerRegistry` and
/// `runner_stack::stacked` compose it. The stack resolves credentials from the
/// environment, or with the object-store target's resolver when
/// [`with_object_store`](Self::with_object_store) gives one. Do not stack the
/// provider yourself (it would be composed twice).
///
/// ```no_run
/// use std::sync::Arc;
/// use runner_testkit::{Conformance, MemoryProvider};
/// use runner_api::RunnerDestination;
///
/// fn main() -> std::process::ExitCode {
///     let destination = RunnerDestination {
///         id: "conformance".into(),
///         provider_id: "memory".into(),
///         config: serde_json::Value::Null,
///         default_manifest: Default::default(),
///         artifacts: None,
///     };
///     Conformance::new(Arc::new(MemoryProvider::default()), destination).run()
/// }
/// ```
pub struct Conformance {
    provider: Arc<dyn RemoteRunnerProvider>,
    destination: RunnerDestination,
    check_timeout: Duration,
    object_store: Option<Arc<ObjectStoreTarget>>,
    breaker: Option<ConnectionBreaker>,
    skewed: Option<RunnerDestination>,
    label: Option<String>,
}

/// What a run of the suite came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConformanceSummary {
    /// The provider's id.
    pub provider_id: String,
    /// The name of the run in its summary line: the provider's id, or the
    /// label given with [`Conformance::with_label`].
    pub label: String,
    /// Checks that ran and passed.
    pub passed: u64,
    /// Checks that ran and failed.
    pub failed: u64,
    /// Checks skipped because the provider declares a required capability unsupported.
    pub skipped: u64,
    /// `(check name, failure message)` of every failed check.
    pub failures: Vec<(String, String)>,
    /// Every check this run selected, in catalogue order, with its outcome.
    pub checks: Vec<CheckReport>,
}

/// How one check of a run came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    /// It ran and passed.
    Passed,
    /// It ran and failed.
    Failed,
    /// It did not run: the provider declares a required capability unsupported.
    Skipped,
}

impl CheckStatus {
    /// `passed`, `failed` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passed => "passed",
            CheckStatus::Failed => "failed",
            CheckStatus::Skipped => "skipped",
        }
    }
}

/// The outcome of one check in a run, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The check's name (`<area>_<behaviour>`).
    pub name: String,
    /// The check's area.
    pub area: Area,
    /// Passed, failed or skipped.
    pub status: CheckStatus,
    /// The failure message, or the skip reason (`unsupported: <flag>, …`).
    pub message: Option<String>,
    /// Time the check took, cleanup included (zero when skipped).
    pub duration: Duration,
}

impl ConformanceSummary {
    /// The summary line: `<label>: N passed, N failed, N skipped`, the label
    /// being the provider's id unless the run was given another.
    pub fn line(&self) -> String {
        format!(
            "{}: {} passed, {} failed, {} skipped",
            self.label, self.passed, self.failed, self.skipped
        )
    }

    /// Success when no check failed.
    pub fn exit_code(&self) -> ExitCode {
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(101)
        }
    }
}

impl Conformance {
    /// The suite for the bare `provider`. Every check gets fresh sessions from
    /// `create_session(destination.clone())` of the stacked provider and
    /// closes them.
    pub fn new(provider: Arc<dyn RemoteRunnerProvider>, destination: RunnerDestination) -> Self {
        Self {
            provider,
            destination,
            check_timeout: Duration::from_secs(180),
            object_store: None,
            breaker: None,
            skewed: None,
            label: None,
        }
    }

    /// Runs the checks of a lost connection (`processes_connection_lost_resumes_output`)
    /// with `breaker`, which cuts every connection between this process and
    /// the sandbox of the session whose state it is given (the transport: a
    /// docker exec, an ssh channel, a `connect` child), leaving the agent and
    /// its commands running. Without one those checks are ignored with a
    /// reason (a provider without a connection has nothing to cut).
    pub fn with_connection_breaker(mut self, breaker: ConnectionBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Runs the version-mismatch check (`lifecycle_agent_version_mismatch_refused`)
    /// on `destination`: one of this provider whose sandbox gets a runner
    /// agent speaking another protocol version (for example `agent_binaries`
    /// naming the `runner-agent-skewed` fixture). Without one that check is
    /// ignored with a reason (a provider that runs no agent has no version
    /// to mismatch).
    pub fn with_skewed_agent(mut self, destination: RunnerDestination) -> Self {
        self.skewed = Some(destination);
        self
    }

    /// Names the run `label` in its summary line instead of the provider's id
    /// (for a second run of one provider on another destination, such as
    /// `docker-debian`). Use lowercase letters, digits and `-`, as provider
    /// ids do, so `scripts/test.sh` reports the line.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Time one check may take before it fails as hung (default 180 s: a
    /// loaded machine moving 64 MiB objects stays well inside it).
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Runs the `mounts` and `artifacts` checks against `target` (without it
    /// they are ignored with a reason), names an artifact store under a fresh
    /// prefix of it in the destination's `artifacts`, and gives the stack
    /// `target.resolver` for mount and artifact-store credentials.
    pub fn with_object_store(mut self, target: ObjectStoreTarget) -> Self {
        self.destination.artifacts = Some(target.artifacts_config(&artifacts_prefix()));
        self.object_store = Some(Arc::new(target));
        self
    }

    /// The provider as the checks see it: the bare one under the stack.
    fn stacked(&self) -> Arc<dyn RemoteRunnerProvider> {
        let stack = match &self.object_store {
            Some(target) => Stack::new().with_resolver(target.resolver.clone()),
            None => Stack::new(),
        };
        stack.provider(self.provider.clone())
    }

    /// Runs every check with the process's libtest arguments, prints the summary
    /// line last, and returns failure if any check failed.
    pub fn run(self) -> ExitCode {
        self.run_with(Arguments::from_args()).exit_code()
    }

    /// Runs every check with `args` (filters, `--test-threads`, `--list`, …) and
    /// prints the summary line last. Call it from synchronous code (a plain
    /// `#[test]` or `main`), not from inside an async runtime.
    pub fn run_with(self, args: Arguments) -> ConformanceSummary {
        let provider_id = self.provider.id();
        let mut summary = ConformanceSummary {
            provider_id: provider_id.clone(),
            label: self.label.clone().unwrap_or_else(|| provider_id.clone()),
            ..ConformanceSummary::default()
        };
        let workers = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .max(4);
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .thread_name("conformance")
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                summary.failed = 1;
                summary
                    .failures
                    .push(("harness".into(), format!("building the tokio runtime: {e}")));
                println!("{}", summary.line());
                return summary;
            }
        };
        let reports: Arc<Mutex<Vec<CheckReport>>> = Arc::default();
        let provider = self.stacked();
        let capabilities = provider.capabilities();
        let trials: Vec<Trial> = checks()
            .into_iter()
            .map(|check| {
                let missing = check.missing(&capabilities);
                if self.object_store.is_none() && check.area.needs_object_store() {
                    skipped(
                        &reports,
                        &args,
                        &check,
                        "needs an object store".into(),
                        NO_STORE.into(),
                    )
                } else if self.breaker.is_none() && check.needs_breaker {
                    skipped(
                        &reports,
                        &args,
                        &check,
                        "needs a connection breaker".into(),
                        NO_BREAKER.into(),
                    )
                } else if self.skewed.is_none() && check.needs_skewed_agent {
                    skipped(
                        &reports,
                        &args,
                        &check,
                        "needs a skewed agent".into(),
                        NO_SKEWED_AGENT.into(),
                    )
                } else if missing.is_empty() {
                    let handle = runtime.handle().clone();
                    self.trial(check, provider.clone(), handle, reports.clone())
                } else {
                    let names: Vec<&str> = missing.iter().map(|c| c.name()).collect();
                    let reason = format!("unsupported: {}", names.join(", "));
                    skipped(&reports, &args, &check, reason.clone(), reason)
                }
            })
            .collect();
        let listing = args.list;
        let conclusion = libtest_mimic::run(&args, trials);
        if tokio::runtime::Handle::try_current().is_ok() {
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
        if listing {
            return summary;
        }
        summary.passed = conclusion.num_passed;
        summary.failed = conclusion.num_failed;
        summary.skipped = conclusion.num_ignored;
        let order: Vec<&str> = checks().iter().map(|c| c.name).collect();
        summary.checks = std::mem::take(&mut *lock(&reports));
        summary
            .checks
            .sort_by_key(|r| order.iter().position(|name| *name == r.name));
        summary.failures = summary
            .checks
            .iter()
            .filter(|r| r.status == CheckStatus::Failed)
            .map(|r| (r.name.clone(), r.message.clone().unwrap_or_default()))
            .collect();
        summary.failures.sort();
        println!("{}", summary.line());
        summary
    }

    fn trial(
        &self,
        check: Check,
        provider: Arc<dyn RemoteRunnerProvider>,
        handle: tokio::runtime::Handle,
        reports: Arc<Mutex<Vec<CheckReport>>>,
    ) -> Trial {
        let destination = self.destination.clone();
        let timeout = self.check_timeout;
        let hooks = Hooks {
            store: self.object_store.clone(),
            breaker: self.breaker.clone(),
            skewed: self.skewed.clone(),
        };
        Trial::test(check.name, move || {
            let started = Instant::now();
            let outcome = handle.block_on(execute(&check, provider, destination, timeout, hooks));
            lock(&reports).push(CheckReport {
                name: check.name.to_string(),
                area: check.area,
                status: if outcome.is_ok() {
                    CheckStatus::Passed
                } else {
                    CheckStatus::Failed
                },
                message: outcome.as_ref().err().cloned(),
                duration: started.elapsed(),
            });
            outcome.map_err(Failed::from)
        })
    }
}

/// The ignored trial of a check that does not run, of kind `kind`, showing
/// `reason`; records the skip when the run selects the check (its name passes
/// the filters).
fn skipped(
    reports: &Mutex<Vec<CheckReport>>,
    args: &Arguments,
    check: &Check,
    kind: String,
    reason: String,
) -> Trial {
    let ignored = reason.clone();
    let trial = Trial::ignorable_test(check.name, move || Ok(Completion::ignored_with(ignored)))
        .with_kind(kind)
        .with_ignored_flag(true);
    if !args.is_filtered_out(&trial) {
        lock(reports).push(CheckReport {
            name: check.name.to_string(),
            area: check.area,
            status: CheckStatus::Skipped,
            message: Some(reason),
            duration: Duration::ZERO,
        });
    }
    trial
}

/// A fresh prefix of the object store for one run's artifact store.
pub(crate) fn artifacts_prefix() -> String {
    format!("conformance-artifacts-{}", crate::commands::unique_suffix())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Time the cleanup after one check may take.
const CLEANUP_LIMIT: Duration = Duration::from_secs(90);

/// Runs one check on the runtime with a time limit, then cleans up after it.
async fn execute(
    check: &Check,
    provider: Arc<dyn RemoteRunnerProvider>,
    destination: RunnerDestination,
    timeout: Duration,
    hooks: Hooks,
) -> CheckResult {
    let cleanup = Arc::new(Cleanup::default());
    let cx = Cx::new(provider, destination, check.name, cleanup.clone()).with_hooks(hooks);
    let task = tokio::spawn((check.run)(cx));
    let abort = task.abort_handle();
    let outcome = match tokio::time::timeout(timeout, task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(join)) if join.is_panic() => Err(format!(
            "the check panicked: {}",
            panic_message(join.into_panic())
        )),
        Ok(Err(join)) => Err(format!("the check's task ended abnormally: {join}")),
        Err(_) => {
            abort.abort();
            Err(format!(
                "timed out: the check did not finish within {} s (a hung operation?)",
                timeout.as_secs()
            ))
        }
    };
    let close_errors = match tokio::time::timeout(CLEANUP_LIMIT, cleanup.run()).await {
        Ok(errors) => errors,
        Err(_) => vec![format!(
            "cleaning up after the check (killing leftover processes, removing scratch \
             directories, closing sessions) did not finish within {} s",
            CLEANUP_LIMIT.as_secs()
        )],
    };
    match outcome {
        Ok(()) if close_errors.is_empty() => Ok(()),
        Ok(()) => Err(close_errors.join("; ")),
        Err(message) => Err(message),
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}
