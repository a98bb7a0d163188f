//! The MCP server driven by rmcp's own client, over stdio (the built binary as
//! a child process) and over streamable HTTP (served in-process on
//! 127.0.0.1), against unix-local in a temp workspace.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::{RunningService, Service};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use runner_mcp::HttpOptions;
use runner_tools::ToolSet;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-0123456789";

/// A temp dir holding `workspace/` and a config serving it as destination `local`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).expect("workspace");
        std::fs::write(dir.path().join("secret.txt"), "outside").expect("outside file");
        let config = format!(
            "[[destinations]]\nid = \"local\"\nprovider_id = \"unix-local\"\n\
             config = {{ root = {:?} }}\n",
            workspace.display().to_string()
        );
        std::fs::write(dir.path().join("servers.toml"), config).expect("config");
        Self { dir }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("servers.toml")
    }

    fn workspace(&self) -> std::path::PathBuf {
        self.dir.path().join("workspace")
    }
}

async fn call<S: Service<RoleClient>>(
    client: &RunningService<RoleClient, S>,
    name: &'static str,
    arguments: Value,
) -> CallToolResult {
    let Value::Object(arguments) = arguments else {
        panic!("arguments must be an object");
    };
    client
        .call_tool(CallToolRequestParams::new(name).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{name}: protocol error {e}"))
}

async fn ok<S: Service<RoleClient>>(
    client: &RunningService<RoleClient, S>,
    name: &'static str,
    arguments: Value,
) -> Value {
    let result = call(client, name, arguments).await;
    assert_ne!(result.is_error, Some(true), "{name} failed: {result:?}");
    result.structured_content.expect("structured content")
}

/// Everything the brief's client must be able to do, over any transport.
async fn exercise<S: Service<RoleClient>>(client: &RunningService<RoleClient, S>, fx: &Fixture) {
    let tools = client.list_all_tools().await.expect("list tools");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in [
        "destinations_list",
        "run_command",
        "command_output",
        "write_stdin",
        "cancel_command",
        "list_commands",
        "read_file",
        "write_file",
        "list_dir",
        "expose_port",
        "snapshot",
        "terminal_start",
        "terminal_send",
        "terminal_read",
        "terminal_resize",
        "watch",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // A terminal: typed into, read back as a screen.
    let term = ok(
        client,
        "terminal_start",
        json!({ "command": "read line; echo \"got $line\"; sleep 30" }),
    )
    .await;
    let term_id = term["command_id"]
        .as_str()
        .expect("terminal id")
        .to_string();
    ok(
        client,
        "terminal_send",
        json!({ "command_id": term_id, "data": "mcp-keys\r" }),
    )
    .await;
    let mut screen = Value::Null;
    for _ in 0..40 {
        screen = ok(
            client,
            "terminal_read",
            json!({ "command_id": term_id, "wait_ms": 500 }),
        )
        .await;
        if screen["screen"]
            .as_str()
            .is_some_and(|s| s.contains("got mcp-keys"))
        {
            break;
        }
    }
    assert!(
        screen["screen"]
            .as_str()
            .is_some_and(|s| s.contains("got mcp-keys")),
        "{screen}"
    );
    ok(client, "cancel_command", json!({ "command_id": term_id })).await;
    // A watch: started, then the events after its cursor.
    let watch = ok(client, "watch", json!({})).await;
    let mut cursor = watch["cursor"].as_str().expect("cursor").to_string();
    ok(
        client,
        "write_file",
        json!({ "path": "watched.txt", "content": "x" }),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..40 {
        let got = ok(client, "watch", json!({ "cursor": cursor, "wait_ms": 500 })).await;
        seen.extend(got["events"].as_array().expect("events").iter().cloned());
        cursor = got["cursor"].as_str().expect("cursor").to_string();
        if seen.iter().any(|e| e["path"] == "watched.txt") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|e| e["path"] == "watched.txt" && e["kind"] == "created"),
        "{seen:?}"
    );
    ok(client, "watch", json!({ "cursor": cursor, "stop": true })).await;
    let run = tools
        .iter()
        .find(|t| t.name == "run_command")
        .expect("run_command");
    assert!(run.input_schema["properties"]["timeout_ms"].is_object());

    let listed = ok(client, "destinations_list", json!({})).await;
    assert_eq!(listed["destinations"][0]["id"], "local");

    // A foreground command: exit code, streams kept apart, duration.
    let result = ok(
        client,
        "run_command",
        json!({ "command": "echo hello; echo oops >&2; exit 4" }),
    )
    .await;
    assert_eq!(result["exit_code"], 4);
    assert_eq!(result["stdout"], "hello\n");
    assert_eq!(result["stderr"], "oops\n");
    assert!(result["duration_ms"].is_u64());

    // Write, read back, and see it on disk and from a command.
    let written = ok(
        client,
        "write_file",
        json!({ "path": "src/notes.txt", "content": "one\ntwo\n" }),
    )
    .await;
    assert_eq!(written["bytes_written"], 8);
    assert_eq!(
        std::fs::read_to_string(fx.workspace().join("src/notes.txt")).expect("on disk"),
        "one\ntwo\n"
    );
    let read = ok(client, "read_file", json!({ "path": "src/notes.txt" })).await;
    assert_eq!(read["content"], "one\ntwo\n");
    let cat = ok(
        client,
        "run_command",
        json!({ "command": "cat notes.txt", "cwd": "src" }),
    )
    .await;
    assert_eq!(cat["stdout"], "one\ntwo\n");
    let listing = ok(client, "list_dir", json!({})).await;
    assert_eq!(listing["entries"][0]["name"], "src");

    // Paths outside the workspace are tool errors naming the kind.
    for (tool, args) in [
        ("read_file", json!({ "path": "../secret.txt" })),
        (
            "write_file",
            json!({ "path": "../evil.txt", "content": "x" }),
        ),
        ("list_dir", json!({ "path": "/" })),
    ] {
        let refused = call(client, tool, args).await;
        assert_eq!(refused.is_error, Some(true), "{tool}: {refused:?}");
        let error = refused.structured_content.expect("error content");
        assert_eq!(error["kind"], "permission_denied", "{tool}: {error}");
    }
    assert!(!fx.dir.path().join("evil.txt").exists());

    // A background command: poll its output, then cancel it.
    let started = ok(
        client,
        "run_command",
        json!({ "command": "echo started; sleep 120", "command_id": "server",
                "run_in_background": true }),
    )
    .await;
    assert_eq!(started["command_id"], "server");
    assert_eq!(started["state"], "running");
    let mut after = started["next_after_seq"].as_u64().expect("seq");
    let mut stdout = String::new();
    for _ in 0..60 {
        let out = ok(
            client,
            "command_output",
            json!({ "command_id": "server", "after_seq": after, "wait_ms": 1000 }),
        )
        .await;
        stdout.push_str(out["stdout"].as_str().expect("stdout"));
        after = out["next_after_seq"].as_u64().expect("seq");
        if !stdout.is_empty() {
            break;
        }
    }
    assert_eq!(stdout, "started\n");
    let commands = ok(client, "list_commands", json!({})).await;
    assert!(
        commands["commands"]
            .as_array()
            .expect("commands")
            .iter()
            .any(|c| c["command_id"] == "server" && c["state"] == "running"),
        "{commands}"
    );
    let cancelled = ok(client, "cancel_command", json!({ "command_id": "server" })).await;
    assert_eq!(cancelled["cancelled"], true);
    let mut status = Value::Null;
    for _ in 0..60 {
        let out = ok(
            client,
            "command_output",
            json!({ "command_id": "server", "after_seq": after, "wait_ms": 1000 }),
        )
        .await;
        if out["state"] == "exited" {
            status = out["status"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["cancelled"], true, "{status}");
}

#[tokio::test]
async fn stdio_transport_serves_the_tools() {
    let fx = Fixture::new();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner-mcp"));
    command.arg("--config").arg(fx.config_path());
    let transport = TokioChildProcess::new(command).expect("spawn runner-mcp");
    let client = ClientConfig::default()
        .serve(transport)
        .await
        .expect("initialize over stdio");
    exercise(&client, &fx).await;
    client.cancel().await.expect("disconnect");
}

async fn start_http(
    fx: &Fixture,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let config = runner_mcp::load_config(&fx.config_path()).expect("config");
    let registry = runner_mcp::default_registry().expect("registry");
    let tools = Arc::new(ToolSet::new(registry, config).await.expect("tool set"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let options = HttpOptions {
        token: TOKEN.into(),
        allowed_hosts: vec![],
    };
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            runner_mcp::serve_http(tools, listener, options, shutdown)
                .await
                .expect("serve_http");
        }
    });
    (addr, shutdown, server)
}

#[tokio::test]
async fn http_transport_serves_the_tools_behind_a_token() {
    let fx = Fixture::new();
    let (addr, shutdown, server) = start_http(&fx).await;
    let url = format!("http://{addr}/mcp");

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header(TOKEN),
    );
    let client = ClientConfig::default()
        .serve(transport)
        .await
        .expect("initialize over HTTP");
    exercise(&client, &fx).await;
    client.cancel().await.expect("disconnect");

    shutdown.cancel();
    server.await.expect("server task");
}

/// A raw `initialize` POST to `url`, with the given headers.
async fn post_initialize(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "test", "version": "0" } }
    });
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("send")
}

