//! Benchmarks of every provider next to the tools users would use instead.
//!
//! `cargo run --release -p runner-bench -- [--quick]` measures, in one run,
//! each figure's median and p95 with a baseline measured in the same run,
//! prints a table and writes `target/bench/results.json`. Backends other than
//! unix-local are measured when their `RUNNER_TEST_<BACKEND>=1` switch is set
//! (as `scripts/test.sh --bench` does after provisioning them); a requested
//! backend that does not answer fails the run.

mod cli;
mod docker;
mod generic;
mod local;
mod rss;
mod ssh;
mod stats;

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

use crate::generic::{
    Target, concurrent_commands, concurrent_sessions, one_session, output_memory,
};
use crate::stats::{Better, Figure, Group, Spec, time_ms};

/// Figures of one group, or the error that stopped it.
type Figures = anyhow::Result<Vec<Figure>>;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Benchmarks of runner providers against their baselines")]
struct Args {
    /// Fewer repetitions (a smoke run; figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Where to write the machine-readable results.
    #[arg(long, default_value = "target/bench/results.json")]
    output: PathBuf,
}

/// Repetitions of each measurement.
pub(crate) struct Plan {
    pub(crate) round_trips: usize,
    pub(crate) gib_reps: usize,
    pub(crate) file_reps: usize,
    pub(crate) session_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                round_trips: 30,
                gib_reps: 1,
                file_reps: 2,
                session_reps: 3,
            }
        } else {
            Self {
                round_trips: 200,
                gib_reps: 3,
                file_reps: 5,
                session_reps: 10,
            }
        }
    }
}

/// The results file.
#[derive(Serialize)]
struct Results<'a> {
    quick: bool,
    machine: Machine,
    figures: &'a [Figure],
}

/// Where the figures were measured.
#[derive(Serialize)]
struct Machine {
    cpus: usize,
    memory_mib: u64,
    kernel: String,
}

impl Machine {
    fn read() -> Self {
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("MemTotal:"))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
            })
            .map_or(0, |kib| kib / 1024);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

const CONCURRENT_COMMANDS: usize = 64;
const CONCURRENT_SESSIONS: usize = 16;
const MEMORY_SESSIONS: usize = 16;
const MEMORY_BYTES: u64 = 64 << 20;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let plan = Plan::new(args.quick);
    let scratch = tempfile::tempdir()?;
    let mut figures = Vec::new();
    let mut targets = vec![local::target(scratch.path())];

    eprintln!("== unix-local");
    figures.extend(local::run(&plan, &targets[0], scratch.path()).await?);
    if cli::requested("RUNNER_TEST_DOCKER") {
        eprintln!("== docker");
        let target = docker::target()?;
        figures.extend(docker::run(&plan, &target, scratch.path()).await?);
        targets.push(target);
    } else {
        eprintln!("== docker: skipped (set RUNNER_TEST_DOCKER=1; scripts/test.sh --bench does)");
    }
    if cli::requested("RUNNER_TEST_SSH") {
        eprintln!("== ssh");
        let target = ssh::target()?;
        figures.extend(ssh::run(&plan, &target, scratch.path()).await?);
        targets.push(target);
    } else {
        eprintln!("== ssh: skipped (set RUNNER_TEST_SSH=1; scripts/test.sh --bench does)");
    }

    for target in targets.clone() {
        eprintln!("== concurrency: {}", target.label);
        figures.extend(concurrency(&plan, &target).await?);
    }
    let baseline = local::buffered_output_rss(MEMORY_SESSIONS, MEMORY_BYTES).await?;
    for target in targets.drain(..) {
        eprintln!("== memory: {}", target.label);
        let (peak, errors) = output_memory(&target, MEMORY_SESSIONS, MEMORY_BYTES).await?;
        let mut group = Group::new("memory");
        group.add(
            Spec {
                name: &format!("{}: peak RSS, 16 sessions x 64 MiB output", target.label),
                unit: "MiB",
                better: Better::Lower,
                baseline: "16 concurrent tokio Command::output() of 64 MiB",
            },
            &stats::Samples(vec![peak]),
            &baseline,
            errors,
        );
        figures.extend(group.into_figures());
    }

    print_table(&figures);
    if let Some(parent) = args.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let results = Results {
        quick: args.quick,
        machine: Machine::read(),
        figures: &figures,
    };
    std::fs::write(&args.output, serde_json::to_vec_pretty(&results)?)?;
    eprintln!("wrote {}", args.output.display());
    let errors: u64 = figures.iter().map(|f| f.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} operations failed while measuring");
    Ok(())
}

/// 64 concurrent commands on one session and 16 concurrent sessions, against
/// the same operations one at a time.
async fn concurrency(plan: &Plan, target: &Target) -> Figures {
    let mut group = Group::new("concurrency");
    let session = target.session().await?;
    let sequential = generic::round_trip(&session, CONCURRENT_COMMANDS).await?;
    let (concurrent, errors) = concurrent_commands(&session, CONCURRENT_COMMANDS).await;
    session.close().await?;
    group.add(
        Spec {
            name: &format!("{}: 64 concurrent commands, latency", target.label),
            unit: "ms",
            better: Better::Lower,
            baseline: "the same command, one at a time",
        },
        &concurrent,
        &sequential,
        errors,
    );
    let one_by_one = time_ms(plan.session_reps, |_| one_session(target)).await?;
    let (parallel, errors) = concurrent_sessions(target, CONCURRENT_SESSIONS).await;
    group.add(
        Spec {
            name: &format!("{}: 16 concurrent sessions, latency", target.label),
            unit: "ms",
            better: Better::Lower,
            baseline: "create + command + close, one session at a time",
        },
        &parallel,
        &one_by_one,
        errors,
    );
    Ok(group.into_figures())
}

fn print_table(figures: &[Figure]) {
    println!(
        "| {:<12} | {:<50} | {:>10} | {:>10} | {:<6} | {:>12} | {:>6} | {:<50} |",
        "group", "figure", "median", "p95", "unit", "baseline", "ratio", "baseline is"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(14),
        "-".repeat(52),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(8),
        "-".repeat(14),
        "-".repeat(8),
        "-".repeat(52)
    );
    for f in figures {
        println!(
            "| {:<12} | {:<50} | {:>10.2} | {:>10.2} | {:<6} | {:>12.2} | {:>6.2} | {:<50} |",
            f.group, f.name, f.median, f.p95, f.unit, f.baseline_median, f.ratio, f.baseline
        );
    }
}
