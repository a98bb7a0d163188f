//! `KubernetesConfig`: the destination's settings, parsed once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Toleration;
use runner_api::{RunnerDestination, RunnerResult};
use runner_kit::config::ConfigSchema;
use runner_mounts::StoreSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::LABEL_PREFIX;

/// The workspace directory inside the pod when none is configured.
pub const DEFAULT_WORKSPACE: &str = "/workspace";
/// How long a pod may take to run and its agent to start, by default.
pub const DEFAULT_STARTUP_TIMEOUT_S: u64 = 120;

/// When the kubelet pulls the image (`imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node does not have the image.
    IfNotPresent,
    /// Never pull: the node must have the image.
    Never,
}

impl ImagePullPolicy {
    /// The value the pod spec takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Amounts of cpu, memory and ephemeral storage, as Kubernetes quantities
/// (`"500m"`, `"1"`, `"256Mi"`, `"1Gi"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceAmounts {
    /// CPU (`"500m"`, `"2"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory (`"256Mi"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Ephemeral storage (`"1Gi"`).
    #[serde(
        default,
        rename = "ephemeral-storage",
        skip_serializing_if = "Option::is_none"
    )]
    pub ephemeral_storage: Option<String>,
}

impl ResourceAmounts {
    /// The amounts by their Kubernetes resource names.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("cpu", self.cpu.as_deref()),
            ("memory", self.memory.as_deref()),
            ("ephemeral-storage", self.ephemeral_storage.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
    }
}

/// The main container's resource requests and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// What the scheduler reserves.
    #[serde(default)]
    pub requests: ResourceAmounts,
    /// What the container may use at most.
    #[serde(default)]
    pub limits: ResourceAmounts,
}

/// The access modes a workspace claim may ask for.
pub const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

fn default_access_modes() -> Vec<String> {
    vec!["ReadWriteOnce".to_string()]
}

/// The volume mounted at `workspace_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkspaceVolume {
    /// An emptyDir volume: it goes with the pod.
    EmptyDir {
        /// `"Memory"` (a tmpfs) or `""` (the node's disk, the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        medium: Option<String>,
        /// The most the volume may hold (a quantity, `"1Gi"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_limit: Option<String>,
    },
    /// A PersistentVolumeClaim created for each session and deleted with it.
    Pvc {
        /// The storage the claim requests (a quantity, `"5Gi"`).
        size: String,
        /// The claim's storage class; `None` is the cluster's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storage_class: Option<String>,
        /// The claim's access modes (default `["ReadWriteOnce"]`).
        #[serde(default = "default_access_modes")]
        access_modes: Vec<String>,
    },
}

impl Default for WorkspaceVolume {
    fn default() -> Self {
        Self::EmptyDir {
            medium: None,
            size_limit: None,
        }
    }
}

