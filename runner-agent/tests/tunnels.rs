//! `expose_port` through an agent child: the URL is a listener on the
//! caller's side, and every connection it accepts is relayed over the agent
//! connection (`open_tunnel`) to the port on the agent's loopback, where a
//! server of the test plays the sandbox's. Each test has its own agent, so
//! the agent's peak memory is its own.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use runner_agent::AgentSession;
use runner_api::{RemoteRunnerSession, RunnerPortRequest};
use sha2::{Digest, Sha256};
use support::{ConnectPids, Launcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;

/// An agent of its own (and the launcher and workspace that keep it).
struct Fixture {
    _launcher: Launcher,
    _root: tempfile::TempDir,
    agent: support::Agent,
    session: AgentSession,
}

async fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let destination = support::root_destination("tunnels", root.path());
    let agent = launcher.launch(&destination, None).await.unwrap();
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    Fixture {
        _launcher: launcher,
        _root: root,
        agent,
        session,
    }
}

/// Exposes `port` and returns the caller-side address of its URL.
async fn expose(session: &AgentSession, port: u16) -> SocketAddr {
    let exposed = session
        .expose_port(RunnerPortRequest { port, label: None })
        .await
        .unwrap();
    assert_eq!(exposed.port, port, "the sandbox port is echoed");
    let url = exposed.url.expect("a URL");
    let address = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url} is not http://"));
    let address: SocketAddr = address.parse().unwrap();
    assert!(
        address.ip().is_loopback(),
        "{url} is on the caller's loopback"
    );
    assert_ne!(address.port(), port, "{url} is a caller-side port");
    address
}

/// A port nothing listens on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// VmHWM of `pid` in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

/// An HTTP/1.0 server on the loopback: each request is answered with a
/// body naming its path, then the connection closes.
async fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("?").to_string();
                let body = format!("you asked for {path}");
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
            });
        }
    });
    port
}

/// One GET through `address`: the status line and the body.
async fn get(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: sandbox\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_http_requests_pass_through_the_tunnel() {
    let f = fixture().await;
    let port = http_server().await;
    let address = expose(&f.session, port).await;
    assert_eq!(
        expose(&f.session, port).await,
        address,
        "exposing the same port again gives the same URL"
    );
    // 100 one after the other, 100 ten at a time.
    for i in 0..100 {
        let (status, body) = get(address, &format!("/seq/{i}")).await;
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert_eq!(body, format!("you asked for /seq/{i}"));
    }
    for batch in 0..10 {
        let gets = (0..10).map(|i| {
            let path = format!("/par/{batch}/{i}");
            tokio::spawn(async move { (get(address, &path).await, path) })
        });
        for got in futures_util::future::join_all(gets).await {
            let ((status, body), path) = got.unwrap();
            assert_eq!(status, "HTTP/1.0 200 OK");
            assert_eq!(body, format!("you asked for {path}"));
        }
    }
    // After a lost connection the next tunnel goes over a new one.
    f.session.client().disconnect().await;
    let (status, _) = get(address, "/after-reconnect").await;
    assert_eq!(status, "HTTP/1.0 200 OK");
    f.session.close().await.unwrap();
}

/// The pattern byte at offset `i`.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_each_way_keep_the_agent_bounded() {
    const SIZE: usize = 50 * MIB;
    let f = fixture().await;
    // The sandbox's server: reads the whole upload (until the caller's
    // half-close), then sends 50 MiB back and the upload's hash.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut hasher = Sha256::new();
        let (mut total, mut buf) = (0usize, vec![0u8; 64 * 1024]);
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n;
        }
        let chunk: Vec<u8> = (0..MIB).map(pattern).collect();
        for _ in 0..SIZE / MIB {
            stream.write_all(&chunk).await.unwrap();
        }
        (total, hasher.finalize().to_vec())
    });
    let address = expose(&f.session, port).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let upload = async {
        let chunk: Vec<u8> = (0..MIB).map(pattern).collect();
        let mut hasher = Sha256::new();
        for _ in 0..SIZE / MIB {
            writer.write_all(&chunk).await.unwrap();
            hasher.update(&chunk);
        }
        writer.shutdown().await.unwrap();
        hasher.finalize().to_vec()
    };
    let download = async {
        let (mut total, mut buf) = (0usize, vec![0u8; 64 * 1024]);
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (i, byte) in buf[..n].iter().enumerate() {
                assert_eq!(*byte, pattern((total + i) % MIB), "byte {}", total + i);
            }
            total += n;
        }
        total
    };
    let start = Instant::now();
    let (sent_hash, received) = tokio::join!(upload, download);
    let elapsed = start.elapsed();
    let (uploaded, server_hash) = server.await.unwrap();
    assert_eq!(uploaded, SIZE, "the server got the whole upload");
    assert_eq!(server_hash, sent_hash, "the upload arrived unchanged");
    assert_eq!(received, SIZE, "the caller got the whole download");
    let agent_peak = peak_rss(f.agent.pid);
    assert!(
        agent_peak < 32 * MIB as u64,
        "agent VmHWM {agent_peak} after 50 MiB each way"
    );
    println!(
        "50 MiB up then 50 MiB down in {elapsed:?}, agent VmHWM {} KiB",
        agent_peak / 1024
    );
    f.session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closes_pass_both_ways() {
    let f = fixture().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        // First connection: answers after the caller shut its write side.
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        let answer = format!("got {} bytes", got.len());
        stream.write_all(answer.as_bytes()).await.unwrap();
        drop(stream);
        // Second connection: the server shuts its write side first, then
        // still reads what the caller sends.
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"hello, then nothing more").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    });
    let address = expose(&f.session, port).await;

    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 5 bytes");

    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut greeting = String::new();
    stream.read_to_string(&mut greeting).await.unwrap();
    assert_eq!(greeting, "hello, then nothing more");
    stream.write_all(b"still heard").await.unwrap();
    stream.shutdown().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server read to its end")
        .unwrap();
    assert_eq!(heard, b"still heard");
    f.session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_closes_the_callers_connection_promptly() {
    let f = fixture().await;
    let address = expose(&f.session, free_port()).await;
    let start = Instant::now();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the connection closes within 5 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a closed connection, not {read:?}"
    );
    println!("closed after {:?}", start.elapsed());
    // The session goes on.
    let (status, _) = get(expose(&f.session, http_server().await).await, "/").await;
    assert_eq!(status, "HTTP/1.0 200 OK");
    f.session.close().await.unwrap();
}

/// Whether `address` refuses connections within 5 s.
async fn stops_listening(address: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect(address).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_stop_with_the_session_or_its_last_handle() {
    let port = http_server().await;
    let f = fixture().await;
    let closed = expose(&f.session, port).await;
    f.session.close().await.unwrap();
    assert!(
        stops_listening(closed).await,
        "{closed} still listens after close"
    );

    let f = fixture().await;
    let dropped = expose(&f.session, port).await;
    let (status, _) = get(dropped, "/").await;
    assert_eq!(status, "HTTP/1.0 200 OK");
    drop(f.session);
    assert!(
        stops_listening(dropped).await,
        "{dropped} still listens after the last handle was dropped"
    );
}
