//! `watch`: inotify through `notify`, events mapped back into the workspace
//! and kept in a bounded queue that reports an overflow instead of growing.
//!
//! The notify thread runs [`Shared::push`] for every kernel event; the stream
//! the caller holds pops them. Renames arrive as a "moved from" and a "moved
//! to" half: a "moved from" waits in the queue (at most [`RENAME_WAIT`]) for
//! its other half and becomes one `Renamed` event, or `Removed` when the path
//! left the watch. Temp files of atomic writes never show: the rename that
//! installs one is the `Created` of its target. Under a recursive watch a new
//! directory is read once notify watches it too (it adds the watch after it
//! hands out the directory's event), so that what was made inside it before
//! is reported as created (once: what the kernel reported already is skipped).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use notify::event::{EventKind, ModifyKind, RemoveKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use runner_api::{
    RunnerError, RunnerResult, RunnerWatchEvent, RunnerWatchEventKind, RunnerWatchRequest,
    RunnerWatchStream,
};
use tokio_util::sync::CancellationToken;

use crate::files;

/// How long a "moved from" waits for its "moved to" before it is reported as
/// a removal (the kernel queues both halves of a rename together).
const RENAME_WAIT: Duration = Duration::from_millis(20);

/// Where a watch looks on this machine and how its paths map back.
#[derive(Debug, Clone)]
pub(crate) struct WatchTarget {
    /// The path to watch (canonical, on this machine).
    pub(crate) host: PathBuf,
    /// The host directory of the base the path lies under (the root or a mount).
    pub(crate) host_base: PathBuf,
    /// That base relative to the workspace root (empty for the root).
    pub(crate) ws_base: PathBuf,
}

impl WatchTarget {
    /// `path` (on this machine) relative to the workspace root, when it lies
    /// under the watched base.
    fn relative(&self, path: &Path) -> Option<PathBuf> {
        let rest = path.strip_prefix(&self.host_base).ok()?;
        Some(self.ws_base.join(rest))
    }
}

/// One queued item.
enum Item {
    /// An event ready to hand out.
    Event(RunnerWatchEvent),
    /// The first half of a rename, waiting for its second.
    MovedFrom {
        /// Workspace-relative path it left.
        path: PathBuf,
        /// The kernel's cookie pairing both halves.
        tracker: usize,
        /// Whether it was a directory.
        is_dir: bool,
        /// When it arrived.
        at: Instant,
    },
    /// A directory created under a recursive watch, to be read once notify
    /// watches it too (it adds the watch after handing out the event): what
    /// was made inside before that is reported as created from the listing.
    Scan {
        /// Workspace-relative path of the directory.
        path: PathBuf,
        /// When its creation arrived.
        at: Instant,
    },
}

/// The queue between the notify thread and the stream.
#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Events were dropped (queue full or kernel overflow) and the reader has
    /// not been told yet.
    overflowed: bool,
    /// The error that ended the watch, once.
    error: Option<RunnerError>,
}

