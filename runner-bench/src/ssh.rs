//! ssh against the OpenSSH command-line tools on the same server.

use std::sync::Arc;

use runner_api::RunnerDestination;
use runner_ssh::SshProvider;

use crate::cli;
use crate::generic::{Target, round_trip, write_read};
use crate::local::pattern;
use crate::stats::{Better, Group, Spec, time_ms};
use crate::{Figures, Plan};

const FILE_BYTES: usize = 100 << 20;

/// The server `scripts/test.sh` provisions, from its `RUNNER_TEST_SSH_*` variables.
#[derive(Clone)]
pub(crate) struct Server {
    host: String,
    port: String,
    user: String,
    key: String,
    known_hosts: String,
}

impl Server {
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            host: cli::var("RUNNER_TEST_SSH_HOST")?,
            port: cli::var("RUNNER_TEST_SSH_PORT")?,
            user: cli::var("RUNNER_TEST_SSH_USER")?,
            key: cli::var("RUNNER_TEST_SSH_KEY")?,
            known_hosts: cli::var("RUNNER_TEST_SSH_KNOWN_HOSTS")?,
        })
    }

    /// Options every CLI call uses: the same key, known hosts and key exchange
    /// as the provider, and no user config.
    fn options(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            &self.key,
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn login(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// The arguments of an `scp` call, up to its source and target.
    pub(crate) fn scp_args(&self) -> Vec<String> {
        let mut args = self.options();
        args.extend(["-q".into(), "-P".into(), self.port.clone()]);
        args
    }

    /// `path` on the server, as `scp` names it.
    pub(crate) fn remote(&self, path: &str) -> String {
        format!("{}:{path}", self.login())
    }
}

/// An OpenSSH ControlMaster to the server: the fastest the `ssh` CLI gets,
/// one connection shared by every call.
pub(crate) struct Master {
    server: Server,
    /// `ControlPath=<socket>`.
    control: String,
}

impl Master {
    /// Starts a master with its socket at `socket`.
    pub(crate) async fn start(server: Server, socket: &std::path::Path) -> anyhow::Result<Self> {
        let control = format!("ControlPath={}", socket.display());
        let mut args = server.options();
        args.extend(["-p", &server.port, "-o", "ControlMaster=yes", "-o"].map(String::from));
        args.extend([control.clone(), "-fN".into(), server.login()]);
        cli::run("ssh", &strs(&args)).await?;
        Ok(Self { server, control })
    }

    /// The arguments of an `ssh` call through the master, up to the login;
    /// the remote command follows.
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = self.server.options();
        args.extend(["-p".into(), self.server.port.clone(), "-o".into()]);
        args.extend([self.control.clone(), self.server.login()]);
        args
    }

    /// Stops the master (best effort).
    pub(crate) async fn stop(&self) {
        let mut args = self.server.options();
        args.extend(["-p".into(), self.server.port.clone(), "-o".into()]);
        args.extend([self.control.clone(), "-O".into(), "exit".into()]);
        args.push(self.server.login());
        let _ = cli::run("ssh", &strs(&args)).await;
    }
}

/// The arguments as `&str`s, as [`cli`] takes them.
pub(crate) fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The ssh target for the provisioned server.
pub(crate) fn target() -> anyhow::Result<Target> {
    let server = Server::from_env()?;
    let port: u16 = server.port.parse()?;
    Ok(Target {
        label: "ssh".into(),
        provider: Arc::new(SshProvider::default()),
        destination: RunnerDestination {
            id: "bench-ssh".into(),
            provider_id: "ssh".into(),
            config: serde_json::json!({
                "host": server.host,
                "port": port,
                "user": server.user,
                "identity_file": server.key,
                "known_hosts_file": server.known_hosts,
            }),
            default_manifest: Default::default(),
            artifacts: None,
        },
    })
}

/// Command round trip against `ssh` over a ControlMaster and a fresh `ssh`;
/// 100 MiB transfer against `scp`.
pub(crate) async fn run(plan: &Plan, target: &Target, scratch: &std::path::Path) -> Figures {
    let mut group = Group::new("ssh");
    let server = Server::from_env()?;
    let options = server.options();
    let login = server.login();
    let session = target.session().await?;
    let ours = round_trip(&session, plan.round_trips).await?;

    let master = Master::start(server.clone(), &scratch.join("cm")).await?;
    let mut muxed = master.args();
    muxed.push("true".into());
    let muxed = strs(&muxed);
    let over_master = time_ms(plan.round_trips, |_| cli::run("ssh", &muxed)).await;
    master.stop().await;
    let over_master = over_master?;

    let mut fresh: Vec<&str> = options.iter().map(String::as_str).collect();
    fresh.extend([
        "-p",
        &server.port,
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        &login,
        "true",
    ]);
    let fresh_runs = plan.round_trips.min(30);
    let fresh = time_ms(fresh_runs, |_| cli::run("ssh", &fresh)).await?;
    for (baseline, samples) in [
        ("ssh CLI over a ControlMaster", &over_master),
        ("ssh CLI, fresh connection", &fresh),
    ] {
        group.add(
            Spec {
                name: "run_command(true) round trip",
                unit: "ms",
                better: Better::Lower,
                baseline,
            },
            &ours,
            samples,
            0,
        );
    }

    let contents = Arc::new(pattern(FILE_BYTES));
    let (upload, download) =
        write_read(&session, "bench-100mib.bin", &contents, plan.file_reps).await?;
    session.close().await?;
    let local = scratch.join("ssh-100mib.bin");
    tokio::fs::write(&local, contents.as_slice()).await?;
    let (local, back) = (local.to_string_lossy(), format!("{}.back", local.display()));
    let remote = server.remote("/tmp/runners-bench-scp-100mib.bin");
    let scp = server.scp_args();
    let reps = plan.file_reps;
    let scp_up = cli::copy_times("scp", &strs(&scp), &local, &remote, reps).await?;
    let scp_down = cli::copy_times("scp", &strs(&scp), &remote, &back, reps).await?;
    group.add_transfers(
        FILE_BYTES as u64,
        [
            (
                "upload 100 MiB (write_file)",
                &upload,
                &scp_up,
                "scp host → server",
            ),
            (
                "download 100 MiB (read_file)",
                &download,
                &scp_down,
                "scp server → host",
            ),
        ],
    );
    Ok(group.into_figures())
}
