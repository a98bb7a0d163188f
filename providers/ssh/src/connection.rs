//! One multiplexed OpenSSH master per destination, shared by its sessions,
//! with an sftp channel on top (for the provider's own files on the host:
//! see [`crate::host`]); replaced once when the master dies.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, SessionBuilder};
use openssh_sftp_client::{Sftp, SftpOptions};
use runner_agent::delivery::Platform;
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};

use crate::config::{HostKeyPolicy, SshConfig};
use crate::error::{connect_error, sftp_error, which_ssh};

/// A live master connection and its sftp channel.
pub(crate) struct Link {
    /// The mux master; the bootstrap commands and the agent channels go
    /// through it.
    pub(crate) session: Arc<openssh::Session>,
    /// The sftp channel, opened over the same master. Requests go through
    /// [`Link::sftp_call`], which bounds how long each may take.
    pub(crate) sftp: Sftp,
    /// The remote user's home directory (canonical).
    pub(crate) home: PathBuf,
    /// Longest one sftp request may take.
    sftp_timeout: Duration,
    /// Set when an sftp request timed out: the connection replaces the
    /// channel before the next operation.
    wedged: AtomicBool,
}

impl Link {
    /// A link over `session` with a new sftp channel.
    async fn open(
        session: Arc<openssh::Session>,
        home: PathBuf,
        sftp_timeout: Duration,
        label: &str,
    ) -> RunnerResult<Self> {
        let sftp = Sftp::from_clonable_session(session.clone(), SftpOptions::default())
            .await
            .map_err(|e| sftp_error("open sftp channel to", label, e))?;
        Ok(Self {
            session,
            sftp,
            home,
            sftp_timeout,
            wedged: AtomicBool::new(false),
        })
    }

