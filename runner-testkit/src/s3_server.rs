//! `S3TestServer`: an in-process S3-compatible server (s3s-fs) on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use runner_api::RunnerSecretRef;
use runner_mounts::EnvSecretResolver;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

use crate::ObjectStoreTarget;

/// The access key id of the test server.
pub const S3_TEST_ACCESS_KEY_ID: &str = "conformance-access-key";
/// The secret key of the test server.
pub const S3_TEST_SECRET_ACCESS_KEY: &str = "conformance-secret-0123456789";
/// The bucket the server starts with.
pub const S3_TEST_BUCKET: &str = "conformance";
/// The id of the secret with the server's credentials.
pub const S3_TEST_SECRET_ID: &str = "conformance-s3";
/// The id of a secret with a wrong secret key.
pub const S3_TEST_WRONG_SECRET_ID: &str = "conformance-bad-s3";

/// An S3-compatible server on `127.0.0.1:<free port>`, storing objects in a
/// temporary directory, with fixed test credentials. It runs on its own thread
/// and runtime, so it serves whatever runtime the tests use; dropping it stops
/// the server and removes its files.
///
/// ```no_run
/// let server = runner_testkit::S3TestServer::start().expect("start the S3 test server");
/// let target = server.target(); // for Conformance::with_object_store
/// ```
pub struct S3TestServer {
    addr: SocketAddr,
    root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for S3TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3TestServer")
            .field("addr", &self.addr)
            .field("root", &self.root.path())
            .finish_non_exhaustive()
    }
}

impl S3TestServer {
    /// Starts the server with bucket [`S3_TEST_BUCKET`].
    pub fn start() -> std::io::Result<Self> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join(S3_TEST_BUCKET))?;
        let fs = s3s_fs::FileSystem::new(root.path())
            .map_err(|e| std::io::Error::other(format!("s3s-fs: {e:?}")))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(
            S3_TEST_ACCESS_KEY_ID,
            S3_TEST_SECRET_ACCESS_KEY,
        ));
        let service = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("s3-test-server")
            .build()?;
        let thread = std::thread::Builder::new()
            .name("s3-test-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let http = ConnBuilder::new(TokioExecutor::new());
                    loop {
                        let socket = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        let conn = http
                            .serve_connection(TokioIo::new(socket), service.clone())
                            .into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                });
                runtime.shutdown_background();
            })?;
        Ok(Self {
            addr,
            root,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates another bucket.
    pub fn create_bucket(&self, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.root.path().join(name))
    }

    /// A resolver for [`S3_TEST_SECRET_ID`] (the server's credentials) and
    /// [`S3_TEST_WRONG_SECRET_ID`] (a wrong secret key).
    pub fn resolver(&self) -> Arc<EnvSecretResolver> {
        let var = |id: &str, key: &str| format!("{}{key}", EnvSecretResolver::prefix_for(id));
        Arc::new(EnvSecretResolver::from_vars([
            (
                var(S3_TEST_SECRET_ID, "ACCESS_KEY_ID"),
                S3_TEST_ACCESS_KEY_ID.to_string(),
            ),
            (
                var(S3_TEST_SECRET_ID, "SECRET_ACCESS_KEY"),
                S3_TEST_SECRET_ACCESS_KEY.to_string(),
            ),
            (
                var(S3_TEST_WRONG_SECRET_ID, "ACCESS_KEY_ID"),
                S3_TEST_ACCESS_KEY_ID.to_string(),
            ),
            (
                var(S3_TEST_WRONG_SECRET_ID, "SECRET_ACCESS_KEY"),
                "wrong-secret-9876543210".to_string(),
            ),
        ]))
    }

    /// The target for [`Conformance::with_object_store`](crate::Conformance::with_object_store).
    pub fn target(&self) -> ObjectStoreTarget {
        ObjectStoreTarget {
            endpoint: self.endpoint(),
            bucket: S3_TEST_BUCKET.to_string(),
            region: "us-east-1".to_string(),
            secret: RunnerSecretRef {
                id: S3_TEST_SECRET_ID.to_string(),
            },
            wrong_secret: RunnerSecretRef {
                id: S3_TEST_WRONG_SECRET_ID.to_string(),
            },
            resolver: self.resolver(),
        }
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
