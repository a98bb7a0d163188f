//! State shared by the HTTP side and the pod lifecycles.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use bollard::Docker;
use serde_json::Value;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::resource::Kind;
use crate::store::Store;

/// Everything one server instance holds.
pub(crate) struct Shared {
    /// The instance id in container labels and names.
    pub(crate) instance: String,
    /// The bearer token every request must carry.
    pub(crate) token: String,
    /// The user named in 403 messages.
    pub(crate) user: String,
    /// The Docker daemon the pods run on.
    pub(crate) docker: Docker,
    /// Host directories of emptyDir volumes live under this one.
    pub(crate) dir: PathBuf,
    /// The objects.
    pub(crate) store: Mutex<Store>,
    /// `(verb, resource)` pairs answered with 403.
    pub(crate) forbidden: Mutex<HashSet<(String, String)>>,
    /// The lifecycle task of each pod, by `(namespace, name)`.
    pub(crate) lifecycles: Mutex<HashMap<(String, String), AbortHandle>>,
    /// Cancelled when the listener stops: ends watches and exec streams.
    pub(crate) generation: Mutex<CancellationToken>,
    /// Cancelled (and replaced) to cut every open exec stream.
    pub(crate) exec_cut: Mutex<CancellationToken>,
    /// How many exec streams are open.
    pub(crate) open_execs: AtomicUsize,
}

/// Counts one open exec stream while it lives.
pub(crate) struct OpenExec<'a>(&'a AtomicUsize);

impl Drop for OpenExec<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Locks `mutex`, recovering the data of a poisoned lock.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Changes a stored object with `change` (which says whether it changed
    /// anything); a change gets a new resourceVersion and reaches watchers.
    /// `None` when the object is gone.
    pub(crate) fn update(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> bool,
    ) -> Option<Value> {
        let mut store = lock(&self.store);
        let mut object = store.get(kind, namespace, name)?.clone();
        if change(&mut object) {
            Some(store.put(kind, namespace, name, object))
        } else {
            Some(object)
        }
    }

    /// Counts an exec stream as open until the guard drops.
    pub(crate) fn exec_opened(&self) -> OpenExec<'_> {
        self.open_execs.fetch_add(1, Ordering::SeqCst);
        OpenExec(&self.open_execs)
    }

    /// The token that cuts the exec streams open now.
    pub(crate) fn exec_cut(&self) -> CancellationToken {
        lock(&self.exec_cut).clone()
    }

    /// Cuts every open exec stream; later ones are not affected.
    pub(crate) fn cut_execs(&self) {
        std::mem::take(&mut *lock(&self.exec_cut)).cancel();
    }

    /// The token of the current listener generation.
    pub(crate) fn generation(&self) -> CancellationToken {
        lock(&self.generation).clone()
    }
}

/// The current time as the API server writes it (`2026-01-02T03:04:05Z`).
pub(crate) fn now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
