//! A typical agent episode, scripted: 40 short commands, 30 file reads, 20
//! writes, 5 edits (a read and a write of the whole file) and 2 background
//! commands polled to their end, on each provider through runner-tools'
//! `ToolSet` (the JSON calls an agent framework makes), next to the same
//! episode driven through plain tokio on the host, through the provider's
//! session API directly (what the tools' dispatch and path confinement add)
//! and, for docker and ssh, through the `docker exec` and `ssh` command-line
//! tools.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use runner_api::{
    RemoteRunnerSession, RunnerCommandRequest, RunnerFileReadRequest, RunnerFileWriteRequest,
    RunnerOutputStream, RunnerProcessState,
};
use runner_stack::RunnerRegistry;
use runner_tools::{DEFAULT_FOREGROUND_TIMEOUT_MS, ToolDestination, ToolSet, ToolsConfig};
use serde_json::{Value, json};

use crate::generic::Target;
use crate::ssh::{Master, Server, strs};
use crate::stats::{Better, Group, Samples, Spec};
use crate::{Figures, Plan, cli, docker};

/// The PATH every command of the episode runs with, on every driver, so each
/// finds the same programs (on this host the login PATH puts pyenv's shims
/// first, whose python3 takes ten times as long to start as Debian's).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Source files the episode writes.
const FILES: usize = 20;

/// Bound on waiting for a background command's end.
const BACKGROUND_BOUND: Duration = Duration::from_secs(60);

/// How often the session and CLI drivers look for a background command's end
/// (the tools' `command_output` looks as often while it waits).
const CLI_POLL: Duration = Duration::from_millis(100);

/// How long one `command_output` call of the tools waits for news.
const TOOLS_WAIT_MS: u64 = 5_000;

/// What an operation of the episode is, for the per-kind figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Command,
    Read,
    Write,
    Edit,
    Background,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Command,
        Kind::Read,
        Kind::Write,
        Kind::Edit,
        Kind::Background,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Read => "read_file",
            Kind::Write => "write_file",
            Kind::Edit => "edit (read + write)",
            Kind::Background => "background, polled to exit",
        }
    }
}

/// One step of the episode. Paths are relative to the driver's root;
/// commands run in the episode's directory.
#[derive(Debug)]
enum Op {
    Command(String),
    Read(String),
    Write(String, String),
    Edit {
        path: String,
        from: &'static str,
        to: &'static str,
    },
    Background {
        script: &'static str,
        expect: &'static str,
    },
}

impl Op {
    fn kind(&self) -> Kind {
        match self {
            Op::Command(_) => Kind::Command,
            Op::Read(_) => Kind::Read,
            Op::Write(..) => Kind::Write,
            Op::Edit { .. } => Kind::Edit,
            Op::Background { .. } => Kind::Background,
        }
    }
}

/// The line every edit changes, and what it becomes.
const EDIT_FROM: &str = "    # TODO: handle negative x\n";
const EDIT_TO: &str = "    if x < 0:\n        raise ValueError(x)\n";

/// The episode in directory `dir` under the root: with `python3` commands
/// when the runner has python3, busybox-safe ones (awk, sed) otherwise.
struct Episode {
    dir: String,
    ops: Vec<Op>,
}

impl Episode {
    fn new(dir: &str, python: bool) -> Self {
        let mut ops = Vec::new();
        let mut commands = 0..;
        let mut next_command =
            |file| Op::Command(command(commands.next().unwrap_or(0), file, python));
        let path = |file| format!("{dir}/{}", module_path(file));
        for file in 0..FILES {
            ops.push(Op::Write(path(file), module(file)));
            ops.push(next_command(file));
            ops.push(Op::Read(path(file)));
            ops.push(next_command(file));
            if file % 2 == 1 {
                ops.push(Op::Read(path(file - 1)));
            }
            if file % 4 == 3 {
                ops.push(Op::Edit {
                    path: path(file - 2),
                    from: EDIT_FROM,
                    to: EDIT_TO,
                });
            }
            if file == FILES / 2 - 1 || file == FILES - 1 {
                let (script, expect) = background(file == FILES - 1, python);
                ops.push(Op::Background { script, expect });
            }
        }
        Self {
            dir: dir.to_string(),
            ops,
        }
    }
}