#[tokio::test]
async fn http_refuses_requests_without_the_token_or_from_other_hosts_and_origins() {
    let fx = Fixture::new();
    let (addr, shutdown, server) = start_http(&fx).await;
    let url = format!("http://{addr}/mcp");
    let bearer = format!("Bearer {TOKEN}");
    let authorized = ("authorization", bearer.as_str());

    let missing = post_initialize(&url, &[]).await;
    assert_eq!(missing.status(), reqwest::StatusCode::UNAUTHORIZED);
    let wrong = post_initialize(&url, &[("authorization", "Bearer not-the-token")]).await;
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.expect("JSON body");
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert!(!body.to_string().contains(TOKEN));
    let rebinding = post_initialize(&url, &[authorized, ("host", "evil.example")]).await;
    assert_eq!(rebinding.status(), reqwest::StatusCode::FORBIDDEN);

    // A web page elsewhere may not call the server, even with the token.
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1));
    for origin in ["http://evil.example", "null", other_port.as_str()] {
        let foreign = post_initialize(&url, &[authorized, ("origin", origin)]).await;
        assert_eq!(foreign.status(), reqwest::StatusCode::FORBIDDEN, "{origin}");
        let body: Value = foreign.json().await.expect("JSON body");
        assert_eq!(body["error"], "forbidden_origin", "{origin}: {body}");
    }
    let good = post_initialize(&url, &[authorized]).await;
    assert_eq!(good.status(), reqwest::StatusCode::OK);
    for host in ["127.0.0.1", "localhost"] {
        let own = format!("http://{host}:{}", addr.port());
        let same_origin = post_initialize(&url, &[authorized, ("origin", &own)]).await;
        assert_eq!(same_origin.status(), reqwest::StatusCode::OK, "{own}");
    }

    // rmcp's client without the token cannot even initialize.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url),
    );
    assert!(ClientConfig::default().serve(transport).await.is_err());

    shutdown.cancel();
    server.await.expect("server task");
}

