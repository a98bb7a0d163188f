//! The JSON dispatcher against a real unix-local session in a temp directory.

use std::sync::Arc;
use std::time::Duration;

use runner_api::RunnerErrorKind;
use runner_stack::RunnerRegistry;
use runner_tools::{ToolSet, ToolsConfig};
use serde_json::{Value, json};

/// A tool set serving `<dir>/ws` as destination `local`, with its snapshots
/// kept in `<dir>/snapshots`.
async fn tool_set(dir: &std::path::Path) -> ToolSet {
    serving(json!({ "root": dir.join("ws"), "snapshot_dir": dir.join("snapshots") })).await
}

/// A tool set serving one unix-local destination `local` with `config`.
async fn serving(config: Value) -> ToolSet {
    let mut registry = RunnerRegistry::new();
    registry
        .register(Arc::new(runner_local::LocalProvider::new()))
        .expect("register unix-local");
    let config: ToolsConfig = serde_json::from_value(json!({
        "destinations": [ { "id": "local", "provider_id": "unix-local", "config": config } ]
    }))
    .expect("config");
    ToolSet::new(registry, config).await.expect("tool set")
}

#[tokio::test]
async fn snapshots_are_returned_as_ids_without_the_destinations_config() {
    const MARKER: &str = "marker-5e1f0c";
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot_dir = dir.path().join(format!("snapshots-{MARKER}"));
    let tools = serving(json!({
        "root": dir.path().join("ws"),
        "snapshot_dir": snapshot_dir,
        "workspaces_dir": dir.path().join(format!("workspaces-{MARKER}")),
        "env": { "SECRET_SETTING": MARKER },
    }))
    .await;
    let snapshot = tools.call("snapshot", json!({})).await.expect("snapshot");
    assert!(!snapshot.to_string().contains(MARKER), "{snapshot}");
    assert_eq!(
        snapshot.as_object().map(|o| o.len()),
        Some(3),
        "only destination, provider_id and snapshot_id: {snapshot}"
    );
    assert_eq!(snapshot["destination"], "local");
    assert_eq!(snapshot["provider_id"], "unix-local");
    let id = snapshot["snapshot_id"].as_str().expect("snapshot id");
    let listed = tools
        .call("destinations_list", json!({}))
        .await
        .expect("list");
    assert!(!listed.to_string().contains(MARKER), "{listed}");

    // The embedding program gets the whole reference back by the id.
    let full = tools.snapshot_ref("local", id).expect("kept reference");
    assert_eq!(full.snapshot_id, id);
    assert!(full.metadata.to_string().contains(MARKER), "{full:?}");
    assert!(tools.snapshot_ref("local", "snap-unknown").is_none());
    assert!(tools.snapshot_ref("elsewhere", id).is_none());
    tools.close().await.expect("close");
}

#[tokio::test]
async fn lists_tools_and_destinations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let names: Vec<&str> = tools.tools().iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
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
        ]
    );
    let list = tools
        .call("destinations_list", Value::Null)
        .await
        .expect("list");
    assert_eq!(list["destinations"][0]["id"], "local");
    assert_eq!(list["destinations"][0]["open"], false);
    assert_eq!(
        list["destinations"][0]["capabilities"]["command_exec"],
        true
    );
    let err = tools
        .call("no_such_tool", json!({}))
        .await
        .expect_err("unknown");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    tools.close().await.expect("close");
}