impl WorkspaceVolume {
    fn check(&self) -> RunnerResult<()> {
        const KEY: &str = "workspace_volume";
        match self {
            Self::EmptyDir { medium, size_limit } => {
                if let Some(medium) = medium
                    && !matches!(medium.as_str(), "" | "Memory")
                {
                    return Err(SCHEMA.bad(
                        KEY,
                        format!("empty_dir.medium {medium:?} is not \"Memory\" or \"\""),
                    ));
                }
                if let Some(limit) = size_limit
                    && !valid_quantity(limit)
                {
                    return Err(SCHEMA.bad(
                        KEY,
                        format!(
                            "empty_dir.size_limit {limit:?} is not a Kubernetes quantity (such \
                             as \"1Gi\")"
                        ),
                    ));
                }
            }
            Self::Pvc {
                size,
                storage_class,
                access_modes,
            } => {
                let above_zero = !size.starts_with('-')
                    && size
                        .split(['e', 'E'])
                        .next()
                        .is_some_and(|m| m.chars().any(|c| ('1'..='9').contains(&c)));
                if !valid_quantity(size) || !above_zero {
                    return Err(SCHEMA.bad(
                        KEY,
                        format!(
                            "pvc.size {size:?} is not a Kubernetes quantity above zero (such as \
                             \"5Gi\")"
                        ),
                    ));
                }
                if let Some(class) = storage_class {
                    check_name("workspace_volume.pvc.storage_class", class)?;
                }
                if access_modes.is_empty() {
                    return Err(SCHEMA.bad(KEY, "pvc.access_modes must not be empty"));
                }
                if let Some(mode) = access_modes
                    .iter()
                    .find(|mode| !ACCESS_MODES.contains(&mode.as_str()))
                {
                    return Err(SCHEMA.bad(
                        KEY,
                        format!("pvc.access_modes: {mode:?} is not one of {ACCESS_MODES:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The largest warm pool a destination may ask for.
pub const MAX_WARM_POOL: usize = 256;

/// A pool of ready pods per destination (`warm_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmPool {
    /// How many ready pods the provider keeps (1 to [`MAX_WARM_POOL`]).
    pub size: usize,
}

/// Settings of a kubernetes destination, from `RunnerDestination.config`.
///
/// Keys (JSON): `image` (required; it must hold a POSIX `sh`, `cat`,
/// `chmod`, `mv`, `mkdir`, `sleep` and `uname` for the bootstrap),
/// `kubeconfig` (a path; default: `kube::Config::infer`, in-cluster or
/// `KUBECONFIG` / `~/.kube/config`), `context`, `namespace` (default: the
/// context's, else `default`), `image_pull_policy` (`"Always"`,
/// `"IfNotPresent"`, `"Never"`), `image_pull_secrets` (secret names),
/// `resources` (`requests` and `limits` of `cpu`, `memory`,
/// `ephemeral-storage`), `node_selector` (object of strings),
/// `tolerations` (Kubernetes tolerations), `service_account`,
/// `runtime_class`, `labels` and `annotations` (objects of strings),
/// `workspace_dir` (default `/workspace`), `workspace_volume` (the volume
/// mounted there, [`WorkspaceVolume`]: `{"empty_dir": {"medium": "Memory"
/// | "", "size_limit": "1Gi"}}`, the default a plain emptyDir, or `{"pvc":
/// {"size": "5Gi", "storage_class": …, "access_modes": ["ReadWriteOnce"]}}`,
/// a claim per session), `env` (object of strings),
/// `run_as_user` and `run_as_group` (numeric ids; a non-zero user sets
/// `runAsNonRoot`), `active_deadline_s`, `startup_timeout_s` (default
/// [`DEFAULT_STARTUP_TIMEOUT_S`]), `agent_binaries` (architecture → path of
/// a static runner-agent on the caller's machine; default empty, then
/// `RUNNER_AGENT_BINARY`), `snapshot_store` (the object store snapshots are
/// kept in, `{"uri": "s3://bucket/prefix", "credentials": {"id": …},
/// "options": {…}}`; without it the sessions take no snapshots),
/// `warm_pool` (`{"size": N}`: N ready pods kept per destination, see
/// [`WarmPool`]; default none). A `null` value is the key's default; any other
/// key is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The image of the pod's one container.
    pub image: String,
    /// The kubeconfig file; `None` infers the cluster from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; `None` is its current context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The namespace of the pods; `None` is the context's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// When the image is pulled; `None` is the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Names of the secrets the kubelet pulls the image with.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Requests and limits of the container.
    #[serde(default)]
    pub resources: Resources,
    /// Node labels the pod must be scheduled on.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// The pod's service account; `None` is the namespace's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The pod's runtime class (`gvisor`, `kata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// Extra pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Absolute workspace directory inside the pod (the workspace volume).
    #[serde(default = "default_workspace")]
    pub workspace_dir: PathBuf,
    /// The volume mounted at `workspace_dir`.
    #[serde(default)]
    pub workspace_volume: WorkspaceVolume,
    /// Environment of every command (a command's own `env` wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The user id the container runs as; `None` is the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// The group id the container runs as; `None` is the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// Seconds the pod may live before Kubernetes ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_s: Option<i64>,
    /// Seconds the pod may take to run and its agent to start.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_s: u64,
    /// The runner-agent binary per architecture (`x86_64`, `aarch64`) → a
    /// path on the caller's machine; an architecture not named takes
    /// `RUNNER_AGENT_BINARY`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_binaries: BTreeMap<String, PathBuf>,
    /// The object store snapshots are kept in (credentials by secret
    /// reference, resolved by the provider's secret resolver); `None`: no
    /// snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_store: Option<StoreSpec>,
    /// Ready pods kept for this destination; `None`: every session starts a
    /// pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
}

fn default_workspace() -> PathBuf {
    PathBuf::from(DEFAULT_WORKSPACE)
}

fn default_startup_timeout() -> u64 {
    DEFAULT_STARTUP_TIMEOUT_S
}

/// What a key takes, for the message of a value that does not parse
/// (`None`: not a key of the config).
fn expected(key: &str) -> Option<&'static str> {
    Some(match key {
        "image" | "kubeconfig" | "context" | "namespace" | "service_account" | "runtime_class"
        | "workspace_dir" => "a string",
        "image_pull_policy" => "\"Always\", \"IfNotPresent\" or \"Never\"",
        "image_pull_secrets" => "an array of secret names",
        "resources" => {
            "an object of `requests` and `limits`, each of `cpu`, `memory`, \
             `ephemeral-storage` quantity strings"
        }
        "node_selector" | "labels" | "annotations" | "env" => "an object of strings",
        "tolerations" => "an array of Kubernetes tolerations",
        "run_as_user" | "run_as_group" => "a whole number id",
        "active_deadline_s" | "startup_timeout_s" => "a whole number of seconds",
        "agent_binaries" => "an object of architecture to path",
        "warm_pool" => "an object {\"size\": N}",
        "workspace_volume" => {
            "{\"empty_dir\": {\"medium\": \"Memory\" or \"\", \"size_limit\": …}} or \
             {\"pvc\": {\"size\": …, \"storage_class\": …, \"access_modes\": […]}}"
        }
        "snapshot_store" => {
            "an object store setting {\"uri\": …, \"credentials\": {\"id\": …}, \"options\": {…}}"
        }
        _ => return None,
    })
}

/// The kubernetes config's keys, for parsing and for messages.
const SCHEMA: ConfigSchema = ConfigSchema {
    provider: "kubernetes",
    expected,
    required: &[("image", "the image of every session's pod")],
    nested: &[
        "resources",
        "tolerations",
        "snapshot_store",
        "workspace_volume",
        "warm_pool",
    ],
};

/// A DNS-1123 name (namespaces, service accounts, secrets, runtime classes):
/// lower-case letters, digits, `-` and `.`, starting and ending with a
/// letter or digit, at most 253 characters.
fn check_name(key: &str, value: &str) -> RunnerResult<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(SCHEMA.bad(
            key,
            format!(
                "{value:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.', \
                 starting and ending with a letter or digit)"
            ),
        ))
    }
}

/// A label key (`[prefix/]name`) or an annotation key.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(|p| check_name("", p).is_ok())
}

/// A label value: at most 63 of letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit (or empty).
fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A Kubernetes quantity: a decimal number (optionally signed, with a
/// fraction or an exponent) and an optional suffix (`m`, `k`, `M`, `G`, `T`,
/// `P`, `E`, `Ki` … `Ei`).
fn valid_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P",
    ];
    let number = SUFFIXES
        .iter()
        .chain(&["E"])
        .find_map(|suffix| text.strip_suffix(suffix))
        .unwrap_or(text);
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (number, None),
    };
    let mantissa = mantissa.strip_prefix(['+', '-']).unwrap_or(mantissa);
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok =
        !(whole.is_empty() && fraction.is_empty()) && digits(whole) && digits(fraction);
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

impl KubernetesConfig {
    /// Parses the config of `destination`.
    ///
    /// Errors: `InvalidRequest` naming the bad key.
    pub fn from_destination(destination: &RunnerDestination) -> RunnerResult<Self> {
        Self::from_value(&destination.config)
    }

