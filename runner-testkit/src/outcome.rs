//! How a check reports: `Err(String)` naming what was expected and what came back.

use std::fmt::{Debug, Display};

use runner_api::{RunnerError, RunnerErrorKind, RunnerResult};

/// The outcome of one check: `Ok(())` or a message saying what went wrong.
pub(crate) type CheckResult<T = ()> = Result<T, String>;

/// Returns `Err(format!(..))` from the enclosing check when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Returns an error naming `what`, the expected and the actual value when they differ.
macro_rules! ensure_eq {
    ($actual:expr, $expected:expr, $($what:tt)+) => {
        match (&$actual, &$expected) {
            (actual, expected) => {
                if *actual != *expected {
                    return Err(format!(
                        "{}: expected {}, got {}",
                        format!($($what)+),
                        $crate::outcome::shorten(&format!("{expected:?}")),
                        $crate::outcome::shorten(&format!("{actual:?}")),
                    ));
                }
            }
        }
    };
}

pub(crate) use {ensure, ensure_eq};

/// Cuts long debug output so a failure message stays readable.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 400;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

/// Describes an error for a failure message: kind and message.
pub(crate) fn describe(error: &RunnerError) -> String {
    format!("Err({}): {}", error.kind(), error.message())
}

/// Turns runner results into check results with messages that name the operation.
pub(crate) trait Expect<T> {
    /// The value, or a failure naming `what` and the error that came back.
    fn or_fail(self, what: impl Display) -> CheckResult<T>;

    /// Succeeds when the operation failed with `kind`; otherwise a failure naming
    /// `what`, the expected kind and what came back.
    fn fails_with(self, kind: RunnerErrorKind, what: impl Display) -> CheckResult<RunnerError>
    where
        T: Debug;
}

impl<T> Expect<T> for RunnerResult<T> {
    fn or_fail(self, what: impl Display) -> CheckResult<T> {
        self.map_err(|e| format!("{what}: expected Ok, got {}", describe(&e)))
    }

    fn fails_with(self, kind: RunnerErrorKind, what: impl Display) -> CheckResult<RunnerError>
    where
        T: Debug,
    {
        match self {
            Err(e) if e.kind() == kind => Ok(e),
            Err(e) => Err(format!(
                "{what}: expected Err({kind}), got {}",
                describe(&e)
            )),
            Ok(value) => Err(format!(
                "{what}: expected Err({kind}), got Ok({})",
                shorten(&format!("{value:?}"))
            )),
        }
    }
}

/// Shows bytes for a failure message: text when printable, else a hex prefix.
pub(crate) fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => shorten(&format!("{text:?}")),
        Err(_) => {
            let hex: String = bytes.iter().take(48).map(|b| format!("{b:02x}")).collect();
            format!("{} bytes [{hex}…]", bytes.len())
        }
    }
}

/// Compares two byte strings and names the first difference.
pub(crate) fn same_bytes(actual: &[u8], expected: &[u8], what: impl Display) -> CheckResult {
    if actual == expected {
        return Ok(());
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    Err(format!(
        "{what}: expected {} bytes, got {} bytes; first difference at offset {first} \
         (expected {}, got {})",
        expected.len(),
        actual.len(),
        show_bytes(&expected[first.min(expected.len())..(first + 16).min(expected.len())]),
        show_bytes(&actual[first.min(actual.len())..(first + 16).min(actual.len())]),
    ))
}