/// What the notify thread and the stream share.
struct Shared {
    target: WatchTarget,
    recursive: bool,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs on notify's thread for every event.
    fn push(&self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                let mut queue = self.lock();
                queue.error.get_or_insert_with(|| {
                    RunnerError::provider(format!("watch {}: {error}", self.target.host.display()))
                });
                drop(queue);
                self.wake.notify_one();
                return;
            }
        };
        if event.need_rescan() {
            self.lock().overflowed = true;
            self.wake.notify_one();
            return;
        }
        let paths: Vec<PathBuf> = event
            .paths
            .iter()
            .filter_map(|p| self.target.relative(p))
            .collect();
        let mut queue = self.lock();
        let pushed = match (event.kind, paths.as_slice()) {
            (EventKind::Create(kind), [path]) if !files::is_temp_name(path) => {
                let is_dir = matches!(kind, notify::event::CreateKind::Folder);
                self.created(&mut queue, path, is_dir)
            }
            (EventKind::Remove(kind), [path]) if !files::is_temp_name(path) => {
                let is_dir = matches!(kind, RemoveKind::Folder);
                queue.event(RunnerWatchEventKind::Removed, path, is_dir)
            }
            (EventKind::Modify(ModifyKind::Name(mode)), paths) => {
                self.rename(&mut queue, mode, event.tracker(), paths)
            }
            (EventKind::Modify(_), [path]) if !files::is_temp_name(path) => {
                queue.modified(path, || self.is_dir(path))
            }
            _ => false,
        };
        drop(queue);
        if pushed {
            self.wake.notify_one();
        }
    }

    /// Queues the creation of `path`; under a recursive watch a directory
    /// is read later too ([`Item::Scan`]). Returns whether it was queued.
    fn created(&self, queue: &mut Queue, path: &Path, is_dir: bool) -> bool {
        let queued = queue.event(RunnerWatchEventKind::Created, path, is_dir);
        if queued && is_dir && self.recursive {
            queue.push(Item::Scan {
                path: path.to_path_buf(),
                at: Instant::now(),
            });
        }
        queued
    }

    /// One half (or the pairing) of a rename. Returns whether anything was queued.
    fn rename(
        &self,
        queue: &mut Queue,
        mode: RenameMode,
        tracker: Option<usize>,
        paths: &[PathBuf],
    ) -> bool {
        match (mode, tracker, paths) {
            (RenameMode::From, Some(tracker), [path]) => queue.push(Item::MovedFrom {
                path: path.clone(),
                tracker,
                is_dir: self.is_dir(path),
                at: Instant::now(),
            }),
            // The pairing follows when the first half is still queued.
            (RenameMode::To, Some(tracker), [_]) if queue.waiting(tracker) => false,
            // Moved in from outside the watch: new here, with what it holds.
            (RenameMode::To, _, [path]) if !files::is_temp_name(path) => {
                let is_dir = self.is_dir(path);
                self.created(queue, path, is_dir)
            }
            (RenameMode::Both, Some(tracker), [from, to]) => {
                let is_dir = self.is_dir(to);
                let event = if files::is_temp_name(from) {
                    // An atomic write installing its temp file.
                    RunnerWatchEvent::new(RunnerWatchEventKind::Created, to.clone(), is_dir)
                } else {
                    RunnerWatchEvent {
                        kind: RunnerWatchEventKind::Renamed,
                        path: to.clone(),
                        from: Some(from.clone()),
                        is_dir,
                    }
                };
                match queue.pair(tracker) {
                    Some(slot) => {
                        *slot = Item::Event(event);
                        true
                    }
                    // The first half was already reported as a removal.
                    None => queue.push(Item::Event(RunnerWatchEvent {
                        kind: RunnerWatchEventKind::Created,
                        from: None,
                        ..event
                    })),
                }
            }
            // The watched path itself moved away.
            (RenameMode::From, None, [path]) => {
                let is_dir = self.is_dir(path);
                queue.event(RunnerWatchEventKind::Removed, path, is_dir)
            }
            _ => false,
        }
    }

    /// Where workspace-relative `rel` is on this machine.
    fn host_of(&self, rel: &Path) -> PathBuf {
        self.target
            .host_base
            .join(rel.strip_prefix(&self.target.ws_base).unwrap_or(rel))
    }

    /// Whether `rel` (workspace-relative) is a directory now; `false` once
    /// it is gone.
    fn is_dir(&self, rel: &Path) -> bool {
        std::fs::symlink_metadata(self.host_of(rel)).is_ok_and(|m| m.is_dir())
    }

    /// The next event for the stream, `None` when it must wait; `Err` once
    /// when the watch failed.
    fn pop(&self) -> Option<RunnerResult<RunnerWatchEvent>> {
        loop {
            let mut queue = self.lock();
            if let Some(error) = queue.error.take() {
                return Some(Err(error));
            }
            return match queue.items.front() {
                Some(Item::MovedFrom { at, .. } | Item::Scan { at, .. })
                    if at.elapsed() < RENAME_WAIT =>
                {
                    None
                }
                Some(_) => {
                    match queue.items.pop_front() {
                        Some(Item::Event(event)) => Some(Ok(event)),
                        Some(Item::MovedFrom { path, is_dir, .. }) => Some(Ok(
                            RunnerWatchEvent::new(RunnerWatchEventKind::Removed, path, is_dir),
                        )),
                        Some(Item::Scan { path, .. }) => {
                            drop(queue);
                            self.scan(&path);
                            continue;
                        }
                        None => None,
                    }
                }
                None if queue.overflowed => {
                    queue.overflowed = false;
                    Some(Ok(RunnerWatchEvent::overflow()))
                }
                None => None,
            };
        }
    }

    /// Reports as created what is inside the new directory `rel` (depth
    /// first, symlinks not followed, at most a full queue's worth), ahead of
    /// the events queued since, skipping what they already report.
    fn scan(&self, rel: &Path) {
        let mut found = Vec::new();
        let mut dirs = vec![rel.to_path_buf()];
        'walk: while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(self.host_of(&dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = dir.join(entry.file_name());
                if files::is_temp_name(&path) {
                    continue;
                }
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    dirs.push(path.clone());
                }
                found.push(RunnerWatchEvent::new(
                    RunnerWatchEventKind::Created,
                    path,
                    is_dir,
                ));
                if found.len() > RunnerWatchRequest::MAX_QUEUED_EVENTS {
                    break 'walk;
                }
            }
        }
        let mut queue = self.lock();
        let known = |event: &RunnerWatchEvent, queue: &Queue| {
            queue.items.iter().any(|item| {
                matches!(item, Item::Event(e) if e.kind == RunnerWatchEventKind::Created && e.path == event.path)
            })
        };
        for event in found.into_iter().rev() {
            if queue.items.len() >= RunnerWatchRequest::MAX_QUEUED_EVENTS {
                queue.overflowed = true;
                break;
            }
            if !known(&event, &queue) {
                queue.items.push_front(Item::Event(event));
            }
        }
    }

    /// Whether the front of the queue waits (a rename half, a directory to read).
    fn waiting(&self) -> bool {
        matches!(
            self.lock().items.front(),
            Some(Item::MovedFrom { .. } | Item::Scan { .. })
        )
    }
}