/// The binary serving HTTP on a free loopback port, with its stderr read up
/// to the line that gives its URL.
struct ServedBinary {
    child: tokio::process::Child,
    url: String,
    /// The generated token's file, when the binary announced one.
    token_file: Option<std::path::PathBuf>,
    /// What it printed so far.
    stderr: String,
}

impl ServedBinary {
    /// Starts the binary over `fx`'s config with `XDG_RUNTIME_DIR` set to
    /// `runtime_dir` and `extra` arguments and environment.
    async fn start(
        fx: &Fixture,
        runtime_dir: &std::path::Path,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Self {
        use tokio::io::AsyncBufReadExt;

        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner-mcp"))
            .arg("--config")
            .arg(fx.config_path())
            .args(["--http", "127.0.0.1:0"])
            .args(extra_args)
            .env("XDG_RUNTIME_DIR", runtime_dir)
            .envs(extra_env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn runner-mcp");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (mut token_file, mut stderr) = (None, String::new());
        let url = loop {
            let line = lines
                .next_line()
                .await
                .expect("read stderr")
                .unwrap_or_else(|| panic!("runner-mcp exited early: {stderr}"));
            stderr.push_str(&line);
            stderr.push('\n');
            if let Some(rest) = line.strip_prefix("runner-mcp: bearer token written to ") {
                let path = rest.split(" (").next().expect("path");
                token_file = Some(std::path::PathBuf::from(path));
            }
            if let Some(rest) = line.strip_prefix("runner-mcp: serving MCP at ") {
                break rest.to_string();
            }
        };
        Self {
            child,
            url,
            token_file,
            stderr,
        }
    }

    /// An rmcp client of the server, initialized with `token`.
    async fn client(&self, token: &str) -> RunningService<RoleClient, ClientConfig> {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.url.clone()).auth_header(token),
        );
        ClientConfig::default()
            .serve(transport)
            .await
            .expect("initialize with the token")
    }

