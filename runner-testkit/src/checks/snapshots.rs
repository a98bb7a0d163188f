//! snapshots: `snapshot` and `resume_session` with a snapshot (a fork).

use runner_api::{
    RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerSessionState,
    RunnerSnapshotRef,
};

use crate::catalogue::{Area, Capability::*, Check};
use crate::context::{Cx, Session};
use crate::fixtures::bytes::seed;
use crate::fixtures::tree;
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Snapshots;
    vec![
        Check::new(
            "snapshots_ref_names_provider",
            a,
            &[Snapshots],
            "snapshot: \"Captures the workspace\"; the reference names this provider and an id.",
            |cx| Box::pin(ref_names_provider(cx)),
        ),
        Check::new(
            "snapshots_restore_equals_source",
            a,
            &[Snapshots, SnapshotRestore, FileWrite],
            "resume_session with a snapshot: \"creates a new session restored from that snapshot\" — the tree equals its source.",
            |cx| Box::pin(restore_equals_source(cx)),
        ),
        Check::new(
            "snapshots_fork_independent",
            a,
            &[Snapshots, SnapshotRestore, FileRead, FileWrite],
            "resume_session with a snapshot: \"a fork: the original goes on\" — changes on either side stay there.",
            |cx| Box::pin(fork_independent(cx)),
        ),
        Check::new(
            "snapshots_unknown_not_found",
            a,
            &[SnapshotRestore],
            "resume_session errors: \"NotFound (unknown snapshot)\".",
            |cx| Box::pin(unknown_not_found(cx)),
        ),
        Check::new(
            "snapshots_foreign_state_invalid",
            a,
            &[SnapshotRestore],
            "resume_session errors: \"InvalidRequest (state of another provider)\".",
            |cx| Box::pin(foreign_state_invalid(cx)),
        ),
    ]
}

/// Takes a snapshot and resumes a fork from it.
async fn fork(cx: &Cx, s: &Session) -> CheckResult<(RunnerSnapshotRef, Session)> {
    let snapshot = s.snapshot().await.or_fail("snapshot")?;
    let mut state = s.state();
    state.snapshot = Some(snapshot.clone());
    let forked = cx.provider.resume_session(state).await.or_fail(format!(
        "resume_session with snapshot {:?}",
        snapshot.snapshot_id
    ))?;
    cx.adopt(forked.clone());
    Ok((snapshot, forked))
}

/// The snapshot reference names the provider.
async fn ref_names_provider(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let snapshot = s.snapshot().await.or_fail("snapshot")?;
    ensure_eq!(
        snapshot.provider_id,
        cx.provider.id(),
        "provider_id of the snapshot reference"
    );
    ensure!(
        !snapshot.snapshot_id.is_empty(),
        "snapshot returned an empty snapshot_id"
    );
    let second = s.snapshot().await.or_fail("a second snapshot")?;
    ensure!(
        second.snapshot_id != snapshot.snapshot_id,
        "two snapshots of a session share the id {:?}",
        snapshot.snapshot_id
    );
    s.close().await.or_fail("close")
}

/// A restored fork holds the same tree as its source.
async fn restore_equals_source(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let mut sample = tree::sample_tree(seed(), cx.has(CommandExec));
    if !cx.has(FileManagement) && !cx.has(CommandExec) {
        sample.remove("empty");
    }
    tree::write_tree(&s, &dir, &sample).await?;
    let method = tree::capture_method(&s);
    let source = tree::capture(&s, &dir, &sample).await?;
    tree::compare(
        &source,
        &sample,
        &format!("the source tree read back with {method}"),
    )?;
    let (_, forked) = fork(&cx, &s).await?;
    let restored = tree::capture(&forked, &dir, &sample)
        .await
        .map_err(|e| format!("reading the tree back from the restored session: {e}"))?;
    tree::compare(
        &restored,
        &source,
        &format!("the restored tree against its source (read with {method})"),
    )?;
    forked.close().await.or_fail("close of the fork")?;
    s.close().await.or_fail("close")
}

async fn read(s: &Session, path: &std::path::Path, whose: &str) -> CheckResult<Vec<u8>> {
    Ok(s.read_file(RunnerFileReadRequest::new(path))
        .await
        .or_fail(format!("read_file {} in the {whose}", path.display()))?
        .contents)
}

async fn write(s: &Session, path: &std::path::Path, contents: &[u8], whose: &str) -> CheckResult {
    s.write_file(RunnerFileWriteRequest::new(path, contents.to_vec()))
        .await
        .or_fail(format!("write_file {} in the {whose}", path.display()))
}

/// Writes after the fork stay on their side.
async fn fork_independent(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let shared = dir.join("shared.txt");
    write(&s, &shared, b"v1", "original").await?;
    let (_, forked) = fork(&cx, &s).await?;
    write(&s, &shared, b"original-v2", "original").await?;
    same_bytes(
        &read(&forked, &shared, "fork").await?,
        b"v1",
        "the fork's file after the original changed it",
    )?;
    write(&forked, &shared, b"fork-v2", "fork").await?;
    let only_fork = dir.join("only-in-fork.txt");
    write(&forked, &only_fork, b"fork", "fork").await?;
    same_bytes(
        &read(&s, &shared, "original").await?,
        b"original-v2",
        "the original's file after the fork changed it",
    )?;
    s.read_file(RunnerFileReadRequest::new(&only_fork))
        .await
        .fails_with(
            RunnerErrorKind::NotFound,
            "read_file in the original of a file created in the fork",
        )?;
    forked.close().await.or_fail("close of the fork")?;
    same_bytes(
        &read(&s, &shared, "original").await?,
        b"original-v2",
        "the original's file after the fork closed",
    )?;
    s.close().await.or_fail("close")
}

fn state_with(s: &Session, provider_id: String, snapshot_id: String) -> RunnerSessionState {
    let mut state = s.state();
    state.snapshot = Some(RunnerSnapshotRef {
        provider_id,
        snapshot_id,
        metadata: serde_json::Value::Null,
    });
    state
}

/// An unknown snapshot id is `NotFound`.
async fn unknown_not_found(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let id = format!(
        "conformance-no-such-snapshot-{}",
        uuid::Uuid::new_v4().simple()
    );
    let state = state_with(&s, cx.provider.id(), id.clone());
    let resumed = cx.provider.resume_session(state).await;
    if let Ok(session) = &resumed {
        cx.adopt(session.clone());
    }
    resumed.map(|session| session.state()).fails_with(
        RunnerErrorKind::NotFound,
        format!("resume_session with unknown snapshot {id:?}"),
    )?;
    s.close().await.or_fail("close")
}

/// State of another provider is `InvalidRequest`.
async fn foreign_state_invalid(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let other = "conformance-other-provider".to_string();
    let mut state = state_with(&s, other.clone(), "snap-of-another-provider".into());
    state.provider_id = other;
    let resumed = cx.provider.resume_session(state).await;
    if let Ok(session) = &resumed {
        cx.adopt(session.clone());
    }
    resumed.map(|session| session.state()).fails_with(
        RunnerErrorKind::InvalidRequest,
        "resume_session with the state of another provider",
    )?;
    s.close().await.or_fail("close")
}
