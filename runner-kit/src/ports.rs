//! Listening ports from the Linux `/proc/net/tcp` tables, for providers whose
//! runner is a Linux host or container.

use std::net::{Ipv4Addr, Ipv6Addr};

use runner_api::RunnerListeningPort;

/// The listening TCP sockets in the text of `/proc/net/tcp` and/or
/// `/proc/net/tcp6` (concatenated in any order, header lines included).
///
/// A provider implements `list_listening_ports` by running
/// `cat /proc/net/tcp /proc/net/tcp6` on the runner and passing the output
/// here. Only sockets in state `LISTEN` (`0A`) are kept; the result has one
/// entry per port, address and protocol (`tcp` or `tcp6`), sorted by port,
/// then protocol, then address, with `pid: None` (the tables name inodes, not
/// processes). Malformed lines are skipped, never an error.
pub fn parse_proc_net_tcp(text: &str) -> Vec<RunnerListeningPort> {
    let mut out: Vec<RunnerListeningPort> = Vec::new();
    for line in text.lines() {
        let Some((port, address, protocol)) = parse_line(line) else {
            continue;
        };
        if !out
            .iter()
            .any(|p| p.port == port && p.address == address && p.protocol == protocol)
        {
            out.push(RunnerListeningPort {
                port,
                address,
                protocol: protocol.to_string(),
                pid: None,
            });
        }
    }
    out.sort_by(|a, b| (a.port, &a.protocol, &a.address).cmp(&(b.port, &b.protocol, &b.address)));
    out
}

/// Port, address and protocol of one listening socket line.
fn parse_line(line: &str) -> Option<(u16, String, &'static str)> {
    // sl local_address rem_address st …; LISTEN is state 0A.
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != "0A" {
        return None;
    }
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = hex_words(addr)?;
    match words.as_slice() {
        // Each 32-bit word is the address bytes in memory order, printed as a
        // native-endian integer.
        [v4] => Some((port, Ipv4Addr::from(v4.to_ne_bytes()).to_string(), "tcp")),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Some((port, Ipv6Addr::from(bytes).to_string(), "tcp6"))
        }
        _ => None,
    }
}

/// The 8-digit hex words of an address field.
fn hex_words(hex: &str) -> Option<Vec<u32>> {
    let bytes = hex.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
        return None;
    }
    bytes
        .chunks(8)
        .map(|word| {
            std::str::from_utf8(word)
                .ok()
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word as the kernel prints it for the given address bytes.
    fn word(bytes: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(bytes))
    }

    #[test]
    fn keeps_listening_sockets_only_sorted_and_deduplicated() {
        let lo = word([127, 0, 0, 1]);
        let any6 = "0".repeat(32);
        let text = format!(
            "  sl  local_address rem_address   st tx_queue\n\
             0: {lo}:1F90 00000000:0000 0A 00000000:00000000\n\
             1: {lo}:1F91 {lo}:9C40 01 00000000:00000000\n\
             2: {lo}:1F90 00000000:0000 0A 00000000:00000000\n\
             0: {any6}:0050 {any6}:0000 0A 0\n"
        );
        let ports = parse_proc_net_tcp(&text);
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert_eq!((ports[0].port, ports[0].address.as_str()), (80, "::"));
        assert_eq!(ports[0].protocol, "tcp6");
        assert_eq!(
            (ports[1].port, ports[1].address.as_str()),
            (8080, "127.0.0.1")
        );
        assert_eq!(ports[1].protocol, "tcp");
        assert_eq!(ports[1].pid, None);
    }

    #[test]
    fn decodes_ipv6_loopback() {
        let lo6 = [word([0; 4]), word([0; 4]), word([0; 4]), word([0, 0, 0, 1])].concat();
        let ports = parse_proc_net_tcp(&format!("0: {lo6}:1F90 {lo6}:0000 0A 0\n"));
        assert_eq!(ports[0].address, "::1");
    }

    #[test]
    fn skips_malformed_lines_without_panicking() {
        let text = "garbage\n0: 0100007F 00 0A\n0: 0100007F:ZZZZ 0 0A\n\
                    0: 0100007F0:1F90 0 0A\n0: ééééééééééééééé0:1F90 0 0A\n\n";
        assert!(parse_proc_net_tcp(text).is_empty());
    }
}
