//! pods/exec over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`):
//! channel-prefixed binary frames, the exit as a `Status` on channel 3.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::Response;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::api::Query;
use crate::pods;
use crate::resource::Kind;
use crate::server::{Shared, lock};
use crate::status::ApiError;

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Checks an exec request, creates the Docker exec and upgrades.
pub(crate) async fn exec(
    shared: &Arc<Shared>,
    namespace: &str,
    name: &str,
    query: &Query,
    parts: &mut Parts,
) -> Result<Response, ApiError> {
    let pod = lock(&shared.store)
        .get(Kind::Pod, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
    let container_name = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if let Some(wanted) = query.get("container")
        && !wanted.is_empty()
        && wanted != container_name
    {
        return Err(ApiError::bad_request(format!(
            "container {wanted} is not valid for pod {name}"
        )));
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let Some(container) = pods::container_id(&pod) else {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: container not found ({container_name:?})"
        )));
    };
    let command = query.all("command");
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let (stdin, stdout, stderr, tty) = (
        query.flag("stdin"),
        query.flag("stdout"),
        query.flag("stderr"),
        query.flag("tty"),
    );
    if !stdin && !stdout && !stderr {
        return Err(ApiError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    let upgrade = WebSocketUpgrade::from_request_parts(parts, &())
        .await
        .map_err(|_| ApiError::bad_request("Upgrade request required (the test API server speaks WebSocket exec only, not SPDY)"))?
        .protocols(PROTOCOLS);
    let v5 = match upgrade.selected_protocol().map(|p| p.as_bytes()) {
        Some(b"v5.channel.k8s.io") => true,
        Some(_) => false,
        None => {
            return Err(ApiError::bad_request(
                "no supported subprotocol: v5.channel.k8s.io or v4.channel.k8s.io required",
            ));
        }
    };
    let options = CreateExecOptions {
        cmd: Some(command.clone()),
        attach_stdin: Some(stdin),
        attach_stdout: Some(stdout),
        attach_stderr: Some(stderr),
        tty: Some(tty),
        ..Default::default()
    };
    let created = shared
        .docker
        .create_exec(&container, options)
        .await
        .map_err(|e| {
            ApiError::new(
                500,
                "InternalError",
                format!("creating the exec in {name}: {e}"),
            )
        })?;
    let shared = shared.clone();
    Ok(upgrade.on_upgrade(move |socket| session(shared, created.id, command, tty, v5, socket)))
}

fn exit_status(command: &[String], code: Option<i64>) -> Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
        }),
        None => {
            json!({"metadata": {}, "status": "Failure", "message": "the command's exit code is unknown", "reason": "InternalError"})
        }
    }
}

fn frame(channel: u8, bytes: &[u8]) -> Message {
    let mut data = Vec::with_capacity(bytes.len() + 1);
    data.push(channel);
    data.extend_from_slice(bytes);
    Message::Binary(data.into())
}

/// One exec stream, from the upgrade to the status frame.
///
/// Two directions run side by side so neither waits for the other (a `cat`
/// whose stdout the client has not read yet must still take stdin):
/// client frames go to the exec's stdin, the exec's output goes to the
/// client. The stream ends when the output ends (the command exited; then
/// the status follows on channel 3), when the client goes away, or when the
/// server cuts it; the command is never killed, as a kubelet leaves a
/// command running when its stream drops.
async fn session(
    shared: Arc<Shared>,
    exec_id: String,
    command: Vec<String>,
    tty: bool,
    v5: bool,
    socket: WebSocket,
) {
    let _open = shared.exec_opened();
    let cut = shared.exec_cut();
    let cancel = shared.generation();
    let started = shared
        .docker
        .start_exec(
            &exec_id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: None,
            }),
        )
        .await;
    let (mut sink, client) = socket.split();
    let Ok(StartExecResults::Attached { output, input }) = started else {
        let _ = sink
            .send(frame(3, exit_status(&command, None).to_string().as_bytes()))
            .await;
        return;
    };
    let downstream = forward_output(output, &mut sink);
    let upstream = forward_input(&shared, &exec_id, v5, client, input);
    let ended = tokio::select! {
        _ = cancel.cancelled() => false,
        _ = cut.cancelled() => false,
        _ = upstream => false,
        ended = downstream => ended,
    };
    if !ended {
        return;
    }
    let code = exit_code(&shared, &exec_id).await;
    let _ = sink
        .send(frame(3, exit_status(&command, code).to_string().as_bytes()))
        .await;
    let _ = sink.send(Message::Close(None)).await;
}

/// Sends the exec's output to the client, each chunk as it comes. `true`
/// when the output ended (the command exited), `false` when the client
/// cannot be written to.
async fn forward_output(
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
) -> bool {
    while let Some(chunk) = output.next().await {
        let message = match chunk {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                frame(1, &message)
            }
            Ok(LogOutput::StdErr { message }) => frame(2, &message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(_) => break,
        };
        if sink.send(message).await.is_err() {
            return false;
        }
    }
    true
}

/// Takes the client's frames: stdin data (channel 0), the end of stdin (v5
/// close frame `255 0`), terminal sizes (channel 4). Returns when the client
/// closes or goes away.
async fn forward_input(
    shared: &Shared,
    exec_id: &str,
    v5: bool,
    mut client: futures_util::stream::SplitStream<WebSocket>,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
) {
    let mut input = Some(input);
    while let Some(Ok(message)) = client.next().await {
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => return,
            _ => continue,
        };
        match data.first() {
            Some(0) => {
                if let Some(writer) = input.as_mut()
                    && (writer.write_all(&data[1..]).await.is_err()
                        || writer.flush().await.is_err())
                {
                    input = None;
                }
            }
            Some(255) if v5 && data.get(1) == Some(&0) => {
                if let Some(mut writer) = input.take() {
                    let _ = writer.shutdown().await;
                }
            }
            Some(4) => {
                let size: Value = serde_json::from_slice(&data[1..]).unwrap_or_default();
                let resize = ResizeExecOptions {
                    height: size["Height"].as_u64().unwrap_or(24) as u16,
                    width: size["Width"].as_u64().unwrap_or(80) as u16,
                };
                let _ = shared.docker.resize_exec(exec_id, resize).await;
            }
            _ => {}
        }
    }
}

/// The exit code of a finished exec; Docker may report it a moment after
/// the output ends.
async fn exit_code(shared: &Shared, exec_id: &str) -> Option<i64> {
    for _ in 0..250 {
        match shared.docker.inspect_exec(exec_id).await {
            Ok(inspect) if inspect.running == Some(false) => return inspect.exit_code,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(_) => return None,
        }
    }
    None
}
