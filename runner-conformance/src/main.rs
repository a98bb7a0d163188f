//! `runner-conformance`: the conformance kit against a destination JSON file.
//!
//! ```text
//! cargo run -p runner-conformance -- --destination dest.json [--report report.json] \
//!     [--capabilities] [-- <libtest filters and options>]
//! ```

use std::process::ExitCode;

use clap::Parser;
use runner_conformance::{Cli, builtin_providers};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    match runner_conformance::run(&cli, &builtin_providers(), &mut stdout) {
        Ok(report) => report.exit_code(),
        Err(message) => {
            eprintln!("runner-conformance: {message}");
            ExitCode::from(2)
        }
    }
}
