//! The object store the mounts and artifacts checks run against.

use std::sync::Arc;

use runner_api::RunnerSecretRef;
use runner_mounts::SecretResolver;
use runner_mounts::StoreSpec;

/// An S3-compatible server the mounts and artifacts checks use: the kit seeds
/// objects there, mounts its prefixes, and reads exported artifacts back.
///
/// [`Conformance::with_object_store`](crate::Conformance::with_object_store)
/// gives `resolver` to the stack it runs the provider under, so the mounts
/// and artifact layers resolve `secret` and `wrong_secret` with it.
/// `wrong_secret` holds the right access key id with a wrong secret key.
#[derive(Clone)]
pub struct ObjectStoreTarget {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// A bucket that exists; checks use unique prefixes in it.
    pub bucket: String,
    /// The region to sign requests for.
    pub region: String,
    /// The secret with valid credentials.
    pub secret: RunnerSecretRef,
    /// A secret with a wrong secret key.
    pub wrong_secret: RunnerSecretRef,
    /// Resolves both secrets.
    pub resolver: Arc<dyn SecretResolver>,
}

impl std::fmt::Debug for ObjectStoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreTarget")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("secret", &self.secret.id)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreTarget {
    /// `s3://<bucket>/<prefix>?endpoint=…&allow_http=true&region=…`.
    pub fn uri(&self, prefix: &str) -> String {
        self.uri_in(&self.bucket, &self.endpoint, prefix)
    }

    /// The URI of `prefix` in another bucket, at another endpoint.
    pub fn uri_in(&self, bucket: &str, endpoint: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={endpoint}&allow_http=true&region={}",
            self.region
        )
    }

    /// The store spec of `prefix` with the valid credentials.
    pub fn spec(&self, prefix: &str) -> StoreSpec {
        StoreSpec {
            uri: self.uri(prefix),
            credentials: Some(self.secret.clone()),
            options: Default::default(),
        }
    }

    /// The `RunnerDestination.artifacts` value of an artifact store under `prefix`.
    pub fn artifacts_config(&self, prefix: &str) -> serde_json::Value {
        serde_json::json!({
            "uri": format!("s3://{}/{prefix}", self.bucket),
            "credentials": { "id": self.secret.id },
            "options": {
                "endpoint": self.endpoint,
                "allow_http": true,
                "region": self.region,
            },
        })
    }
}
