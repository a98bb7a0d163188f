#![doc = include_str!("../README.md")]

mod config;
mod http;
mod registry;
mod server;
mod stdio;
mod token;

use std::sync::Arc;

use rmcp::ServiceExt;
use runner_api::{RunnerError, RunnerResult};
use runner_tools::ToolSet;
use tokio_util::sync::CancellationToken;

pub use config::load_config;
pub use http::{DEFAULT_ALLOWED_HOSTS, HttpOptions, MCP_PATH, router, serve_http};
pub use registry::default_registry;
pub use server::McpServer;
pub use token::{GeneratedToken, TOKEN_BYTES, default_token_dir};

/// The largest request the server reads: 16 MiB of JSON, one line on stdio
/// (not counting its `\n`) or one HTTP body. A larger one is read to its end
/// without being kept and answered with an error naming this limit (a
/// JSON-RPC error on stdio, 413 over HTTP), and logged with its size. Move
/// larger files and stdin in chunks (`write_file` with `offset`,
/// `write_stdin`).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Serves `tools` over stdin/stdout until the client disconnects or `shutdown`
/// is cancelled, then closes the tool set's sessions. Request lines over
/// [`MAX_REQUEST_BYTES`] are answered with a JSON-RPC error (`-32600`) that
/// names the limit and carries the request's id when the start or the end of
/// the line shows it.
///
/// Errors: `Provider` when the MCP handshake or transport fails; the sessions'
/// close errors.
pub async fn serve_stdio(tools: Arc<ToolSet>, shutdown: CancellationToken) -> RunnerResult<()> {
    let served = serve_stdio_until(tools.clone(), shutdown).await;
    let closed = tools.close().await;
    served.and(closed)
}

async fn serve_stdio_until(tools: Arc<ToolSet>, shutdown: CancellationToken) -> RunnerResult<()> {
    let service = McpServer::new(tools)
        .serve_with_ct(
            stdio::BoundedLines::new(tokio::io::stdin(), tokio::io::stdout()),
            shutdown,
        )
        .await
        .map_err(|e| RunnerError::provider(format!("serve_stdio: MCP handshake failed: {e}")))?;
    service
        .waiting()
        .await
        .map(drop)
        .map_err(|e| RunnerError::provider(format!("serve_stdio: MCP session failed: {e}")))
}
