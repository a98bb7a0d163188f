//! `runner-agent`: see the crate documentation of `runner_agent`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    runner_agent::cli::run(runner_agent::cli::Cli::parse())
}
