#![doc = include_str!("../README.md")]

mod report;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use runner_api::{RemoteRunnerProvider, RunnerDestination};
use runner_testkit::libtest_mimic::Arguments;
use runner_testkit::{CheckStatus, Conformance};

pub use report::{CapabilityReport, CheckEntry, Report};

use crate::report::first_line;

/// Command-line arguments of `runner-conformance`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "runner-conformance",
    about = "Runs the runner conformance kit against a destination JSON file",
    after_help = "Arguments after `--` go to the test harness: a name filter, --exact, \
                  --skip <name>, --test-threads <n>, --list, --include-ignored."
)]
pub struct Cli {
    /// A `RunnerDestination` as JSON: `{"id": …, "provider_id": …, "config": {…}}`.
    #[arg(long, value_name = "FILE")]
    pub destination: PathBuf,
    /// Write the machine-readable report (JSON) here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print each capability flag as declared and as observed by the checks.
    #[arg(long)]
    pub capabilities: bool,
    /// Seconds one check may take before it fails as hung.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub check_timeout: u64,
    /// Test-harness arguments (filters and options), after `--`.
    #[arg(last = true, value_name = "HARNESS_ARGS")]
    pub harness: Vec<String>,
}

/// The providers the `runner-conformance` binary is built with, bare:
/// `unix-local`, `docker`, `ssh`, `memory`, the example `agent` provider and
/// `kubernetes`.
/// The one a destination names is checked as users get it, through the
/// layer stack (see [`run`]).
///
/// Adding a provider is one line here and one dependency in `Cargo.toml`
/// (`Arc::new(<Provider>::default())`).
pub fn builtin_providers() -> Vec<Arc<dyn RemoteRunnerProvider>> {
    vec![
        Arc::new(runner_local::LocalProvider::default()),
        Arc::new(runner_docker::DockerProvider::default()),
        Arc::new(runner_ssh::SshProvider::default()),
        Arc::new(runner_testkit::MemoryProvider::default()),
        Arc::new(runner_example_custom_provider::AgentProvider::default()),
        Arc::new(runner_kubernetes::KubernetesProvider::default()),
    ]
}

/// Reads the destination, runs the kit against the provider it names (bare
/// in `providers`; the destination is validated, and the kit runs every
/// check, through [`runner_stack::Stack::new`] wrapped around it, whose
/// mounts and artifact stores take credentials from `RUNNER_SECRET_*`
/// environment variables), prints
/// the per-check lines and the summary line (to standard output, from the
/// harness), then writes to `out` the failed checks and, when asked, the
/// capability report; writes the JSON report when asked.
///
/// Errors (before any check runs, or when the report cannot be written): a
/// message naming the file, the field or the unknown provider.
pub fn run(
    cli: &Cli,
    providers: &[Arc<dyn RemoteRunnerProvider>],
    out: &mut dyn Write,
) -> Result<Report, String> {
    let destination = read_destination(cli)?;
    let provider = providers
        .iter()
        .find(|p| p.id() == destination.provider_id)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<String> = providers.iter().map(|p| p.id()).collect();
            format!(
                "destination {:?} names provider {:?}; this binary knows: {}",
                destination.id,
                destination.provider_id,
                known.join(", ")
            )
        })?;
    let stacked = runner_stack::Stack::new().provider(provider.clone());
    validate(stacked.as_ref(), &destination)?;
    let mut argv = vec!["runner-conformance".to_string()];
    argv.extend(cli.harness.iter().cloned());
    let args = <Arguments as Parser>::try_parse_from(argv)
        .map_err(|e| format!("harness arguments: {e}"))?;
    let listing = args.list;
    let declared = stacked.capabilities();
    let summary = Conformance::new(provider, destination.clone())
        .with_check_timeout(std::time::Duration::from_secs(cli.check_timeout))
        .run_with(args);
    let report = Report::new(&destination, &declared, &summary);
    if listing {
        return Ok(report);
    }
    print_sections(cli, &report, out).map_err(|e| format!("writing the output: {e}"))?;
    if let Some(path) = &cli.report {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("encoding the report: {e}"))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("writing the report {}: {e}", path.display()))?;
        writeln!(out, "report written to {}", path.display())
            .map_err(|e| format!("writing the output: {e}"))?;
    }
    Ok(report)
}

fn read_destination(cli: &Cli) -> Result<RunnerDestination, String> {
    let path = &cli.destination;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the destination {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "the destination {} is not a RunnerDestination (\
             {{\"id\": …, \"provider_id\": …, \"config\": {{…}}}}): {e}",
            path.display()
        )
    })
}

/// `validate_destination` before the run, so a bad config is one clear error
/// instead of every check failing at `create_session`.
fn validate(
    provider: &dyn RemoteRunnerProvider,
    destination: &RunnerDestination,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    runtime
        .block_on(provider.validate_destination(destination))
        .map_err(|e| {
            let hint = provider
                .setup_hint()
                .map(|hint| format!(" ({hint})"))
                .unwrap_or_default();
            format!(
                "validate_destination {:?} for provider {}: {e}{hint}",
                destination.id,
                provider.id()
            )
        })
}

fn print_sections(cli: &Cli, report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let failed: Vec<&CheckEntry> = report
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Failed.as_str())
        .collect();
    if !failed.is_empty() {
        writeln!(out, "\nfailed checks ({}):", failed.len())?;
        for check in failed {
            let message = check.message.as_deref().unwrap_or("");
            writeln!(out, "  {}: {}", check.name, first_line(message))?;
        }
    }
    if cli.capabilities {
        writeln!(
            out,
            "\ncapabilities of {} (declared, and what the checks observed):",
            report.provider_id
        )?;
        for cap in &report.capabilities {
            writeln!(
                out,
                "{} {:<22} {}",
                if cap.flagged { "!" } else { " " },
                cap.capability,
                cap.observed
            )?;
        }
        let flagged = report.flagged_capabilities();
        if flagged.is_empty() {
            writeln!(out, "no capability flag contradicts the checks")?;
        } else {
            writeln!(out, "flagged capabilities: {}", flagged.join(", "))?;
        }
    }
    Ok(())
}
