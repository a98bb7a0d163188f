//! The kit tests behaviour: deliberately broken providers (a faulty wrapper
//! around `MemoryProvider`) fail the checks they should, with messages naming
//! what was expected and what came back; the harness counts, filters and times out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use libtest_mimic::Arguments;
use runner_api::{
    LayeredSession, RemoteRunnerProvider, RemoteRunnerProviderId, RemoteRunnerSession,
    RunnerByteStream, RunnerCapabilities, RunnerDestination, RunnerFileStat,
    RunnerFileWriteRequest, RunnerResult, RunnerSessionState, next_chunk,
};
use runner_testkit::{Conformance, ConformanceSummary, MemoryProvider, S3TestServer, checks};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    ClaimsPausable,
    PauseOkWithoutFlag,
    UnsortedListDir,
    IgnoresClose,
    HangingStat,
    ForkStartsEmpty,
    NoParents,
    ModeIgnored,
    PartialOnBodyError,
    ClaimsArtifactExport,
}

/// A faulty provider: the bare `MemoryProvider` with one fault. The kit
/// composes the stack around it, as around every provider.
struct Mutant {
    inner: MemoryProvider,
    fault: Fault,
}

/// A memory session with the fault: it overrides what the fault changes
/// and forwards the rest.
struct MutantSession {
    inner: Arc<dyn RemoteRunnerSession>,
    fault: Fault,
}

fn caps(fault: Fault) -> RunnerCapabilities {
    let mut caps = MemoryProvider::memory_capabilities();
    caps.pausable |= fault == Fault::ClaimsPausable;
    caps
}

fn wrap(session: Arc<dyn RemoteRunnerSession>, fault: Fault) -> Arc<dyn RemoteRunnerSession> {
    Arc::new(MutantSession {
        inner: session,
        fault,
    })
}

#[async_trait]
impl RemoteRunnerProvider for Mutant {
    fn id(&self) -> RemoteRunnerProviderId {
        self.inner.id()
    }

    fn capabilities(&self) -> RunnerCapabilities {
        caps(self.fault)
    }

    async fn create_session(
        &self,
        destination: RunnerDestination,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        Ok(wrap(
            self.inner.create_session(destination).await?,
            self.fault,
        ))
    }

    async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        if self.fault == Fault::ForkStartsEmpty && state.snapshot.is_some() {
            return self.create_session(destination()).await;
        }
        Ok(wrap(self.inner.resume_session(state).await?, self.fault))
    }
}

#[async_trait]
impl LayeredSession for MutantSession {
    fn inner(&self) -> &Arc<dyn RemoteRunnerSession> {
        &self.inner
    }

    fn capabilities(&self) -> RunnerCapabilities {
        let mut caps = caps(self.fault);
        caps.artifact_export |= self.fault == Fault::ClaimsArtifactExport;
        caps
    }

    async fn pause(&self) -> RunnerResult<RunnerSessionState> {
        if self.fault == Fault::PauseOkWithoutFlag {
            return Ok(self.inner.state());
        }
        self.inner.pause().await
    }

    async fn close(&self) -> RunnerResult<()> {
        if self.fault == Fault::IgnoresClose {
            return Ok(());
        }
        self.inner.close().await
    }

    async fn write_file(&self, mut request: RunnerFileWriteRequest) -> RunnerResult<()> {
        if self.fault == Fault::NoParents
            && let Some(parent) = request.path.parent()
            && self.inner.stat(parent).await.is_err()
        {
            return Err(runner_api::RunnerError::not_found("write_file: no parent"));
        }
        if self.fault == Fault::ModeIgnored {
            request.mode = None;
        }
        self.inner.write_file(request).await
    }

    /// With `PartialOnBodyError`: writes what arrived before the body failed.
    async fn write_file_stream(
        &self,
        mut request: RunnerFileWriteRequest,
        mut body: RunnerByteStream,
    ) -> RunnerResult<()> {
        if self.fault != Fault::PartialOnBodyError {
            return self.inner.write_file_stream(request, body).await;
        }
        while let Some(chunk) = next_chunk(&mut body).await {
            match chunk {
                Ok(chunk) => request.contents.extend_from_slice(&chunk),
                Err(e) => {
                    self.inner.write_file(request).await?;
                    return Err(e);
                }
            }
        }
        self.inner.write_file(request).await
    }

    async fn list_dir(&self, path: &Path) -> RunnerResult<Vec<RunnerFileStat>> {
        let mut entries = self.inner.list_dir(path).await?;
        if self.fault == Fault::UnsortedListDir {
            entries.reverse();
        }
        Ok(entries)
    }

    async fn stat(&self, path: &Path) -> RunnerResult<RunnerFileStat> {
        if self.fault == Fault::HangingStat {
            std::future::pending::<()>().await;
        }
        self.inner.stat(path).await
    }
}

fn destination() -> RunnerDestination {
    RunnerDestination {
        id: "self-test".into(),
        provider_id: "memory".into(),
        config: serde_json::Value::Null,
        default_manifest: Default::default(),
        artifacts: None,
    }
}

/// Arguments that keep the nested run's per-check lines out of this test's output.
fn quiet() -> Arguments {
    Arguments {
        logfile: Some("/dev/null".into()),
        ..Arguments::default()
    }
}

fn only(check: &str) -> Arguments {
    Arguments {
        filter: Some(check.to_string()),
        exact: true,
        test_threads: Some(1),
        ..quiet()
    }
}

/// Runs the checks `args` select against the provider with `fault`; a check
/// fails as hung after 3 s.
fn run(fault: Fault, args: Arguments) -> ConformanceSummary {
    run_within(fault, args, Duration::from_secs(3))
}

