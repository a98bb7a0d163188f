#![doc = include_str!("../README.md")]

mod config;
mod http;
mod registry;
mod server;
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

/// Serves `tools` over stdin/stdout until the client disconnects or `shutdown`
/// is cancelled, then closes the tool set's sessions.
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
        .serve_with_ct(rmcp::transport::stdio(), shutdown)
        .await
        .map_err(|e| RunnerError::provider(format!("serve_stdio: MCP handshake failed: {e}")))?;
    service
        .waiting()
        .await
        .map(drop)
        .map_err(|e| RunnerError::provider(format!("serve_stdio: MCP session failed: {e}")))
}
