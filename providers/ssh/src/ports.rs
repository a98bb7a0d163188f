//! Local port forwards through the master.

use std::net::{Ipv4Addr, TcpListener};

use openssh::ForwardType;
use runner_api::{RunnerError, RunnerResult};

use crate::connection::Connection;
use crate::error::transport_error;

/// One local forward `127.0.0.1:<local_port>` → remote `127.0.0.1:<remote_port>`.
#[derive(Debug, Clone, Copy)]
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

/// Asks the master to forward a new local port to `remote_port` on the host.
pub(crate) async fn open(conn: &Connection, remote_port: u16) -> RunnerResult<Forward> {
    conn.with_link(|link| async move {
        let local_port = free_local_port()?;
        link.session
            .request_port_forward(
                ForwardType::Local,
                (Ipv4Addr::LOCALHOST, local_port),
                (Ipv4Addr::LOCALHOST, remote_port),
            )
            .await
            .map_err(|e| transport_error(&format!("expose_port {remote_port}"), e))?;
        Ok(Forward {
            local_port,
            remote_port,
        })
    })
    .await
}

/// Tears a forward down (best effort: a master that died took it with it).
pub(crate) async fn close(conn: &Connection, forward: &Forward) {
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
