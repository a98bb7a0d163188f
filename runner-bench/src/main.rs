//! Benchmarks of every provider next to the tools users would use instead.
//!
//! `cargo run --release -p runner-bench -- [--quick] [--only SECTION,…]`
//! measures, in one run, each figure's median and p95 with a baseline
//! measured in the same run (or, for the peak RSS of a streamed 1 GiB file,
//! the bound it is held to, with its verdict), prints a table and writes
//! `target/bench/results.json`. Backends other than unix-local are measured
//! when their `RUNNER_TEST_<BACKEND>=1` switch is set (as `scripts/test.sh
//! --bench` does after provisioning them); a requested backend that does not
//! answer fails the run.

mod cli;
mod docker;
mod episode;
mod generic;
mod kube;
mod local;
mod remote;
mod rss;
mod ssh;
mod stats;
mod streams;
mod terminal;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
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
    /// Run only these sections (comma-separated; default: every section).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Where to write the machine-readable results.
    #[arg(long, default_value = "target/bench/results.json")]
    output: PathBuf,
}

impl Args {
    /// Whether the run measures `section`.
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }
}

/// A group of figures that `--only` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
enum Section {
    /// unix-local against tokio.
    UnixLocal,
    /// docker against the docker CLI.
    Docker,
    /// ssh against the OpenSSH tools.
    Ssh,
    /// docker and ssh through the runner agent against unix-local in-process.
    Agent,
    /// Concurrent commands and sessions on every provider.
    Concurrency,
    /// Peak memory while sessions print a lot.
    Memory,
    /// 1 GiB files through the session streams on every provider: throughput
    /// against `cp`, `docker cp` and `scp`, and peak RSS against the bound.
    Streams,
    /// A scripted agent episode through runner-tools on every provider.
    Episode,
    /// kubernetes (through the test API server) against the docker provider.
    Kubernetes,
    /// Keystroke to echo through a terminal on every provider, against
    /// unix-local.
    Terminal,
}

/// Repetitions of each measurement.
pub(crate) struct Plan {
    pub(crate) round_trips: usize,
    pub(crate) gib_reps: usize,
    pub(crate) file_reps: usize,
    pub(crate) session_reps: usize,
    pub(crate) episode_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                round_trips: 30,
                gib_reps: 1,
                file_reps: 2,
                session_reps: 3,
                episode_reps: 1,
            }
        } else {
            Self {
                round_trips: 200,
                gib_reps: 3,
                file_reps: 5,
                session_reps: 10,
                episode_reps: 5,
            }
        }
    }
}

