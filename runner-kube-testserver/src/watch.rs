//! Watches: newline-delimited `WatchEvent`s from a resourceVersion on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Query, streaming};
use crate::resource::Kind;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::{Shared, lock};
use crate::status::ApiError;
use crate::store::Event;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": event_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

/// Starts a watch of `kind` in `namespace` (all namespaces with `None`).
pub(crate) fn watch(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    query: &Query,
) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial_events = query.flag("sendInitialEvents");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let matches = move |event_kind: Kind, event_ns: &str, object: &Value| {
        event_kind == kind
            && namespace.as_deref().is_none_or(|ns| ns == event_ns)
            && labels.matches(object)
            && fields.matches(object)
    };
    let mut first: Vec<Bytes> = Vec::new();
    let feed: Option<broadcast::Receiver<Event>>;
    let mut last_rv;
    {
        let store = lock(&shared.store);
        last_rv = store.current_rv();
        match query.get("resourceVersion").unwrap_or("") {
            rv if rv.is_empty() || rv == "0" || initial_events => {
                for object in store.list(kind, None) {
                    let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
                    if matches(kind, ns, &object) {
                        first.push(line("ADDED", &object));
                    }
                }
                if initial_events && bookmarks {
                    first.push(bookmark(kind, last_rv, true));
                }
                feed = Some(store.subscribe());
            }
            rv => {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv:?}"))
                })?;
                match store.replay(rv) {
                    Ok((events, receiver)) => {
                        for event in events {
                            if matches(event.kind, &event.namespace, &event.object) {
                                first.push(line(event.event_type, &event.object));
                            }
                        }
                        feed = Some(receiver);
                    }
                    Err(rv) => {
                        first.push(line("ERROR", &ApiError::expired(rv).status()));
                        feed = None;
                    }
                }
            }
        }
    }
    let cancel = shared.generation();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        for bytes in first {
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
        let Some(mut feed) = feed else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            let bytes = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => bookmark(kind, last_rv, false),
                event = feed.recv() => match event {
                    Ok(event) => {
                        last_rv = event.rv;
                        if !matches(event.kind, &event.namespace, &event.object) {
                            continue;
                        }
                        line(event.event_type, &event.object)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(line("ERROR", &ApiError::expired(last_rv).status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    Ok(streaming(Body::from_stream(stream)))
}