#[tokio::test]
async fn runs_foreground_commands_with_model_shaped_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let result = tools
        .call(
            "run_command",
            json!({ "command": "echo out; echo err >&2; echo $GREETING; exit 3",
                    "env": { "GREETING": "hello" } }),
        )
        .await
        .expect("run");
    assert_eq!(result["exit_code"], 3);
    assert_eq!(result["stdout"], "out\nhello\n");
    assert_eq!(result["stderr"], "err\n");
    assert_eq!(result["timed_out"], false);
    assert!(
        result["command_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(result["duration_ms"].is_u64());

    let long = tools
        .call(
            "run_command",
            json!({ "program": "sh", "args": ["-c", "head -c 100000 /dev/zero | tr '\\0' x"],
                    "output_limit": { "head_bytes": 100, "tail_bytes": 100 } }),
        )
        .await
        .expect("long output");
    assert_eq!(long["stdout_truncation"]["bytes_dropped"], 99_800);
    assert!(
        long["stdout"]
            .as_str()
            .expect("text")
            .contains("99800 bytes omitted")
    );

    let timed = tools
        .call(
            "run_command",
            json!({ "command": "sleep 30", "timeout_ms": 300 }),
        )
        .await
        .expect("timeout is a result");
    assert_eq!(timed["timed_out"], true);

    let bad = tools
        .call("run_command", json!({ "command": "true", "program": "ls" }))
        .await
        .expect_err("both command and program");
    assert_eq!(bad.kind(), RunnerErrorKind::InvalidRequest);
    let bad = tools
        .call("run_command", json!({ "command": "true", "timeout": 5 }))
        .await
        .expect_err("unknown field");
    assert!(bad.message().contains("timeout"), "{bad}");
    tools.close().await.expect("close");
}

#[tokio::test]
async fn background_commands_are_polled_and_cancelled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let started = tools
        .call(
            "run_command",
            json!({ "command": "echo first; sleep 60", "command_id": "bg",
                    "run_in_background": true }),
        )
        .await
        .expect("start");
    assert_eq!(started["command_id"], "bg");
    assert_eq!(started["state"], "running");
    assert_eq!(started["next_after_seq"], 0);

    let mut after = 0;
    let mut seen = String::new();
    for _ in 0..100 {
        let out = tools
            .call(
                "command_output",
                json!({ "command_id": "bg", "after_seq": after, "wait_ms": 1000 }),
            )
            .await
            .expect("output");
        seen.push_str(out["stdout"].as_str().expect("stdout"));
        after = out["next_after_seq"].as_u64().expect("seq");
        if seen.contains("first") {
            break;
        }
    }
    assert_eq!(seen, "first\n");

    let listed = tools.call("list_commands", json!({})).await.expect("list");
    assert_eq!(listed["commands"][0]["command_id"], "bg");

    let cancelled = tools
        .call("cancel_command", json!({ "command_id": "bg" }))
        .await
        .expect("cancel");
    assert_eq!(cancelled["cancelled"], true);
    let mut state = Value::Null;
    for _ in 0..100 {
        let out = tools
            .call(
                "command_output",
                json!({ "command_id": "bg", "after_seq": after, "wait_ms": 1000 }),
            )
            .await
            .expect("output after cancel");
        if out["state"] == "exited" {
            state = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["status"]["cancelled"], true, "{state}");
    tools.close().await.expect("close");
}

#[tokio::test]
async fn files_stay_inside_the_workspace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let written = tools
        .call(
            "write_file",
            json!({ "path": "notes/a.txt", "content": "hello\nworld\n" }),
        )
        .await
        .expect("write");
    assert_eq!(written["bytes_written"], 12);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ws/notes/a.txt")).expect("on disk"),
        "hello\nworld\n"
    );
    let read = tools
        .call(
            "read_file",
            json!({ "path": "notes/a.txt", "offset": 6, "limit": 3 }),
        )
        .await
        .expect("read");
    assert_eq!(read["content"], "wor");
    assert_eq!(read["size"], 12);
    assert_eq!(read["next_offset"], 9);
    let listing = tools
        .call("list_dir", json!({ "path": "notes" }))
        .await
        .expect("list_dir");
    assert_eq!(listing["entries"][0]["name"], "a.txt");
    assert_eq!(listing["entries"][0]["kind"], "file");

    for (tool, args) in [
        (
            "write_file",
            json!({ "path": "../escape.txt", "content": "x" }),
        ),
        ("read_file", json!({ "path": "/etc/passwd" })),
        ("run_command", json!({ "command": "true", "cwd": "/" })),
    ] {
        let err = tools.call(tool, args).await.expect_err("outside refused");
        assert_eq!(
            err.kind(),
            RunnerErrorKind::PermissionDenied,
            "{tool}: {err}"
        );
    }
    assert!(!dir.path().join("escape.txt").exists());

    let port = tools
        .call("expose_port", json!({ "port": 8080 }))
        .await
        .expect("expose_port");
    assert_eq!(port["url"], "http://127.0.0.1:8080");
    let snapshot = tools.call("snapshot", json!({})).await.expect("snapshot");
    assert_eq!(snapshot["provider_id"], "unix-local");
    assert!(
        snapshot["snapshot_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );

    let err = tools
        .call(
            "read_file",
            json!({ "path": "a", "destination": "elsewhere" }),
        )
        .await
        .expect_err("unknown destination");
    assert!(err.message().contains("elsewhere"), "{err}");
    tools.close().await.expect("close");
    let err = tools.call("list_dir", json!({})).await.expect_err("closed");
    assert_eq!(err.kind(), RunnerErrorKind::SessionClosed);
}

#[tokio::test]
async fn binary_files_travel_as_base64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    // Every byte value, including invalid UTF-8 and NUL.
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    };
    let written = tools
        .call(
            "write_file",
            json!({ "path": "bin/all.bytes", "content": encoded, "encoding": "base64" }),
        )
        .await
        .expect("write base64");
    assert_eq!(written["bytes_written"], 256);
    assert_eq!(
        std::fs::read(dir.path().join("ws/bin/all.bytes")).expect("on disk"),
        bytes
    );

    let read = tools
        .call(
            "read_file",
            json!({ "path": "bin/all.bytes", "encoding": "base64" }),
        )
        .await
        .expect("read base64");
    assert_eq!(read["content"], encoded.as_str());
    assert_eq!(read["encoding"], "base64");
    assert_eq!(read["lossy"], false);
    assert_eq!(read["bytes_read"], 256);

    // The same bytes as text are marked lossy.
    let text = tools
        .call("read_file", json!({ "path": "bin/all.bytes" }))
        .await
        .expect("read text");
    assert_eq!(text["encoding"], "utf-8");
    assert_eq!(text["lossy"], true);

    // Content that is not base64 is refused before anything is written.
    let err = tools
        .call(
            "write_file",
            json!({ "path": "bin/bad.bytes", "content": "not base64!", "encoding": "base64" }),
        )
        .await
        .expect_err("invalid base64");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    assert!(err.message().contains("bin/bad.bytes"), "{err}");
    assert!(!dir.path().join("ws/bin/bad.bytes").exists());

    let err = tools
        .call(
            "read_file",
            json!({ "path": "bin/all.bytes", "encoding": "hex" }),
        )
        .await
        .expect_err("unknown encoding");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    tools.close().await.expect("close");
}

