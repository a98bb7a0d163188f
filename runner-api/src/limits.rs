//! Bounds on what one call may ask for, enforced by every provider.
//!
//! An agent chooses the numbers in a request. None of them may size an
//! allocation: a `read_file` limit of 1e12 on a 64 GiB sparse file must not
//! reserve 64 GiB, and an output budget of 1e12 must not keep a 300 MB output
//! whole. Above a documented maximum a request is `InvalidRequest`; below it,
//! memory grows only with the bytes that really arrive.
//!
//! | bound | value | where |
//! |---|---|---|
//! | bytes one `read_file` returns | [`MAX_READ_BYTES`] (256 MiB) | [`check_read_request`], [`read_window`] |
//! | head and tail budget of one stream | [`RunnerOutputLimit::MAX_BYTES`](crate::RunnerOutputLimit::MAX_BYTES) (8 MiB each) | [`validate_command_request`](runner_kit::validate_command_request) |
//! | bytes one upload unpacks | [`DEFAULT_MAX_UNPACKED_BYTES`](runner_kit::archive::DEFAULT_MAX_UNPACKED_BYTES) (4 GiB, per destination `max_upload_bytes`) | [`sanitize_upload`](runner_kit::archive::sanitize_upload) |

use crate::{RunnerError, RunnerFileReadRequest, RunnerResult};

/// Most bytes one `read_file` returns: 256 MiB. Larger files are read in parts
/// with `offset` and `limit`.
pub const MAX_READ_BYTES: u64 = 256 * 1024 * 1024;

/// The part of a file a read request asks for, clamped to the file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadWindow {
    /// First byte to read.
    pub offset: u64,
    /// Bytes to read from `offset` (at most [`MAX_READ_BYTES`]).
    pub len: u64,
}

impl ReadWindow {
    /// The byte after the window.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// Refuses a read request whose `limit` exceeds [`MAX_READ_BYTES`], before
/// the file is touched.
///
/// Errors: `InvalidRequest` naming `operation`, the path and the maximum.
pub fn check_read_request(operation: &str, request: &RunnerFileReadRequest) -> RunnerResult<()> {
    match request.limit {
        Some(limit) if limit > MAX_READ_BYTES => Err(RunnerError::invalid_request(format!(
            "{operation} {}: limit {limit} exceeds the maximum of {MAX_READ_BYTES} bytes one read \
             returns",
            request.path.display()
        ))),
        _ => Ok(()),
    }
}

/// The window `request` asks of a file of `size` bytes.
///
/// An offset at or past the end gives an empty window. Without a limit the
/// window runs to the end of the file, which must then fit in
/// [`MAX_READ_BYTES`].
///
/// Errors: `InvalidRequest` for a limit above the maximum (as
/// [`check_read_request`]) and for a read without limit of more than the
/// maximum; the message names `operation`, the path, the size and says to read
/// in parts.
pub fn read_window(
    operation: &str,
    request: &RunnerFileReadRequest,
    size: u64,
) -> RunnerResult<ReadWindow> {
    check_read_request(operation, request)?;
    let offset = request.offset.unwrap_or(0).min(size);
    let rest = size - offset;
    let len = match request.limit {
        Some(limit) => limit.min(rest),
        None if rest > MAX_READ_BYTES => {
            return Err(RunnerError::invalid_request(format!(
                "{operation} {}: {rest} bytes from offset {offset} exceed the maximum of \
                 {MAX_READ_BYTES} bytes one read returns; read the file in parts with offset \
                 and limit",
                request.path.display()
            )));
        }
        None => rest,
    };
    Ok(ReadWindow { offset, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunnerErrorKind;

    fn request(offset: Option<u64>, limit: Option<u64>) -> RunnerFileReadRequest {
        RunnerFileReadRequest {
            path: "f".into(),
            offset,
            limit,
        }
    }

    #[test]
    fn windows_are_clamped_to_the_file() {
        let w = read_window("read_file", &request(None, None), 10).unwrap();
        assert_eq!(w, ReadWindow { offset: 0, len: 10 });
        let w = read_window("read_file", &request(Some(8), Some(5)), 10).unwrap();
        assert_eq!(w, ReadWindow { offset: 8, len: 2 });
        let w = read_window("read_file", &request(Some(u64::MAX), None), 10).unwrap();
        assert_eq!(w, ReadWindow { offset: 10, len: 0 });
        assert_eq!(w.end(), 10);
    }

    #[test]
    fn limits_above_the_maximum_are_refused() {
        let err = read_window("read_file", &request(None, Some(1_000_000_000_000)), 1).unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("read_file f"), "{}", err.message());
        let huge = 64 << 30;
        let err = read_window("read_file", &request(None, None), huge).unwrap_err();
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest);
        assert!(err.message().contains("in parts"), "{}", err.message());
        let w = read_window("read_file", &request(Some(huge - 4), Some(4)), huge).unwrap();
        assert_eq!(w.len, 4);
    }
}
