//! The workspace execution lease: `acquire_workspace_execution_lease`,
//! `renew_workspace_execution_lease`, `release_workspace_execution_lease`.
//!
//! Sessions of one destination may share a workspace, so every acquire that
//! must succeed waits (up to a minute) for a lease another check may hold, and
//! every lease is short and released at the end.

use runner_api::{
    RunnerErrorKind, RunnerExecutionLease, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerLeaseRequest, RunnerSessionState,
};

use crate::catalogue::{Area, Capability, Check};
use crate::commands::unique_suffix;
use crate::context::{Cx, Session};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq};

/// Wait for a lease another check may hold on a shared workspace.
const PATIENT_MS: u64 = 60_000;
/// Lifetime of the leases the checks take.
const TTL_MS: u64 = 20_000;

pub(crate) fn lifecycle_checks() -> Vec<Check> {
    let a = Area::Lifecycle;
    let lease: &'static [Capability] = &[Capability::ExecutionLease];
    vec![
        Check::new(
            "lifecycle_lease_acquire_renew_release",
            a,
            lease,
            "acquire_workspace_execution_lease takes the lease; renew extends it; release gives it back (twice is Ok); renewing a released lease is NotFound.",
            |cx| Box::pin(acquire_renew_release(cx)),
        ),
        Check::new(
            "lifecycle_lease_exclusive",
            a,
            lease,
            "acquire: \"AlreadyExists naming the current holder when another live lease exists\" — for a second holder, and from a second session on the same workspace when the provider can open one.",
            |cx| Box::pin(exclusive(cx)),
        ),
        Check::new(
            "lifecycle_lease_release_lets_other_acquire",
            a,
            lease,
            "release gives the lease back: another holder acquires it, the old lease's renew is NotFound and its release leaves the new holder alone.",
            |cx| Box::pin(release_lets_other_acquire(cx)),
        ),
        Check::new(
            "lifecycle_lease_expired_takeover",
            a,
            lease,
            "RunnerLeaseRequest::ttl_ms: \"A holder that dies without releasing loses the lease once this has passed\" — a waiting holder takes it over, and the stale renew is NotFound.",
            |cx| Box::pin(expired_takeover(cx)),
        ),
        Check::new(
            "lifecycle_lease_invalid_requests",
            a,
            lease,
            "acquire: \"InvalidRequest for a zero ttl_ms or an empty holder\".",
            |cx| Box::pin(invalid_requests(cx)),
        ),
    ]
}

pub(crate) fn capability_checks() -> Vec<Check> {
    vec![Check::new(
        "capabilities_execution_lease",
        Area::Capabilities,
        &[],
        "execution_lease: acquire/renew/release give a cross-process guarantee; false → all three Unsupported.",
        |cx| Box::pin(capability(cx)),
    )]
}

fn holder(label: &str) -> String {
    format!("conformance-{label}-{}", unique_suffix())
}

fn request(holder: &str, ttl_ms: u64, wait_ms: u64) -> RunnerLeaseRequest {
    RunnerLeaseRequest {
        holder: holder.to_string(),
        ttl_ms,
        wait_ms,
    }
}

/// Acquires with patience: the workspace may be shared with another check.
async fn acquire(s: &Session, holder: &str, ttl_ms: u64) -> CheckResult<RunnerExecutionLease> {
    s.acquire_workspace_execution_lease(request(holder, ttl_ms, PATIENT_MS))
        .await
        .or_fail(format!("acquire_workspace_execution_lease for {holder}"))
}

async fn release(s: &Session, lease: &RunnerExecutionLease) -> CheckResult {
    s.release_workspace_execution_lease(lease)
        .await
        .or_fail(format!(
            "release_workspace_execution_lease of {}",
            lease.lease_id
        ))
}

async fn acquire_renew_release(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let name = holder("renew");
    let lease = acquire(&s, &name, TTL_MS).await?;
    ensure_eq!(lease.holder, name, "holder of the granted lease");
    ensure_eq!(
        lease.workspace,
        s.workspace_root(),
        "workspace of the granted lease"
    );
    ensure!(
        !lease.lease_id.is_empty(),
        "the granted lease has an empty lease_id"
    );
    ensure!(
        lease.expires_at_ms > lease.acquired_at_ms,
        "expires_at_ms {} must be after acquired_at_ms {}",
        lease.expires_at_ms,
        lease.acquired_at_ms
    );
    let renewed = s
        .renew_workspace_execution_lease(&lease, TTL_MS * 2)
        .await
        .or_fail("renew_workspace_execution_lease of a held lease")?;
    ensure_eq!(renewed.lease_id, lease.lease_id, "lease_id after renew");
    ensure!(
        renewed.expires_at_ms >= lease.expires_at_ms,
        "renewing for a longer ttl moved the expiry back: {} < {}",
        renewed.expires_at_ms,
        lease.expires_at_ms
    );
    release(&s, &renewed).await?;
    release(&s, &renewed).await?;
    s.renew_workspace_execution_lease(&renewed, TTL_MS)
        .await
        .fails_with(RunnerErrorKind::NotFound, "renew after release")?;
    s.close().await.or_fail("close")
}

