//! Bounded output: the head/tail view and the numbered chunk log.

use std::collections::VecDeque;

use runner_api::{
    RunnerOutputChunk, RunnerOutputLimit, RunnerOutputStream, RunnerOutputTruncation,
};

/// Keeps the first `head_bytes` and the last `tail_bytes` of a stream, whatever
/// its length, and counts everything.
///
/// Memory is bounded by `head_bytes + tail_bytes`. [`render`](Self::render) never
/// splits a UTF-8 sequence at a cut: a partial sequence at the end of the head or
/// the start of the tail is dropped and counted in `bytes_dropped`.
#[derive(Debug, Clone)]
pub struct HeadTailBuffer {
    limit: RunnerOutputLimit,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    seen: u64,
}

impl HeadTailBuffer {
    /// An empty buffer with the given budgets.
    pub fn new(limit: RunnerOutputLimit) -> Self {
        Self {
            limit,
            head: Vec::new(),
            tail: VecDeque::new(),
            seen: 0,
        }
    }

    /// Appends bytes.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        let head_room = self.limit.head_bytes - self.head.len();
        if head_room > 0 {
            let take = head_room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        let cap = self.limit.tail_bytes;
        if cap == 0 || bytes.is_empty() {
            return;
        }
        if bytes.len() >= cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - cap..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(cap);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// Every byte pushed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// The view as text and what it dropped. When bytes were dropped between head
    /// and tail, the line `[… N bytes omitted …]` separates them.
    pub fn render(&self) -> (String, RunnerOutputTruncation) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        if kept == self.seen {
            let mut all = self.head.clone();
            all.extend(self.tail.iter());
            let text = String::from_utf8_lossy(&all).into_owned();
            return (
                text,
                RunnerOutputTruncation {
                    bytes_seen: self.seen,
                    bytes_dropped: 0,
                },
            );
        }
        let head = trim_partial_end(&self.head);
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let tail = trim_partial_start(&tail);
        let truncation = RunnerOutputTruncation {
            bytes_seen: self.seen,
            bytes_dropped: self.seen - (head.len() + tail.len()) as u64,
        };
        let mut text = String::from_utf8_lossy(head).into_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if let Some(marker) = truncation.omitted_marker() {
            text.push_str(&marker);
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(tail));
        (text, truncation)
    }
}

/// Drops an incomplete UTF-8 sequence at the end of `bytes`.
fn trim_partial_end(bytes: &[u8]) -> &[u8] {
    // A sequence is at most 4 bytes: look back at most 3 bytes for its lead byte.
    for back in 1..=bytes.len().min(4) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 != 0b1000_0000 {
            let needed = match b {
                0x00..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => return bytes,
            };
            return if needed > back {
                &bytes[..bytes.len() - back]
            } else {
                bytes
            };
        }
    }
    bytes
}

/// Drops continuation bytes at the start of `bytes` (the rest of a sequence cut off).
fn trim_partial_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take(3)
        .take_while(|b| *b & 0b1100_0000 == 0b1000_0000)
        .count();
    &bytes[skip..]
}

/// A numbered log of output chunks with a byte budget: the oldest chunks are
/// dropped first. Sequence numbers start at 1 and never repeat.
#[derive(Debug, Clone)]
pub struct OutputLog {
    chunks: VecDeque<RunnerOutputChunk>,
    retained_bytes: usize,
    max_bytes: usize,
    last_seq: u64,
}

impl OutputLog {
    /// An empty log retaining at most `max_bytes` of chunk data (the newest chunk
    /// is always kept, even when larger).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            retained_bytes: 0,
            max_bytes,
            last_seq: 0,
        }
    }

    /// Appends a chunk and returns its sequence number.
    pub fn push(&mut self, stream: RunnerOutputStream, bytes: Vec<u8>) -> u64 {
        self.last_seq += 1;
        self.retained_bytes += bytes.len();
        self.chunks.push_back(RunnerOutputChunk {
            seq: self.last_seq,
            stream,
            bytes,
        });
        while self.retained_bytes > self.max_bytes && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.retained_bytes -= old.bytes.len();
            }
        }
        self.last_seq
    }

    /// Sequence number of the newest chunk (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Oldest retained sequence number (`last_seq + 1` when nothing is retained).
    pub fn first_retained_seq(&self) -> u64 {
        self.chunks.front().map_or(self.last_seq + 1, |c| c.seq)
    }

    /// Retained chunks with `seq > after_seq`, in order.
    pub fn after(&self, after_seq: u64) -> Vec<RunnerOutputChunk> {
        let start = self.chunks.partition_point(|c| c.seq <= after_seq);
        self.chunks.range(start..).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(head: usize, tail: usize) -> RunnerOutputLimit {
        RunnerOutputLimit {
            head_bytes: head,
            tail_bytes: tail,
        }
    }

    #[test]
    fn short_output_is_kept_whole() {
        let mut b = HeadTailBuffer::new(limit(8, 8));
        b.push(b"hello ");
        b.push(b"world");
        let (text, t) = b.render();
        assert_eq!(text, "hello world");
        assert_eq!(
            t,
            RunnerOutputTruncation {
                bytes_seen: 11,
                bytes_dropped: 0
            }
        );
    }

    #[test]
    fn long_output_keeps_head_and_tail_with_exact_counters() {
        let mut b = HeadTailBuffer::new(limit(4, 4));
        for chunk in [&b"0123"[..], b"456789", b"abcdef"] {
            b.push(chunk);
        }
        let (text, t) = b.render();
        assert_eq!(t.bytes_seen, 16);
        assert_eq!(t.bytes_dropped, 8);
        assert!(text.starts_with("0123\n"));
        assert!(text.ends_with("cdef"));
        assert!(text.contains("8 bytes omitted"));
    }

    #[test]
    fn cuts_never_split_utf8() {
        // "é" is two bytes; budgets of 3 cut inside a sequence at both ends.
        let mut b = HeadTailBuffer::new(limit(3, 3));
        b.push("éééééééé".as_bytes());
        let (text, t) = b.render();
        assert!(!text.contains('\u{FFFD}'), "{text:?}");
        assert!(text.starts_with("é\n"));
        assert!(text.ends_with("é"));
        assert_eq!(t.bytes_seen, 16);
        assert_eq!(t.bytes_dropped, 16 - 4);
    }

    #[test]
    fn huge_pushes_stay_bounded() {
        let mut b = HeadTailBuffer::new(limit(16, 16));
        let block = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            b.push(&block);
        }
        assert!(b.head.len() + b.tail.len() <= 32);
        assert_eq!(b.render().1.bytes_seen, 64 << 20);
    }

    #[test]
    fn log_numbers_and_drops_oldest() {
        let mut log = OutputLog::new(10);
        for i in 0..5u8 {
            log.push(RunnerOutputStream::Stdout, vec![i; 4]);
        }
        assert_eq!(log.last_seq(), 5);
        assert_eq!(log.first_retained_seq(), 4);
        let after = log.after(4);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].seq, 5);
        assert_eq!(log.after(0).len(), 2);
    }
}
