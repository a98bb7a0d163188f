//! Tunnels: one TCP connection relayed over one request id of an agent
//! connection (`open_tunnel`). The agent connects to a port on the sandbox's
//! loopback; the client relays a connection its caller-side listener
//! accepted. Both ends run the same [`relay`]: each direction's bytes go as
//! `Data` frames under that direction's credit, and `End` says the sender's
//! side stopped writing (a half-close, passed on as a TCP write shutdown).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::conn::{Credit, Lost, Mailbox, Outbound, send_error, wire_error};
use crate::protocol::{DATA_CHUNK_BYTES, Frame, FrameKind};

/// How long the agent waits for a loopback connection to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first read of a tunnel's bytes; later ones double while they fill.
const FIRST_READ_BYTES: usize = 16 * 1024;

/// The operation tunnels are named by in messages.
const OP: &str = "open_tunnel";

/// Connects to `port` on the sandbox's loopback: `127.0.0.1`, then `[::1]`
/// when that is refused (a server bound to IPv6 only).
///
/// Errors: `InvalidRequest` (port 0), `Unavailable` naming the port when
/// both refuse, `Timeout` after 10 s, else the socket error's kind.
pub(crate) async fn connect(port: u16) -> RunnerResult<TcpStream> {
    if port == 0 {
        return Err(RunnerError::invalid_request(format!(
            "{OP} 0: port 0 is not a port a process listens on"
        )));
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    for address in [v4, v6] {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await;
        match attempt {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            // Refused, or no IPv6 loopback at all: try the next address.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
                ) => {}
            Ok(Err(e)) => return Err(RunnerError::from_io(OP, address, e)),
            Err(_) => {
                return Err(RunnerError::new(
                    RunnerErrorKind::Timeout,
                    format!("{OP} {port}: connecting to {address} did not finish within 10 s"),
                ));
            }
        }
    }
    Err(RunnerError::new(
        RunnerErrorKind::Unavailable,
        format!(
            "{OP} {port}: nothing accepts connections on port {port} in the sandbox \
             (127.0.0.1:{port} and [::1]:{port} refused)"
        ),
    ))
}

/// Which end of a tunnel runs the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The agent: its mailbox closes after the client's `End` (nothing more
    /// comes; a `Cancel` or a lost connection aborts the task).
    Agent,
    /// The client: its mailbox stays open after the agent's `End` (an
    /// `Error` may still end the tunnel); a closed one is a lost connection.
    Client,
}

/// Why a tunnel ended before both directions finished.
enum Broken {
    /// This side's TCP connection failed: the peer is told with an `Error`.
    Io(std::io::Error),
    /// The peer ended it (`Error`), or it was cancelled, or the connection lost.
    Quietly,
}

/// Relays `stream` over the id: its bytes out as `Data` frames (after
/// `credit`), the peer's `Data` frames into it; `End` both ways on a
/// half-close. Returns `true` when both directions ended normally; a
/// broken tunnel was reported to the peer when this side's socket failed.
pub(crate) async fn relay(
    side: Side,
    outbound: &Outbound,
    id: u64,
    credit: &Credit,
    stream: TcpStream,
    mailbox: &mut Mailbox,
) -> bool {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "a tunnel".to_string(), |a| a.to_string());
    let (mut reader, mut writer) = stream.into_split();
    let sent_all = AtomicBool::new(false);
    let received_all = AtomicBool::new(false);
    let ended = {
        let incoming = receive(side, mailbox, &mut writer, &sent_all, &received_all);
        let outgoing = send(outbound, id, credit, &mut reader);
        tokio::pin!(incoming, outgoing);
        let mut sending = true;
        loop {
            tokio::select! {
                received = &mut incoming => break received,
                sent = &mut outgoing, if sending => match sent {
                    Ok(()) => {
                        sending = false;
                        sent_all.store(true, Ordering::SeqCst);
                        if received_all.load(Ordering::SeqCst) {
                            break Ok(());
                        }
                    }
                    Err(broken) => break Err(broken),
                },
            }
        }
    };
    match ended {
        Ok(()) => true,
        Err(Broken::Io(e)) => {
            let error = RunnerError::from_io(OP, &peer, e);
            let _ = send_error(outbound, id, &error).await;
            false
        }
        Err(Broken::Quietly) => false,
    }
}

/// The peer's bytes into `writer` until its `End` (then a write shutdown),
/// and after that until this side's bytes are all sent too.
async fn receive(
    side: Side,
    mailbox: &mut Mailbox,
    writer: &mut OwnedWriteHalf,
    sent_all: &AtomicBool,
    received_all: &AtomicBool,
) -> Result<(), Broken> {
    loop {
        let ended = received_all.load(Ordering::SeqCst);
        match mailbox.recv().await {
            Some(frame) if frame.kind == FrameKind::Data && !ended => {
                writer.write_all(&frame.payload).await.map_err(Broken::Io)?;
            }
            Some(frame) if frame.kind == FrameKind::End && !ended => {
                // The peer may already have gone: its side is done either way.
                let _ = writer.shutdown().await;
                received_all.store(true, Ordering::SeqCst);
                if sent_all.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
            // The agent connected (its answer to `open_tunnel`, which the
            // client does not wait for before sending).
            Some(frame) if frame.kind == FrameKind::Reply && side == Side::Client => {}
            Some(frame) if frame.kind == FrameKind::Error => {
                tracing::debug!(error = %wire_error(&frame.payload), "tunnel: the peer ended it");
                return Err(Broken::Quietly);
            }
            None if ended && side == Side::Agent => std::future::pending::<()>().await,
            Some(frame) => {
                tracing::debug!(kind = ?frame.kind, "tunnel: an unexpected frame ends it");
                return Err(Broken::Quietly);
            }
            None => return Err(Broken::Quietly),
        }
    }
}

/// This side's bytes from `reader` as `Data` frames, each after its credit,
/// then `End` once the reader reached its end.
async fn send(
    outbound: &Outbound,
    id: u64,
    credit: &Credit,
    reader: &mut OwnedReadHalf,
) -> Result<(), Broken> {
    // Reads start small (most tunnels carry a request and an answer) and
    // double while they fill, up to a whole data frame.
    let mut size = FIRST_READ_BYTES;
    loop {
        let mut buf = BytesMut::with_capacity(size);
        let n = reader.read_buf(&mut buf).await.map_err(Broken::Io)?;
        if n == 0 {
            return outbound
                .send(Frame::new(FrameKind::End, id, Bytes::new()))
                .await
                .map_err(|Lost| Broken::Quietly);
        }
        if n == size {
            size = (size * 2).min(DATA_CHUNK_BYTES);
        }
        credit.spend(n).await.map_err(|Lost| Broken::Quietly)?;
        outbound
            .send(Frame::new(FrameKind::Data, id, buf.freeze()))
            .await
            .map_err(|Lost| Broken::Quietly)?;
    }
}
