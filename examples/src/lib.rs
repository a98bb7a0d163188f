//! Runnable examples: see `examples/quickstart.rs`.
