//! unix-local provider (in progress).