/// A 10,000-byte stdout line, a short stdout line and a 3,000-byte stderr line.
const LONG_LINES: &str = "head -c 10000 /dev/zero | tr '\\0' x; echo; echo short; \
                          head -c 3000 /dev/zero | tr '\\0' y >&2";

/// Checks the view of `LONG_LINES` under the default cut of 2048 bytes.
fn assert_long_lines_cut(view: &Value) {
    let expected = format!(
        "{} [… 7952 bytes of this line omitted …]\nshort\n",
        "x".repeat(2048)
    );
    assert_eq!(view["stdout"], expected.as_str());
    assert_eq!(
        view["stderr"],
        format!("{} [… 952 bytes of this line omitted …]", "y".repeat(2048)).as_str()
    );
    assert_eq!(
        view["stdout_line_cut"],
        json!({ "lines_cut": 1, "bytes_omitted": 7952 })
    );
    assert_eq!(
        view["stderr_line_cut"],
        json!({ "lines_cut": 1, "bytes_omitted": 952 })
    );
    // The head/tail view kept everything: the cut is the only shortening.
    assert_eq!(view["stdout_truncation"]["bytes_dropped"], 0);
}

#[tokio::test]
async fn long_lines_are_cut_in_foreground_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let result = tools
        .call("run_command", json!({ "command": LONG_LINES }))
        .await
        .expect("run");
    assert_eq!(result["exit_code"], 0);
    assert_long_lines_cut(&result);

    let whole = tools
        .call(
            "run_command",
            json!({ "command": LONG_LINES, "max_line_bytes": 0 }),
        )
        .await
        .expect("run without cut");
    assert_eq!(
        whole["stdout"],
        format!("{}\nshort\n", "x".repeat(10_000)).as_str()
    );
    assert_eq!(
        whole["stdout_line_cut"],
        json!({ "lines_cut": 0, "bytes_omitted": 0 })
    );

    // The omitted-middle line of the head/tail view is never cut.
    let both = tools
        .call(
            "run_command",
            json!({ "command": "head -c 100000 /dev/zero | tr '\\0' x",
                    "output_limit": { "head_bytes": 100, "tail_bytes": 100 },
                    "max_line_bytes": 10 }),
        )
        .await
        .expect("run with both cuts");
    let marker = " [… 90 bytes of this line omitted …]";
    assert_eq!(
        both["stdout"],
        format!("xxxxxxxxxx{marker}\n[… 99800 bytes omitted …]\nxxxxxxxxxx{marker}").as_str()
    );
    assert_eq!(
        both["stdout_line_cut"],
        json!({ "lines_cut": 2, "bytes_omitted": 180 })
    );
    tools.close().await.expect("close");
}

