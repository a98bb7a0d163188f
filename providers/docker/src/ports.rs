//! `expose_port`: a host-side forwarder on 127.0.0.1 that reaches a port of
//! the container through `nc 127.0.0.1 PORT` run by exec, one exec per
//! connection. It works for ports nobody declared, for servers bound to the
//! container's loopback, and with network `none`; the image needs `nc`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use runner_api::{RunnerError, RunnerPortRequest, RunnerPortResult, RunnerResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::exec::ExecContext;

/// The forwarders of one session, by container port.
#[derive(Default)]
pub(crate) struct Forwarders {
    by_port: Mutex<HashMap<u16, (SocketAddr, JoinHandle<()>)>>,
}

impl Forwarders {
    /// The URL of `request.port`, starting a forwarder the first time.
    ///
    /// Errors: `InvalidRequest` (port 0), `Provider` (no local port).
    pub(crate) async fn expose(
        &self,
        ctx: Arc<ExecContext>,
        request: &RunnerPortRequest,
    ) -> RunnerResult<RunnerPortResult> {
        let port = request.port;
        if port == 0 {
            return Err(RunnerError::invalid_request(
                "expose_port 0: port must be 1-65535",
            ));
        }
        if let Some((addr, _)) = self.lock().get(&port) {
            return Ok(result(port, *addr));
        }
        let nc = ctx
            .script("expose_port", "command -v nc >/dev/null 2>&1", &[])
            .await?;
        if nc.code != 0 {
            return Err(RunnerError::not_found(format!(
                "expose_port {port}: the image has no `nc`, which the port forwarder runs in \
                 the container for each connection"
            )));
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| RunnerError::from_io("expose_port", port, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| RunnerError::from_io("expose_port", port, e))?;
        let mut map = self.lock();
        if let Some((existing, _)) = map.get(&port) {
            return Ok(result(port, *existing));
        }
        let task = tokio::spawn(accept_loop(listener, ctx, port));
        map.insert(port, (addr, task));
        tracing::info!(port, local = %addr, "forwarding a container port");
        Ok(result(port, addr))
    }

    /// Stops every forwarder and its open connections.
    pub(crate) fn stop_all(&self) {
        for (_, (_, task)) in self.lock().drain() {
            task.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, (SocketAddr, JoinHandle<()>)>> {
        self.by_port
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn result(port: u16, addr: SocketAddr) -> RunnerPortResult {
    RunnerPortResult {
        port,
        url: Some(format!("http://127.0.0.1:{}", addr.port())),
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ExecContext>, port: u16) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    connections.spawn(async move {
                        if let Err(e) = forward(stream, ctx, port).await {
                            tracing::debug!(port, error = %e, "forwarded connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "accepting a forwarded connection failed");
                    return;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Pipes one client connection through `nc` in the container.
async fn forward(stream: TcpStream, ctx: Arc<ExecContext>, port: u16) -> RunnerResult<()> {
    let docker = &ctx.daemon.docker;
    let subject = format!("port {port}");
    let exec = docker
        .create_exec(
            &ctx.container,
            CreateExecOptions {
                cmd: Some(vec![
                    "nc".to_string(),
                    "127.0.0.1".to_string(),
                    port.to_string(),
                ]),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ctx.daemon.error("expose_port", &subject, e))?;
    let options = StartExecOptions {
        detach: false,
        tty: false,
        output_capacity: Some(64 * 1024),
    };
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = docker
        .start_exec(&exec.id, Some(options))
        .await
        .map_err(|e| ctx.daemon.error("expose_port", &subject, e))?
    else {
        return Err(RunnerError::provider(
            "expose_port: the exec started detached",
        ));
    };
    let (mut client_read, mut client_write) = stream.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = input.shutdown().await;
    };
    let downstream = async move {
        while let Some(Ok(item)) = output.next().await {
            match item {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    if client_write.write_all(&message).await.is_err() {
                        break;
                    }
                }
                LogOutput::StdErr { message } => {
                    tracing::debug!(port, stderr = %String::from_utf8_lossy(&message), "nc");
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        let _ = client_write.shutdown().await;
    };
    // The connection is done when the container side closes; the client side
    // closing only half-closes the pipe.
    let upstream = tokio::spawn(upstream);
    downstream.await;
    upstream.abort();
    Ok(())
}