fn module_path(file: usize) -> String {
    format!("src/mod_{file:02}.py")
}

fn module(file: usize) -> String {
    format!(
        "\"\"\"Module {file} of the episode's project.\"\"\"\n\n\n\
         def f_{file}(x):\n{EDIT_FROM}    return x + {file}\n\n\n\
         if __name__ == \"__main__\":\n    print(f_{file}({file}))\n"
    )
}

/// The `n`th short command, about `file` (the latest written).
fn command(n: usize, file: usize, python: bool) -> String {
    let module = module_path(file);
    match (n % 8, python) {
        (0, _) => "ls -la src".into(),
        (1, _) => format!("cat {module}"),
        (2, _) => "grep -rn 'def f_' src".into(),
        (3, true) => "python3 -c 'print(sum(x * x for x in range(10000)))'".into(),
        (3, false) => {
            "awk 'BEGIN { s = 0; for (x = 0; x < 10000; x++) s += x * x; print s }'".into()
        }
        (4, _) => "wc -l src/*.py".into(),
        (5, _) => "grep -rn TODO src | wc -l".into(),
        (6, _) => "find . -name '*.py' | sort".into(),
        (_, true) => format!("python3 {module}"),
        (_, false) => format!("sed -n '/^def /p' {module}"),
    }
}

/// A background command (a test-runner-like loop, then a python one) and
/// the line its output ends with.
fn background(second: bool, python: bool) -> (&'static str, &'static str) {
    match (second, python) {
        (false, _) => (
            "for i in 1 2 3 4 5; do echo \"step $i\"; sleep 0.1; done",
            "step 5",
        ),
        (true, true) => (
            "python3 -u -c 'import time\nfor i in range(3):\n    print(\"tick\", i)\n    time.sleep(0.2)'",
            "tick 2",
        ),
        (true, false) => (
            "for i in 0 1 2; do echo \"tick $i\"; sleep 0.2; done",
            "tick 2",
        ),
    }
}

/// Latencies of the episodes run on one driver.
#[derive(Default)]
struct Timings {
    /// Wall time of each whole episode (ms).
    total: Samples,
    /// Latency of each operation (ms), by kind.
    kinds: BTreeMap<Kind, Samples>,
}

/// A POSIX shell on the runner reached through a command-line tool: `docker
/// exec C sh -c SCRIPT`, or `ssh … LOGIN SCRIPT` (the login shell runs it).
struct RemoteShell {
    program: &'static str,
    /// The arguments before the script, without and with standard input.
    args: Vec<String>,
    stdin_args: Vec<String>,
    /// The directory the episode's paths are relative to.
    root: String,
}

impl RemoteShell {
    fn docker(container: &str, root: &str) -> Self {
        let args = ["exec", container, "sh", "-c"].map(String::from).to_vec();
        let stdin_args = ["exec", "-i", container, "sh", "-c"]
            .map(String::from)
            .to_vec();
        Self {
            program: "docker",
            args,
            stdin_args,
            root: root.to_string(),
        }
    }

    fn ssh(master: &Master, root: &str) -> Self {
        Self {
            program: "ssh",
            args: master.args(),
            stdin_args: master.args(),
            root: root.to_string(),
        }
    }

    /// `path` under the root, quoted for the shell.
    fn path(&self, path: &str) -> String {
        quote(&format!("{}/{path}", self.root))
    }

    /// A script that runs `script` in `dir` with the episode's PATH.
    fn in_dir(&self, dir: &str, script: &str) -> String {
        format!(
            "cd {} || exit 1; export PATH={PATH}; {script}",
            self.path(dir)
        )
    }

    /// Runs `script`; fails unless it exits with 0.
    async fn run(&self, script: &str, stdin: Option<&[u8]>) -> anyhow::Result<Output> {
        let mut args = if stdin.is_some() {
            self.stdin_args.clone()
        } else {
            self.args.clone()
        };
        args.push(script.to_string());
        cli::output(self.program, &strs(&args), stdin).await
    }

