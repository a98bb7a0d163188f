//! The machine-readable report and the capability report.

use std::process::ExitCode;

use runner_api::{RunnerCapabilities, RunnerDestination};
use runner_testkit::{Capability, Check, CheckReport, CheckStatus, ConformanceSummary, checks};
use serde::{Deserialize, Serialize};

/// What `--report` writes: the summary, every check, every capability flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The provider under test.
    pub provider_id: String,
    /// The destination's id.
    pub destination_id: String,
    /// `<provider-id>: N passed, N failed, N skipped`.
    pub summary_line: String,
    /// Checks that ran and passed.
    pub passed: u64,
    /// Checks that ran and failed.
    pub failed: u64,
    /// Checks skipped because a required capability is declared unsupported.
    pub skipped: u64,
    /// Every selected check, in catalogue order.
    pub checks: Vec<CheckEntry>,
    /// Every capability flag, declared and observed.
    pub capabilities: Vec<CapabilityReport>,
}

/// One check in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckEntry {
    /// `<area>_<behaviour>`.
    pub name: String,
    /// The area (`exec`, `files`, …).
    pub area: String,
    /// `passed`, `failed` or `skipped`.
    pub status: String,
    /// The failure message or the skip reason.
    #[serde(default)]
    pub message: Option<String>,
    /// Time the check took, cleanup included.
    pub duration_ms: u64,
}

/// One capability flag: what the provider declares and what the checks saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityReport {
    /// The flag's name in `RunnerCapabilities` (`command_exec`).
    pub capability: String,
    /// The declared value.
    pub declared: bool,
    /// What the checks observed, in words.
    pub observed: String,
    /// The declaration contradicts what the checks observed.
    pub flagged: bool,
    /// Checks requiring the flag (or checking it) that passed.
    pub checks_passed: u64,
    /// Checks requiring the flag (or checking it) that failed, by name.
    pub failed_checks: Vec<String>,
    /// Checks requiring the flag that were skipped.
    pub checks_skipped: u64,
}

impl Report {
    /// Builds the report of a finished run.
    pub fn new(
        destination: &RunnerDestination,
        declared: &RunnerCapabilities,
        summary: &ConformanceSummary,
    ) -> Self {
        let entries = summary
            .checks
            .iter()
            .map(|c| CheckEntry {
                name: c.name.clone(),
                area: c.area.name().to_string(),
                status: c.status.as_str().to_string(),
                message: c.message.clone(),
                duration_ms: c.duration.as_millis() as u64,
            })
            .collect();
        let catalogue = checks();
        Self {
            provider_id: summary.provider_id.clone(),
            destination_id: destination.id.clone(),
            summary_line: summary.line(),
            passed: summary.passed,
            failed: summary.failed,
            skipped: summary.skipped,
            checks: entries,
            capabilities: Capability::ALL
                .iter()
                .map(|c| capability_report(*c, declared, &catalogue, &summary.checks))
                .collect(),
        }
    }

    /// Success when no check failed; 101 otherwise (as libtest).
    pub fn exit_code(&self) -> ExitCode {
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(101)
        }
    }

    /// Names of the failed checks.
    pub fn failed_checks(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Failed.as_str())
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Names of the flagged capabilities.
    pub fn flagged_capabilities(&self) -> Vec<&str> {
        self.capabilities
            .iter()
            .filter(|c| c.flagged)
            .map(|c| c.capability.as_str())
            .collect()
    }
}

/// Compares one declared flag with the outcomes of `capabilities_<flag>` (the
/// honesty check, which runs whatever the flag says) and of every check that
/// requires the flag.
fn capability_report(
    capability: Capability,
    declared: &RunnerCapabilities,
    catalogue: &[Check],
    results: &[CheckReport],
) -> CapabilityReport {
    let honesty_name = format!("capabilities_{}", capability.name());
    let honesty = results.iter().find(|r| r.name == honesty_name);
    let requiring: Vec<&CheckReport> = catalogue
        .iter()
        .filter(|c| c.requires.contains(&capability))
        .filter_map(|c| results.iter().find(|r| r.name == c.name))
        .collect();
    let related = || requiring.iter().copied().chain(honesty);
    let failed_checks: Vec<String> = related()
        .filter(|r| r.status == CheckStatus::Failed)
        .map(|r| r.name.clone())
        .collect();
    let passed = related()
        .filter(|r| r.status == CheckStatus::Passed)
        .count() as u64;
    let is_declared = capability.is_set(declared);
    let (observed, flagged) = match (is_declared, honesty.map(|h| h.status)) {
        (true, _) if !failed_checks.is_empty() => (
            format!(
                "declared true but {} check(s) failed: {}",
                failed_checks.len(),
                failed_checks.join(", ")
            ),
            true,
        ),
        (true, _) if passed > 0 => (format!("declared true, checks passed ({passed})"), false),
        (false, Some(CheckStatus::Passed)) => (
            "declared false, the operation answered Unsupported".to_string(),
            false,
        ),
        (false, Some(CheckStatus::Failed)) => {
            let message = honesty.and_then(|h| h.message.as_deref()).unwrap_or("");
            let what = if message.contains("got Ok") {
                "declared false but the operation worked"
            } else {
                "declared false but the operation did not answer Unsupported"
            };
            (format!("{what}: {}", first_line(message)), true)
        }
        (declared, _) => (
            format!("declared {declared}, not observed (no check of it ran)"),
            false,
        ),
    };
    CapabilityReport {
        capability: capability.name().to_string(),
        declared: is_declared,
        observed,
        flagged,
        checks_passed: passed,
        failed_checks,
        checks_skipped: requiring
            .iter()
            .filter(|r| r.status == CheckStatus::Skipped)
            .count() as u64,
    }
}

/// The first line of a (possibly multi-line) message.
pub(crate) fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
