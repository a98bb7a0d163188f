//! 1 GiB files through the session streams on every provider:
//! `write_file_stream` fed chunk by chunk from a generator, and
//! `read_file_stream` consumed chunk by chunk and hashed. For each phase, its
//! throughput next to the same transfer by the tool a user would use instead
//! (`cp`, `docker cp`, `scp`), and the peak RSS of this process against issue
//! 14's bound.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use bytes::Bytes;
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerFileReadRequest, RunnerFileWriteRequest,
    next_chunk,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::generic::{Target, run_ok};
use crate::stats::{Better, Group, Samples, Spec};
use crate::{Figures, Plan, cli, docker, local, rss, ssh};

/// The size of the file.
const GIB: u64 = 1 << 30;

/// The size of each chunk the generator yields.
const CHUNK: usize = 1 << 20;

/// Issue 14's bound on the peak RSS of this process while a 1 GiB file
/// streams, in MiB.
const RSS_BOUND_MIB: f64 = 64.0;

/// Where each session puts the file, relative to its workspace.
const SESSION_PATH: &str = "bench-1gib.bin";

/// Where the ssh baseline puts its copy on the server.
const SCP_REMOTE: &str = "/tmp/runners-bench-scp-1gib.bin";

/// Where the docker baseline puts its copy in the container.
const DOCKER_CP_REMOTE: &str = "/tmp/cp-1gib.bin";

/// How the peak is measured, printed with the section.
const RSS_METHOD: &str = "peak RSS is VmHWM of /proc/self/status, reset before each phase by \
                          writing \"5\" to /proc/self/clear_refs";

/// The file's contents, generated: `len` bytes in chunks of at most
/// [`CHUNK`], each a buffer of its own (so a provider that kept the chunks
/// would show in the RSS), chunk `i` starting with `i` as 8 little-endian
/// bytes (so chunks in the wrong order change the digest), then the pattern.
struct Contents {
    template: Arc<Vec<u8>>,
    len: u64,
    /// SHA-256 of every byte.
    digest: Vec<u8>,
}

impl Contents {
    /// Contents of `len` bytes, with their digest.
    fn new(len: u64) -> Self {
        let mut contents = Self {
            template: Arc::new(local::pattern(CHUNK)),
            len,
            digest: Vec::new(),
        };
        let mut hasher = Sha256::new();
        for chunk in contents.chunks() {
            hasher.update(&chunk);
        }
        contents.digest = hasher.finalize().to_vec();
        contents
    }

    /// The chunks in order, each made when asked for.
    fn chunks(&self) -> impl Iterator<Item = Bytes> + Send + 'static {
        let (template, len) = (self.template.clone(), self.len);
        (0..len.div_ceil(CHUNK as u64)).map(move |index| {
            let start = index * CHUNK as u64;
            // At most CHUNK, so the cast cannot truncate.
            let size = (len - start).min(CHUNK as u64) as usize;
            let mut chunk = template[..size].to_vec();
            let tag = index.to_le_bytes();
            let tagged = tag.len().min(size);
            chunk[..tagged].copy_from_slice(&tag[..tagged]);
            Bytes::from(chunk)
        })
    }

    /// The contents as the body of a write, yielded chunk by chunk as the
    /// provider polls for them.
    fn stream(&self) -> RunnerByteStream {
        Box::pin(futures_util::stream::iter(self.chunks().map(Ok)))
    }

    /// Writes the contents to a host file, chunk by chunk: the file the
    /// baselines copy.
    async fn write_to(&self, path: &Path) -> anyhow::Result<()> {
        let what = || format!("writing {}", path.display());
        let mut file = tokio::fs::File::create(path).await.with_context(what)?;
        for chunk in self.chunks() {
            file.write_all(&chunk).await.with_context(what)?;
        }
        file.flush().await.with_context(what)
    }

    /// Reads the session's file through `read_file_stream`, hashing each chunk
    /// as it arrives, and checks it holds exactly these contents.
    async fn read_back(&self, session: &Arc<dyn RemoteRunnerSession>) -> anyhow::Result<()> {
        let mut file = session
            .read_file_stream(RunnerFileReadRequest::new(SESSION_PATH))
            .await?;
        ensure!(
            file.size == self.len,
            "the file's size is {}, {} bytes were written",
            file.size,
            self.len
        );
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = next_chunk(&mut file.bytes).await {
            let chunk = chunk?;
            total += chunk.len() as u64;
            hasher.update(&chunk);
        }
        ensure!(
            total == self.len,
            "read {total} bytes, {} were written",
            self.len
        );
        ensure!(
            hasher.finalize().as_slice() == self.digest.as_slice(),
            "the bytes read back differ from the bytes written (SHA-256)"
        );
        Ok(())
    }
}

