//! Streamable HTTP: rmcp's service under axum, behind a bearer token, an
//! Origin check and a Host allow-list.

use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use runner_api::{RunnerError, RunnerResult};
use runner_tools::ToolSet;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{MAX_REQUEST_BYTES, McpServer};

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";

/// The Host names accepted when no others are configured: loopback only,
/// which stops DNS rebinding from reaching a server on this machine.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How the HTTP transport guards its endpoint.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Every request must carry `Authorization: Bearer <token>`; others get
    /// 401. The value never appears in logs or errors.
    pub token: SecretString,
    /// Host header values accepted in addition to [`DEFAULT_ALLOWED_HOSTS`]
    /// (`name` or `name:port`); others get 403.
    pub allowed_hosts: Vec<String>,
}

/// The axum router: the MCP endpoint at [`MCP_PATH`] for a server listening
/// on `port`, behind the Origin and bearer token checks. Requests with an
/// `Origin` other than the server's own loopback origin
/// (`http://127.0.0.1:<port>`, `http://localhost:<port>`,
/// `http://[::1]:<port>`) get 403, then requests without the token get 401,
/// both with a JSON body `{"error": …, "message": …}`. A request whose body
/// holds more than [`MAX_REQUEST_BYTES`] then gets 413 with such a body
/// (`"error": "payload_too_large"`, the message naming the limit in bytes).
/// Cancelling `shutdown` ends every MCP session.
pub fn router(
    tools: Arc<ToolSet>,
    options: &HttpOptions,
    port: u16,
    shutdown: CancellationToken,
) -> axum::Router {
    let allowed_hosts = DEFAULT_ALLOWED_HOSTS
        .iter()
        .map(|h| h.to_string())
        .chain(options.allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts)
        .with_max_request_body_bytes(MAX_REQUEST_BYTES)
        .with_cancellation_token(shutdown);
    let service: StreamableHttpService<McpServer, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(McpServer::new(tools.clone())),
        Arc::default(),
        config,
    );
    let guard = Arc::new(Guard::new(options.token.clone(), port));
    axum::Router::new()
        .nest_service(MCP_PATH, service)
        .layer(middleware::from_fn(bound_body))
        .layer(middleware::from_fn_with_state(guard, guard_request))
}

/// Serves `tools` on `listener` until `shutdown` is cancelled, then closes the
/// tool set's sessions.
///
/// Errors: `Provider` when the listener fails; the sessions' close errors.
pub async fn serve_http(
    tools: Arc<ToolSet>,
    listener: TcpListener,
    options: HttpOptions,
    shutdown: CancellationToken,
) -> RunnerResult<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| RunnerError::from_io("serve_http", "listener address", e))?;
    let app = router(tools.clone(), &options, addr.port(), shutdown.child_token());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| RunnerError::from_io("serve_http", addr, e));
    let closed = tools.close().await;
    served.and(closed)
}

/// What every request is checked against.
struct Guard {
    token: SecretString,
    /// The server's own origins, as browsers serialize them.
    origins: [String; 3],
}

impl Guard {
    /// The checks of a server listening on `port`.
    fn new(token: SecretString, port: u16) -> Self {
        let origins =
            ["127.0.0.1", "localhost", "[::1]"].map(|host| format!("http://{host}:{port}"));
        Self { token, origins }
    }

    /// Whether a request with this `Origin` header may proceed: only a page
    /// served from this very server's loopback address may call it.
    fn own_origin(&self, origin: &HeaderValue) -> bool {
        let origin = origin.as_bytes();
        self.origins
            .iter()
            .any(|own| own.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// Whether `Authorization` carries the token.
    fn authorized(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((scheme, given)) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("Bearer")
            && same_secret(given.as_bytes(), self.token.expose_secret().as_bytes())
    }
}

async fn guard_request(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if headers
        .get(header::ORIGIN)
        .is_some_and(|origin| !guard.own_origin(origin))
    {
        return refusal(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "requests from a web page of another origin are refused",
        );
    }
    if !guard.authorized(headers.get(header::AUTHORIZATION)) {
        let mut response = refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// Refuses a request whose body holds more than [`MAX_REQUEST_BYTES`] with
/// 413, logging its size. A body of a declared length within the limit goes
/// on as it is (hyper reads no more than the length); one of undeclared
/// length (chunked) is read up to the limit first.
async fn bound_body(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_REQUEST_BYTES as u64 => return too_large(length, "declared"),
        Some(_) => return next.run(request).await,
        None => {}
    }
    let (parts, body) = request.into_parts();
    let mut body = std::pin::pin!(body);
    let mut collected = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(frame) = frame else {
            return refusal(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the request body could not be read",
            );
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.len() > MAX_REQUEST_BYTES - collected.len() {
            let read = (collected.len() + data.len()) as u64;
            return too_large(read, "read so far");
        }
        collected.extend_from_slice(&data);
    }
    next.run(Request::from_parts(parts, Body::from(collected)))
        .await
}

/// 413 for a body of `bytes` (`how`: declared, or read so far), logged.
fn too_large(bytes: u64, how: &str) -> Response {
    tracing::warn!(
        request_bytes = bytes,
        size = how,
        limit_bytes = MAX_REQUEST_BYTES,
        "refused an HTTP request body over the size limit with 413"
    );
    refusal(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!(
            "the request body ({bytes} bytes {how}) exceeds the limit of {MAX_REQUEST_BYTES} \
             bytes per message; send large files and stdin in chunks (write_file with offset, \
             write_stdin)"
        ),
    )
}

/// A refused request: `status` with `{"error": error, "message": message}`.
fn refusal(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": error, "message": message });
    (status, axum::Json(body)).into_response()
}

/// Compares in time that depends only on the lengths, not on where the bytes
/// differ: every byte is visited, and the accumulator is hidden from the
/// optimizer so the loop cannot stop early.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let differ = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| std::hint::black_box(acc | (a ^ b)));
    given.len() == expected.len() && differ == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(SecretString::from("t0ken"), 8765)
    }

    #[test]
    fn only_the_servers_own_loopback_origins_pass() {
        let guard = guard();
        for own in [
            "http://127.0.0.1:8765",
            "http://LOCALHOST:8765",
            "http://[::1]:8765",
        ] {
            assert!(guard.own_origin(&HeaderValue::from_static(own)), "{own}");
        }
        for foreign in [
            "http://evil.example",
            "http://127.0.0.1:8766",
            "https://127.0.0.1:8765",
            "http://127.0.0.1:8765.evil.example",
            "null",
            "",
        ] {
            assert!(
                !guard.own_origin(&HeaderValue::from_static(foreign)),
                "{foreign}"
            );
        }
        assert!(!format!("{:?}", guard.token).contains("t0ken"));
    }

    #[test]
    fn the_token_must_be_given_exactly() {
        let guard = guard();
        for right in ["Bearer t0ken", "bearer t0ken"] {
            assert!(
                guard.authorized(Some(&HeaderValue::from_static(right))),
                "{right}"
            );
        }
        for wrong in [
            "Bearer t0ke",
            "Bearer t0ken ",
            "Bearer  t0ken",
            "t0ken",
            "Basic t0ken",
        ] {
            assert!(
                !guard.authorized(Some(&HeaderValue::from_static(wrong))),
                "{wrong}"
            );
        }
        assert!(!guard.authorized(None));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
    }
}
