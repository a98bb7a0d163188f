//! Streamable HTTP: rmcp's service under axum, with a bearer token and a Host
//! allow-list.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use runner_api::{RunnerError, RunnerResult};
use runner_tools::ToolSet;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::McpServer;

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";

/// The Host names accepted when no others are configured: loopback only,
/// which stops DNS rebinding from reaching a server on this machine.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How the HTTP transport guards its endpoint.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// When set, every request must carry `Authorization: Bearer <token>`;
    /// others get 401. The value never appears in logs or errors.
    pub token: Option<SecretString>,
    /// Host header values accepted in addition to [`DEFAULT_ALLOWED_HOSTS`]
    /// (`name` or `name:port`); others get 403.
    pub allowed_hosts: Vec<String>,
}

/// Refuses to listen on a non-loopback address without a bearer token.
///
/// Errors: `PermissionDenied` with a message saying how to fix it.
pub fn check_bind(addr: SocketAddr, options: &HttpOptions) -> RunnerResult<()> {
    if addr.ip().is_loopback() || options.token.is_some() {
        return Ok(());
    }
    Err(RunnerError::permission_denied(format!(
        "refusing to serve MCP over HTTP on {addr} without a bearer token: anyone who can \
         reach that address could run commands. Bind a loopback address (127.0.0.1), or set \
         a token with --token-env NAME or --token-file PATH"
    )))
}

/// The axum router: the MCP endpoint at [`MCP_PATH`], behind the token check.
/// Cancelling `shutdown` ends every MCP session.
pub fn router(
    tools: Arc<ToolSet>,
    options: &HttpOptions,
    shutdown: CancellationToken,
) -> axum::Router {
    let allowed_hosts = DEFAULT_ALLOWED_HOSTS
        .iter()
        .map(|h| h.to_string())
        .chain(options.allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts)
        .with_cancellation_token(shutdown);
    let service: StreamableHttpService<McpServer, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(McpServer::new(tools.clone())),
        Arc::default(),
        config,
    );
    let router = axum::Router::new().nest_service(MCP_PATH, service);
    match &options.token {
        Some(token) => router.layer(middleware::from_fn_with_state(
            Arc::new(token.clone()),
            require_bearer,
        )),
        None => router,
    }
}

/// Serves `tools` on `listener` until `shutdown` is cancelled, then closes the
/// tool set's sessions.
///
/// Errors: `PermissionDenied` from [`check_bind`]; `Provider` when the listener
/// fails; the sessions' close errors.
pub async fn serve_http(
    tools: Arc<ToolSet>,
    listener: TcpListener,
    options: HttpOptions,
    shutdown: CancellationToken,
) -> RunnerResult<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| RunnerError::from_io("serve_http", "listener address", e))?;
    check_bind(addr, &options)?;
    let app = router(tools.clone(), &options, shutdown.child_token());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| RunnerError::from_io("serve_http", addr, e));
    let closed = tools.close().await;
    served.and(closed)
}

async fn require_bearer(
    State(token): State<Arc<SecretString>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(given) if same_secret(given.as_bytes(), token.expose_secret().as_bytes()) => {
            next.run(request).await
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong bearer token\n",
        )
            .into_response(),
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token() {
        let public: SocketAddr = "0.0.0.0:8765".parse().expect("addr");
        let err = check_bind(public, &HttpOptions::default()).expect_err("refused");
        assert!(err.message().contains("--token-env"), "{err}");
        let with_token = HttpOptions {
            token: Some(SecretString::from("t0ken")),
            allowed_hosts: vec![],
        };
        assert!(check_bind(public, &with_token).is_ok());
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert!(check_bind(local, &HttpOptions::default()).is_ok());
        assert!(!format!("{with_token:?}").contains("t0ken"));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
    }
}