/// A second session on the same workspace, when the provider reopens one
/// from the state (resume without a snapshot) and a file written through the
/// first session shows through the second (the same path in another sandbox
/// is another workspace).
async fn same_workspace_session(cx: &Cx, s: &Session) -> CheckResult<Option<Session>> {
    if !(cx.caps.file_read && cx.caps.file_write) {
        return Ok(None);
    }
    let state = RunnerSessionState {
        snapshot: None,
        ..s.state()
    };
    let Ok(other) = cx.provider.resume_session(state).await else {
        return Ok(None);
    };
    cx.adopt(other.clone());
    if other.workspace_root() != s.workspace_root() {
        return Ok(None);
    }
    let marker = cx.scratch(s).join("lease-marker");
    let contents = unique_suffix().into_bytes();
    s.write_file(RunnerFileWriteRequest::new(&marker, contents.clone()))
        .await
        .or_fail(format!("write_file {}", marker.display()))?;
    let seen = other
        .read_file(RunnerFileReadRequest::new(&marker))
        .await
        .is_ok_and(|read| read.contents == contents);
    Ok(seen.then_some(other))
}

async fn exclusive(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let first = holder("first");
    let lease = acquire(&s, &first, TTL_MS).await?;
    let second = holder("second");
    let refused = s
        .acquire_workspace_execution_lease(request(&second, TTL_MS, 0))
        .await
        .fails_with(
            RunnerErrorKind::AlreadyExists,
            "a second holder's acquire while the lease is held",
        )?;
    ensure!(
        refused.message().contains(&first),
        "the refusal must name the current holder {first:?}: {}",
        refused.message()
    );
    if let Some(other) = same_workspace_session(&cx, &s).await? {
        other
            .acquire_workspace_execution_lease(request(&second, TTL_MS, 0))
            .await
            .fails_with(
                RunnerErrorKind::AlreadyExists,
                "acquire from a second session on the same workspace while the lease is held",
            )?;
    }
    release(&s, &lease).await?;
    s.close().await.or_fail("close")
}

async fn release_lets_other_acquire(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let old = acquire(&s, &holder("old"), TTL_MS).await?;
    release(&s, &old).await?;
    let new = acquire(&s, &holder("new"), TTL_MS).await?;
    ensure!(
        new.lease_id != old.lease_id,
        "a new grant reused lease_id {}",
        old.lease_id
    );
    s.renew_workspace_execution_lease(&old, TTL_MS)
        .await
        .fails_with(RunnerErrorKind::NotFound, "renew of a released lease")?;
    release(&s, &old).await?;
    s.renew_workspace_execution_lease(&new, TTL_MS)
        .await
        .or_fail("renew of the new holder's lease after the old lease was released again")?;
    release(&s, &new).await?;
    s.close().await.or_fail("close")
}

async fn expired_takeover(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let short = acquire(&s, &holder("dies"), 1_500).await?;
    // The first holder never renews nor releases, as if it had died.
    let taker = acquire(&s, &holder("taker"), TTL_MS).await?;
    ensure!(
        taker.acquired_at_ms >= short.expires_at_ms,
        "the lease was taken over at {} ms, before the first lease lapsed at {} ms",
        taker.acquired_at_ms,
        short.expires_at_ms
    );
    s.renew_workspace_execution_lease(&short, TTL_MS)
        .await
        .fails_with(RunnerErrorKind::NotFound, "renew of a lease taken over")?;
    release(&s, &short).await?;
    s.renew_workspace_execution_lease(&taker, TTL_MS)
        .await
        .or_fail("renew of the taker's lease after the stale release")?;
    release(&s, &taker).await?;
    s.close().await.or_fail("close")
}

async fn invalid_requests(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    s.acquire_workspace_execution_lease(request(&holder("zero"), 0, 0))
        .await
        .fails_with(RunnerErrorKind::InvalidRequest, "acquire with ttl_ms 0")?;
    s.acquire_workspace_execution_lease(request("", TTL_MS, 0))
        .await
        .fails_with(
            RunnerErrorKind::InvalidRequest,
            "acquire with an empty holder",
        )?;
    s.close().await.or_fail("close")
}

async fn capability(cx: Cx) -> CheckResult {
    let flag = Capability::ExecutionLease;
    let s = cx.session().await?;
    if cx.has(flag) {
        let lease = acquire(&s, &holder("cap"), TTL_MS).await?;
        release(&s, &lease).await?;
    } else {
        let lease = RunnerExecutionLease {
            lease_id: "conformance-lease".into(),
            holder: "conformance".into(),
            workspace: s.workspace_root(),
            acquired_at_ms: 0,
            expires_at_ms: 1,
        };
        let unsupported = |what: &str| format!("{what} without {flag}");
        s.acquire_workspace_execution_lease(request("conformance", TTL_MS, 0))
            .await
            .fails_with(
                RunnerErrorKind::Unsupported,
                unsupported("acquire_workspace_execution_lease"),
            )?;
        s.renew_workspace_execution_lease(&lease, TTL_MS)
            .await
            .fails_with(
                RunnerErrorKind::Unsupported,
                unsupported("renew_workspace_execution_lease"),
            )?;
        s.release_workspace_execution_lease(&lease)
            .await
            .fails_with(
                RunnerErrorKind::Unsupported,
                unsupported("release_workspace_execution_lease"),
            )?;
    }
    s.close().await.or_fail("close")
}