    /// Stops the server with SIGTERM, as a service manager would, and
    /// checks that it exits cleanly.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("pid").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = self.child.wait().await.expect("wait");
        assert!(status.success(), "{status}");
    }
}

#[tokio::test]
async fn binary_without_a_token_generates_one_in_a_private_file() {
    use std::os::unix::fs::PermissionsExt;

    let fx = Fixture::new();
    let runtime_dir = tempfile::tempdir().expect("runtime dir");
    let served = ServedBinary::start(&fx, runtime_dir.path(), &[], &[]).await;
    let stderr = served.stderr.clone();
    let token_file = served.token_file.clone().expect("token file announced");
    assert!(
        token_file.starts_with(runtime_dir.path().join("runner-mcp")),
        "{stderr}"
    );
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).expect("read token");
    let token = token.trim();
    assert_eq!(token.len(), 2 * runner_mcp::TOKEN_BYTES);
    assert!(!stderr.contains(token), "the token was printed: {stderr}");

    let missing = post_initialize(&served.url, &[]).await;
    assert_eq!(missing.status(), reqwest::StatusCode::UNAUTHORIZED);
    let client = served.client(token).await;
    let listed = ok(&client, "destinations_list", json!({})).await;
    assert_eq!(listed["destinations"][0]["id"], "local");
    client.cancel().await.expect("disconnect");

    // A clean shutdown removes the token file.
    served.terminate().await;
    assert!(!token_file.exists());
}

#[tokio::test]
async fn a_token_from_the_environment_never_reaches_a_command() {
    const ENV_TOKEN: &str = "env-token-6d2b9a41c7";
    let fx = Fixture::new();
    let runtime_dir = tempfile::tempdir().expect("runtime dir");
    let served = ServedBinary::start(
        &fx,
        runtime_dir.path(),
        &["--token-env", "RUNNER_MCP_TEST_TOKEN"],
        &[("RUNNER_MCP_TEST_TOKEN", ENV_TOKEN)],
    )
    .await;
    assert!(served.token_file.is_none(), "{}", served.stderr);
    let client = served.client(ENV_TOKEN).await;
    let result = ok(&client, "run_command", json!({ "command": "env" })).await;
    let stdout = result["stdout"].as_str().expect("stdout");
    assert!(stdout.contains("PATH="), "{stdout}");
    assert!(!stdout.contains(ENV_TOKEN), "{stdout}");
    assert!(!stdout.contains("RUNNER_MCP_TEST_TOKEN"), "{stdout}");
    client.cancel().await.expect("disconnect");
    served.terminate().await;
}

#[test]
fn binary_reports_a_bad_config_by_path() {
    let fx = Fixture::new();
    let path = fx.dir.path().join("broken.json");
    std::fs::write(&path, "{ not json").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_runner-mcp"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run runner-mcp");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.json"), "{stderr}");
}

