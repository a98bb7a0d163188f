//! Runnable examples of the runners workspace: see `examples/quickstart.rs`.
//!
//! The workspace README is compiled here as a doctest, so its example stays true.
#![doc = include_str!("../../README.md")]
