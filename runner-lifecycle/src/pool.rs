//! Destination pools: several destinations (SSH hosts, Docker hosts, local
//! roots) behind one logical runner, with a selection policy and health checks.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerDestination,
    RunnerDestinationId, RunnerError, RunnerErrorKind, RunnerResult, RunnerSessionState,
};

/// How a [`DestinationPool`] picks the destination of a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectionPolicy {
    /// Each destination in turn.
    #[default]
    RoundRobin,
    /// A random destination each time.
    Random,
    /// The destination with the fewest live sessions from this pool (ties go
    /// to the earlier destination).
    LeastBusy,
}

/// Settings of a [`DestinationPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// How the destination of a new session is chosen.
    pub policy: SelectionPolicy,
    /// How long a health verdict is trusted before the destination is checked
    /// again (default 30 seconds).
    pub health_ttl: Duration,
    /// Also create a probe session and run `true` in it when checking a
    /// destination's health (default `false`: `validate_destination` only).
    pub probe: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            policy: SelectionPolicy::RoundRobin,
            health_ttl: Duration::from_secs(30),
            probe: false,
        }
    }
}

/// The last health verdict of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationHealth {
    /// The destination.
    pub destination_id: RunnerDestinationId,
    /// `None` when healthy; otherwise why the destination is skipped.
    pub failure: Option<String>,
    /// Live sessions this pool created there.
    pub live_sessions: usize,
}

struct Verdict {
    at: Instant,
    failure: Option<String>,
}

#[derive(Default)]
struct PoolState {
    next: usize,
    health: HashMap<RunnerDestinationId, Verdict>,
    live: HashMap<RunnerDestinationId, Vec<Weak<dyn RemoteRunnerSession>>>,
}

impl PoolState {
    fn live_count(&mut self, id: &str) -> usize {
        let list = self.live.entry(id.to_string()).or_default();
        list.retain(|s| s.strong_count() > 0);
        list.len()
    }
}

/// Several destinations of one provider behind one logical runner.
///
/// [`create_session`](Self::create_session) picks a destination by the
/// [`SelectionPolicy`], skips destinations that fail their health check (the
/// reason is kept and shown), and creates the session there. The session's
/// `state().destination_id` names that destination, and the session stays on
/// it: the pool never moves a session, and
/// [`resume_session`](Self::resume_session) goes back to the same destination.
///
/// A session counts as live for [`SelectionPolicy::LeastBusy`] while any handle
/// to it is held.
pub struct DestinationPool {
    provider: Arc<dyn RemoteRunnerProvider>,
    destinations: Vec<RunnerDestination>,
    config: PoolConfig,
    state: Mutex<PoolState>,
}

impl std::fmt::Debug for DestinationPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationPool")
            .field("provider", &self.provider.id())
            .field(
                "destinations",
                &self.destinations.iter().map(|d| &d.id).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish()
    }
}

