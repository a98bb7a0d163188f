//! The layer stack: what every session gets on top of its provider, composed
//! once.
//!
//! A layer is a [`LayeredSession`](runner_api::LayeredSession): it names its
//! inner session and overrides only what it changes. [`Stack`] wraps a
//! provider so that every session it creates, resumes or rejoins comes back
//! as correctness ([`CheckedSession`]) → tracing ([`TracedSession`]) →
//! workspace confinement ([`RemoteWorkspace`]) → mounts and artifacts
//! ([`runner_mounts::MountedSession`]) → the provider's own session.
//! [`RunnerRegistry`] stacks every provider it is given, and
//! [`RunnerRegistry::open`] composes a session for a
//! [`ThreadRunnerBinding`](runner_api::ThreadRunnerBinding).

mod checked;
mod registry;
mod stack;
mod traced;
mod workspace;

pub use checked::{CheckedSession, CorrectnessLayer};
pub use registry::{RunnerProviderInfo, RunnerRegistry};
pub use stack::{Stack, stacked};
pub use traced::{SPAN_NAME, TracedSession, TracingLayer};
pub use workspace::{PathAccess, RemoteWorkspace};
