//! A large upload spools through `sanitize_upload_stream` without being held
//! in memory. Alone in its test binary, so no other test moves the figure.

use std::path::Path;

use bytes::Bytes;
use runner_api::{RunnerByteStream, RunnerResult, next_chunk};
use runner_kit::archive::{UploadPolicy, sanitize_upload_stream};

/// One chunk of the generated archive's contents.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The archive's one file: 512 MiB.
const FILE_BYTES: u64 = 512 << 20;

/// Most the peak resident memory may grow while spooling and reading back.
const MAX_GROWTH_KIB: u64 = 64 << 10;

/// The peak resident set of this process in KiB (Linux `VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value")
}

/// A tar of one `FILE_BYTES` file, produced chunk by chunk from a static
/// buffer (the stream itself allocates nothing per chunk).
fn generated_archive() -> RunnerByteStream {
    let mut header = tar::Header::new_gnu();
    header.set_path("big.bin").expect("path");
    header.set_size(FILE_BYTES);
    header.set_mode(0o644);
    header.set_cksum();
    let head = Bytes::copy_from_slice(header.as_bytes());
    let chunks = (FILE_BYTES / ZEROS.len() as u64) as usize;
    let body = std::iter::repeat_n(Bytes::from_static(&ZEROS), chunks);
    let end = Bytes::from_static(&ZEROS[..1024]);
    let all = std::iter::once(head)
        .chain(body)
        .chain(std::iter::once(end))
        .map(RunnerResult::Ok);
    Box::pin(futures_util::stream::iter(all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_spools_in_bounded_memory() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = peak_rss_kib();
    let upload = sanitize_upload_stream(
        "upload_archive",
        Path::new("target"),
        generated_archive(),
        &UploadPolicy::default(),
    )
    .await
    .expect("the archive passes");
    // A GNU header, the contents, and the two zero blocks that end a tar.
    assert_eq!(upload.len(), 512 + FILE_BYTES + 1024);
    let expected = upload.len();
    let mut stream = upload.into_stream();
    let (mut read, mut largest) = (0u64, 0usize);
    while let Some(chunk) = next_chunk(&mut stream).await {
        let chunk = chunk.expect("spool reads back");
        read += chunk.len() as u64;
        largest = largest.max(chunk.len());
    }
    assert_eq!(read, expected);
    assert!(largest <= 256 * 1024, "a chunk of {largest} bytes");
    let growth = peak_rss_kib().saturating_sub(before);
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak RSS grew by {growth} KiB spooling a {FILE_BYTES}-byte archive"
    );
}
