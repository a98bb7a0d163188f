//! `McpServer`: the rmcp handler over a [`ToolSet`].

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool as McpTool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use runner_tools::{Tool, ToolError, ToolSet};
use serde_json::Value;

/// What the server tells clients at initialization.
const INSTRUCTIONS: &str = "Tools that run commands and edit files on runner destinations \
(a local directory, a container, a remote host). Call destinations_list to see them; the \
other tools take a `destination` id, which may be omitted when there is only one. Paths \
are relative to the destination's workspace root; paths outside it are refused.";

/// The MCP face of a [`ToolSet`]: lists its tools and forwards calls to it.
///
/// A tool that fails returns a tool error (`isError: true`) whose structured
/// content is `{"kind": "<runner error kind>", "message": "…"}`; only an
/// unknown tool name is a protocol error.
#[derive(Clone)]
pub struct McpServer {
    tools: Arc<ToolSet>,
}

impl McpServer {
    /// A handler over `tools`; clones share the same sessions.
    pub fn new(tools: Arc<ToolSet>) -> Self {
        Self { tools }
    }

    fn mcp_tool(tool: Tool) -> McpTool {
        McpTool::new(
            tool.name(),
            tool.description(),
            Arc::new(tool.input_schema()),
        )
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("runner-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            Tool::ALL.into_iter().map(Self::mcp_tool).collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<McpTool> {
        Tool::from_name(name).map(Self::mcp_tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(tool) = Tool::from_name(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("no tool named {:?}", request.name),
                None,
            ));
        };
        let arguments = request.arguments.map_or(Value::Null, Value::Object);
        let result = match self.tools.call_tool(tool, arguments).await {
            Ok(value) => CallToolResult::structured(value),
            Err(error) => {
                let error = ToolError::from(&error);
                let value = serde_json::to_value(&error)
                    .unwrap_or_else(|_| Value::String(error.to_string()));
                CallToolResult::structured_error(value)
            }
        };
        Ok(result.into())
    }
}
