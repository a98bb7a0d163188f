//! Object stores named by URI: parsing, options, credentials, error mapping.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use serde::{Deserialize, Serialize};

use crate::{SecretResolver, SecretValues};
use runner_api::{
    RunnerError, RunnerErrorKind, RunnerMountCapabilities, RunnerMountKind, RunnerResult,
    RunnerSecretRef,
};

/// An object store named by URI, with the id of its credentials and
/// non-secret connection options.
///
/// This is the shape of the destination config's `"artifacts"` key:
///
/// ```json
/// { "uri": "s3://bucket/prefix",
///   "credentials": { "id": "artifact-writer" },
///   "options": { "endpoint": "http://127.0.0.1:9000", "allow_http": true } }
/// ```
///
/// Options may also be given as the URI's query (`s3://b/p?region=eu-west-1`).
/// Secret values never go here: they come from a [`SecretResolver`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// `s3://`, `r2://`, `gs://`, `az://`, `file://` or `memory://` URI.
    pub uri: String,
    /// The secret holding the credentials, if the store needs any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RunnerSecretRef>,
    /// Connection options (see docs/mounts.md); strings, booleans or numbers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
}

impl StoreSpec {
    /// Opens the store with credentials from `resolver` and returns the client
    /// and the key prefix of the URI. Nothing is contacted yet. `what` names
    /// the operation in errors. The client's `Debug` may show credentials:
    /// never log it.
    ///
    /// Errors: `InvalidRequest` (bad URI, unknown option or credential key),
    /// `Unsupported` (a backend not compiled in), the resolver's errors.
    pub async fn open(
        &self,
        what: &str,
        resolver: &dyn SecretResolver,
    ) -> RunnerResult<(Arc<dyn ObjectStore>, StorePath)> {
        let open = open_store(what, self, resolver).await?;
        Ok((open.store, open.prefix))
    }
}

/// The mount kinds whose object-store backend is compiled in: `s3` and `r2`
/// with the `s3` feature, `gcs` with `gcs`, `azure_blob` with `azure`.
/// A provider merges this into its [`RunnerMountCapabilities`].
pub fn store_mount_kinds() -> RunnerMountCapabilities {
    RunnerMountCapabilities {
        s3: cfg!(feature = "s3"),
        r2: cfg!(feature = "s3"),
        gcs: cfg!(feature = "gcs"),
        azure_blob: cfg!(feature = "azure"),
        box_storage: false,
        provider_native: false,
    }
}

/// Whether mounts of `kind` are materialized from an object store.
pub fn is_store_kind(kind: &RunnerMountKind) -> bool {
    matches!(
        kind,
        RunnerMountKind::S3
            | RunnerMountKind::R2
            | RunnerMountKind::Gcs
            | RunnerMountKind::AzureBlob
    )
}

/// A store opened from a [`StoreSpec`]: the client, the key prefix, a display
/// URI, and the secret values to scrub from every message.
#[derive(Clone)]
pub(crate) struct OpenStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: StorePath,
    /// `scheme://bucket/prefix`, without query or secrets.
    pub(crate) display: String,
    pub(crate) redact: Redactor,
}

impl std::fmt::Debug for OpenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's own Debug may print credentials: never show it.
        f.debug_struct("OpenStore")
            .field("uri", &self.display)
            .finish_non_exhaustive()
    }
}

impl OpenStore {
    /// The object key of `rel` (a `/`-separated path under the prefix).
    pub(crate) fn key(&self, rel: &str) -> StorePath {
        rel.split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.clone().join(part))
    }

    /// The display URI of `rel` under the prefix.
    pub(crate) fn url_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.display.trim_end_matches('/'))
    }

    /// A typed error for a store failure during `what`, with secrets scrubbed.
    pub(crate) fn error(&self, what: &str, error: object_store::Error) -> RunnerError {
        store_error(what, &self.redact, error)
    }
}

/// Scrubs secret values out of text before it reaches a message or a log.
#[derive(Clone, Default)]
pub(crate) struct Redactor(SecretValues);

impl Redactor {
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for key in self.0.keys() {
            if let Some(value) = self.0.expose(key)
                && value.len() >= 4
            {
                out = out.replace(value, "[redacted]");
            }
        }
        out
    }
}

