//! The checks, one module per area.

pub(crate) mod capabilities;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod lifecycle;
pub(crate) mod paths;
pub(crate) mod ports;
pub(crate) mod processes;
pub(crate) mod snapshots;
