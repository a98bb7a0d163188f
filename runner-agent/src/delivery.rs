//! Which agent binary a sandbox gets: the sandbox's platform, the binaries
//! configured per architecture, and their content hashes.
//!
//! A provider learns the sandbox's OS and architecture (docker: the image;
//! ssh: `uname` once per host; Kubernetes: the node) and asks
//! [`AgentBinaries::resolve`] for a binary built for it. There is no
//! fallback to another code path: without a matching binary the session
//! fails up front with `Unsupported`, naming the architecture and the
//! command that builds one.
//!
//! Binaries come from, in order: the destination's `agent_binaries` config
//! key (architecture → path), then the `RUNNER_AGENT_BINARY` environment
//! variable (one path; its ELF header says which architecture it is for).
//! Every candidate's ELF header is read, so a binary configured for the
//! wrong architecture is refused with the architecture it really has.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};
use sha2::{Digest, Sha256};

/// The environment variable naming an agent binary (any architecture; its
/// ELF header is read).
pub const AGENT_BINARY_ENV: &str = "RUNNER_AGENT_BINARY";

/// An operating system and CPU architecture, in Rust's names
/// (`std::env::consts::{OS, ARCH}`): `linux`, `x86_64`, `aarch64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// The OS (`linux`).
    pub os: String,
    /// The architecture (`x86_64`, `aarch64`).
    pub arch: String,
}

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Self {
        Self {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }

    /// From an image's or daemon's `Os` and `Architecture` in Docker's (OCI's)
    /// names: `amd64` → `x86_64`, `arm64` → `aarch64`; others kept as given.
    pub fn from_oci(os: &str, architecture: &str) -> Self {
        let arch = match architecture {
            "amd64" | "x86_64" => "x86_64",
            "arm64" | "aarch64" => "aarch64",
            other => other,
        };
        Self {
            os: os.to_ascii_lowercase(),
            arch: arch.into(),
        }
    }

    /// From `uname -s` and `uname -m` (`Linux`, `x86_64`; `arm64` is read as `aarch64`).
    pub fn from_uname(sysname: &str, machine: &str) -> Self {
        Self::from_oci(sysname.trim(), machine.trim())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

/// One agent binary, checked: its path, the platform its ELF header names,
/// its size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinary {
    /// Where it is on the caller's machine.
    pub path: PathBuf,
    /// The platform it is built for (from its ELF header).
    pub platform: Platform,
    /// Whether it is statically linked (no ELF interpreter): only a static
    /// binary runs in an image without a C library.
    pub is_static: bool,
    /// Its size in bytes.
    pub len: u64,
    /// Hex sha256 of its contents: what the agent's handshake reports and
    /// what delivery names the copy by.
    pub sha256: String,
}

impl AgentBinary {
    /// Reads and checks the binary at `path`: an ELF executable for a known
    /// architecture; its hash is computed once per process for each
    /// (path, size, modification time).
    ///
    /// Errors: `NotFound` when there is no such file, `InvalidRequest` when
    /// it is not a 64-bit little-endian ELF file of a known architecture,
    /// `Provider` for a read failure.
    pub fn inspect(path: &Path) -> RunnerResult<Self> {
        const OP: &str = "agent binary";
        let meta =
            std::fs::metadata(path).map_err(|e| RunnerError::from_io(OP, path.display(), e))?;
        if !meta.is_file() {
            return Err(RunnerError::invalid_request(format!(
                "{OP}: {} is not a regular file",
                path.display()
            )));
        }
        let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
        static SEEN: OnceLock<Mutex<HashMap<CacheKey, AgentBinary>>> = OnceLock::new();
        let seen = SEEN.get_or_init(Mutex::default);
        if let Some(found) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let mut file =
            std::fs::File::open(path).map_err(|e| RunnerError::from_io(OP, path.display(), e))?;
        let (platform, is_static) = read_elf_header(&mut file).map_err(|why| {
            RunnerError::invalid_request(format!(
                "{OP}: {} is not a runner-agent binary: {why}",
                path.display()
            ))
        })?;
        let sha256 = sha256_file(path).map_err(|e| RunnerError::from_io(OP, path.display(), e))?;
        let binary = Self {
            path: path.to_path_buf(),
            platform,
            is_static,
            len: meta.len(),
            sha256,
        };
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, binary.clone());
        Ok(binary)
    }

    /// The file name a delivered copy gets: `runner-agent-<first 16 hex of sha256>`.
    pub fn file_name(&self) -> String {
        format!("runner-agent-{}", &self.sha256[..16.min(self.sha256.len())])
    }

    /// The binary's contents.
    ///
    /// Errors: `Provider` (or `NotFound`) when it cannot be read, or when it
    /// changed since it was inspected (the hash no longer matches).
    pub fn contents(&self) -> RunnerResult<Vec<u8>> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| RunnerError::from_io("agent binary", self.path.display(), e))?;
        if hex::encode(Sha256::digest(&bytes)) != self.sha256 {
            return Err(RunnerError::provider(format!(
                "agent binary: {} changed after it was checked",
                self.path.display()
            )));
        }
        Ok(bytes)
    }
}

