//! One multiplexed OpenSSH master per destination, shared by its sessions, with
//! an sftp channel on top; replaced once when the master dies, with its port
//! forwards re-created on the new master.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, SessionBuilder};
use openssh_sftp_client::{Sftp, SftpOptions};
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};

use crate::config::{HostKeyPolicy, SshConfig};
use crate::error::{connect_error, sftp_error, which_ssh};
use crate::ports::{self, Forward};

/// A live master connection and its sftp channel.
pub(crate) struct Link {
    /// The mux master; commands and port forwards go through it.
    pub(crate) session: Arc<openssh::Session>,
    /// The sftp channel, opened over the same master.
    pub(crate) sftp: Sftp,
    /// The remote user's home directory (canonical).
    pub(crate) home: PathBuf,
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
    /// The local forwards open on the master, re-created after a reconnect.
    forwards: Mutex<Vec<Forward>>,
}

impl Connection {
    fn new(config: SshConfig) -> Self {
        Self {
            config,
            current: tokio::sync::Mutex::new(None),
            forwards: Mutex::new(Vec::new()),
        }
    }

    fn forward_list(&self) -> std::sync::MutexGuard<'_, Vec<Forward>> {
        self.forwards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `forward`, just opened on the master of `used`, so a reconnect
    /// re-creates it. Reconnects hold the same lock while they restore the
    /// recorded forwards: when one replaced `used` before this call, the
    /// forward is requested on the new master here; otherwise the next
    /// reconnect restores it.
    ///
    /// Errors: the new master refused the forward (it is then not recorded).
    pub(crate) async fn track_forward(
        &self,
        used: &Arc<Link>,
        forward: Forward,
    ) -> Result<(), openssh::Error> {
        let current = self.current.lock().await;
        if let Some(link) = current.as_ref()
            && !Arc::ptr_eq(link, used)
        {
            ports::request(link, &forward).await?;
        }
        self.forward_list().push(forward);
        Ok(())
    }

    /// Forgets a forward; false when it was not open (closed already, or
    /// dropped because a reconnect could not re-create it).
    pub(crate) fn untrack_forward(&self, forward: &Forward) -> bool {
        let mut list = self.forward_list();
        let before = list.len();
        list.retain(|open| open != forward);
        list.len() != before
    }

    /// Whether `forward` is open on the master (false once closed, or once a
    /// reconnect could not re-create it).
    pub(crate) fn forward_is_open(&self, forward: &Forward) -> bool {
        self.forward_list().contains(forward)
    }

    /// Re-requests every recorded forward on the new master `link`, at the
    /// same local port; forgets those it cannot re-create.
    async fn restore_forwards(&self, link: &Link) {
        let wanted: Vec<Forward> = self.forward_list().clone();
        if wanted.is_empty() {
            return;
        }
        let lost = ports::restore(link, &wanted).await;
        self.forward_list().retain(|open| !lost.contains(open));
        tracing::info!(
            destination = %self.label(),
            restored = wanted.len() - lost.len(),
            lost = lost.len(),
            "port forwards re-created on the new ssh master"
        );
    }

    /// The destination, for messages.
    pub(crate) fn label(&self) -> String {
        self.config.destination_label()
    }

    /// The current link, connecting first when there is none.
    ///
    /// Errors: `Unavailable` (unreachable, timed out), `PermissionDenied` (host
    /// key mismatch, login refused).
    pub(crate) async fn link(&self) -> RunnerResult<Arc<Link>> {
        let mut current = self.current.lock().await;
        if let Some(link) = current.as_ref() {
            return Ok(link.clone());
        }
        let link = Arc::new(self.connect().await?);
        *current = Some(link.clone());
        Ok(link)
    }

    /// After an operation on `stale` failed at the transport level: when the
    /// master is gone, connects a new one and returns it; `None` when the
    /// master still answers (the failure was not the connection's).
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
        if alive {
            let sftp_alive =
                tokio::time::timeout(Duration::from_secs(5), stale.sftp.fs().metadata("."))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if sftp_alive {
                return Ok(None);
            }
        }
        tracing::info!(destination = %self.label(), "ssh master connection lost; reconnecting");
        *current = None;
        let link = Arc::new(self.connect().await?);
        self.restore_forwards(&link).await;
        *current = Some(link.clone());
        Ok(Some(link))
    }

    /// Runs `op` on the current link. When it fails with `Unavailable` and the
    /// master turns out to be gone, reconnects once and runs `op` again.
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
        let sftp = Sftp::from_clonable_session(session.clone(), SftpOptions::default())
            .await
            .map_err(|e| sftp_error("open sftp channel to", &label, e))?;
        let home = sftp
            .fs()
            .canonicalize(".")
            .await
            .map_err(|e| sftp_error("resolve home directory on", &label, e))?;
        tracing::info!(destination = %label, control_socket = %session.control_socket().display(), "ssh master connected");
        Ok(Link {
            session,
            sftp,
            home,
        })
    }
}

/// Connections by destination, so sessions of one destination share a master.
#[derive(Default)]
pub(crate) struct Pool {
    connections: Mutex<HashMap<String, Weak<Connection>>>,
    configs: Mutex<HashMap<String, SshConfig>>,
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
