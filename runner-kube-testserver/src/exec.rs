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

async fn session(
    shared: Arc<Shared>,
    exec_id: String,
    command: Vec<String>,
    tty: bool,
    v5: bool,
    socket: WebSocket,
) {
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
    let (mut sink, mut client) = socket.split();
    let Ok(StartExecResults::Attached { mut output, input }) = started else {
        let _ = sink
            .send(frame(3, exit_status(&command, None).to_string().as_bytes()))
            .await;
        return;
    };
    let mut input = Some(input);
    let mut client_open = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            chunk = output.next() => match chunk {
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if sink.send(frame(1, &message)).await.is_err() { return; }
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    if sink.send(frame(2, &message)).await.is_err() { return; }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            message = client.next(), if client_open => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(0) => {
                        if let Some(writer) = input.as_mut() {
                            let _ = writer.write_all(&data[1..]).await;
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
                        let _ = shared.docker.resize_exec(&exec_id, resize).await;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    client_open = false;
                    if let Some(mut writer) = input.take() {
                        let _ = writer.shutdown().await;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let mut code = None;
    for _ in 0..50 {
        match shared.docker.inspect_exec(&exec_id).await {
            Ok(inspect) if inspect.running == Some(false) => {
                code = inspect.exit_code;
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    let _ = sink
        .send(frame(3, exit_status(&command, code).to_string().as_bytes()))
        .await;
    let _ = sink.send(Message::Close(None)).await;
}
