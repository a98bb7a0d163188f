//! The checks, one module per area.

pub(crate) mod artifacts;
pub(crate) mod capabilities;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod framework;
pub(crate) mod hostile;
pub(crate) mod lease;
pub(crate) mod lifecycle;
pub(crate) mod manager;
pub(crate) mod mounts;
pub(crate) mod paths;
pub(crate) mod ports;
pub(crate) mod processes;
pub(crate) mod snapshots;
pub(crate) mod terminal;
