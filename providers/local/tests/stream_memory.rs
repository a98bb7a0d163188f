//! A 1 GiB file written and read back through the streams of unix-local
//! while the process's peak resident memory grows by less than 64 MiB. Alone
//! in its test binary, so no other test moves the figure.

mod support;

use std::sync::LazyLock;

use bytes::Bytes;
use runner_api::{RunnerByteStream, RunnerFileReadRequest, RunnerFileWriteRequest, next_chunk};
use support::{Area, session};

/// The pattern the file repeats: 1 MiB, not all one byte, shared by every
/// chunk of the body (a clone of `Bytes` allocates nothing).
static PATTERN: LazyLock<Bytes> =
    LazyLock::new(|| (0..1usize << 20).map(|i| (i % 251) as u8).collect());

/// The file's size: 1 GiB.
const FILE_BYTES: u64 = 1 << 30;

/// Most the peak resident memory may grow, in KiB: 64 MiB.
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

/// The file's bytes as 1 MiB chunks of the static pattern (no allocation).
fn body() -> RunnerByteStream {
    let chunks = (FILE_BYTES / PATTERN.len() as u64) as usize;
    Box::pin(futures_util::stream::iter(
        std::iter::repeat_n(PATTERN.clone(), chunks).map(Ok),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_through_in_bounded_memory() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = peak_rss_kib();

    let request = RunnerFileWriteRequest::new("big.bin", Vec::new());
    s.write_file_stream(request, body())
        .await
        .expect("write 1 GiB");
    let written_peak = peak_rss_kib().saturating_sub(before);
    let on_disk = std::fs::metadata(area.path("root/big.bin")).expect("stat");
    assert_eq!(on_disk.len(), FILE_BYTES);

    let file = s
        .read_file_stream(RunnerFileReadRequest::new("big.bin"))
        .await
        .expect("read 1 GiB");
    assert_eq!(file.size, FILE_BYTES);
    let mut bytes = file.bytes;
    let pattern: &[u8] = &PATTERN;
    let mut position = 0usize;
    while let Some(chunk) = next_chunk(&mut bytes).await {
        let chunk = chunk.expect("chunk");
        // The chunk equals the pattern from `position` on, wrapping around.
        let mut checked = 0;
        while checked < chunk.len() {
            let at = (position + checked) % pattern.len();
            let n = (pattern.len() - at).min(chunk.len() - checked);
            assert!(
                chunk[checked..checked + n] == pattern[at..at + n],
                "bytes differ near offset {}",
                position + checked
            );
            checked += n;
        }
        position += chunk.len();
    }
    assert_eq!(position as u64, FILE_BYTES);
    let growth = peak_rss_kib().saturating_sub(before);
    assert!(
        written_peak < MAX_GROWTH_KIB && growth < MAX_GROWTH_KIB,
        "peak RSS grew by {written_peak} KiB writing and {growth} KiB after reading 1 GiB"
    );
    s.close().await.expect("close");
}