/// Maps an object_store error to a kind, with the whole cause chain rendered
/// into the message (scrubbed) and no source attached, so nothing unscrubbed
/// reaches `Debug` or `source()`.
pub(crate) fn store_error(
    what: &str,
    redact: &Redactor,
    error: object_store::Error,
) -> RunnerError {
    use object_store::Error as E;
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        let rendered = inner.to_string();
        if !text.contains(&rendered) {
            text.push_str(": ");
            text.push_str(&rendered);
        }
        cause = inner.source();
    }
    let text = redact.scrub(&text);
    let lower = text.to_ascii_lowercase();
    let kind = match &error {
        E::NotFound { .. } => RunnerErrorKind::NotFound,
        E::Unauthenticated { .. } | E::PermissionDenied { .. } => RunnerErrorKind::PermissionDenied,
        E::AlreadyExists { .. } => RunnerErrorKind::AlreadyExists,
        E::NotSupported { .. } | E::NotImplemented { .. } => RunnerErrorKind::Unsupported,
        // S3's code for a missing bucket, Azure Blob's for a missing container.
        _ if lower.contains("nosuchbucket")
            || lower.contains("no such bucket")
            || lower.contains("containernotfound") =>
        {
            RunnerErrorKind::NotFound
        }
        _ if [
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "accessdenied",
            "403 forbidden",
            "401 unauthorized",
        ]
        .iter()
        .any(|needle| lower.contains(needle)) =>
        {
            RunnerErrorKind::PermissionDenied
        }
        _ if [
            "error sending request",
            "connection refused",
            "connect error",
            "dns error",
            "timed out",
            "tcp connect",
        ]
        .iter()
        .any(|needle| lower.contains(needle)) =>
        {
            RunnerErrorKind::Unavailable
        }
        _ => RunnerErrorKind::Provider,
    };
    RunnerError::new(kind, format!("{what}: {text}"))
}

/// The named in-process stores of `memory://name/...` URIs, shared by every
/// user in this process.
fn memory_store(name: &str) -> Arc<InMemory> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Mutex::default);
    let mut stores = stores
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// A URI split into scheme, authority (bucket, container, store name, or
/// empty for `file://`), key prefix, and query options.
struct ParsedUri {
    scheme: String,
    authority: String,
    prefix: String,
    query: Vec<(String, String)>,
}

fn parse_uri(what: &str, uri: &str) -> RunnerResult<ParsedUri> {
    let bad =
        |why: &str| RunnerError::invalid_request(format!("{what}: bad store URI {uri:?}: {why}"));
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://bucket/prefix"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, query),
        None => (rest, ""),
    };
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        pairs.push((key.to_string(), value.to_string()));
    }
    let (authority, prefix) = match rest.split_once('/') {
        Some((authority, prefix)) => (authority, prefix),
        None => (rest, ""),
    };
    if scheme != "file" && authority.is_empty() {
        return Err(bad("the bucket (or store name) is empty"));
    }
    if scheme == "file" && !authority.is_empty() {
        return Err(bad("expected file:///absolute/path"));
    }
    let prefix = prefix.trim_matches('/').to_string();
    if prefix.split('/').any(|part| part == ".." || part == ".") {
        return Err(bad("`.` and `..` are not allowed in the prefix"));
    }
    Ok(ParsedUri {
        scheme: scheme.to_string(),
        authority: authority.to_string(),
        prefix,
        query: pairs,
    })
}

/// The options of a spec: the URI's query plus `options`, every value as a
/// string; a key given twice is refused.
fn merged_options(
    what: &str,
    parsed: &ParsedUri,
    spec: &StoreSpec,
) -> RunnerResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, value) in &parsed.query {
        out.insert(key.clone(), value.clone());
    }
    for (key, value) in &spec.options {
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(RunnerError::invalid_request(format!(
                    "{what}: option {key:?} must be a string, boolean or number"
                )));
            }
        };
        if out.insert(key.clone(), value).is_some() {
            return Err(RunnerError::invalid_request(format!(
                "{what}: option {key:?} is given both in the URI and in options"
            )));
        }
    }
    Ok(out)
}