    /// Runs one sftp request, mapping its error with [`sftp_error`]. A request
    /// unanswered within the destination's `sftp_timeout_ms` is `Timeout`: the
    /// channel is marked stuck (the connection opens a new one before the
    /// next operation).
    pub(crate) async fn sftp_call<T>(
        &self,
        operation: &str,
        path: impl std::fmt::Display,
        request: impl Future<Output = Result<T, openssh_sftp_client::Error>>,
    ) -> RunnerResult<T> {
        match tokio::time::timeout(self.sftp_timeout, request).await {
            Ok(result) => result.map_err(|e| sftp_error(operation, path, e)),
            Err(_) => {
                tracing::warn!(%path, operation, "sftp request timed out; the sftp channel is replaced");
                self.wedged.store(true, Ordering::SeqCst);
                Err(RunnerError::new(
                    RunnerErrorKind::Timeout,
                    format!(
                        "{operation} {path}: the sftp server did not answer within {} ms (the \
                         destination's sftp_timeout_ms); its channel is replaced",
                        self.sftp_timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// Whether an sftp request of this link timed out.
    pub(crate) fn is_wedged(&self) -> bool {
        self.wedged.load(Ordering::SeqCst)
    }

    /// The same master with a new sftp channel (the old one is dropped with
    /// the last holder of this link).
    async fn with_new_sftp(&self, label: &str) -> RunnerResult<Self> {
        Self::open(
            self.session.clone(),
            self.home.clone(),
            self.sftp_timeout,
            label,
        )
        .await
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("control_socket", &self.session.control_socket())
            .finish()
    }
}

/// The shared connection to one destination. Cheap to share as `Arc`; the
/// master exits when the last session using it is dropped.
pub(crate) struct Connection {
    config: SshConfig,
    current: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl Connection {
    fn new(config: SshConfig) -> Self {
        Self {
            config,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The destination's config.
    pub(crate) fn config(&self) -> &SshConfig {
        &self.config
    }

    /// The destination, for messages.
    pub(crate) fn label(&self) -> String {
        self.config.destination_label()
    }

    /// The current link, connecting first when there is none.
    ///
    /// Errors: `Unavailable` (unreachable, timed out), `PermissionDenied` (host
    /// key mismatch, login refused).
    ///
    /// A link whose sftp channel is stuck (a request timed out) is replaced
    /// first: a new sftp channel on the same master, or a new master when that
    /// fails.
    pub(crate) async fn link(&self) -> RunnerResult<Arc<Link>> {
        let mut current = self.current.lock().await;
        match current.clone() {
            Some(link) if !link.is_wedged() => Ok(link),
            Some(stuck) => self.replace(&mut current, &stuck, true).await,
            None => {
                let link = Arc::new(self.connect().await?);
                *current = Some(link.clone());
                Ok(link)
            }
        }
    }

    /// Replaces `stale` (the current link, under its lock): with a new sftp
    /// channel on the same master when `master_alive`, else (or when that
    /// fails) with a new master.
    async fn replace(
        &self,
        current: &mut Option<Arc<Link>>,
        stale: &Link,
        master_alive: bool,
    ) -> RunnerResult<Arc<Link>> {
        let label = self.label();
        let reopened = if master_alive {
            stale
                .with_new_sftp(&label)
                .await
                .inspect_err(|e| {
                    tracing::info!(destination = %label, error = %e, "no new sftp channel on the master");
                })
                .ok()
        } else {
            None
        };
        let fresh = match reopened {
            Some(fresh) => {
                tracing::info!(destination = %label, "sftp channel replaced on the same master");
                fresh
            }
            None => {
                tracing::info!(destination = %label, "ssh master connection lost; reconnecting");
                *current = None;
                self.connect().await?
            }
        };
        let fresh = Arc::new(fresh);
        *current = Some(fresh.clone());
        Ok(fresh)
    }

    /// After an operation on `stale` failed at the transport level: when the
    /// master is gone, connects a new one and returns it; when only the sftp
    /// channel is (it timed out, or its server ended), opens a new one on the
    /// same master; `None` when both still answer (the failure was not the
    /// connection's).
    pub(crate) async fn recover(&self, stale: &Arc<Link>) -> RunnerResult<Option<Arc<Link>>> {
        let mut current = self.current.lock().await;
        if let Some(link) = current.as_ref()
            && !Arc::ptr_eq(link, stale)
        {
            return Ok(Some(link.clone()));
        }
        let alive = tokio::time::timeout(Duration::from_secs(5), stale.session.check())
            .await
            .is_ok_and(|r| r.is_ok());
        if alive
            && !stale.is_wedged()
            && tokio::time::timeout(Duration::from_secs(5), stale.sftp.fs().metadata("."))
                .await
                .is_ok_and(|r| r.is_ok())
        {
            return Ok(None);
        }
        self.replace(&mut current, stale, alive).await.map(Some)
    }

    /// Runs `op` on the current link. When it fails with `Unavailable` and the
    /// master turns out to be gone, reconnects once and runs `op` again. A
    /// `Timeout` of an sftp request is returned as it is (the next call gets
    /// a new sftp channel).
    pub(crate) async fn with_link<T, F, Fut>(&self, op: F) -> RunnerResult<T>
    where
        F: Fn(Arc<Link>) -> Fut,
        Fut: Future<Output = RunnerResult<T>>,
    {
        let link = self.link().await?;
        match op(link.clone()).await {
            Err(e) if e.kind() == RunnerErrorKind::Unavailable => {
                match self.recover(&link).await? {
                    Some(fresh) => op(fresh).await,
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// The control socket of the current master, when connected.
    pub(crate) async fn control_socket(&self) -> Option<PathBuf> {
        self.current
            .lock()
            .await
            .as_ref()
            .map(|link| link.session.control_socket().to_path_buf())
    }

    async fn connect(&self) -> RunnerResult<Link> {
        let config = &self.config;
        let label = config.destination_label();
        if which_ssh().is_none() {
            return Err(RunnerError::new(
                RunnerErrorKind::Unavailable,
                format!(
                    "connect to {label}: the `ssh` client binary is not on PATH (install openssh-client)"
                ),
            ));
        }
        config.check_local_files()?;
        let mut builder = SessionBuilder::default();
        builder
            .config_file("/dev/null")
            .port(config.port)
            .known_hosts_check(match config.host_key_policy {
                HostKeyPolicy::Strict => KnownHosts::Strict,
                HostKeyPolicy::AcceptNew => KnownHosts::Add,
            })
            .connect_timeout(Duration::from_secs(
                config.connect_timeout_ms.div_ceil(1000).max(1),
            ))
            .control_directory(
                config
                    .control_dir
                    .clone()
                    .unwrap_or_else(std::env::temp_dir),
            );
        if let Some(user) = &config.user {
            builder.user(user.clone());
        }
        if let Some(key) = &config.identity_file {
            builder.keyfile(key);
        }
        if let Some(known) = &config.known_hosts_file {
            builder.user_known_hosts_file(known);
        }
        // Checked positive and within usize by SshConfig::validate.
        if let Some(idle) = usize::try_from(config.master_idle_s)
            .ok()
            .and_then(NonZeroUsize::new)
        {
            builder.control_persist(ControlPersist::IdleFor(idle));
        }
        if let Some(interval) = config.keepalive_interval_s {
            builder.server_alive_interval(Duration::from_secs(interval));
        }
        let limit = config.connect_timeout() + Duration::from_secs(5);
        let session = match tokio::time::timeout(limit, builder.connect_mux(&config.host)).await {
            Ok(Ok(session)) => Arc::new(session),
            Ok(Err(e)) => return Err(connect_error(&label, e)),
            Err(_) => {
                return Err(RunnerError::new(
                    RunnerErrorKind::Unavailable,
                    format!(
                        "connect to {label}: no connection within {} ms",
                        limit.as_millis()
                    ),
                ));
            }
        };
        let mut link = Link::open(session, PathBuf::new(), config.sftp_timeout(), &label).await?;
        link.home = link
            .sftp_call(
                "resolve home directory on",
                &label,
                link.sftp.fs().canonicalize("."),
            )
            .await?;
        tracing::info!(destination = %label, control_socket = %link.session.control_socket().display(), "ssh master connected");
        Ok(link)
    }
}

/// Connections by destination, so sessions of one destination share a master.
#[derive(Default)]
pub(crate) struct Pool {
    connections: Mutex<HashMap<String, Weak<Connection>>>,
    configs: Mutex<HashMap<String, SshConfig>>,
    /// The platform of each host (`user@host:port`), learnt once.
    platforms: Mutex<HashMap<String, Platform>>,
}

impl Pool {
    /// The shared connection for `config` (not connected yet if new).
    pub(crate) fn get(&self, config: &SshConfig) -> Arc<Connection> {
        let key = config.connection_key();
        let mut map = self
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let connection = Arc::new(Connection::new(config.clone()));
        map.insert(key.clone(), Arc::downgrade(&connection));
        self.configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key, config.clone());
        connection
    }

    /// The platform learnt for `config`'s host, if any.
    pub(crate) fn platform(&self, config: &SshConfig) -> Option<Platform> {
        self.platforms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&config.destination_label())
            .cloned()
    }

    /// Remembers the platform of `config`'s host.
    pub(crate) fn remember_platform(&self, config: &SshConfig, platform: Platform) {
        self.platforms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(config.destination_label(), platform);
    }

    /// Every destination config this pool has connected to.
    pub(crate) fn configs(&self) -> Vec<SshConfig> {
        self.configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