    /// Parses a config value (an object; `null` keys take their defaults).
    ///
    /// Errors: `InvalidRequest` naming the bad key.
    pub fn from_value(value: &Value) -> RunnerResult<Self> {
        let mut config: Self = SCHEMA.parse(value)?;
        config.check()?;
        config.workspace_dir = runner_api::normalize_lexically(&config.workspace_dir);
        Ok(config)
    }

    /// The checks beyond the types, one message per key.
    fn check(&self) -> RunnerResult<()> {
        SCHEMA.check_text("image", Some(&self.image))?;
        if self.image.chars().any(char::is_whitespace) {
            return Err(SCHEMA.bad("image", "must not contain whitespace"));
        }
        if let Some(path) = &self.kubeconfig {
            SCHEMA.check_text("kubeconfig", path.to_str())?;
        }
        SCHEMA.check_text("context", self.context.as_deref())?;
        for (key, value) in [
            ("namespace", &self.namespace),
            ("service_account", &self.service_account),
            ("runtime_class", &self.runtime_class),
        ] {
            if let Some(value) = value {
                check_name(key, value)?;
            }
        }
        for secret in &self.image_pull_secrets {
            check_name("image_pull_secrets", secret)?;
        }
        for (which, amounts) in [
            ("requests", &self.resources.requests),
            ("limits", &self.resources.limits),
        ] {
            for (name, value) in amounts.entries() {
                if !valid_quantity(value) {
                    return Err(SCHEMA.bad(
                        "resources",
                        format!(
                            "{which}.{name} {value:?} is not a Kubernetes quantity (such as \
                             \"500m\", \"2\", \"256Mi\", \"1Gi\")"
                        ),
                    ));
                }
            }
        }
        for (key, entries) in [
            ("node_selector", &self.node_selector),
            ("labels", &self.labels),
        ] {
            for (k, v) in entries {
                if !valid_key(k) {
                    return Err(SCHEMA.bad(key, format!("key {k:?} is not a label key")));
                }
                if !valid_label_value(v) {
                    return Err(SCHEMA.bad(
                        key,
                        format!(
                            "entry {k:?}: the value is not a label value (at most 63 letters, \
                             digits, '-', '_', '.')"
                        ),
                    ));
                }
            }
        }
        if let Some(k) = self.annotations.keys().find(|k| !valid_key(k)) {
            return Err(SCHEMA.bad("annotations", format!("key {k:?} is not an annotation key")));
        }
        for (key, entries) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if let Some(reserved) = entries.keys().find(|k| k.starts_with(LABEL_PREFIX)) {
                return Err(SCHEMA.bad(
                    key,
                    format!("{reserved:?} uses the reserved prefix {LABEL_PREFIX:?}"),
                ));
            }
        }
        let workspace = &self.workspace_dir;
        SCHEMA.check_text("workspace_dir", workspace.to_str())?;
        let normal = runner_api::normalize_lexically(workspace);
        if !workspace.is_absolute() || normal == *"/" || normal.starts_with(crate::RUNNER_DIR) {
            return Err(SCHEMA.bad(
                "workspace_dir",
                format!(
                    "must be an absolute directory other than / and outside {}, got {}",
                    crate::RUNNER_DIR,
                    workspace.display()
                ),
            ));
        }
        self.workspace_volume.check()?;
        if let Some(pool) = self.warm_pool
            && !(1..=MAX_WARM_POOL).contains(&pool.size)
        {
            return Err(SCHEMA.bad(
                "warm_pool",
                format!("size {} is not between 1 and {MAX_WARM_POOL}", pool.size),
            ));
        }
        SCHEMA.check_entries("env", &self.env)?;
        for (key, id) in [
            ("run_as_user", self.run_as_user),
            ("run_as_group", self.run_as_group),
        ] {
            if let Some(id) = id
                && !(0..=i64::from(u32::MAX)).contains(&id)
            {
                return Err(SCHEMA.bad(key, format!("{id} is not a user or group id")));
            }
        }
        if let Some(deadline) = self.active_deadline_s
            && deadline <= 0
        {
            return Err(SCHEMA.bad(
                "active_deadline_s",
                format!("{deadline} is not a number of seconds above 0"),
            ));
        }
        if self.startup_timeout_s == 0 {
            return Err(SCHEMA.bad("startup_timeout_s", "0 is not a number of seconds above 0"));
        }
        for (arch, path) in &self.agent_binaries {
            if arch.is_empty() || !path.is_absolute() {
                return Err(SCHEMA.bad(
                    "agent_binaries",
                    format!("entry {arch:?} must name an absolute path"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the container runs as a user other than root (only known
    /// when `run_as_user` says so).
    pub fn non_root(&self) -> bool {
        self.run_as_user.is_some_and(|uid| uid != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerErrorKind;

    fn parse(value: Value) -> RunnerResult<KubernetesConfig> {
        KubernetesConfig::from_value(&value)
    }

    fn refused(value: Value, words: &[&str]) {
        let error = parse(value.clone()).unwrap_err();
        assert_eq!(error.kind(), RunnerErrorKind::InvalidRequest, "{value}");
        for word in words {
            assert!(error.message().contains(word), "{value}: {error}");
        }
    }

    #[test]
    fn defaults_and_every_key() {
        let config = parse(serde_json::json!({"image": "busybox"})).unwrap();
        assert_eq!(config.workspace_dir, PathBuf::from(DEFAULT_WORKSPACE));
        assert_eq!(config.startup_timeout_s, DEFAULT_STARTUP_TIMEOUT_S);
        assert!(!config.non_root());
        assert_eq!(config.workspace_volume, WorkspaceVolume::default());
        let config = parse(serde_json::json!({
            "image": "busybox", "workspace_volume": {"pvc": {"size": "5Gi"}}
        }))
        .unwrap();
        assert_eq!(
            config.workspace_volume,
            WorkspaceVolume::Pvc {
                size: "5Gi".into(),
                storage_class: None,
                access_modes: vec!["ReadWriteOnce".into()],
            }
        );
        let config = parse(serde_json::json!({
            "image": "busybox",
            "workspace_volume": {"empty_dir": {"medium": "Memory", "size_limit": "1Gi"}}
        }))
        .unwrap();
        assert_eq!(
            config.workspace_volume,
            WorkspaceVolume::EmptyDir {
                medium: Some("Memory".into()),
                size_limit: Some("1Gi".into()),
            }
        );
        let config = parse(serde_json::json!({
            "image": "busybox", "kubeconfig": "/k", "context": "c", "namespace": "ns",
            "image_pull_policy": "Never", "image_pull_secrets": ["regcred"],
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                          "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"}},
            "node_selector": {"kubernetes.io/arch": "amd64"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "service_account": "runner", "runtime_class": "gvisor",
            "labels": {"team": "a"}, "annotations": {"example.com/note": "any text"},
            "workspace_dir": "/work/", "env": {"A": "1"}, "run_as_user": 1000,
            "run_as_group": 1000, "active_deadline_s": 3600, "startup_timeout_s": 30,
            "agent_binaries": {"x86_64": "/bin/agent"}, "context": null,
            "snapshot_store": {"uri": "s3://bucket/snapshots", "credentials": {"id": "snap"}},
        }))
        .unwrap();
        assert_eq!(config.workspace_dir, PathBuf::from("/work"));
        assert_eq!(config.image_pull_policy, Some(ImagePullPolicy::Never));
        assert_eq!(config.resources.limits.entries().count(), 3);
        assert_eq!(config.tolerations[0].key.as_deref(), Some("gpu"));
        assert!(config.non_root());
        assert_eq!(config.snapshot_store.unwrap().uri, "s3://bucket/snapshots");
    }

    #[test]
    fn each_bad_key_is_named() {
        refused(serde_json::json!({}), &["`image`", "required"]);
        refused(serde_json::json!({"image": "b", "imag": 1}), &["imag"]);
        refused(serde_json::json!({"image": 3}), &["`image`", "a string"]);
        refused(serde_json::json!({"image": " "}), &["`image`", "empty"]);
        refused(
            serde_json::json!({"image": "b", "namespace": "Not_Ok"}),
            &["`namespace`"],
        );
        refused(
            serde_json::json!({"image": "b", "image_pull_policy": "Sometimes"}),
            &["`image_pull_policy`", "IfNotPresent"],
        );
        refused(
            serde_json::json!({"image": "b", "resources": {"limits": {"gpu": "1"}}}),
            &["`resources`", "gpu"],
        );
        refused(
            serde_json::json!({"image": "b", "resources": {"limits": {"memory": "lots"}}}),
            &["`resources`", "limits.memory"],
        );
        refused(
            serde_json::json!({"image": "b", "node_selector": {"a": 1}}),
            &["`node_selector`", "\"a\""],
        );
        refused(
            serde_json::json!({"image": "b", "labels": {"runners.io/x": "y"}}),
            &["`labels`", "reserved"],
        );
        refused(
            serde_json::json!({"image": "b", "labels": {"a": "has space"}}),
            &["`labels`", "label value"],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_dir": "rel"}),
            &["`workspace_dir`"],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_dir": "/.runner/w"}),
            &["`workspace_dir`"],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_volume": {"empty_dir": {"medium": "Disk"}}}),
            &["`workspace_volume`", "medium", "\"Disk\""],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_volume": {"empty_dir": {"size_limit": "big"}}}),
            &["`workspace_volume`", "size_limit"],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_volume": {"pvc": {"size": "0Gi"}}}),
            &["`workspace_volume`", "pvc.size", "above zero"],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_volume": {"pvc": {}}}),
            &["`workspace_volume`", "size"],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_volume": {"pvc": {"size": "1Gi", "access_modes": ["All"]}}}),
            &["`workspace_volume`", "\"All\""],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_volume": {"pvc": {"size": "1Gi", "storage_class": "Fast SSD"}}}),
            &["storage_class"],
        );
        refused(
            serde_json::json!({"image": "b", "workspace_volume": {"nfs": {}}}),
            &["`workspace_volume`"],
        );
        refused(
            serde_json::json!({"image": "b", "warm_pool": {"size": 0}}),
            &["`warm_pool`", "size 0"],
        );
        refused(
            serde_json::json!({"image": "b", "warm_pool": {"size": 2, "max": 3}}),
            &["`warm_pool`"],
        );
        refused(
            serde_json::json!({"image": "b", "run_as_user": -1}),
            &["`run_as_user`"],
        );
        refused(
            serde_json::json!({"image": "b", "active_deadline_s": 0}),
            &["`active_deadline_s`"],
        );
        refused(
            serde_json::json!({"image": "b", "startup_timeout_s": "soon"}),
            &["`startup_timeout_s`", "seconds"],
        );
        refused(
            serde_json::json!({"image": "b", "tolerations": [{"operator": 3}]}),
            &["`tolerations`"],
        );
        refused(
            serde_json::json!({"image": "b", "agent_binaries": {"x86_64": "rel"}}),
            &["`agent_binaries`"],
        );
        refused(
            serde_json::json!({"image": "b", "snapshot_store": {"url": "s3://b"}}),
            &["`snapshot_store`", "url"],
        );
    }

    #[test]
    fn quantities() {
        for ok in [
            "1", "500m", "0.5", "256Mi", "1Gi", "1e3", "2E", "1.5G", "+1",
        ] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1 Gi", "Mi", "1.2.3", "1e", "--1"] {
            assert!(!valid_quantity(bad), "{bad}");
        }
    }
}
