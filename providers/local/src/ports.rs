//! Listening TCP sockets of the session's processes, from `/proc`.

use std::collections::{HashMap, HashSet};

use procfs::net::{TcpNetEntry, TcpState};
use procfs::process::{FDTarget, Process};
use runner_api::{
    RunnerError, RunnerListeningPort, RunnerPortRequest, RunnerPortResult, RunnerResult,
};

use crate::error::proc_error;

/// `expose_port`: the local provider's processes share the host's network, so
/// the port is reachable on loopback as is.
///
/// Errors: `InvalidRequest` (port 0).
pub(crate) fn expose(request: &RunnerPortRequest) -> RunnerResult<RunnerPortResult> {
    if request.port == 0 {
        return Err(RunnerError::invalid_request(
            "expose_port: port 0 is not a port a process listens on",
        ));
    }
    Ok(RunnerPortResult {
        port: request.port,
        url: Some(format!("http://127.0.0.1:{}", request.port)),
    })
}

/// Listening TCP sockets (IPv4 and IPv6) owned by one of `pids`, sorted by port.
/// Blocking: reads `/proc`.
///
/// Errors: `Provider` when `/proc/net/tcp` cannot be read.
pub(crate) fn listening(pids: &HashSet<u32>) -> RunnerResult<Vec<RunnerListeningPort>> {
    let op = "list_listening_ports";
    let mut owner: HashMap<u64, u32> = HashMap::new();
    for pid in pids {
        let Ok(process) = Process::new(*pid as i32) else {
            continue;
        };
        let Ok(fds) = process.fd() else {
            continue;
        };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                owner.entry(inode).or_insert(*pid);
            }
        }
    }
    if owner.is_empty() {
        return Ok(Vec::new());
    }
    let v4 = procfs::net::tcp().map_err(|e| proc_error(op, e))?;
    // A host without IPv6 has no /proc/net/tcp6.
    let v6 = procfs::net::tcp6().unwrap_or_default();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let tagged = v4
        .iter()
        .map(|e| (e, "tcp"))
        .chain(v6.iter().map(|e| (e, "tcp6")));
    for (entry, protocol) in tagged {
        let TcpNetEntry {
            local_address,
            state,
            inode,
            ..
        } = entry;
        if *state != TcpState::Listen {
            continue;
        }
        let Some(pid) = owner.get(inode) else {
            continue;
        };
        if !seen.insert((local_address.port(), protocol, local_address.ip())) {
            continue;
        }
        out.push(RunnerListeningPort {
            port: local_address.port(),
            address: local_address.ip().to_string(),
            protocol: protocol.to_string(),
            pid: Some(*pid),
        });
    }
    out.sort_by(|a, b| (a.port, &a.protocol, &a.address).cmp(&(b.port, &b.protocol, &b.address)));
    Ok(out)
}
