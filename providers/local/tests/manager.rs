//! The session manager and destination pools of `runner-api`, on real
//! unix-local sessions: idle pause and close, activity from background
//! commands and agent turns, maximum lifetime, keepalive, pool policies and
//! health.
//!
//! Limits are milliseconds; every wait polls for an observable state with a
//! generous upper bound, and nothing asserts how fast something happened.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCapabilities, RunnerCommandRequest,
    RunnerCommandResult, RunnerDestination, RunnerErrorKind, RunnerProcessInfo, RunnerProcessState,
    RunnerResult, RunnerSessionState,
};
use runner_lifecycle::{
    CloseReason, DestinationPool, IdleAction, ManagedSession, ManagedStatus, ManagerConfig,
    PoolConfig, SelectionPolicy, SessionManager,
};
use runner_local::LocalProvider;
use serde_json::json;
use support::{Area, destination, eventually};

/// Upper bound for any state change to show up.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(idle_ms: Option<u64>, on_idle: IdleAction) -> ManagerConfig {
    ManagerConfig {
        idle_timeout: idle_ms.map(Duration::from_millis),
        max_lifetime: None,
        keepalive_interval: None,
        on_idle,
        check_interval: Duration::from_millis(20),
    }
}

/// A manager of unix-local sessions as users get them: through the layer
/// stack, whose correctness layer answers `SessionClosed` after a close.
fn manager(config: ManagerConfig) -> SessionManager {
    SessionManager::new(runner_stack::stacked(LocalProvider::new()), config).expect("manager")
}

async fn status_becomes(session: &ManagedSession, wanted: ManagedStatus) -> bool {
    eventually(PATIENCE, || async move { session.status() == wanted }).await
}