fn run_within(fault: Fault, args: Arguments, timeout: Duration) -> ConformanceSummary {
    let provider = Arc::new(Mutant {
        inner: MemoryProvider::default(),
        fault,
    });
    Conformance::new(provider, destination())
        .with_check_timeout(timeout)
        .run_with(args)
}

/// Runs one check against a faulty provider and returns its failure message.
fn failure(fault: Fault, check: &str) -> String {
    let summary = run(fault, only(check));
    assert_eq!(
        (summary.passed, summary.failed),
        (0, 1),
        "{check} should fail with {fault:?}: {summary:?}"
    );
    assert_eq!(summary.failures[0].0, check);
    summary.failures[0].1.clone()
}

#[test]
fn memory_passes_every_check_it_claims() {
    // The 64 MiB stream check takes seconds in a debug build.
    let summary = run_within(Fault::None, quiet(), Duration::from_secs(180));
    assert_eq!(summary.failed, 0, "{:#?}", summary.failures);
    assert_eq!(summary.passed + summary.skipped, checks().len() as u64);
    assert!(summary.passed >= 40, "{summary:?}");
    assert_eq!(
        summary.line(),
        format!(
            "memory: {} passed, 0 failed, {} skipped",
            summary.passed, summary.skipped
        )
    );
}

#[test]
fn a_filter_counts_only_what_ran() {
    let args = Arguments {
        filter: Some("files_read".into()),
        ..quiet()
    };
    let summary = run(Fault::None, args);
    let matching = checks()
        .iter()
        .filter(|c| c.name.contains("files_read"))
        .count() as u64;
    assert_eq!(summary.passed + summary.failed + summary.skipped, matching);
    assert_eq!(summary.failed, 0);
}

#[test]
fn unsupported_checks_are_skipped_not_run() {
    let summary = run(Fault::None, only("exec_exit_codes"));
    assert_eq!((summary.passed, summary.failed, summary.skipped), (0, 0, 1));
}

#[test]
fn a_claimed_capability_must_work() {
    let message = failure(Fault::ClaimsPausable, "capabilities_pausable");
    assert!(
        message.contains("pause: expected Ok, got Err(unsupported)"),
        "{message}"
    );
}

/// The kit checks a provider through the stack: what the correctness layer
/// refuses never reaches the provider, so a provider that would wrongly
/// succeed is checked as users get it.
#[test]
fn checks_run_through_the_stack() {
    for (fault, check) in [
        (Fault::PauseOkWithoutFlag, "capabilities_pausable"),
        (Fault::IgnoresClose, "lifecycle_closed_session_refuses"),
    ] {
        let summary = run(fault, only(check));
        assert_eq!(
            (summary.passed, summary.failed),
            (1, 0),
            "{check} with {fault:?} through the stack: {summary:?}"
        );
    }
}

#[test]
fn list_dir_must_be_sorted() {
    let message = failure(Fault::UnsortedListDir, "files_list_dir_sorted");
    assert!(message.contains("sorted by name: expected"), "{message}");
}

#[test]
fn a_failed_write_body_must_leave_no_partial_file() {
    let message = failure(
        Fault::PartialOnBodyError,
        "files_stream_body_error_keeps_old",
    );
    assert!(
        message.contains("the existing file after a write whose body failed"),
        "{message}"
    );
}

#[test]
fn a_session_without_an_artifact_store_must_not_claim_artifact_export() {
    let message = failure(Fault::ClaimsArtifactExport, "capabilities_artifact_export");
    assert!(
        message.contains(
            "artifact_export claimed by a session without an artifact store: expected false, \
             got true"
        ),
        "{message}"
    );
}

#[test]
fn a_session_with_an_artifact_store_must_export() {
    let server = S3TestServer::start().expect("start the in-process S3 test server");
    let provider = Arc::new(MemoryProvider::default());
    let summary = Conformance::new(provider, destination())
        .with_object_store(server.target())
        .run_with(only("capabilities_artifact_export"));
    assert_eq!((summary.passed, summary.failed), (1, 0), "{summary:?}");
}

#[test]
fn a_hung_check_times_out() {
    let message = failure(Fault::HangingStat, "files_stat_kinds");
    assert!(message.contains("timed out"), "{message}");
}

#[test]
fn a_fork_must_equal_its_source() {
    let message = failure(Fault::ForkStartsEmpty, "snapshots_restore_equals_source");
    assert!(message.contains("from the restored session"), "{message}");
}

#[test]
fn write_file_must_create_parents() {
    let message = failure(Fault::NoParents, "files_write_creates_parents");
    assert!(message.contains("write_file"), "{message}");
}

#[test]
fn write_file_must_honour_modes() {
    let message = failure(Fault::ModeIgnored, "files_mode_honoured");
    assert!(
        message.contains("expected \"755\", got \"644\""),
        "{message}"
    );
}

#[test]
fn the_catalogue_is_well_formed() {
    let all = checks();
    let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len(), "duplicate check names");
    for check in &all {
        assert!(
            check.name.starts_with(&format!("{}_", check.area)),
            "{} is not named <area>_<behaviour>",
            check.name
        );
        assert!(!check.doc.is_empty(), "{} has no doc line", check.name);
    }
}

#[test]
fn the_docs_list_every_check() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/conformance.md"
    ))
    .expect("docs/conformance.md");
    for check in checks() {
        assert!(
            doc.contains(&format!("- `{}` — ", check.name)),
            "docs/conformance.md does not list {}",
            check.name
        );
    }
}
