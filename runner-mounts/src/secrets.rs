//! Secrets: resolved on the caller's side, never stored, logged or printed.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use runner_api::{RunnerError, RunnerResult, RunnerSecretRef};

/// The key/value pairs of one secret (`access_key_id`, `secret_access_key`, …).
/// `Debug` prints the keys only.
#[derive(Clone, Default)]
pub struct SecretValues(BTreeMap<String, SecretString>);

impl SecretValues {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), SecretString::from(value.into()));
    }

    /// The value of `key`. Do not log it.
    pub fn expose(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.expose_secret())
    }

    /// The keys present.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "[redacted]")))
            .finish()
    }
}

/// Turns a [`RunnerSecretRef`] into credentials.
#[async_trait]
pub trait SecretResolver: Send + Sync + 'static {
    /// The values of `secret`. Errors: `NotFound` naming the secret id (never a value).
    async fn resolve(&self, secret: &RunnerSecretRef) -> RunnerResult<SecretValues>;
}

/// Resolves secret `id` from environment variables `RUNNER_SECRET_<ID>_<KEY>`:
/// `ID` is the id upper-cased with every non-alphanumeric character replaced by
/// `_`, and `KEY` becomes the lower-case key (`RUNNER_SECRET_R2_RO_ACCESS_KEY_ID`
/// gives key `access_key_id` of secret `r2-ro`).
#[derive(Debug, Clone, Default)]
pub struct EnvSecretResolver {
    vars: Option<Vec<(String, String)>>,
}

impl EnvSecretResolver {
    /// Reads the process environment at each resolution.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads from `vars` instead of the process environment (for tests and
    /// embedding).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: Some(vars.into_iter().collect()),
        }
    }

    /// The variable prefix for secret `id`, such as `RUNNER_SECRET_R2_RO_`.
    pub fn prefix_for(id: &str) -> String {
        let norm: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("RUNNER_SECRET_{norm}_")
    }
}

#[async_trait]
impl SecretResolver for EnvSecretResolver {
    async fn resolve(&self, secret: &RunnerSecretRef) -> RunnerResult<SecretValues> {
        let prefix = Self::prefix_for(&secret.id);
        let vars: Vec<(String, String)> = match &self.vars {
            Some(vars) => vars.clone(),
            None => std::env::vars().collect(),
        };
        let mut values = SecretValues::new();
        for (name, value) in vars {
            if let Some(key) = name.strip_prefix(&prefix)
                && !key.is_empty()
            {
                values.insert(key.to_ascii_lowercase(), value);
            }
        }
        if values.0.is_empty() {
            return Err(RunnerError::not_found(format!(
                "secret {:?}: no environment variables {prefix}*",
                secret.id
            )));
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn env_resolver_reads_prefixed_vars_and_redacts() {
        let resolver = EnvSecretResolver::from_vars([
            (
                "RUNNER_SECRET_R2_RO_ACCESS_KEY_ID".to_string(),
                "AKIA-123".to_string(),
            ),
            (
                "RUNNER_SECRET_R2_RO_SECRET_ACCESS_KEY".to_string(),
                "hunter2".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ]);
        let values = resolver
            .resolve(&RunnerSecretRef { id: "r2-ro".into() })
            .await
            .expect("resolve");
        assert_eq!(values.expose("secret_access_key"), Some("hunter2"));
        let debug = format!("{values:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("AKIA"));
        let missing = resolver
            .resolve(&RunnerSecretRef { id: "nope".into() })
            .await
            .expect_err("missing");
        assert_eq!(missing.kind(), runner_api::RunnerErrorKind::NotFound);
    }
}