impl DestinationPool {
    /// A pool over `destinations`, all served by `provider`.
    ///
    /// Errors: `InvalidRequest` when the list is empty, an id repeats, or a
    /// destination names another provider.
    pub fn new(
        provider: Arc<dyn RemoteRunnerProvider>,
        destinations: Vec<RunnerDestination>,
        config: PoolConfig,
    ) -> RunnerResult<Self> {
        if destinations.is_empty() {
            return Err(RunnerError::invalid_request(
                "DestinationPool::new: the pool needs at least one destination",
            ));
        }
        let provider_id = provider.id();
        let mut seen = std::collections::HashSet::new();
        for destination in &destinations {
            if !seen.insert(destination.id.as_str()) {
                return Err(RunnerError::invalid_request(format!(
                    "DestinationPool::new: destination id {:?} appears twice",
                    destination.id
                )));
            }
            if destination.provider_id != provider_id {
                return Err(RunnerError::invalid_request(format!(
                    "DestinationPool::new: destination {:?} is for provider {:?}, not {provider_id:?}",
                    destination.id, destination.provider_id
                )));
            }
        }
        Ok(Self {
            provider,
            destinations,
            config,
            state: Mutex::new(PoolState::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The destinations, in the order given.
    pub fn destinations(&self) -> &[RunnerDestination] {
        &self.destinations
    }

    /// The destination a session of this pool lives on (from its state).
    pub fn destination_of(&self, state: &RunnerSessionState) -> Option<&RunnerDestination> {
        self.destinations
            .iter()
            .find(|d| d.id == state.destination_id)
    }

    /// The order in which destinations are tried for the next session.
    fn candidates(&self) -> Vec<usize> {
        let n = self.destinations.len();
        let mut state = self.state();
        match self.config.policy {
            SelectionPolicy::RoundRobin => {
                let start = state.next % n;
                state.next = state.next.wrapping_add(1);
                (0..n).map(|i| (start + i) % n).collect()
            }
            SelectionPolicy::Random => {
                let start = (random() % n as u64) as usize;
                (0..n).map(|i| (start + i) % n).collect()
            }
            SelectionPolicy::LeastBusy => {
                let mut order: Vec<(usize, usize)> = self
                    .destinations
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (state.live_count(&d.id), i))
                    .collect();
                order.sort();
                order.into_iter().map(|(_, i)| i).collect()
            }
        }
    }

    fn record(&self, id: &str, failure: Option<String>) {
        if let Some(reason) = &failure {
            tracing::warn!(destination_id = %id, reason = %reason, "destination unhealthy; skipped");
        }
        self.state().health.insert(
            id.to_string(),
            Verdict {
                at: Instant::now(),
                failure,
            },
        );
    }

    /// The cached verdict when still fresh.
    fn cached(&self, id: &str) -> Option<Option<String>> {
        let state = self.state();
        let verdict = state.health.get(id)?;
        (verdict.at.elapsed() < self.config.health_ttl).then(|| verdict.failure.clone())
    }

    /// Checks one destination now: `validate_destination`, then (with
    /// [`PoolConfig::probe`]) a probe session running `true`.
    async fn probe(&self, destination: &RunnerDestination) -> Option<String> {
        if let Err(e) = self.provider.validate_destination(destination).await {
            return Some(format!("validate_destination: {e}"));
        }
        if !self.config.probe {
            return None;
        }
        let session = match self.provider.create_session(destination.clone()).await {
            Ok(session) => session,
            Err(e) => return Some(format!("probe session: {e}")),
        };
        let request = RunnerCommandRequest::new(
            format!("runner-pool-probe-{}", uuid::Uuid::new_v4().simple()),
            "true",
            Vec::<String>::new(),
        )
        .with_timeout_ms(30_000);
        let failure = match session.run_command(request).await {
            Ok(result) if result.success() => None,
            Ok(result) => Some(format!(
                "probe command `true` exited with {:?}",
                result.exit_code
            )),
            Err(e) if e.kind() == RunnerErrorKind::Unsupported => None,
            Err(e) => Some(format!("probe command: {e}")),
        };
        if let Err(e) = session.close().await {
            tracing::warn!(destination_id = %destination.id, error = %e, "closing a probe session failed");
        }
        failure
    }

    /// Checks `destination` now and records the verdict.
    async fn check(&self, destination: &RunnerDestination) -> Option<String> {
        let failure = self.probe(destination).await;
        self.record(&destination.id, failure.clone());
        failure
    }

    /// The health of `destination`, from the cache when fresh.
    async fn healthy(&self, destination: &RunnerDestination) -> Option<String> {
        match self.cached(&destination.id) {
            Some(verdict) => verdict,
            None => self.check(destination).await,
        }
    }

    /// Counts `session` as live on `destination_id` for as long as it is held.
    fn track(&self, destination_id: &str, session: &Arc<dyn RemoteRunnerSession>) {
        self.state()
            .live
            .entry(destination_id.to_string())
            .or_default()
            .push(Arc::downgrade(session));
    }

    /// Checks every destination now (ignoring the cache) and reports each.
    pub async fn check_health(&self) -> Vec<DestinationHealth> {
        let mut report = Vec::new();
        for destination in &self.destinations {
            let failure = self.check(destination).await;
            report.push(DestinationHealth {
                destination_id: destination.id.clone(),
                failure,
                live_sessions: self.state().live_count(&destination.id),
            });
        }
        report
    }

    /// The last verdict of every destination (`None` failure when healthy or
    /// not checked yet), without checking.
    pub fn health(&self) -> Vec<DestinationHealth> {
        let mut state = self.state();
        self.destinations
            .iter()
            .map(|d| DestinationHealth {
                destination_id: d.id.clone(),
                failure: state.health.get(&d.id).and_then(|v| v.failure.clone()),
                live_sessions: state.live_count(&d.id),
            })
            .collect()
    }

    /// Creates a session on the first healthy destination in policy order. A
    /// destination whose health check or `create_session` fails is skipped and
    /// its reason recorded (for `health_ttl`).
    ///
    /// Errors: `Unavailable` listing every destination with its reason when
    /// all fail.
    pub async fn create_session(&self) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        let mut reasons = Vec::new();
        for index in self.candidates() {
            let destination = &self.destinations[index];
            if let Some(reason) = self.healthy(destination).await {
                reasons.push(format!("{}: {reason}", destination.id));
                continue;
            }
            match self.provider.create_session(destination.clone()).await {
                Ok(session) => {
                    tracing::info!(destination_id = %destination.id, session_id = %session.state().session_id, "pool session created");
                    self.track(&destination.id, &session);
                    return Ok(session);
                }
                Err(e) => {
                    let reason = format!("create_session: {e}");
                    self.record(&destination.id, Some(reason.clone()));
                    reasons.push(format!("{}: {reason}", destination.id));
                }
            }
        }
        Err(RunnerError::new(
            RunnerErrorKind::Unavailable,
            format!(
                "create_session: no destination of the pool is usable: {}",
                reasons.join("; ")
            ),
        ))
    }

    /// Resumes a session of this pool on the destination it started on.
    ///
    /// Errors: `InvalidRequest` when `state.destination_id` is not in the pool;
    /// those of [`RemoteRunnerProvider::resume_session`].
    pub async fn resume_session(
        &self,
        state: RunnerSessionState,
    ) -> RunnerResult<Arc<dyn RemoteRunnerSession>> {
        if self.destination_of(&state).is_none() {
            return Err(RunnerError::invalid_request(format!(
                "resume_session: destination {:?} is not in this pool",
                state.destination_id
            )));
        }
        let destination_id = state.destination_id.clone();
        let session = self.provider.resume_session(state).await?;
        self.track(&destination_id, &session);
        Ok(session)
    }
}

/// A random number from the standard library's randomly keyed hasher.
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}
