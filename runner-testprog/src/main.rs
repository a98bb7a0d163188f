//! `runner-testprog`: the one program of the test image that holds nothing
//! else (no shell, no busybox). `runner-testprog echo WORDS…` prints its
//! words on one line.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((command, words)) if command == "echo" => {
            println!("{}", words.join(" "));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: runner-testprog echo WORDS…");
            ExitCode::from(2)
        }
    }
}
