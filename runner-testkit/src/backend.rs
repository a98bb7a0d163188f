//! Tests that need real infrastructure (a Docker daemon, an SSH server) run
//! only when asked for through an environment variable; otherwise they are
//! listed as ignored with the reason, so nothing passes by not running.

use std::future::Future;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::{Conformance, checks};

/// The environment switch of one backend, such as `RUNNER_TEST_DOCKER`.
///
/// When the variable is `1` or `true` the backend is requested: its tests run
/// and fail if the backend is missing. Otherwise every test is reported as
/// ignored, with a reason that says how to provide the backend.
#[derive(Debug, Clone)]
pub struct BackendGate {
    var: &'static str,
    reason: String,
}

impl BackendGate {
    /// The gate of `var`; `setup` says how to provision the backend (shown in
    /// the ignore reason).
    pub fn new(var: &'static str, setup: &str) -> Self {
        Self {
            var,
            reason: format!("needs {var}=1 ({setup})"),
        }
    }

    /// Whether the run asked for this backend.
    pub fn requested(&self) -> bool {
        std::env::var(self.var)
            .map(|value| matches!(value.trim(), "1" | "true" | "yes"))
            .unwrap_or(false)
    }

    /// The reason shown for ignored tests.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Runs `trials` with the process's libtest arguments, or lists them as
    /// ignored with the reason when the backend was not requested.
    pub fn run(&self, trials: Vec<Trial>) -> ExitCode {
        let args = Arguments::from_args();
        let trials = if self.requested() {
            trials
        } else {
            trials
                .into_iter()
                .map(|trial| self.ignored(trial.name().to_string()))
                .collect()
        };
        libtest_mimic::run(&args, trials).exit_code()
    }

    /// Runs the conformance suite built by `suite` when the backend was
    /// requested; otherwise lists every check as ignored with the reason and
    /// prints `<provider-id>: 0 passed, 0 failed, N skipped`.
    pub fn conformance(&self, provider_id: &str, suite: impl FnOnce() -> Conformance) -> ExitCode {
        if self.requested() {
            return suite().run();
        }
        let args = Arguments::from_args();
        let listing = args.list;
        let trials: Vec<Trial> = checks()
            .into_iter()
            .map(|check| self.ignored(check.name.to_string()))
            .collect();
        let conclusion = libtest_mimic::run(&args, trials);
        if !listing {
            println!(
                "{provider_id}: {} passed, {} failed, {} skipped",
                conclusion.num_passed, conclusion.num_failed, conclusion.num_ignored
            );
        }
        conclusion.exit_code()
    }

    fn ignored(&self, name: String) -> Trial {
        let reason = self.reason.clone();
        Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)))
            .with_ignored_flag(true)
    }
}

/// A libtest-mimic trial that runs `test` to completion on its own
/// multi-threaded tokio runtime. An `Err` or a panic fails the trial.
pub fn async_trial<F, Fut>(name: impl Into<String>, test: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Trial::test(name, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("building the tokio runtime: {e}")))?;
        runtime.block_on(test()).map_err(Failed::from)
    })
}