/// Refuses an option or credential key that `scheme` does not know, naming
/// it and the keys that are known (`InvalidRequest`).
fn check_store_keys(
    what: &str,
    scheme: &str,
    options: &BTreeMap<String, String>,
    secrets: &SecretValues,
    known_options: &[&str],
    known_secrets: &[&str],
) -> RunnerResult<()> {
    let unknown = |noun: &str, key: &str, known: &[&str]| {
        RunnerError::invalid_request(format!(
            "{what}: unknown {noun} {key:?} for {scheme}:// (known: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    };
    if let Some(key) = options
        .keys()
        .find(|k| !known_options.contains(&k.as_str()))
    {
        return Err(unknown("option", key, known_options));
    }
    if let Some(key) = secrets.keys().find(|k| !known_secrets.contains(k)) {
        return Err(unknown("credential key", key, known_secrets));
    }
    Ok(())
}

/// The store a cloud builder made, or its error as a typed one naming
/// `what`, with every secret value scrubbed.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn built<S: ObjectStore>(
    what: &str,
    secrets: &SecretValues,
    store: object_store::Result<S>,
) -> RunnerResult<Arc<dyn ObjectStore>> {
    let store = store.map_err(|e| store_error(what, &Redactor(secrets.clone()), e))?;
    Ok(Arc::new(store))
}

#[cfg_attr(not(feature = "s3"), allow(dead_code))]
fn parse_bool(what: &str, key: &str, value: &str) -> RunnerResult<bool> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(RunnerError::invalid_request(format!(
            "{what}: option {key:?} must be true or false"
        ))),
    }
}

/// The scheme a mount kind must use (besides `file://` and `memory://`).
fn scheme_of(kind: &RunnerMountKind) -> Option<&'static str> {
    match kind {
        RunnerMountKind::S3 => Some("s3"),
        RunnerMountKind::R2 => Some("r2"),
        RunnerMountKind::Gcs => Some("gs"),
        RunnerMountKind::AzureBlob => Some("az"),
        _ => None,
    }
}

/// Checks that a mount's URI scheme matches its kind, without opening anything.
pub(crate) fn check_mount_uri(what: &str, kind: &RunnerMountKind, uri: &str) -> RunnerResult<()> {
    let parsed = parse_uri(what, uri)?;
    let expected = scheme_of(kind).unwrap_or("");
    if parsed.scheme != expected && parsed.scheme != "file" && parsed.scheme != "memory" {
        return Err(RunnerError::invalid_request(format!(
            "{what}: a {kind:?} mount needs a {expected}:// URI (or file:// / memory://), got {}://",
            parsed.scheme
        )));
    }
    Ok(())
}

/// Opens the store `spec` names, resolving its credentials with `resolver`.
/// Nothing is contacted yet.
///
/// Errors: `InvalidRequest` (bad URI, unknown option or credential key),
/// `Unsupported` (a scheme whose feature is not compiled in), `NotFound` (a
/// `file://` directory that does not exist), the resolver's errors
/// (`NotFound`).
pub(crate) async fn open_store(
    what: &str,
    spec: &StoreSpec,
    resolver: &dyn SecretResolver,
) -> RunnerResult<OpenStore> {
    let parsed = parse_uri(what, &spec.uri)?;
    let options = merged_options(what, &parsed, spec)?;
    let secrets = match &spec.credentials {
        Some(secret) => resolver
            .resolve(secret)
            .await
            .map_err(|e| e.context(format!("{what}: credentials {:?}", secret.id)))?,
        None => SecretValues::new(),
    };
    let redact = Redactor(secrets.clone());
    let display = if parsed.prefix.is_empty() {
        format!("{}://{}", parsed.scheme, parsed.authority)
    } else {
        format!("{}://{}/{}", parsed.scheme, parsed.authority, parsed.prefix)
    };
    let mut prefix = StorePath::from(parsed.prefix.as_str());
    let store: Arc<dyn ObjectStore> = match parsed.scheme.as_str() {
        "memory" => {
            check_store_keys(what, "memory", &options, &secrets, &[], &[])?;
            memory_store(&parsed.authority)
        }
        "file" => {
            check_store_keys(what, "file", &options, &secrets, &[], &[])?;
            let root = format!("/{}", parsed.prefix);
            prefix = StorePath::default();
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&root).map_err(|e| {
                let mut err = store_error(&format!("{what}: directory {root}"), &redact, e);
                if err.kind() == RunnerErrorKind::Provider {
                    err = RunnerError::not_found(err.message().to_string());
                }
                err
            })?;
            Arc::new(fs.with_automatic_cleanup(true))
        }
        "s3" | "r2" => open_s3(what, &parsed, &options, &secrets)?,
        "gs" => open_gcs(what, &parsed, &options, &secrets)?,
        "az" => open_azure(what, &parsed, &options, &secrets)?,
        other => {
            return Err(RunnerError::invalid_request(format!(
                "{what}: unknown store scheme {other}:// (known: s3, r2, gs, az, file, memory)"
            )));
        }
    };
    Ok(OpenStore {
        store,
        prefix,
        display,
        redact,
    })
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn cloud_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(30),
    }
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn cloud_client() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(10))
        .with_timeout(std::time::Duration::from_secs(300))
}

