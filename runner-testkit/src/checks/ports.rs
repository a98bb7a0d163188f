//! ports: `expose_port` and `list_listening_ports`.

use std::time::{Duration, Instant};

use runner_api::{RunnerErrorKind, RunnerPortRequest};

use crate::catalogue::{Area, Capability::*, Check};
use crate::context::Cx;
use crate::fixtures::http::{HttpServer, http_fetch};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Ports;
    vec![
        Check::new(
            "ports_expose_serves_http",
            a,
            &[CommandExec, BackgroundProcesses, PortPreview],
            "expose_port: \"A URL that reaches port of the runner from the caller's machine\" (a real HTTP GET).",
            |cx| Box::pin(expose_serves_http(cx)),
        ),
        Check::new(
            "ports_listing_includes_server",
            a,
            &[CommandExec, BackgroundProcesses, PortListing],
            "list_listening_ports: \"Ports the session's processes listen on\" include a started server's port.",
            |cx| Box::pin(listing_includes_server(cx)),
        ),
        Check::new(
            "ports_expose_zero_invalid",
            a,
            &[PortPreview],
            "expose_port errors: \"InvalidRequest (port 0)\".",
            |cx| Box::pin(expose_zero_invalid(cx)),
        ),
    ]
}

/// A server in the runner answers through the exposed URL.
async fn expose_serves_http(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let scratch = cx.scratch(&s);
    let server = HttpServer::start(&s, &scratch).await?;
    let exposed = s
        .expose_port(RunnerPortRequest {
            port: server.port,
            label: Some("conformance".into()),
        })
        .await
        .or_fail(format!("expose_port {}", server.port))?;
    ensure_eq!(exposed.port, server.port, "port echoed by expose_port");
    let url = exposed
        .url
        .ok_or_else(|| format!("expose_port {}: expected a URL, got None", server.port))?;
    let body = http_fetch(&url, &server.file, Duration::from_secs(15)).await?;
    ensure_eq!(body, server.body, "body served through {url}");
    server.stop(&s).await;
    s.close().await.or_fail("close")
}

/// A listening server shows up in `list_listening_ports`.
async fn listing_includes_server(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let scratch = cx.scratch(&s);
    let server = HttpServer::start(&s, &scratch).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ports = s
            .list_listening_ports()
            .await
            .or_fail("list_listening_ports")?;
        if ports.iter().any(|p| p.port == server.port) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "list_listening_ports: port {} of a running HTTP server not listed within 15 s; got {:?}",
            server.port,
            ports.iter().map(|p| p.port).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.stop(&s).await;
    s.close().await.or_fail("close")
}

/// Port 0 is refused.
async fn expose_zero_invalid(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    s.expose_port(RunnerPortRequest {
        port: 0,
        label: None,
    })
    .await
    .fails_with(RunnerErrorKind::InvalidRequest, "expose_port 0")?;
    s.close().await.or_fail("close")
}