#[tokio::test]
async fn long_lines_are_cut_in_background_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    // Prints a first line, waits for the file `go`, then prints the long lines.
    let script = format!("echo first; while [ ! -e go ]; do sleep 0.05; done; {LONG_LINES}");
    tools
        .call(
            "run_command",
            json!({ "command": script, "command_id": "long", "run_in_background": true }),
        )
        .await
        .expect("start");
    let mut after = 0;
    for _ in 0..100 {
        let out = tools
            .call(
                "command_output",
                json!({ "command_id": "long", "after_seq": after, "wait_ms": 1000 }),
            )
            .await
            .expect("output");
        after = out["next_after_seq"].as_u64().expect("seq");
        if out["stdout"] == "first\n" {
            break;
        }
    }
    assert!(after > 0, "no first line");
    tools
        .call("write_file", json!({ "path": "go", "content": "" }))
        .await
        .expect("write go");
    let mut exited = false;
    for _ in 0..600 {
        let listed = tools.call("list_commands", json!({})).await.expect("list");
        if listed["commands"][0]["state"] == "exited" {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited, "the command did not exit");

    // Everything after the first line, rendered from the numbered chunks.
    let rest = tools
        .call(
            "command_output",
            json!({ "command_id": "long", "after_seq": after }),
        )
        .await
        .expect("rest");
    assert_long_lines_cut(&rest);

    // The whole-output view (after_seq 0) is cut the same way.
    let all = tools
        .call("command_output", json!({ "command_id": "long" }))
        .await
        .expect("all");
    assert!(
        all["stdout"]
            .as_str()
            .is_some_and(|s| s.starts_with("first\nxxxx") && s.ends_with("omitted …]\nshort\n")),
        "{all}"
    );
    assert_eq!(
        all["stdout_line_cut"],
        json!({ "lines_cut": 1, "bytes_omitted": 7952 })
    );

    let whole = tools
        .call(
            "command_output",
            json!({ "command_id": "long", "max_line_bytes": 0 }),
        )
        .await
        .expect("uncut");
    assert_eq!(
        whole["stdout"],
        format!("first\n{}\nshort\n", "x".repeat(10_000)).as_str()
    );
    assert_eq!(
        whole["stderr_line_cut"],
        json!({ "lines_cut": 0, "bytes_omitted": 0 })
    );
    tools.close().await.expect("close");
}