fn echo(id: &str) -> RunnerCommandRequest {
    RunnerCommandRequest::shell(id, "echo hi")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_is_paused_and_resumes_on_the_next_call() {
    let area = Area::new();
    let manager = manager(config(Some(150), IdleAction::Pause));
    let s = manager
        .create_session(destination(area.owned_config()))
        .await
        .expect("create");
    assert!(
        status_becomes(&s, ManagedStatus::Paused { by_manager: true }).await,
        "an idle pausable session is paused: {:?}",
        s.status()
    );
    let out = s.run_command(echo("after-pause")).await.expect("run");
    assert_eq!(out.stdout, "hi\n");
    assert!(
        matches!(
            s.status(),
            ManagedStatus::Active | ManagedStatus::Paused { by_manager: true }
        ),
        "{:?}",
        s.status()
    );
    // A pause the caller asked for is not undone by the next call.
    s.pause().await.expect("pause");
    assert_eq!(s.status(), ManagedStatus::Paused { by_manager: false });
    assert_eq!(
        s.run_command(echo("paused"))
            .await
            .map(drop)
            .expect_err("paused")
            .kind(),
        RunnerErrorKind::InvalidRequest
    );
    s.resume().await.expect("resume");
    s.close().await.expect("close");
    assert_eq!(s.status(), ManagedStatus::Closed(CloseReason::Requested));
    assert!(
        eventually(PATIENCE, || async { manager.sessions().is_empty() }).await,
        "a closed session leaves the manager"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_is_closed_when_configured_and_its_workspace_freed() {
    let area = Area::new();
    let manager = manager(config(Some(150), IdleAction::Close));
    let s = manager
        .create_session(destination(area.owned_config()))
        .await
        .expect("create");
    let root = s.workspace_root();
    assert!(
        status_becomes(&s, ManagedStatus::Closed(CloseReason::Idle)).await,
        "{:?}",
        s.status()
    );
    assert!(!root.exists(), "closing freed the owned workspace");
    assert_eq!(
        s.run_command(echo("closed"))
            .await
            .map(drop)
            .expect_err("closed")
            .kind(),
        RunnerErrorKind::SessionClosed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_cannot_pause_is_closed_on_idle() {
    let provider = Arc::new(runner_testkit::MemoryProvider::new());
    assert!(!provider.capabilities().pausable);
    let manager =
        SessionManager::new(provider, config(Some(100), IdleAction::Pause)).expect("manager");
    let s = manager
        .create_session(RunnerDestination {
            id: "memory".into(),
            provider_id: runner_testkit::MEMORY_PROVIDER_ID.into(),
            config: json!({}),
            default_manifest: Default::default(),
            artifacts: None,
        })
        .await
        .expect("create");
    assert!(
        status_becomes(&s, ManagedStatus::Closed(CloseReason::Idle)).await,
        "{:?}",
        s.status()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_background_command_keeps_the_session_active() {
    let area = Area::new();
    let manager = manager(config(Some(100), IdleAction::Pause));
    let s = manager
        .create_session(destination(area.owned_config()))
        .await
        .expect("create");
    s.start_command(RunnerCommandRequest::shell("bg", "sleep 3"))
        .await
        .expect("start");
    // Observed through the inner session, which does not count as activity:
    // as long as the command runs, the session is never paused.
    let inner = s.inner().clone();
    loop {
        let status = s.status();
        let running = inner
            .command_status(&"bg".to_string())
            .await
            .expect("status")
            .state
            == RunnerProcessState::Running;
        if !running {
            break;
        }
        assert_eq!(status, ManagedStatus::Active, "paused while a command ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        status_becomes(&s, ManagedStatus::Paused { by_manager: true }).await,
        "idle once the command ended: {:?}",
        s.status()
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_turn_guard_and_touch_hold_off_the_idle_rule() {
    let area = Area::new();
    let manager = manager(config(Some(100), IdleAction::Close));
    let s = manager
        .create_session(destination(area.owned_config()))
        .await
        .expect("create");
    let turn = s.begin_turn();
    // Many idle periods pass while the agent is thinking.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(s.status(), ManagedStatus::Active, "reaped during a turn");
    let second = s.begin_turn();
    drop(turn);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.status(),
        ManagedStatus::Active,
        "reaped while a turn remained"
    );
    drop(second);
    assert!(
        status_becomes(&s, ManagedStatus::Closed(CloseReason::Idle)).await,
        "idle after the last turn: {:?}",
        s.status()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_lifetime_closes_even_inside_a_turn() {
    let area = Area::new();
    let mut config = config(None, IdleAction::Pause);
    config.max_lifetime = Some(Duration::from_millis(300));
    let manager = manager(config);
    let s = manager
        .create_session(destination(area.owned_config()))
        .await
        .expect("create");
    let _turn = s.begin_turn();
    s.start_command(RunnerCommandRequest::shell("bg", "sleep 1000"))
        .await
        .expect("start");
    assert!(
        status_becomes(&s, ManagedStatus::Closed(CloseReason::MaxLifetime)).await,
        "{:?}",
        s.status()
    );
    assert_eq!(
        s.inner()
            .list_commands()
            .await
            .map(drop)
            .expect_err("closed")
            .kind(),
        RunnerErrorKind::SessionClosed
    );
}

/// A real unix-local session that counts `list_commands` calls, to observe
/// the keepalive.
struct Counting {
    inner: Arc<dyn RemoteRunnerSession>,
    list_calls: AtomicUsize,
}

#[async_trait]
impl RemoteRunnerSession for Counting {
    fn state(&self) -> RunnerSessionState {
        self.inner.state()
    }
    fn capabilities(&self) -> RunnerCapabilities {
        self.inner.capabilities()
    }
    fn workspace_root(&self) -> PathBuf {
        self.inner.workspace_root()
    }
    async fn close(&self) -> RunnerResult<()> {
        self.inner.close().await
    }
    async fn run_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerCommandResult> {
        self.inner.run_command(request).await
    }
    async fn start_command(
        &self,
        request: RunnerCommandRequest,
    ) -> RunnerResult<RunnerProcessInfo> {
        self.inner.start_command(request).await
    }
    async fn list_commands(&self) -> RunnerResult<Vec<RunnerProcessInfo>> {
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.list_commands().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_reaches_a_session_during_a_turn() {
    let area = Area::new();
    let mut config = config(None, IdleAction::Pause);
    config.keepalive_interval = Some(Duration::from_millis(50));
    let manager = manager(config);
    let inner = LocalProvider::new()
        .create_session(destination(area.owned_config()))
        .await
        .expect("create");
    let counting = Arc::new(Counting {
        inner,
        list_calls: AtomicUsize::new(0),
    });
    let s = manager.manage(counting.clone());
    let turn = s.begin_turn();
    assert!(
        eventually(PATIENCE, || async {
            counting.list_calls.load(Ordering::SeqCst) >= 3
        })
        .await,
        "keepalive calls during a turn"
    );
    drop(turn);
    // Idle again: at most a keepalive already under way still lands.
    let settled = counting.list_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = counting.list_calls.load(Ordering::SeqCst);
    assert!(
        later <= settled + 1,
        "keepalive went on while idle: {settled} → {later}"
    );
    // A running background command keeps the keepalive going without a turn.
    s.start_command(RunnerCommandRequest::shell("bg", "sleep 1000"))
        .await
        .expect("start");
    assert!(
        eventually(PATIENCE, || async {
            counting.list_calls.load(Ordering::SeqCst) >= later + 3
        })
        .await,
        "keepalive calls while a background command runs"
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn manager_config_is_checked() {
    let mut bad = config(Some(0), IdleAction::Pause);
    let err =
        SessionManager::new(Arc::new(LocalProvider::new()), bad.clone()).expect_err("zero idle");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    assert!(err.message().contains("idle_timeout"), "{err}");
    bad.idle_timeout = None;
    bad.check_interval = Duration::ZERO;
    let err = SessionManager::new(Arc::new(LocalProvider::new()), bad).expect_err("zero check");
    assert!(err.message().contains("check_interval"), "{err}");
}

#[test]
fn a_manager_needs_a_runtime() {
    let err = SessionManager::new(Arc::new(LocalProvider::new()), ManagerConfig::default())
        .expect_err("no runtime");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
}

// ----- destination pools -----

fn local(id: &str, area: &Area, name: &str) -> RunnerDestination {
    let mut d = destination(json!({
        "workspaces_dir": area.path(&format!("{name}/workspaces")),
        "snapshot_dir": area.path(&format!("{name}/snapshots")),
        "kill_grace_ms": 200,
    }));
    d.id = id.into();
    d
}

/// A destination with an unknown config key: `validate_destination` refuses it.
fn misconfigured(id: &str) -> RunnerDestination {
    let mut d = destination(json!({ "workspaces_dirr": "/tmp" }));
    d.id = id.into();
    d
}

/// A destination whose workspaces directory would have to be created under a
/// regular file: it validates, but every `create_session` fails.
fn unbuildable(id: &str, area: &Area) -> RunnerDestination {
    let file = area.path("a-file");
    std::fs::write(&file, "not a directory").expect("file");
    let mut d = destination(json!({ "workspaces_dir": file.join("workspaces") }));
    d.id = id.into();
    d
}

fn pool(destinations: Vec<RunnerDestination>, policy: SelectionPolicy) -> DestinationPool {
    DestinationPool::new(
        Arc::new(LocalProvider::new()),
        destinations,
        PoolConfig {
            policy,
            health_ttl: Duration::from_secs(600),
            probe: false,
        },
    )
    .expect("pool")
}

fn under(session: &Arc<dyn RemoteRunnerSession>, dir: &Path) -> bool {
    session.workspace_root().starts_with(dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_cycles_and_sessions_stay_on_their_destination() {
    let area = Area::new();
    let pool = pool(
        vec![
            local("a", &area, "a"),
            local("b", &area, "b"),
            local("c", &area, "c"),
        ],
        SelectionPolicy::RoundRobin,
    );
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(pool.create_session().await.expect("create"));
    }
    let ids: Vec<String> = sessions.iter().map(|s| s.state().destination_id).collect();
    assert_eq!(ids, ["a", "b", "c", "a", "b", "c"]);
    for s in &sessions {
        let dest = s.state().destination_id;
        assert!(
            under(s, &area.path(&dest)),
            "{dest}: {:?}",
            s.workspace_root()
        );
    }
    // Resuming goes back to the destination the session started on.
    let state = sessions[1].state();
    let resumed = pool.resume_session(state).await.expect("resume");
    assert_eq!(resumed.state().destination_id, "b");
    assert_eq!(resumed.workspace_root(), sessions[1].workspace_root());
    assert_eq!(
        pool.destination_of(&resumed.state()).map(|d| d.id.as_str()),
        Some("b")
    );
    resumed.close().await.expect("close");
    for s in sessions {
        s.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_destinations_are_skipped_with_their_reasons() {
    let area = Area::new();
    let pool = pool(
        vec![
            misconfigured("bad-config"),
            local("good", &area, "good"),
            unbuildable("bad-dir", &area),
        ],
        SelectionPolicy::RoundRobin,
    );
    for _ in 0..4 {
        let s = pool.create_session().await.expect("create");
        assert_eq!(s.state().destination_id, "good");
        s.close().await.expect("close");
    }
    let health = pool.health();
    let reason = |id: &str| {
        health
            .iter()
            .find(|h| h.destination_id == id)
            .and_then(|h| h.failure.clone())
    };
    let bad_config = reason("bad-config").expect("bad-config has a reason");
    assert!(bad_config.contains("workspaces_dirr"), "{bad_config}");
    let bad_dir = reason("bad-dir").expect("bad-dir has a reason");
    assert!(bad_dir.contains("create_session"), "{bad_dir}");
    assert_eq!(reason("good"), None);

    let all_bad = self::pool(
        vec![misconfigured("x"), unbuildable("y", &area)],
        SelectionPolicy::Random,
    );
    let err = all_bad
        .create_session()
        .await
        .map(drop)
        .expect_err("all fail");
    assert_eq!(err.kind(), RunnerErrorKind::Unavailable);
    assert!(
        err.message().contains("x: validate_destination") && err.message().contains("y: "),
        "{err}"
    );
    // A fresh check without a probe only validates: the unbuildable
    // destination passes it (its failure shows when a session is created).
    let checked = all_bad.check_health().await;
    assert!(checked[0].failure.is_some(), "{checked:?}");
    assert_eq!(checked[1].failure, None, "{checked:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_catches_a_destination_that_only_fails_at_creation() {
    let area = Area::new();
    let pool = DestinationPool::new(
        Arc::new(LocalProvider::new()),
        vec![unbuildable("bad-dir", &area), local("good", &area, "good")],
        PoolConfig {
            policy: SelectionPolicy::RoundRobin,
            health_ttl: Duration::from_secs(600),
            probe: true,
        },
    )
    .expect("pool");
    let health = pool.check_health().await;
    assert!(
        health[0]
            .failure
            .as_deref()
            .is_some_and(|r| r.contains("probe session")),
        "{health:?}"
    );
    assert_eq!(health[1].failure, None, "{health:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_busy_prefers_the_destination_with_fewer_live_sessions() {
    let area = Area::new();
    let pool = pool(
        vec![local("a", &area, "a"), local("b", &area, "b")],
        SelectionPolicy::LeastBusy,
    );
    let first = pool.create_session().await.expect("create");
    let second = pool.create_session().await.expect("create");
    let third = pool.create_session().await.expect("create");
    let dest = |s: &Arc<dyn RemoteRunnerSession>| s.state().destination_id;
    assert_eq!([dest(&first), dest(&second), dest(&third)], ["a", "b", "a"]);
    second.close().await.expect("close");
    drop(second);
    let fourth = pool.create_session().await.expect("create");
    assert_eq!(dest(&fourth), "b");
    let counts: Vec<usize> = pool.health().iter().map(|h| h.live_sessions).collect();
    assert_eq!(counts, [2, 1]);
    for s in [first, third, fourth] {
        s.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_selection_uses_every_destination() {
    let area = Area::new();
    let pool = pool(
        vec![local("a", &area, "a"), local("b", &area, "b")],
        SelectionPolicy::Random,
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let s = pool.create_session().await.expect("create");
        seen.insert(s.state().destination_id);
        s.close().await.expect("close");
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn a_pool_refuses_bad_destination_lists() {
    let area = Area::new();
    let provider: Arc<dyn RemoteRunnerProvider> = Arc::new(LocalProvider::new());
    let make = |destinations| {
        DestinationPool::new(provider.clone(), destinations, PoolConfig::default())
            .map(drop)
            .expect_err("refused")
    };
    assert!(make(vec![]).message().contains("at least one"));
    assert!(
        make(vec![local("a", &area, "a"), local("a", &area, "b")])
            .message()
            .contains("twice")
    );
    let mut docker = local("d", &area, "d");
    docker.provider_id = "docker".into();
    assert_eq!(make(vec![docker]).kind(), RunnerErrorKind::InvalidRequest);
}