#[cfg(feature = "s3")]
fn open_s3(
    what: &str,
    parsed: &ParsedUri,
    options: &BTreeMap<String, String>,
    secrets: &SecretValues,
) -> RunnerResult<Arc<dyn ObjectStore>> {
    use object_store::aws::AmazonS3Builder;
    let scheme = parsed.scheme.as_str();
    let known_options: &[&str] = if scheme == "r2" {
        &["account_id", "endpoint", "allow_http"]
    } else {
        &["endpoint", "region", "allow_http", "virtual_hosted_style"]
    };
    check_store_keys(
        what,
        scheme,
        options,
        secrets,
        known_options,
        &["access_key_id", "secret_access_key", "session_token"],
    )?;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&parsed.authority)
        .with_retry(cloud_retry())
        .with_client_options(cloud_client());
    if scheme == "r2" {
        let endpoint = match (options.get("endpoint"), options.get("account_id")) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(account)) => format!("https://{account}.r2.cloudflarestorage.com"),
            (None, None) => {
                return Err(RunnerError::invalid_request(format!(
                    "{what}: an r2:// store needs option account_id (or endpoint)"
                )));
            }
        };
        builder = builder.with_endpoint(endpoint).with_region("auto");
        if let Some(value) = options.get("allow_http") {
            builder = builder.with_allow_http(parse_bool(what, "allow_http", value)?);
        }
    } else {
        builder = builder.with_region(options.get("region").map_or("us-east-1", String::as_str));
        if let Some(endpoint) = options.get("endpoint") {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(value) = options.get("allow_http") {
            builder = builder.with_allow_http(parse_bool(what, "allow_http", value)?);
        }
        if let Some(value) = options.get("virtual_hosted_style") {
            builder = builder.with_virtual_hosted_style_request(parse_bool(
                what,
                "virtual_hosted_style",
                value,
            )?);
        }
    }
    match (
        secrets.expose("access_key_id"),
        secrets.expose("secret_access_key"),
    ) {
        (Some(id), Some(key)) => {
            builder = builder.with_access_key_id(id).with_secret_access_key(key);
            if let Some(token) = secrets.expose("session_token") {
                builder = builder.with_token(token);
            }
        }
        (None, None) => builder = builder.with_skip_signature(true),
        _ => {
            return Err(RunnerError::invalid_request(format!(
                "{what}: credentials need both access_key_id and secret_access_key"
            )));
        }
    }
    built(what, secrets, builder.build())
}

#[cfg(not(feature = "s3"))]
fn open_s3(
    what: &str,
    parsed: &ParsedUri,
    _: &BTreeMap<String, String>,
    _: &SecretValues,
) -> RunnerResult<Arc<dyn ObjectStore>> {
    Err(not_compiled(what, &parsed.scheme, "s3"))
}

#[cfg(feature = "gcs")]
fn open_gcs(
    what: &str,
    parsed: &ParsedUri,
    options: &BTreeMap<String, String>,
    secrets: &SecretValues,
) -> RunnerResult<Arc<dyn ObjectStore>> {
    use object_store::gcp::GoogleCloudStorageBuilder;
    check_store_keys(what, "gs", options, secrets, &[], &["service_account_key"])?;
    let mut builder = GoogleCloudStorageBuilder::new()
        .with_bucket_name(&parsed.authority)
        .with_retry(cloud_retry())
        .with_client_options(cloud_client());
    builder = match secrets.expose("service_account_key") {
        Some(key) => builder.with_service_account_key(key),
        None => builder.with_skip_signature(true),
    };
    built(what, secrets, builder.build())
}