/// A request line over `MAX_REQUEST_BYTES` whose content holds `marker`.
fn oversized_call(id: u64, marker: &str) -> Vec<u8> {
    let mut line = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"write_file","arguments":{{"path":"big.txt","content":"{marker}"#
    )
    .into_bytes();
    line.resize(runner_mcp::MAX_REQUEST_BYTES + 1024 * 1024, b'a');
    line.extend_from_slice(b"\"}}}\n");
    line
}

#[tokio::test]
async fn stdio_answers_an_oversized_request_with_an_error_and_serves_on() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    const MARKER: &str = "content-marker-81c4e2";
    let fx = Fixture::new();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner-mcp"))
        .arg("--config")
        .arg(fx.config_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn runner-mcp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    // Generous: a server that never answers fails the test instead of hanging it.
    let mut next_reply = async move || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(120), stdout.next_line())
            .await
            .expect("no reply from the server")
            .expect("read stdout")
            .expect("stdout open");
        serde_json::from_str(&line).expect("a JSON-RPC line")
    };
    let mut send = async |message: &[u8]| {
        stdin.write_all(message).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    };

    send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},\"clientInfo\":{\"name\":\"test\",\"version\":\"0\"}}}\n").await;
    assert_eq!(next_reply().await["id"], 1);
    send(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n").await;

    let big = oversized_call(2, MARKER);
    send(&big).await;
    let refused = next_reply().await;
    assert_eq!(refused["id"], 2, "{refused}");
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&runner_mcp::MAX_REQUEST_BYTES.to_string()),
        "{message}"
    );
    assert!(message.contains(&(big.len() - 1).to_string()), "{message}");

    // The server goes on serving.
    send(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"destinations_list\",\"arguments\":{}}}\n").await;
    let listed = next_reply().await;
    assert_eq!(listed["id"], 3, "{listed}");
    assert_eq!(
        listed["result"]["structuredContent"]["destinations"][0]["id"], "local",
        "{listed}"
    );
    assert!(!fx.workspace().join("big.txt").exists());

    // It logged the refusal with the size, never the content.
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the server exits when stdin closes")
        .expect("wait");
    assert!(status.success(), "{status}");
    let mut log = String::new();
    stderr.read_to_string(&mut log).await.expect("stderr");
    assert!(log.contains("refused"), "{log}");
    assert!(log.contains(&(big.len() - 1).to_string()), "{log}");
    assert!(!log.contains(MARKER), "{log}");
}

#[tokio::test]
async fn http_answers_an_oversized_body_with_413_and_a_json_error() {
    let fx = Fixture::new();
    let (addr, shutdown, server) = start_http(&fx).await;
    let url = format!("http://{addr}/mcp");
    let bearer = format!("Bearer {TOKEN}");
    let refused = reqwest::Client::new()
        .post(&url)
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(oversized_call(2, "x"))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = refused.json().await.expect("a JSON body");
    assert_eq!(body["error"], "payload_too_large", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains(&runner_mcp::MAX_REQUEST_BYTES.to_string()),
        "{message}"
    );
    // Bodies up to the limit still pass (rmcp's own limit is lower).
    let good = post_initialize(&url, &[("authorization", &bearer)]).await;
    assert_eq!(good.status(), reqwest::StatusCode::OK);
    shutdown.cancel();
    server.await.expect("server task");
}

#[tokio::test]
async fn http_answers_an_oversized_chunked_body_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fx = Fixture::new();
    let (addr, shutdown, server) = start_http(&fx).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         transfer-encoding: chunked\r\n\r\n",
        addr.port()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let (mut read, mut write) = stream.into_split();
    // Without a declared length the body is counted as it arrives; the
    // server may answer (and stop reading) before all of it is sent.
    let sender = tokio::spawn(async move {
        let chunk = vec![b'a'; 1024 * 1024];
        for _ in 0..(runner_mcp::MAX_REQUEST_BYTES / chunk.len() + 2) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if write.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"payload_too_large\""), "{response}");
    assert!(
        response.contains(&runner_mcp::MAX_REQUEST_BYTES.to_string()),
        "{response}"
    );
    sender.abort();
    shutdown.cancel();
    server.await.expect("server task");
}