/// Durations (ms) and peak RSS (MiB) of each repetition of each phase.
#[derive(Default)]
struct Phases {
    write_ms: Samples,
    write_rss: Samples,
    read_ms: Samples,
    read_rss: Samples,
}

/// The baseline of one target: a copy tool (`program args… FROM TO`) and
/// where it puts the file on the runner.
struct CopyTool {
    program: &'static str,
    args: Vec<String>,
    /// The runner's copy as the tool names it (`CONTAINER:/tmp/…`).
    remote: String,
    /// The runner's copy as a command on the runner names it.
    runner_path: String,
    /// What the tool does: to the runner, back.
    labels: [&'static str; 2],
}

/// How a target's [`CopyTool`] follows from its session (docker names the
/// session's container).
type ToolFor<'a> = &'a dyn Fn(&Arc<dyn RemoteRunnerSession>) -> anyhow::Result<CopyTool>;

impl CopyTool {
    /// `reps` copies of `contents` to the runner, then `reps` back, each
    /// direction timed (ms). At most two copies of the file are on disk at a
    /// time: the host file goes once it is uploaded; the runner's copy
    /// (removed through `session`) and the copy back go at the end.
    async fn round_trip(
        &self,
        session: &Arc<dyn RemoteRunnerSession>,
        contents: &Contents,
        dir: &Path,
        reps: usize,
    ) -> anyhow::Result<(Samples, Samples)> {
        let (host, back) = (dir.join("host-1gib.bin"), dir.join("back-1gib.bin"));
        contents.write_to(&host).await?;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (program, remote) = (self.program, self.remote.as_str());
        let up = cli::copy_times(program, &args, &host.to_string_lossy(), remote, reps).await?;
        tokio::fs::remove_file(&host).await?;
        let down = cli::copy_times(program, &args, remote, &back.to_string_lossy(), reps).await?;
        tokio::fs::remove_file(&back).await?;
        run_ok(session, "rm", &["-f", &self.runner_path]).await?;
        Ok((up, down))
    }
}

/// The section: for each of `targets`, the 1 GiB write and read through the
/// streams and their baselines. Host-side files live under `scratch`.
pub(crate) async fn run(plan: &Plan, targets: &[Target], scratch: &Path) -> Figures {
    eprintln!("== streams: 1 GiB files; {RSS_METHOD}");
    let dir = scratch.join("streams");
    tokio::fs::create_dir_all(&dir).await?;
    let contents = Contents::new(GIB);
    let mut group = Group::new("streams");
    let copy = scratch.join("workspaces").join("cp-1gib.bin");
    let copy = copy.to_string_lossy().into_owned();
    for target in targets {
        let provider = target.destination.provider_id.as_str();
        let server = match provider {
            "ssh" => Some(ssh::Server::from_env()?),
            _ => None,
        };
        let tool = |session: &Arc<dyn RemoteRunnerSession>| match (provider, &server) {
            ("unix-local", _) => Ok(CopyTool {
                program: "cp",
                args: Vec::new(),
                remote: copy.clone(),
                runner_path: copy.clone(),
                labels: [
                    "cp host file → workspaces dir",
                    "cp workspaces dir → host file",
                ],
            }),
            ("docker", _) => Ok(CopyTool {
                program: "docker",
                args: vec!["cp".into()],
                remote: format!("{}:{DOCKER_CP_REMOTE}", docker::container_id(session)?),
                runner_path: DOCKER_CP_REMOTE.into(),
                labels: ["docker cp host → container", "docker cp container → host"],
            }),
            ("ssh", Some(server)) => Ok(CopyTool {
                program: "scp",
                args: server.scp_args(),
                remote: server.remote(SCP_REMOTE),
                runner_path: SCP_REMOTE.into(),
                labels: ["scp host → server", "scp server → host"],
            }),
            _ => anyhow::bail!("no copy baseline for the {provider} provider"),
        };
        target_figures(&mut group, target, &contents, plan.gib_reps, &dir, &tool).await?;
    }
    tokio::fs::remove_dir_all(&dir).await?;
    Ok(group.into_figures())
}

/// The four figures of one target: `reps` streamed writes then reads on a
/// session of its own through the layer stack, then the baseline that
/// `tool` names for that session, with its host files in `dir`.
async fn target_figures(
    group: &mut Group,
    target: &Target,
    contents: &Contents,
    reps: usize,
    dir: &Path,
    tool: ToolFor<'_>,
) -> anyhow::Result<()> {
    let label = &target.label;
    eprintln!("== streams: {label}");
    let session = target.stacked().session().await?;
    let measured = async {
        let phases = measure(&session, label, contents, reps).await?;
        let tool = tool(&session)?;
        let (up, down) = tool.round_trip(&session, contents, dir, reps).await?;
        anyhow::Ok((phases, tool.labels, up, down))
    }
    .await;
    session.close().await?;
    let (phases, [up_label, down_label], up, down) = measured?;
    group.add_transfers(
        contents.len,
        [
            (
                &format!("{label}: 1 GiB write_file_stream: throughput"),
                &phases.write_ms,
                &up,
                up_label,
            ),
            (
                &format!("{label}: 1 GiB read_file_stream: throughput"),
                &phases.read_ms,
                &down,
                down_label,
            ),
        ],
    );
    for (phase, peaks) in [
        ("write_file_stream", &phases.write_rss),
        ("read_file_stream", &phases.read_rss),
    ] {
        group.add_bounded(
            Spec {
                name: &format!("{label}: 1 GiB {phase}: peak RSS"),
                unit: "MiB",
                better: Better::Lower,
                baseline: "issue 14's bound (VmHWM, reset per phase)",
            },
            peaks,
            RSS_BOUND_MIB,
        );
    }
    Ok(())
}

/// `reps` writes of `contents` through `write_file_stream`, then `reps`
/// reads through `read_file_stream`, each timed with the peak RSS reset
/// before it. Each write creates the file (the previous one is removed
/// first, so the disk holds one copy, not a copy and its replacement); the
/// file is removed at the end.
async fn measure(
    session: &Arc<dyn RemoteRunnerSession>,
    label: &str,
    contents: &Contents,
    reps: usize,
) -> anyhow::Result<Phases> {
    let mut phases = Phases::default();
    let remove = async || {
        session
            .remove(Path::new(SESSION_PATH), false)
            .await
            .with_context(|| format!("{label}: removing {SESSION_PATH}"))
    };
    for rep in 0..reps {
        if rep > 0 {
            remove().await?;
        }
        let (ms, peak) = phase("write_file_stream", rep, async || {
            let request = RunnerFileWriteRequest::new(SESSION_PATH, Vec::new());
            session
                .write_file_stream(request, contents.stream())
                .await?;
            Ok(())
        })
        .await
        .with_context(|| format!("{label}: write_file_stream of 1 GiB to {SESSION_PATH}"))?;
        phases.write_ms.push(ms);
        phases.write_rss.push(peak);
    }
    for rep in 0..reps {
        let (ms, peak) = phase("read_file_stream", rep, async || {
            contents.read_back(session).await
        })
        .await
        .with_context(|| format!("{label}: read_file_stream of 1 GiB from {SESSION_PATH}"))?;
        phases.read_ms.push(ms);
        phases.read_rss.push(peak);
    }
    remove().await?;
    Ok(phases)
}

/// Runs `op` once with the peak RSS reset before it: its duration (ms) and
/// the peak (MiB), printed with the RSS it started from.
async fn phase(
    name: &str,
    rep: usize,
    op: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let before = rss::current_mib()?;
    rss::reset_peak()?;
    let start = Instant::now();
    op().await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let peak = rss::peak_mib()?;
    eprintln!(
        "    {name} #{}: {ms:.0} ms, peak RSS {peak:.1} MiB (RSS {before:.1} MiB before)",
        rep + 1
    );
    Ok((ms, peak))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(contents: &Contents) -> Vec<u8> {
        contents.chunks().flat_map(|chunk| chunk.to_vec()).collect()
    }

    #[test]
    fn the_generator_yields_exactly_len_bytes_in_bounded_chunks() {
        for len in [0, 5, CHUNK as u64, 2 * CHUNK as u64 + 3] {
            let contents = Contents::new(len);
            let sizes: Vec<usize> = contents.chunks().map(|c| c.len()).collect();
            assert_eq!(sizes.iter().sum::<usize>() as u64, len, "len {len}");
            assert!(sizes.iter().all(|&n| n > 0 && n <= CHUNK), "{sizes:?}");
            assert_eq!(
                contents.digest,
                Sha256::digest(bytes_of(&contents)).to_vec(),
                "len {len}"
            );
        }
    }

    #[test]
    fn chunks_differ_by_their_index_and_repeat_identically() {
        let contents = Contents::new(3 * CHUNK as u64);
        let chunks: Vec<Bytes> = contents.chunks().collect();
        assert_eq!(&chunks[2][..8], &2u64.to_le_bytes());
        assert_ne!(chunks[0], chunks[1]);
        assert_eq!(chunks[1][8..], chunks[2][8..]);
        let again: Vec<Bytes> = contents.chunks().collect();
        assert_eq!(chunks, again);
    }

    #[tokio::test]
    async fn the_stream_and_the_host_file_hold_the_generated_bytes() {
        let contents = Contents::new(CHUNK as u64 + 10);
        let mut stream = contents.stream();
        let mut streamed = Vec::new();
        while let Some(chunk) = next_chunk(&mut stream).await {
            streamed.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(streamed, bytes_of(&contents));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.bin");
        contents.write_to(&path).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), streamed);
    }
}