/// `bytes` in standard base64.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Polls `command_id` until it has exited and returns that view.
async fn exited(tools: &ToolSet, command_id: &str) -> Value {
    for _ in 0..600 {
        let out = tools
            .call(
                "command_output",
                json!({ "command_id": command_id, "wait_ms": 1000 }),
            )
            .await
            .expect("command_output");
        if out["state"] == "exited" {
            return out;
        }
    }
    panic!("command {command_id} never exited");
}

#[tokio::test]
async fn binary_stdin_travels_as_base64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    // Every byte value: NUL, invalid UTF-8, a lone CR.
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    let result = tools
        .call(
            "run_command",
            json!({ "program": "od", "args": ["-An", "-v", "-tx1"],
                    "stdin": base64(&bytes), "stdin_encoding": "base64" }),
        )
        .await
        .expect("od");
    assert_eq!(result["exit_code"], 0, "{result}");
    let seen: Vec<u8> = result["stdout"]
        .as_str()
        .expect("stdout")
        .split_whitespace()
        .map(|hex| u8::from_str_radix(hex, 16).expect("od prints hex bytes"))
        .collect();
    assert_eq!(seen, bytes);

    // Text stdin stays the default.
    let text = tools
        .call(
            "run_command",
            json!({ "command": "cat", "stdin": "plain\n" }),
        )
        .await
        .expect("cat");
    assert_eq!(text["stdout"], "plain\n");

    // Invalid base64 is refused before the command starts.
    let err = tools
        .call(
            "run_command",
            json!({ "command": "touch ran", "command_id": "bad-stdin",
                    "stdin": "not base64!", "stdin_encoding": "base64" }),
        )
        .await
        .expect_err("invalid base64 stdin");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    assert!(err.message().contains("bad-stdin"), "{err}");
    assert!(err.message().contains("stdin"), "{err}");
    assert!(!dir.path().join("ws/ran").exists());
    let listed = tools.call("list_commands", json!({})).await.expect("list");
    assert!(!listed.to_string().contains("bad-stdin"), "{listed}");
    tools.close().await.expect("close");
}

#[tokio::test]
async fn write_stdin_feeds_a_background_command_in_chunks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    let started = tools
        .call(
            "run_command",
            json!({ "command": "cat > fed.bin", "command_id": "feed", "stdin": "head\n",
                    "run_in_background": true, "keep_stdin_open": true }),
        )
        .await
        .expect("start");
    assert_eq!(started["state"], "running");
    let wrote = tools
        .call(
            "write_stdin",
            json!({ "command_id": "feed", "data": base64(&bytes), "encoding": "base64" }),
        )
        .await
        .expect("binary chunk");
    assert_eq!(wrote["bytes_written"], 256);
    assert_eq!(wrote["closed"], false);
    let wrote = tools
        .call(
            "write_stdin",
            json!({ "command_id": "feed", "data": "tail\n", "close": true }),
        )
        .await
        .expect("last chunk");
    assert_eq!(wrote["closed"], true);
    let done = exited(&tools, "feed").await;
    assert_eq!(done["status"]["exit_code"], 0, "{done}");
    let mut expected = b"head\n".to_vec();
    expected.extend_from_slice(&bytes);
    expected.extend_from_slice(b"tail\n");
    assert_eq!(
        std::fs::read(dir.path().join("ws/fed.bin")).expect("fed"),
        expected
    );

    // Closed, never kept open, unknown, oversized, or in the foreground: typed errors.
    let closed = tools
        .call(
            "write_stdin",
            json!({ "command_id": "feed", "data": "more" }),
        )
        .await
        .expect_err("closed");
    assert_eq!(closed.kind(), RunnerErrorKind::InvalidRequest, "{closed}");
    assert!(closed.message().contains("feed"), "{closed}");
    tools
        .call(
            "run_command",
            json!({ "command": "sleep 60", "command_id": "shut", "run_in_background": true }),
        )
        .await
        .expect("start without stdin");
    let shut = tools
        .call("write_stdin", json!({ "command_id": "shut", "data": "x" }))
        .await
        .expect_err("not kept open");
    assert_eq!(shut.kind(), RunnerErrorKind::InvalidRequest, "{shut}");
    assert!(shut.message().contains("shut"), "{shut}");
    tools
        .call("cancel_command", json!({ "command_id": "shut" }))
        .await
        .expect("cancel");
    let unknown = tools
        .call("write_stdin", json!({ "command_id": "nope", "data": "x" }))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.kind(), RunnerErrorKind::NotFound, "{unknown}");
    assert!(unknown.message().contains("nope"), "{unknown}");
    let oversized = "x".repeat(runner_tools::MAX_CHUNK_BYTES + 1);
    let big = tools
        .call(
            "write_stdin",
            json!({ "command_id": "nope", "data": oversized }),
        )
        .await
        .expect_err("oversized");
    assert_eq!(big.kind(), RunnerErrorKind::InvalidRequest, "{big}");
    assert!(
        big.message()
            .contains(&runner_tools::MAX_CHUNK_BYTES.to_string()),
        "{big}"
    );
    let foreground = tools
        .call(
            "run_command",
            json!({ "command": "cat", "keep_stdin_open": true }),
        )
        .await
        .expect_err("foreground with stdin open");
    assert_eq!(foreground.kind(), RunnerErrorKind::InvalidRequest);
    assert!(
        foreground.message().contains("run_in_background"),
        "{foreground}"
    );
    tools.close().await.expect("close");
}