impl AgentBinary {
    /// The binary's bytes as a reader that holds one buffer at a time (for
    /// a delivery that streams them), with its length. The hash is checked
    /// as the bytes pass: the read that reaches the end fails when they
    /// differ from what was inspected, so a binary changed since then is
    /// never delivered whole.
    ///
    /// Errors: `Provider` (or `NotFound`) when it cannot be opened.
    pub fn reader(&self) -> RunnerResult<(u64, CheckedReader)> {
        let file = std::fs::File::open(&self.path)
            .map_err(|e| RunnerError::from_io("agent binary", self.path.display(), e))?;
        let len = file
            .metadata()
            .map_err(|e| RunnerError::from_io("agent binary", self.path.display(), e))?
            .len();
        let reader = CheckedReader {
            file,
            hasher: Sha256::new(),
            expected: self.sha256.clone(),
            path: self.path.clone(),
        };
        Ok((len, reader))
    }
}

/// An [`AgentBinary`]'s bytes, checked against its hash at the end (see
/// [`AgentBinary::reader`]).
pub struct CheckedReader {
    file: std::fs::File,
    hasher: Sha256,
    expected: String,
    path: PathBuf,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let found = hex::encode(self.hasher.clone().finalize());
            if found != self.expected {
                return Err(std::io::Error::other(format!(
                    "agent binary {} changed after it was checked",
                    self.path.display()
                )));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

type CacheKey = (PathBuf, u64, Option<SystemTime>);

/// Hex sha256 of the file at `path`, read in 64 KiB pieces.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The ELF identification and program headers (System V ABI, 64-bit
/// little-endian): the machine, and whether a `PT_INTERP` header names a
/// dynamic loader. Reads at most the first 64 KiB.
fn read_elf_header(file: &mut std::fs::File) -> Result<(Platform, bool), String> {
    const PT_INTERP: u32 = 3;
    let mut head = Vec::with_capacity(64 * 1024);
    file.take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(|e| format!("reading its header: {e}"))?;
    if head.len() < 64 || head[..4] != *b"\x7fELF" {
        return Err("no ELF header".into());
    }
    if head[4] != 2 || head[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
    let arch = match u16_at(18) {
        62 => "x86_64",
        183 => "aarch64",
        243 => "riscv64",
        other => {
            return Err(format!(
                "ELF machine {other} is not a supported architecture"
            ));
        }
    };
    let phoff = u64::from_le_bytes(head[32..40].try_into().map_err(|_| "short header")?);
    let phentsize = usize::from(u16_at(54));
    let phnum = usize::from(u16_at(56));
    let mut interp = false;
    for i in 0..phnum {
        let at = usize::try_from(phoff)
            .ok()
            .and_then(|off| off.checked_add(i.checked_mul(phentsize)?))
            .filter(|at| at.saturating_add(4) <= head.len())
            .ok_or("its program headers are not in the first 64 KiB")?;
        let p_type = u32::from_le_bytes(head[at..at + 4].try_into().map_err(|_| "short header")?);
        interp |= p_type == PT_INTERP;
    }
    Ok((
        Platform {
            os: "linux".into(),
            arch: arch.into(),
        },
        !interp,
    ))
}

/// The agent binaries a provider may deliver, by architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentBinaries {
    configured: BTreeMap<String, PathBuf>,
}

impl AgentBinaries {
    /// The binaries a destination's `agent_binaries` config key names
    /// (architecture in Rust's names → path on the caller's machine).
    pub fn new(configured: BTreeMap<String, PathBuf>) -> Self {
        Self { configured }
    }

    /// [`resolve`](Self::resolve), for a sandbox that need not hold a C
    /// library (a container image, a pod): the binary must be statically
    /// linked.
    ///
    /// Errors: `resolve`'s; `InvalidRequest` naming the binary and the
    /// static build command when it is dynamically linked.
    pub fn resolve_static(
        &self,
        operation: &str,
        platform: &Platform,
    ) -> RunnerResult<AgentBinary> {
        let binary = self.resolve(operation, platform)?;
        if !binary.is_static {
            return Err(RunnerError::invalid_request(format!(
                "{operation}: the runner-agent binary {} is dynamically linked; an image need \
                 not hold a C library, so build it static: `RUSTFLAGS=\"-C \
                 target-feature=+crt-static\" cargo build --release --target {} -p runner-agent`",
                binary.path.display(),
                target_triple(&platform.arch)
            )));
        }
        Ok(binary)
    }

    /// The binary for `platform`: the configured one for its architecture,
    /// else the one `RUNNER_AGENT_BINARY` names when it is built for that
    /// architecture. `operation` names the call in errors.
    ///
    /// Errors: `Unsupported` naming the platform and the build command when
    /// no binary is for it (or the OS is not Linux); `InvalidRequest` when
    /// the configured binary is for another architecture or not an agent
    /// binary; `NotFound` when a configured path does not exist.
    pub fn resolve(&self, operation: &str, platform: &Platform) -> RunnerResult<AgentBinary> {
        if platform.os != "linux" {
            return Err(RunnerError::new(
                RunnerErrorKind::Unsupported,
                format!(
                    "{operation}: the sandbox runs {platform}; the runner agent runs only on Linux"
                ),
            ));
        }
        if let Some(path) = self.configured.get(&platform.arch) {
            let binary = AgentBinary::inspect(path)?;
            if binary.platform != *platform {
                return Err(RunnerError::invalid_request(format!(
                    "{operation}: config agent_binaries.{} is {}, built for {}",
                    platform.arch,
                    path.display(),
                    binary.platform
                )));
            }
            return Ok(binary);
        }
        let from_env = std::env::var_os(AGENT_BINARY_ENV)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from);
        if let Some(path) = &from_env {
            let binary = AgentBinary::inspect(path)?;
            if binary.platform == *platform {
                return Ok(binary);
            }
        }
        Err(RunnerError::new(
            RunnerErrorKind::Unsupported,
            format!(
                "{operation}: no runner-agent binary for {platform}{}: build one with \
                 `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release \
                 --target {} -p runner-agent` and name it in the destination's config \
                 agent_binaries.{} (or in {AGENT_BINARY_ENV})",
                match &from_env {
                    Some(path) => format!(
                        " ({AGENT_BINARY_ENV} names {}, for another architecture)",
                        path.display()
                    ),
                    None => String::new(),
                },
                target_triple(&platform.arch),
                platform.arch,
            ),
        ))
    }
}

/// The Rust target to build the agent with for `arch`.
pub fn target_triple(arch: &str) -> String {
    format!("{arch}-unknown-linux-gnu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names_map_to_rust_names() {
        assert_eq!(Platform::from_oci("linux", "amd64").arch, "x86_64");
        assert_eq!(Platform::from_oci("linux", "arm64").arch, "aarch64");
        assert_eq!(
            Platform::from_uname("Linux\n", "x86_64\n"),
            Platform::host()
        );
    }

    #[test]
    fn the_test_binary_is_inspected_as_the_host_platform() {
        let exe = std::env::current_exe().unwrap();
        let binary = AgentBinary::inspect(&exe).unwrap();
        assert_eq!(binary.platform, Platform::host());
        assert_eq!(binary.sha256.len(), 64);
        assert!(binary.file_name().starts_with("runner-agent-"));
    }

    #[test]
    fn a_text_file_is_not_an_agent_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent");
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        let err = AgentBinary::inspect(&path).unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("no ELF header"), "{err}");
    }

    #[test]
    fn another_architecture_is_unsupported_with_the_build_command() {
        let binaries = AgentBinaries::default();
        let platform = Platform::from_oci("linux", "riscv64");
        let err = binaries.resolve("create_session", &platform).unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::Unsupported);
        assert!(err.message().contains("linux/riscv64"), "{err}");
        assert!(
            err.message()
                .contains("--target riscv64-unknown-linux-gnu -p runner-agent"),
            "{err}"
        );
    }

    #[test]
    fn a_configured_binary_for_another_architecture_is_refused() {
        let exe = std::env::current_exe().unwrap();
        let binaries = AgentBinaries::new(BTreeMap::from([("aarch64".to_string(), exe)]));
        let err = binaries
            .resolve("create_session", &Platform::from_oci("linux", "arm64"))
            .unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("built for linux/x86_64"), "{err}");
    }

    #[test]
    fn windows_is_unsupported() {
        let err = AgentBinaries::default()
            .resolve("create_session", &Platform::from_oci("windows", "amd64"))
            .unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::Unsupported);
    }
}
