//! unix-local conformance run (filled in once the kit lands).
fn main() {}