#[tokio::test]
async fn run_command_passes_the_user_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let listed = tools
        .call("destinations_list", json!({}))
        .await
        .expect("list");
    let capable = listed["destinations"][0]["capabilities"]["run_as_user"] == true;
    let result = tools
        .call(
            "run_command",
            json!({ "command": "id -un", "user": "nobody" }),
        )
        .await;
    match result {
        Ok(result) => {
            assert!(capable, "ran as a user without run_as_user: {result}");
            assert_eq!(result["stdout"], "nobody\n", "{result}");
        }
        // Refused by the runner (not by the tool's schema), naming the user.
        Err(err) => {
            let expected = if capable {
                RunnerErrorKind::PermissionDenied
            } else {
                RunnerErrorKind::Unsupported
            };
            assert_eq!(err.kind(), expected, "{err}");
            assert!(err.message().contains("nobody"), "{err}");
        }
    }
    tools.close().await.expect("close");
}

#[tokio::test]
async fn large_files_are_written_in_chunks_and_replace_the_target_at_once() {
    use std::os::unix::fs::PermissionsExt;

    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let target = dir.path().join("ws/data/big.bin");
    let staging = dir.path().join("ws/data/.big.bin.runner-upload");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("data dir");
    std::fs::write(&target, "old contents").expect("old file");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // 50 MiB that no chunk repeats, with every byte value.
    let bytes: Vec<u8> = (0..50 * MIB)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8)
        .collect();
    let mut offset = 0;
    let mut last = Value::Null;
    for chunk in bytes.chunks(4 * MIB) {
        let complete = offset + chunk.len() == bytes.len();
        last = tools
            .call(
                "write_file",
                json!({ "path": "data/big.bin", "content": base64(chunk), "encoding": "base64",
                        "offset": offset, "complete": complete }),
            )
            .await
            .unwrap_or_else(|e| panic!("chunk at {offset}: {e}"));
        assert_eq!(last["bytes_written"], chunk.len(), "{offset}");
        offset += chunk.len();
        if !complete {
            assert_eq!(last["next_offset"], offset);
            assert_eq!(
                std::fs::read(&target).expect("target"),
                b"old contents",
                "the target changed before the last chunk (at {offset})"
            );
            assert_eq!(
                std::fs::metadata(&staging).expect("staging").len(),
                offset as u64
            );
        }
    }
    assert_eq!(last["size"], bytes.len(), "{last}");
    assert!(last.get("next_offset").is_none(), "{last}");
    assert!(std::fs::read(&target).expect("target") == bytes);
    let mode = std::fs::metadata(&target)
        .expect("target")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert!(!staging.exists());

    // A failed chunk is sent again at the same offset; chunks past the end
    // are refused; the last chunk must end the upload.
    let write = |offset: u64, content: &str, complete: bool| {
        tools.call(
            "write_file",
            json!({ "path": "again.txt", "content": content, "offset": offset,
                    "complete": complete }),
        )
    };
    write(0, "0123456789", false).await.expect("first");
    let gap = write(20, "xx", false).await.expect_err("past the end");
    assert_eq!(gap.kind(), RunnerErrorKind::InvalidRequest, "{gap}");
    assert!(gap.message().contains("again.txt"), "{gap}");
    write(10, "abcdefghij", false).await.expect("second");
    write(10, "abcdefghij", false).await.expect("second, again");
    let short = write(5, "56789", true).await.expect_err("ends early");
    assert_eq!(short.kind(), RunnerErrorKind::InvalidRequest, "{short}");
    assert!(!dir.path().join("ws/again.txt").exists());
    let mode = tools
        .call(
            "write_file",
            json!({ "path": "again.txt", "content": "x", "offset": 20, "mode": 493 }),
        )
        .await
        .expect_err("mode after the first chunk");
    assert_eq!(mode.kind(), RunnerErrorKind::InvalidRequest, "{mode}");
    write(20, "KLM", true).await.expect("last");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ws/again.txt")).expect("again"),
        "0123456789abcdefghijKLM"
    );
    let mode = std::fs::metadata(dir.path().join("ws/again.txt"))
        .expect("again")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644, "mode {mode:o}");
    let bad = tools
        .call(
            "write_file",
            json!({ "path": "..", "content": "x", "offset": 0 }),
        )
        .await
        .expect_err("no file name");
    assert_eq!(bad.kind(), RunnerErrorKind::InvalidRequest, "{bad}");
    tools.close().await.expect("close");
}

