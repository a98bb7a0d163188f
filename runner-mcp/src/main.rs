//! `runner-mcp`: serves runner destinations from a config file as MCP tools,
//! over stdio (the default) or streamable HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use runner_api::{RunnerError, RunnerResult};
use runner_mcp::{GeneratedToken, HttpOptions, MCP_PATH};
use runner_tools::ToolSet;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

/// Serve runner destinations (a local directory, a container, an SSH host) as
/// MCP tools: run_command, command_output, cancel_command, read_file,
/// write_file, list_dir, …
#[derive(Debug, Parser)]
#[command(name = "runner-mcp", version)]
struct Args {
    /// Destinations config: TOML when it ends in .toml, JSON otherwise.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Serve streamable HTTP at http://ADDR/mcp instead of stdio (such as
    /// 127.0.0.1:8765). Every request needs `Authorization: Bearer <token>`:
    /// without --token-env or --token-file a token is generated and written to
    /// a file only this user can read, whose path is printed.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Take the bearer token from this environment variable. Commands of
    /// unix-local destinations do not see it: they start from an allow-list of
    /// variables.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "token_file",
        requires = "http"
    )]
    token_env: Option<String>,
    /// Take the bearer token from this file (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH", requires = "http")]
    token_file: Option<PathBuf>,
    /// Accept this Host header (`name` or `name:port`) besides localhost,
    /// 127.0.0.1 and ::1; repeatable.
    #[arg(long = "allowed-host", value_name = "HOST", requires = "http")]
    allowed_hosts: Vec<String>,
}

impl Args {
    /// The configured bearer token, if any.
    fn token(&self) -> RunnerResult<Option<SecretString>> {
        let token = match (&self.token_env, &self.token_file) {
            (Some(name), _) => std::env::var(name).map_err(|_| {
                RunnerError::invalid_request(format!(
                    "--token-env: environment variable {name} is not set or not UTF-8"
                ))
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| RunnerError::from_io("--token-file", path.display(), e))?,
            (None, None) => return Ok(None),
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(RunnerError::invalid_request(
                "the bearer token is empty: set a non-empty token",
            ));
        }
        Ok(Some(SecretString::from(token)))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("runner-mcp: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> RunnerResult<()> {
    let config = runner_mcp::load_config(&args.config)?;
    let configured_token = args.token()?;
    let tools = Arc::new(ToolSet::new(runner_mcp::default_registry()?, config).await?);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let Some(addr) = args.http else {
        return runner_mcp::serve_stdio(tools, shutdown).await;
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RunnerError::from_io("listen", addr, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| RunnerError::from_io("listen", addr, e))?;
    // Held until the server stops: dropping it removes the token file.
    let mut generated = None;
    let token = match configured_token {
        Some(token) => token,
        None => {
            let created = GeneratedToken::create(&runner_mcp::default_token_dir()?, local)?;
            eprintln!(
                "runner-mcp: bearer token written to {} (mode 0600, removed on shutdown)",
                created.path().display()
            );
            generated.insert(created).token().clone()
        }
    };
    let options = HttpOptions {
        token,
        allowed_hosts: args.allowed_hosts,
    };
    eprintln!("runner-mcp: serving MCP at http://{local}{MCP_PATH}");
    let served = runner_mcp::serve_http(tools, listener, options, shutdown).await;
    drop(generated);
    served
}

/// Logs to stderr (stdout carries the stdio transport): warnings and errors,
/// or the level `RUST_LOG` names (`error`, `warn`, `info`, `debug`, `trace`,
/// `off`).
fn init_logging() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level)
        .init();
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM, so sessions are closed on the way out.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    shutdown.cancel();
}