    /// Runs `script` and returns its output whatever its exit status.
    async fn attempt(&self, script: &str) -> anyhow::Result<Output> {
        let mut args = self.args.clone();
        args.push(script.to_string());
        cli::status_output(self.program, &strs(&args), None).await
    }
}

/// `text` in single quotes for a POSIX shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// How the episode's operations reach the runner.
enum Driver<'a> {
    /// runner-tools' JSON calls on a tool set with one destination.
    Tools(&'a ToolSet),
    /// The same provider's session, called directly (no path confinement).
    Session(&'a dyn RemoteRunnerSession),
    /// tokio's process and file APIs under a host directory.
    Host(&'a Path),
    /// A shell reached through `docker exec` or `ssh`.
    Cli(&'a RemoteShell),
}

impl Driver<'_> {
    /// Runs `script` with `sh -c` in `dir`; fails unless it exits with 0.
    async fn command(&self, dir: &str, script: &str) -> anyhow::Result<()> {
        match self {
            Driver::Tools(tools) => {
                let result = tools
                    .call(
                        "run_command",
                        json!({ "command": script, "cwd": dir, "env": { "PATH": PATH } }),
                    )
                    .await?;
                ensure!(
                    result["exit_code"] == 0,
                    "exit {}, stderr {}",
                    result["exit_code"],
                    result["stderr"]
                );
            }
            Driver::Session(session) => {
                let result = session
                    .run_command(session_request(*session, dir, script))
                    .await?;
                ensure!(
                    result.exit_code == Some(0),
                    "exit {:?}, stderr {}",
                    result.exit_code,
                    result.stderr
                );
            }
            Driver::Host(root) => {
                let output = tokio::process::Command::new("sh")
                    .args(["-c", script])
                    .current_dir(root.join(dir))
                    .env("PATH", PATH)
                    .stdin(Stdio::null())
                    .output()
                    .await?;
                ensure!(
                    output.status.success(),
                    "{}, stderr {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Driver::Cli(shell) => {
                shell.run(&shell.in_dir(dir, script), None).await?;
            }
        }
        Ok(())
    }

    async fn read(&self, path: &str) -> anyhow::Result<String> {
        Ok(match self {
            Driver::Tools(tools) => {
                let result = tools.call("read_file", json!({ "path": path })).await?;
                text(&result, "content")?
            }
            Driver::Session(session) => {
                let request = RunnerFileReadRequest::new(session.workspace_root().join(path));
                String::from_utf8(session.read_file(request).await?.contents)?
            }
            Driver::Host(root) => tokio::fs::read_to_string(root.join(path)).await?,
            Driver::Cli(shell) => {
                let output = shell
                    .run(&format!("cat -- {}", shell.path(path)), None)
                    .await?;
                String::from_utf8(output.stdout)?
            }
        })
    }

    async fn write(&self, path: &str, contents: &str) -> anyhow::Result<()> {
        match self {
            Driver::Tools(tools) => {
                tools
                    .call("write_file", json!({ "path": path, "content": contents }))
                    .await?;
            }
            Driver::Session(session) => {
                let path = session.workspace_root().join(path);
                session
                    .write_file(RunnerFileWriteRequest::new(path, contents))
                    .await?;
            }
            Driver::Host(root) => {
                let path = root.join(path);
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::write(path, contents).await?;
            }
            Driver::Cli(shell) => {
                let (parent, _) = path.rsplit_once('/').unwrap_or((".", path));
                let script = format!(
                    "mkdir -p -- {} && cat > {}",
                    shell.path(parent),
                    shell.path(path)
                );
                shell.run(&script, Some(contents.as_bytes())).await?;
            }
        }
        Ok(())
    }

    /// Starts `script` in `dir` in the background and polls it to its end;
    /// returns its output. `n` numbers the episode's background commands.
    async fn background(&self, dir: &str, n: usize, script: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + BACKGROUND_BOUND;
        match self {
            Driver::Tools(tools) => {
                let started = tools
                    .call(
                        "run_command",
                        json!({
                            "command": script, "cwd": dir, "env": { "PATH": PATH },
                            "run_in_background": true,
                        }),
                    )
                    .await?;
                let id = text(&started, "command_id")?;
                let mut after_seq = started["next_after_seq"].as_u64().unwrap_or(0);
                let mut stdout = String::new();
                loop {
                    let view = tools
                        .call(
                            "command_output",
                            json!({ "command_id": id, "after_seq": after_seq, "wait_ms": TOOLS_WAIT_MS }),
                        )
                        .await?;
                    stdout.push_str(&text(&view, "stdout")?);
                    after_seq = view["next_after_seq"]
                        .as_u64()
                        .context("command_output returned no next_after_seq")?;
                    if view["state"] == "exited" {
                        let code = &view["status"]["exit_code"];
                        ensure!(*code == 0, "exit {code}, stderr {}", view["stderr"]);
                        return Ok(stdout);
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "not finished within {BACKGROUND_BOUND:?}"
                    );
                }
            }
            Driver::Session(session) => {
                let request = session_request(*session, dir, script);
                let id = request.command_id.clone();
                session.start_command(request).await?;
                let mut after_seq = 0;
                let mut stdout = Vec::new();
                loop {
                    let output = session.command_output(&id, after_seq).await?;
                    for chunk in &output.chunks {
                        if chunk.stream == RunnerOutputStream::Stdout {
                            stdout.extend_from_slice(&chunk.bytes);
                        }
                    }
                    after_seq = output.next_after_seq;
                    if output.state == RunnerProcessState::Exited {
                        let code = output.status.and_then(|s| s.exit_code);
                        ensure!(code == Some(0), "exit {code:?}, stderr {}", output.stderr);
                        return Ok(String::from_utf8(stdout)?);
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "not finished within {BACKGROUND_BOUND:?}"
                    );
                    tokio::time::sleep(CLI_POLL).await;
                }
            }
            Driver::Host(root) => {
                let child = tokio::process::Command::new("sh")
                    .args(["-c", script])
                    .current_dir(root.join(dir))
                    .env("PATH", PATH)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                let output = child.wait_with_output().await?;
                ensure!(output.status.success(), "{}", output.status);
                Ok(String::from_utf8(output.stdout)?)
            }
            Driver::Cli(shell) => {
                let (log, exit) = (format!(".bg-{n}.log"), format!(".bg-{n}.exit"));
                let start = format!(
                    "( ( {script}\n) > {log} 2>&1; echo $? > {exit} ) < /dev/null > /dev/null 2>&1 &"
                );
                shell.run(&shell.in_dir(dir, &start), None).await?;
                let poll = shell.in_dir(dir, &format!("test -f {exit} && cat {exit} {log}"));
                loop {
                    let output = shell.attempt(&poll).await?;
                    if output.status.success() {
                        let text = String::from_utf8(output.stdout)?;
                        let (code, log) = text.split_once('\n').unwrap_or((&text, ""));
                        ensure!(code == "0", "exit {code}");
                        return Ok(log.to_string());
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "not finished within {BACKGROUND_BOUND:?}"
                    );
                    tokio::time::sleep(CLI_POLL).await;
                }
            }
        }
    }
}

/// `script` in `dir` under the session's workspace, with the episode's PATH
/// and the tools' default timeout.
fn session_request(
    session: &dyn RemoteRunnerSession,
    dir: &str,
    script: &str,
) -> RunnerCommandRequest {
    let id = format!("episode-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    RunnerCommandRequest::shell(id, script)
        .with_cwd(session.workspace_root().join(dir))
        .with_env("PATH", PATH)
        .with_timeout_ms(DEFAULT_FOREGROUND_TIMEOUT_MS)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The string `field` of a tool's JSON result.
fn text(result: &Value, field: &str) -> anyhow::Result<String> {
    result[field]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("the tool's result has no {field:?} string: {result}"))
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

/// Runs `episode` on `driver` once, adding its latencies to `timings`.
async fn run_episode(
    driver: &Driver<'_>,
    episode: &Episode,
    timings: &mut Timings,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut background = 0;
    for op in &episode.ops {
        let began = Instant::now();
        let done = async {
            match op {
                Op::Command(script) => driver.command(&episode.dir, script).await,
                Op::Read(path) => {
                    let text = driver.read(path).await?;
                    ensure!(text.starts_with("\"\"\"Module"), "read {text:?}");
                    Ok(())
                }
                Op::Write(path, contents) => driver.write(path, contents).await,
                Op::Edit { path, from, to } => {
                    let text = driver.read(path).await?;
                    ensure!(text.contains(from), "{from:?} is not in {text:?}");
                    driver.write(path, &text.replacen(from, to, 1)).await
                }
                Op::Background { script, expect } => {
                    background += 1;
                    let output = driver.background(&episode.dir, background, script).await?;
                    ensure!(output.contains(expect), "{expect:?} is not in {output:?}");
                    Ok(())
                }
            }
        };
        done.await.with_context(|| format!("episode step {op:?}"))?;
        timings
            .kinds
            .entry(op.kind())
            .or_default()
            .push(ms(began.elapsed()));
    }
    timings.total.push(ms(start.elapsed()));
    Ok(())
}

/// `plan.episode_reps` episodes on `driver`, each in a directory of its own.
async fn repeat(plan: &Plan, driver: &Driver<'_>, python: bool) -> anyhow::Result<Timings> {
    let mut timings = Timings::default();
    for rep in 0..plan.episode_reps {
        let episode = Episode::new(&format!("episode-{rep}"), python);
        run_episode(driver, &episode, &mut timings).await?;
    }
    Ok(timings)
}

/// A tool set serving `target`'s destination alone.
async fn toolset(target: &Target) -> anyhow::Result<ToolSet> {
    let mut registry = RunnerRegistry::new();
    registry.register(target.provider.clone())?;
    let config = ToolsConfig {
        destinations: vec![ToolDestination {
            destination: target.destination.clone(),
            workspace: None,
            read_roots: Vec::new(),
        }],
    };
    Ok(ToolSet::new(registry, config).await?)
}

/// Whether the runner behind `tools` has python3 on the episode's PATH (this
/// also opens the session, before anything is timed).
async fn has_python(tools: &ToolSet) -> anyhow::Result<bool> {
    let probe = "command -v python3 >/dev/null 2>&1 && echo yes || echo no";
    let result = tools
        .call(
            "run_command",
            json!({ "command": probe, "env": { "PATH": PATH } }),
        )
        .await?;
    Ok(text(&result, "stdout")?.trim() == "yes")
}

/// The episode on a session of `target` called directly: what runner-tools'
/// JSON dispatch and path confinement add on top.
async fn session_baseline(plan: &Plan, target: &Target, python: bool) -> anyhow::Result<Timings> {
    let session = target.session().await?;
    let timings = repeat(plan, &Driver::Session(session.as_ref()), python).await;
    session.close().await?;
    timings
}

/// The episode on `target`'s runner through its command-line tool, when it
/// has one: `docker exec` in a container of the same image started with
/// `docker run`, or `ssh` over a ControlMaster to the same server.
async fn cli_baseline(
    plan: &Plan,
    target: &Target,
    scratch: &Path,
    python: bool,
) -> anyhow::Result<Option<(&'static str, Timings)>> {
    match target.destination.provider_id.as_str() {
        "docker" => {
            let container = docker::cli_container(&docker::target_image(target)?).await?;
            let shell = RemoteShell::docker(&container, "/tmp/runners-bench-episode");
            let timings = repeat(plan, &Driver::Cli(&shell), python).await;
            docker::remove_cli_container(&container).await?;
            Ok(Some(("docker exec CLI", timings?)))
        }
        "ssh" => {
            let master = Master::start(Server::from_env()?, &scratch.join("cm-episode")).await?;
            let root = format!("/tmp/runners-bench-episode-{}", std::process::id());
            let shell = RemoteShell::ssh(&master, &root);
            let timings = repeat(plan, &Driver::Cli(&shell), python).await;
            let removed = shell
                .run(&format!("rm -rf -- {}", quote(&root)), None)
                .await;
            master.stop().await;
            removed?;
            Ok(Some(("ssh CLI over a ControlMaster", timings?)))
        }
        _ => Ok(None),
    }
}

/// The whole episode and each kind of operation of `ours` against `base`.
fn add_figures(group: &mut Group, label: &str, ours: &Timings, base: &Timings, baseline: &str) {
    let operations = ours.kinds.values().map(|s| s.0.len()).sum::<usize>() / ours.total.0.len();
    group.add(
        Spec {
            name: &format!("{label}: whole episode ({operations} operations)"),
            unit: "ms",
            better: Better::Lower,
            baseline,
        },
        &ours.total,
        &base.total,
        0,
    );
    let none = Samples::default();
    for kind in Kind::ALL {
        group.add(
            Spec {
                name: &format!("{label}: {}", kind.label()),
                unit: "ms",
                better: Better::Lower,
                baseline,
            },
            ours.kinds.get(&kind).unwrap_or(&none),
            base.kinds.get(&kind).unwrap_or(&none),
            0,
        );
    }
}

/// The episode on each of `targets` through the tools, against plain tokio
/// on the host and, for docker and ssh, their command-line tool.
pub(crate) async fn run(plan: &Plan, targets: &[Target], scratch: &Path) -> Figures {
    let mut group = Group::new("episode");
    // The host runs the episode once per python3 variant its targets need.
    let mut host: BTreeMap<bool, Timings> = BTreeMap::new();
    for target in targets {
        eprintln!("== episode: {}", target.label);
        let tools = toolset(target).await?;
        let ours = async {
            let python = has_python(&tools).await?;
            Ok::<_, anyhow::Error>((python, repeat(plan, &Driver::Tools(&tools), python).await?))
        }
        .await;
        let closed = tools.close().await;
        let (python, ours) = ours.with_context(|| format!("the episode on {}", target.label))?;
        closed?;
        if let Entry::Vacant(slot) = host.entry(python) {
            let root = scratch.join(format!("episode-host-{python}"));
            tokio::fs::create_dir_all(&root).await?;
            slot.insert(repeat(plan, &Driver::Host(&root), python).await?);
        }
        let label = if python {
            target.label.clone()
        } else {
            eprintln!(
                "  (no python3 on {}: awk and sed stand in for it)",
                target.label
            );
            format!("{} (no python3)", target.label)
        };
        if let Some(base) = host.get(&python) {
            add_figures(&mut group, &label, &ours, base, "plain tokio on the host");
        }
        let direct = session_baseline(plan, target, python)
            .await
            .with_context(|| format!("the episode on a {} session", target.label))?;
        add_figures(
            &mut group,
            &label,
            &ours,
            &direct,
            "the session API directly",
        );
        let cli = cli_baseline(plan, target, scratch, python)
            .await
            .with_context(|| format!("the CLI episode on {}", target.label))?;
        if let Some((baseline, base)) = cli {
            add_figures(&mut group, &label, &ours, &base, baseline);
        }
    }
    Ok(group.into_figures())
}

#[cfg(test)]
mod tests {
    use super::{Episode, Kind, Op};

    #[test]
    fn the_episode_has_the_documented_mix() {
        for python in [true, false] {
            let episode = Episode::new("e", python);
            let counts: Vec<usize> = Kind::ALL
                .iter()
                .map(|&kind| episode.ops.iter().filter(|op| op.kind() == kind).count())
                .collect();
            assert_eq!(counts, [40, 30, 20, 5, 2], "python3: {python}");
            let uses_python = episode.ops.iter().any(|op| match op {
                Op::Command(script) => script.contains("python3"),
                Op::Background { script, .. } => script.contains("python3"),
                _ => false,
            });
            assert_eq!(uses_python, python);
        }
    }

    #[test]
    fn every_edit_finds_its_line_once() {
        let episode = Episode::new("e", true);
        let mut edited = Vec::new();
        for op in &episode.ops {
            if let Op::Edit { path, .. } = op {
                assert!(!edited.contains(path), "{path} is edited twice");
                edited.push(path.clone());
            }
        }
        assert_eq!(edited.len(), 5);
    }
}
