//! The destinations a provider trusts when it resumes or rejoins a session.
//!
//! A [`RunnerSessionState`] or [`RunnerSnapshotRef`](runner_api::RunnerSnapshotRef)
//! comes back from storage the caller (or a command) could edit, so a provider
//! never takes trust-relevant settings from it (roots, hosts, identity files,
//! host-key policies, bind mounts, users, daemons). It looks the destination up
//! by the state's `destination_id` among those it created sessions for, or
//! was given by the embedding program, and takes every setting from there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use runner_api::{RunnerDestination, RunnerError, RunnerResult, RunnerSessionState};

/// Destinations by id, shared by clones of a provider.
#[derive(Clone, Default)]
pub struct KnownDestinations(Arc<Mutex<HashMap<String, RunnerDestination>>>);

impl KnownDestinations {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, RunnerDestination>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Trusts `destination` for states naming its id; a later one with the
    /// same id replaces it.
    pub fn remember(&self, destination: &RunnerDestination) {
        self.lock()
            .insert(destination.id.clone(), destination.clone());
    }

    /// The destination `state` names.
    ///
    /// Errors: `NotFound` naming `operation`, the session and the destination
    /// when it is not known, saying how to make it known (`hint`, for example
    /// `"DockerProvider::with_destination"`).
    pub fn of_state(
        &self,
        operation: &str,
        state: &RunnerSessionState,
        hint: &str,
    ) -> RunnerResult<RunnerDestination> {
        self.lock()
            .get(&state.destination_id)
            .cloned()
            .ok_or_else(|| {
                RunnerError::not_found(format!(
                    "{operation} {}: destination {:?} is not known to this provider; create a \
                     session on it or give it with {hint} (settings are never taken from a \
                     state)",
                    state.session_id, state.destination_id
                ))
            })
    }
}

impl std::fmt::Debug for KnownDestinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lock().keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerErrorKind;

    #[test]
    fn known_destinations_answer_by_the_state_id() {
        let known = KnownDestinations::default();
        let destination = RunnerDestination {
            id: "d1".into(),
            provider_id: "p".into(),
            config: serde_json::json!({"root": "/r"}),
            default_manifest: Default::default(),
            artifacts: None,
        };
        let state = RunnerSessionState {
            provider_id: "p".into(),
            session_id: "s1".into(),
            destination_id: "d1".into(),
            snapshot: None,
            metadata: serde_json::json!({"root": "/elsewhere"}),
        };
        let err = known
            .of_state("resume_session", &state, "P::with_destination")
            .unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::NotFound);
        assert!(
            err.message().contains("\"d1\"") && err.message().contains("s1"),
            "{err}"
        );
        known.clone().remember(&destination);
        assert_eq!(
            known.of_state("resume_session", &state, "x").unwrap(),
            destination
        );
        assert_eq!(format!("{known:?}"), "[\"d1\"]");
    }
}
