//! `runner-testprog`: the one program of the test image that holds nothing
//! else (no shell, no busybox).
//!
//! - `runner-testprog echo WORDS…` prints its words on one line.
//! - `runner-testprog serve-http PORT BODY` listens on 127.0.0.1:PORT and
//!   answers every request with `HTTP/1.1 200` and BODY, until killed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

const USAGE: &str = "usage: runner-testprog echo WORDS… | runner-testprog serve-http PORT BODY";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((command, words)) if command == "echo" => {
            println!("{}", words.join(" "));
            ExitCode::SUCCESS
        }
        Some((command, [port, body])) if command == "serve-http" => match port.parse::<u16>() {
            Ok(port) => serve_http(port, body),
            Err(_) => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// Answers every connection to 127.0.0.1:`port` with one `200` response
/// carrying `body`, one connection at a time; returns only when it cannot
/// listen.
fn serve_http(port: u16, body: &str) -> ExitCode {
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("runner-testprog serve-http: listening on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        if let Err(e) = answer(stream, body) {
            eprintln!("runner-testprog serve-http: {e}");
        }
    }
    ExitCode::FAILURE
}

/// Reads one request's head (up to its blank line) and writes the response.
fn answer(stream: TcpStream, body: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if line == "\r\n" || line == "\n" {
            break;
        }
        line.clear();
    }
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