/// The results file.
#[derive(Serialize)]
struct Results<'a> {
    quick: bool,
    /// The sections measured (empty: all).
    only: &'a [Section],
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
    let local = local::target(scratch.path());
    let docker = backend("docker", "RUNNER_TEST_DOCKER", docker::target)?;
    let ssh = backend("ssh", "RUNNER_TEST_SSH", ssh::target)?;

    if args.runs(Section::UnixLocal) {
        eprintln!("== unix-local");
        figures.extend(local::run(&plan, &local, scratch.path()).await?);
    }
    if let Some(target) = &docker
        && args.runs(Section::Docker)
    {
        eprintln!("== docker");
        figures.extend(docker::run(&plan, target, scratch.path()).await?);
    }
    if let Some(target) = &ssh
        && args.runs(Section::Ssh)
    {
        eprintln!("== ssh");
        figures.extend(ssh::run(&plan, target, scratch.path()).await?);
    }
    if args.runs(Section::Agent) {
        let remotes: Vec<Target> = [docker.clone(), ssh.clone()]
            .into_iter()
            .flatten()
            .collect();
        figures.extend(remote::run(&plan, &local, &remotes).await?);
    }
    let targets: Vec<Target> = [Some(local), docker.clone(), ssh]
        .into_iter()
        .flatten()
        .collect();

    if args.runs(Section::Concurrency) {
        for target in &targets {
            eprintln!("== concurrency: {}", target.label);
            figures.extend(concurrency(&plan, target).await?);
        }
    }
    // The streams' peaks are of the whole process, so they start from what
    // the sections above left resident (stricter than the transfers' own
    // growth); before the memory section, whose sixteen 64 MiB outputs leave
    // the allocator holding tens of MiB, by a varying amount from run to run.
    if args.runs(Section::Streams) {
        figures.extend(streams::run(&plan, &targets, scratch.path()).await?);
    }
    if args.runs(Section::Memory) {
        figures.extend(memory(&targets).await?);
    }
    // Sections that measure no memory, after those that do: what they leave
    // resident would otherwise count in the process-wide peaks above.
    if let Some(target) = &docker
        && args.runs(Section::Kubernetes)
    {
        eprintln!("== kubernetes");
        figures.extend(kube::run(&plan, target).await?);
    }
    if args.runs(Section::Terminal) {
        figures.extend(terminal::run(&plan, &targets).await?);
    }
    if args.runs(Section::Episode) {
        // The Debian image too, after the busybox one, when it was provisioned.
        let mut episode_targets = targets;
        let debian_at = episode_targets
            .iter()
            .position(|t| t.label == "ssh")
            .unwrap_or(episode_targets.len());
        if let Some(debian) = docker::debian_target()? {
            episode_targets.insert(debian_at, debian);
        }
        figures.extend(episode::run(&plan, &episode_targets, scratch.path()).await?);
    }

    print_table(&figures);
    if let Some(parent) = args.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let results = Results {
        quick: args.quick,
        only: &args.only,
        machine: Machine::read(),
        figures: &figures,
    };
    std::fs::write(&args.output, serde_json::to_vec_pretty(&results)?)?;
    eprintln!("wrote {}", args.output.display());
    let errors: u64 = figures.iter().map(|f| f.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} operations failed while measuring");
    let over = stats::over_bound(&figures);
    anyhow::ensure!(over.is_empty(), "over their bound: {}", over.join("; "));
    Ok(())
}

/// The target of a backend when its `var` asks for it, made by `make`.
fn backend(
    label: &str,
    var: &str,
    make: fn() -> anyhow::Result<Target>,
) -> anyhow::Result<Option<Target>> {
    if cli::requested(var) {
        return make().map(Some);
    }
    eprintln!("== {label}: skipped (set {var}=1; scripts/test.sh --bench does)");
    Ok(None)
}

/// Peak memory of 16 sessions each printing 64 MiB, on each of `targets`,
/// against 16 buffered `Command::output()` calls.
async fn memory(targets: &[Target]) -> Figures {
    let baseline = local::buffered_output_rss(MEMORY_SESSIONS, MEMORY_BYTES).await?;
    let mut group = Group::new("memory");
    for target in targets {
        eprintln!("== memory: {}", target.label);
        let (peak, errors) = output_memory(target, MEMORY_SESSIONS, MEMORY_BYTES).await?;
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
    }
    Ok(group.into_figures())
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
        "| {:<12} | {:<50} | {:>10} | {:>10} | {:<6} | {:>12} | {:>6} | {:<50} | {:<12} |",
        "group", "figure", "median", "p95", "unit", "baseline", "ratio", "baseline is", "verdict"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(14),
        "-".repeat(52),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(8),
        "-".repeat(14),
        "-".repeat(8),
        "-".repeat(52),
        "-".repeat(14)
    );
    for f in figures {
        println!(
            "| {:<12} | {:<50} | {:>10.2} | {:>10.2} | {:<6} | {:>12.2} | {:>6.2} | {:<50} | {:<12} |",
            f.group,
            f.name,
            f.median,
            f.p95,
            f.unit,
            f.baseline_median,
            f.ratio,
            f.baseline,
            f.verdict()
        );
    }
}