#[tokio::test]
async fn a_terminal_is_started_typed_into_read_as_a_screen_and_resized() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let started = tools
        .call(
            "terminal_start",
            json!({ "command": "printf 'name? '; read name; printf '\\033[2J\\033[Hhello %s\\n' \"$name\"; trap 'stty size' WINCH; while :; do sleep 1; done", "rows": 10, "cols": 40 }),
        )
        .await
        .expect("terminal_start");
    let id = started["command_id"].as_str().expect("id").to_string();
    assert_eq!(
        (started["rows"].as_u64(), started["cols"].as_u64()),
        (Some(10), Some(40))
    );
    let first = read_until(&tools, &id, 0, "name?").await;
    tools
        .call(
            "terminal_send",
            json!({ "command_id": id, "data": "ada\r" }),
        )
        .await
        .expect("terminal_send");
    // The program cleared the screen: only its greeting is left on it.
    let greeted = read_until(
        &tools,
        &id,
        first["next_after_seq"].as_u64().unwrap(),
        "hello ada",
    )
    .await;
    assert_eq!(
        greeted["screen"].as_str().unwrap().trim_end(),
        "hello ada",
        "{greeted}"
    );
    assert_eq!(greeted["cursor_row"], 1, "{greeted}");
    let resized = tools
        .call(
            "terminal_resize",
            json!({ "command_id": id, "rows": 12, "cols": 50 }),
        )
        .await
        .expect("terminal_resize");
    assert_eq!(resized["rows"], 12);
    let after = greeted["next_after_seq"].as_u64().unwrap();
    let seen = read_until(&tools, &id, after, "12 50").await;
    assert_eq!(
        (seen["rows"].as_u64(), seen["cols"].as_u64()),
        (Some(12), Some(50))
    );
    let bad = tools
        .call(
            "terminal_resize",
            json!({ "command_id": id, "rows": 0, "cols": 50 }),
        )
        .await
        .expect_err("a terminal of 0 rows");
    assert_eq!(bad.kind(), RunnerErrorKind::InvalidRequest, "{bad}");
    tools
        .call("cancel_command", json!({ "command_id": id }))
        .await
        .expect("cancel");
    tools.close().await.expect("close");
}

