//! Resident memory of the benchmark process, or of another process of this
//! host (an agent), from /proc (Linux).

/// Resets the kernel's peak-RSS mark of this process, so that [`peak_mib`]
/// reports the peak since this call.
pub(crate) fn reset_peak() -> anyhow::Result<()> {
    reset_peak_of("self")
}

/// Resets the peak-RSS mark of process `pid` (`"self"`, or a number).
pub(crate) fn reset_peak_of(pid: &str) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| anyhow::anyhow!("resetting the peak RSS through /proc/{pid}/clear_refs: {e}"))
}

/// Peak resident memory since the last [`reset_peak`], in MiB.
pub(crate) fn peak_mib() -> anyhow::Result<f64> {
    peak_mib_of("self")
}

/// Peak resident memory of process `pid` since its last reset, in MiB.
pub(crate) fn peak_mib_of(pid: &str) -> anyhow::Result<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

/// Resident memory now, in MiB: what a phase's peak starts from.
pub(crate) fn current_mib() -> anyhow::Result<f64> {
    status_kib("self", "VmRSS:").map(|kib| kib / 1024.0)
}

fn status_kib(pid: &str, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {field} line"))
}
