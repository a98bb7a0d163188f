//! Local port forwards through the master, re-created at the same local port
//! when the master is replaced.

use std::net::{Ipv4Addr, TcpListener};

use openssh::ForwardType;
use runner_api::{RunnerError, RunnerResult};

use crate::connection::{Connection, Link};
use crate::error::transport_error;

/// One local forward `127.0.0.1:<local_port>` → remote `127.0.0.1:<remote_port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forward {
    /// The port on the caller's machine.
    pub(crate) local_port: u16,
    /// The port on the remote host.
    pub(crate) remote_port: u16,
}

/// A free port on the caller's loopback (the kernel picks one).
fn free_local_port() -> RunnerResult<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| RunnerError::from_io("expose_port: pick a local port", "127.0.0.1:0", e))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| RunnerError::from_io("expose_port: pick a local port", "127.0.0.1:0", e))
}

/// Asks `link`'s master for `forward`.
pub(crate) async fn request(link: &Link, forward: &Forward) -> Result<(), openssh::Error> {
    link.session
        .request_port_forward(
            ForwardType::Local,
            (Ipv4Addr::LOCALHOST, forward.local_port),
            (Ipv4Addr::LOCALHOST, forward.remote_port),
        )
        .await
}

/// Asks the master to forward a new local port to `remote_port` on the host.
pub(crate) async fn open(conn: &Connection, remote_port: u16) -> RunnerResult<Forward> {
    let operation = format!("expose_port {remote_port}");
    let (forward, used) = conn
        .with_link(|link| {
            let operation = &operation;
            async move {
                let forward = Forward {
                    local_port: free_local_port()?,
                    remote_port,
                };
                request(&link, &forward)
                    .await
                    .map_err(|e| transport_error(operation, e))?;
                Ok((forward, link))
            }
        })
        .await?;
    conn.track_forward(&used, forward)
        .await
        .map_err(|e| transport_error(&operation, e))?;
    Ok(forward)
}

/// Re-requests `forwards` on a new master, each at its old local port so the
/// URLs given out keep working. Returns those that could not be re-created
/// (the local port is taken by now, or the master refused).
pub(crate) async fn restore(link: &Link, forwards: &[Forward]) -> Vec<Forward> {
    let mut lost = Vec::new();
    for forward in forwards {
        match request(link, forward).await {
            Ok(()) => tracing::info!(
                local_port = forward.local_port,
                remote_port = forward.remote_port,
                "port forward re-created after a reconnect"
            ),
            Err(e) => {
                tracing::warn!(
                    local_port = forward.local_port,
                    remote_port = forward.remote_port,
                    error = %e,
                    "port forward lost: it could not be re-created at the same local port after a reconnect"
                );
                lost.push(*forward);
            }
        }
    }
    lost
}

/// Tears a forward down (best effort: a master that died took it with it).
/// A forward a reconnect could not re-create is already gone.
pub(crate) async fn close(conn: &Connection, forward: &Forward) {
    if !conn.untrack_forward(forward) {
        return;
    }
    let Ok(link) = conn.link().await else {
        return;
    };
    if let Err(e) = link
        .session
        .close_port_forward(
            ForwardType::Local,
            (Ipv4Addr::LOCALHOST, forward.local_port),
            (Ipv4Addr::LOCALHOST, forward.remote_port),
        )
        .await
    {
        tracing::debug!(local_port = forward.local_port, error = %e, "closing a port forward failed");
    }
}