/// `terminal_read` with waits until the screen shows `needle`.
async fn read_until(tools: &ToolSet, id: &str, mut after_seq: u64, needle: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let screen = tools
            .call(
                "terminal_read",
                json!({ "command_id": id, "after_seq": after_seq, "wait_ms": 500 }),
            )
            .await
            .expect("terminal_read");
        if screen["screen"].as_str().unwrap_or("").contains(needle) {
            return screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} on {screen}"
        );
        after_seq = screen["next_after_seq"].as_u64().unwrap_or(after_seq);
    }
}

#[tokio::test]
async fn watch_returns_the_events_after_a_cursor_and_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = tool_set(dir.path()).await;
    let started = tools.call("watch", json!({})).await.expect("watch");
    let cursor = started["cursor"].as_str().expect("cursor").to_string();
    assert_eq!(started["events"], json!([]));
    let mut events = Vec::new();
    let mut cursor = cursor;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // A new directory is watched from its Created event on (inotify adds
    // its watch then), so its files are made once that event was seen.
    tools
        .call("run_command", json!({ "command": "mkdir d" }))
        .await
        .expect("mkdir");
    let mut dir_seen = false;
    while !events.iter().any(|e: &Value| e["kind"] == "renamed") {
        if !dir_seen && events.iter().any(|e: &Value| e["path"] == "d") {
            dir_seen = true;
            tools
                .call(
                    "run_command",
                    json!({ "command": "echo x > d/a && mv d/a d/b" }),
                )
                .await
                .expect("run_command");
        }
        let got = tools
            .call("watch", json!({ "cursor": cursor, "wait_ms": 1000 }))
            .await
            .expect("watch after a cursor");
        assert_eq!(got["overflow"], false, "{got}");
        events.extend(got["events"].as_array().expect("events").iter().cloned());
        cursor = got["cursor"].as_str().expect("cursor").to_string();
        assert!(
            std::time::Instant::now() < deadline,
            "no rename in {events:?}"
        );
    }
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["path"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds.first(), Some(&("created", "d")), "{kinds:?}");
    assert!(kinds.contains(&("created", "d/a")), "{kinds:?}");
    let renamed = events.iter().find(|e| e["kind"] == "renamed").unwrap();
    assert_eq!(
        (renamed["from"].as_str(), renamed["path"].as_str()),
        (Some("d/a"), Some("d/b"))
    );
    // Nothing new: the same cursor comes back with no events.
    let idle = tools
        .call("watch", json!({ "cursor": cursor }))
        .await
        .expect("idle watch");
    assert_eq!(idle["events"], json!([]));
    assert_eq!(idle["cursor"], cursor);
    let stopped = tools
        .call("watch", json!({ "cursor": cursor, "stop": true }))
        .await
        .expect("stop");
    assert_eq!(stopped["ended"], true);
    let gone = tools
        .call("watch", json!({ "cursor": cursor }))
        .await
        .expect_err("a stopped watch");
    assert_eq!(gone.kind(), RunnerErrorKind::NotFound, "{gone}");
    let bad = tools
        .call("watch", json!({ "cursor": "nonsense" }))
        .await
        .expect_err("a malformed cursor");
    assert_eq!(bad.kind(), RunnerErrorKind::InvalidRequest, "{bad}");
    // A live watch, a cursor it never gave: refused, nothing overflows.
    let live = tools.call("watch", json!({})).await.expect("another watch");
    let id = live["cursor"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    let ahead = tools
        .call(
            "watch",
            json!({ "cursor": format!("{id}:{}", u64::MAX), "wait_ms": 60_000 }),
        )
        .await
        .expect_err("a cursor ahead of the watch");
    assert_eq!(ahead.kind(), RunnerErrorKind::InvalidRequest, "{ahead}");
    assert!(ahead.to_string().contains(&id), "{ahead}");
    let outside = tools
        .call("watch", json!({ "path": ".." }))
        .await
        .expect_err("a watch outside the workspace");
    assert_eq!(
        outside.kind(),
        RunnerErrorKind::PermissionDenied,
        "{outside}"
    );
    tools.close().await.expect("close");
}
