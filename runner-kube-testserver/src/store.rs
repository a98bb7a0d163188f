//! The object store: every object as JSON, one increasing resourceVersion
//! across all of them (as etcd's revision), and the history watches replay.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::resource::Kind;

/// How many changes are kept for watches that resume from a resourceVersion.
const HISTORY: usize = 10_000;

/// One change of one object.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The resourceVersion the change produced.
    pub(crate) rv: u64,
    /// The object's resource.
    pub(crate) kind: Kind,
    /// The object's namespace.
    pub(crate) namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub(crate) event_type: &'static str,
    /// The object after the change (before removal for `DELETED`).
    pub(crate) object: Value,
}

type Key = (Kind, String, String);

/// All objects, their history and the live feed of changes.
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    /// Changes up to this resourceVersion can no longer be replayed.
    compacted: u64,
    feed: broadcast::Sender<Event>,
}

impl Store {
    /// An empty store.
    pub(crate) fn new() -> Self {
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1,
            feed: broadcast::channel(4096).0,
        }
    }

    /// The latest resourceVersion.
    pub(crate) fn current_rv(&self) -> u64 {
        self.rv
    }

    /// The object `name` of `kind` in `namespace`.
    pub(crate) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(kind, namespace.to_string(), name.to_string()))
    }

    /// The objects of `kind`, in `namespace` or in all of them.
    pub(crate) fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Stores `object` (added when new, modified otherwise) under a new
    /// resourceVersion and returns it as stored.
    pub(crate) fn put(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let key = (kind, namespace.to_string(), name.to_string());
        let event_type = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(key, object.clone());
        self.record(kind, namespace, event_type, object.clone());
        object
    }

    /// Removes an object; the `DELETED` event carries a new resourceVersion.
    pub(crate) fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self
            .objects
            .remove(&(kind, namespace.to_string(), name.to_string()))?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record(kind, namespace, "DELETED", object.clone());
        Some(object)
    }

    fn record(&mut self, kind: Kind, namespace: &str, event_type: &'static str, object: Value) {
        let event = Event {
            rv: self.rv,
            kind,
            namespace: namespace.to_string(),
            event_type,
            object,
        };
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.feed.send(event);
    }

    /// The changes after `rv` and the live feed from there on, or the
    /// resourceVersion itself when it is older than the kept history.
    pub(crate) fn replay(&self, rv: u64) -> Result<(Vec<Event>, broadcast::Receiver<Event>), u64> {
        if rv < self.compacted {
            return Err(rv);
        }
        let events = self
            .history
            .iter()
            .filter(|event| event.rv > rv)
            .cloned()
            .collect();
        Ok((events, self.feed.subscribe()))
    }

    /// The live feed only.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.feed.subscribe()
    }

    /// Forgets the history: a watch from any resourceVersion before now gets
    /// 410 Expired, as after an etcd compaction.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}