#[cfg(not(feature = "gcs"))]
fn open_gcs(
    what: &str,
    parsed: &ParsedUri,
    _: &BTreeMap<String, String>,
    _: &SecretValues,
) -> RunnerResult<Arc<dyn ObjectStore>> {
    Err(not_compiled(what, &parsed.scheme, "gcs"))
}

#[cfg(feature = "azure")]
fn open_azure(
    what: &str,
    parsed: &ParsedUri,
    options: &BTreeMap<String, String>,
    secrets: &SecretValues,
) -> RunnerResult<Arc<dyn ObjectStore>> {
    use object_store::azure::MicrosoftAzureBuilder;
    check_store_keys(
        what,
        "az",
        options,
        secrets,
        &["account", "endpoint", "allow_http"],
        &["access_key"],
    )?;
    let account = options.get("account").ok_or_else(|| {
        RunnerError::invalid_request(format!("{what}: an az:// store needs option account"))
    })?;
    let mut builder = MicrosoftAzureBuilder::new()
        .with_account(account)
        .with_container_name(&parsed.authority)
        .with_retry(cloud_retry())
        .with_client_options(cloud_client());
    if let Some(endpoint) = options.get("endpoint") {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(value) = options.get("allow_http") {
        builder = builder.with_allow_http(parse_bool(what, "allow_http", value)?);
    }
    builder = match secrets.expose("access_key") {
        Some(key) => builder.with_access_key(key),
        None => builder.with_skip_signature(true),
    };
    built(what, secrets, builder.build())
}

#[cfg(not(feature = "azure"))]
fn open_azure(
    what: &str,
    parsed: &ParsedUri,
    _: &BTreeMap<String, String>,
    _: &SecretValues,
) -> RunnerResult<Arc<dyn ObjectStore>> {
    Err(not_compiled(what, &parsed.scheme, "azure"))
}

#[cfg(not(all(feature = "s3", feature = "gcs", feature = "azure")))]
fn not_compiled(what: &str, scheme: &str, feature: &str) -> RunnerError {
    RunnerError::new(
        RunnerErrorKind::Unsupported,
        format!(
            "{what}: {scheme}:// stores need runner-api's `{feature}` feature, which is not compiled in"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_bucket_prefix_and_query() {
        let parsed =
            parse_uri("t", "s3://bucket/a/b/?endpoint=http://x:1&allow_http").expect("parse");
        assert_eq!(
            (parsed.scheme.as_str(), parsed.authority.as_str()),
            ("s3", "bucket")
        );
        assert_eq!(parsed.prefix, "a/b");
        assert_eq!(
            parsed.query[1],
            ("allow_http".to_string(), "true".to_string())
        );
        assert!(parse_uri("t", "s3:///x").is_err());
        assert!(parse_uri("t", "s3://b/../x").is_err());
        assert!(parse_uri("t", "nope").is_err());
    }

    #[test]
    fn kinds_need_their_scheme() {
        assert!(check_mount_uri("m", &RunnerMountKind::S3, "s3://b/p").is_ok());
        assert!(check_mount_uri("m", &RunnerMountKind::S3, "memory://b/p").is_ok());
        let err = check_mount_uri("m", &RunnerMountKind::Gcs, "s3://b").expect_err("mismatch");
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
    }

    #[test]
    fn a_missing_azure_container_is_not_found() {
        let error = object_store::Error::Generic {
            store: "MicrosoftAzure",
            source: "Error performing list request: Server returned non-2xx status code: \
                     404 Not Found: <Error><Code>ContainerNotFound</Code></Error>"
                .into(),
        };
        let err = store_error("mount \"data\"", &Redactor::default(), error);
        assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");
    }

    #[test]
    fn redactor_scrubs_values() {
        let mut values = SecretValues::new();
        values.insert("secret_access_key", "sup3r-s3cret");
        let scrubbed = Redactor(values).scrub("denied for sup3r-s3cret here");
        assert_eq!(scrubbed, "denied for [redacted] here");
    }
}