impl Queue {
    fn event(&mut self, kind: RunnerWatchEventKind, path: &Path, is_dir: bool) -> bool {
        self.push(Item::Event(RunnerWatchEvent::new(kind, path, is_dir)))
    }

    /// A modification, unless the newest queued event already says so; the
    /// path is looked at (`is_dir`) only for an event that is queued.
    fn modified(&mut self, path: &Path, is_dir: impl FnOnce() -> bool) -> bool {
        let repeated = matches!(
            self.items.back(),
            Some(Item::Event(e)) if e.kind == RunnerWatchEventKind::Modified && e.path == path
        );
        !repeated && !self.full() && self.event(RunnerWatchEventKind::Modified, path, is_dir())
    }

    /// Whether the queue is full; a full queue records the overflow.
    fn full(&mut self) -> bool {
        let full = self.items.len() >= RunnerWatchRequest::MAX_QUEUED_EVENTS;
        self.overflowed |= full;
        full
    }

    /// Queues `item`; a full queue drops it and records the overflow, and the
    /// first item queued after an overflow is preceded by its marker.
    fn push(&mut self, item: Item) -> bool {
        if self.full() {
            return false;
        }
        if self.overflowed {
            self.overflowed = false;
            self.items
                .push_back(Item::Event(RunnerWatchEvent::overflow()));
        }
        self.items.push_back(item);
        true
    }

    fn waiting(&self, tracker: usize) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i, Item::MovedFrom { tracker: t, .. } if *t == tracker))
    }

    fn pair(&mut self, tracker: usize) -> Option<&mut Item> {
        self.items
            .iter_mut()
            .rev()
            .find(|i| matches!(i, Item::MovedFrom { tracker: t, .. } if *t == tracker))
    }
}

/// Starts a watch of `target` that ends when the stream is dropped or
/// `closed` is cancelled (the session closed).
///
/// Errors: `Provider` when inotify refuses (for example the per-user watch
/// limit).
pub(crate) fn start(
    target: WatchTarget,
    recursive: bool,
    closed: CancellationToken,
) -> RunnerResult<RunnerWatchStream> {
    let shared = Arc::new(Shared {
        target: target.clone(),
        recursive,
        queue: Mutex::default(),
        wake: tokio::sync::Notify::new(),
    });
    let handler = shared.clone();
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(move |e| handler.push(e), config)
        .map_err(|e| watch_error(&target, e))?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher
        .watch(&target.host, mode)
        .map_err(|e| watch_error(&target, e))?;
    let state = (shared, watcher, closed);
    let stream = futures_util::stream::unfold(state, |(shared, watcher, closed)| async move {
        loop {
            if let Some(item) = shared.pop() {
                return Some((item, (shared, watcher, closed)));
            }
            let wait = if shared.waiting() {
                RENAME_WAIT
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                () = closed.cancelled() => return None,
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
    Ok(Box::pin(stream))
}

fn watch_error(target: &WatchTarget, error: notify::Error) -> RunnerError {
    RunnerError::provider(format!("watch {}: {error}", target.host.display()))
}
