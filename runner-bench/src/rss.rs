//! Resident memory of the benchmark process, from /proc (Linux).

/// Resets the kernel's peak-RSS mark of this process, so that [`peak_mib`]
/// reports the peak since this call.
pub(crate) fn reset_peak() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| anyhow::anyhow!("resetting the peak RSS through /proc/self/clear_refs: {e}"))
}

/// Peak resident memory since the last [`reset_peak`], in MiB.
pub(crate) fn peak_mib() -> anyhow::Result<f64> {
    status_kib("VmHWM:").map(|kib| kib / 1024.0)
}

/// Resident memory now, in MiB: what a phase's peak starts from.
pub(crate) fn current_mib() -> anyhow::Result<f64> {
    status_kib("VmRSS:").map(|kib| kib / 1024.0)
}

fn status_kib(field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| anyhow::anyhow!("reading /proc/self/status: {e}"))?;
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
        .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no {field} line"))
}
