//! Cutting long lines out of a rendered output view, so that one line (minified
//! code, a base64 blob, a progress bar without newlines) cannot fill a model's
//! context by itself.

use std::borrow::Cow;

use runner_api::RunnerOutputTruncation;
use serde::Serialize;

/// The line length `run_command` and `command_output` cut at when the input
/// names none.
pub const DEFAULT_MAX_LINE_BYTES: usize = 2048;

/// What cutting long lines left out of one stream's text.
///
/// Counted over the text as returned (after the head/tail view), in bytes of
/// that UTF-8 text; the markers and line endings are not counted.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LineCut {
    /// Lines cut to `max_line_bytes`.
    pub lines_cut: u64,
    /// Bytes removed from those lines.
    pub bytes_omitted: u64,
}

/// Cuts the long lines of one stream's head/tail `text` in place, leaving the
/// omitted-middle marker line of `truncation` whole; `text` is only rewritten
/// when a line was cut.
pub(crate) fn cut_view(
    text: &mut String,
    truncation: &RunnerOutputTruncation,
    max_line_bytes: usize,
) -> LineCut {
    let marker = truncation.omitted_marker();
    let (out, cut) = cut_long_lines(text, max_line_bytes, marker.as_deref());
    if let Cow::Owned(out) = out {
        *text = out;
    }
    cut
}

/// Cuts every line of `text` longer than `max_line_bytes` bytes to its first
/// `max_line_bytes` bytes (at a char boundary at or below the limit) followed
/// by ` [… N bytes of this line omitted …]`, keeping its `\n` or `\r\n`.
/// `max_line_bytes == 0` keeps every line whole, and so does a line equal to
/// `keep`. Returns `text` itself when no line was cut.
fn cut_long_lines<'a>(
    text: &'a str,
    max_line_bytes: usize,
    keep: Option<&str>,
) -> (Cow<'a, str>, LineCut) {
    let mut cut = LineCut::default();
    if max_line_bytes == 0 || text.len() <= max_line_bytes {
        return (Cow::Borrowed(text), cut);
    }
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive('\n') {
        let ending = if piece.ends_with("\r\n") {
            "\r\n"
        } else if piece.ends_with('\n') {
            "\n"
        } else {
            ""
        };
        let line = &piece[..piece.len() - ending.len()];
        if line.len() <= max_line_bytes || Some(line) == keep {
            out.push_str(piece);
            continue;
        }
        let kept = line.floor_char_boundary(max_line_bytes);
        let omitted = line.len() - kept;
        out.push_str(&line[..kept]);
        out.push_str(&format!(" [… {omitted} bytes of this line omitted …]"));
        out.push_str(ending);
        cut.lines_cut += 1;
        cut.bytes_omitted += omitted as u64;
    }
    if cut.lines_cut == 0 {
        return (Cow::Borrowed(text), cut);
    }
    (Cow::Owned(out), cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::RunnerOutputLimit;
    use runner_kit::HeadTailBuffer;

    fn cut(text: &str, max: usize) -> (String, LineCut) {
        let (out, line_cut) = cut_long_lines(text, max, None);
        (out.into_owned(), line_cut)
    }

    fn counts(lines_cut: u64, bytes_omitted: u64) -> LineCut {
        LineCut {
            lines_cut,
            bytes_omitted,
        }
    }

    #[test]
    fn ascii_lines_over_the_limit_are_cut_with_a_marker() {
        let text = format!("{}\nshort\n{}\n", "a".repeat(10), "b".repeat(7));
        let (out, line_cut) = cut(&text, 5);
        assert_eq!(
            out,
            "aaaaa [… 5 bytes of this line omitted …]\nshort\n\
             bbbbb [… 2 bytes of this line omitted …]\n"
        );
        assert_eq!(line_cut, counts(2, 7));
    }

    #[test]
    fn a_line_exactly_at_the_limit_is_kept() {
        let text = "abcd\nabcde\n";
        let (out, line_cut) = cut(text, 4);
        assert_eq!(out, "abcd\nabcd [… 1 bytes of this line omitted …]\n");
        assert_eq!(line_cut, counts(1, 1));
        let (out, line_cut) = cut("abcd", 4);
        assert_eq!((out.as_str(), line_cut), ("abcd", LineCut::default()));
    }

    #[test]
    fn multi_byte_characters_are_never_split() {
        // "é" is 2 bytes, "€" 3, "🦀" 4: a limit inside each keeps the bytes before it.
        let (out, line_cut) = cut("aé\n", 2);
        assert_eq!(out, "a [… 2 bytes of this line omitted …]\n");
        assert_eq!(line_cut, counts(1, 2));
        let (out, _) = cut("ab€cd\n", 4);
        assert_eq!(out, "ab [… 5 bytes of this line omitted …]\n");
        let (out, _) = cut("🦀🦀", 7);
        assert_eq!(out, "🦀 [… 4 bytes of this line omitted …]");
        // A limit on the boundary keeps the whole character.
        let (out, _) = cut("ab€cd", 5);
        assert_eq!(out, "ab€ [… 2 bytes of this line omitted …]");
        // A limit below the first character keeps nothing of the line.
        let (out, line_cut) = cut("🦀x\n", 2);
        assert_eq!(out, " [… 5 bytes of this line omitted …]\n");
        assert_eq!(line_cut, counts(1, 5));
    }

    #[test]
    fn the_last_line_without_a_newline_is_cut_too() {
        let (out, line_cut) = cut("ok\nxxxxxxxx", 3);
        assert_eq!(out, "ok\nxxx [… 5 bytes of this line omitted …]");
        assert_eq!(line_cut, counts(1, 5));
    }

    #[test]
    fn crlf_endings_are_kept_and_not_counted() {
        let (out, line_cut) = cut("abc\r\nabcdef\r\n", 3);
        assert_eq!(out, "abc\r\nabc [… 3 bytes of this line omitted …]\r\n");
        assert_eq!(line_cut, counts(1, 3));
        // A lone `\r` (a progress bar) is part of the line.
        let (out, _) = cut("10%\r20%\r30%\n", 4);
        assert_eq!(out, "10%\r [… 7 bytes of this line omitted …]\n");
    }

    #[test]
    fn zero_keeps_every_line_whole() {
        let text = "x".repeat(10_000) + "\n";
        assert_eq!(cut(&text, 0), (text.clone(), LineCut::default()));
    }

    #[test]
    fn the_omitted_middle_marker_line_is_left_intact() {
        let mut buffer = HeadTailBuffer::new(RunnerOutputLimit {
            head_bytes: 12,
            tail_bytes: 12,
        });
        buffer.push(format!("{}\n{}\n", "h".repeat(100), "t".repeat(100)).as_bytes());
        let (text, truncation) = buffer.render();
        let marker = format!("[… {} bytes omitted …]", truncation.bytes_dropped);
        assert!(text.contains(&marker), "{text}");
        let mut out = text.clone();
        let line_cut = cut_view(&mut out, &truncation, 8);
        assert_eq!(
            out,
            format!(
                "hhhhhhhh [… 4 bytes of this line omitted …]\n{marker}\n\
                 tttttttt [… 3 bytes of this line omitted …]\n"
            )
        );
        assert_eq!(line_cut, counts(2, 7));
        // Without truncation there is no marker to keep: such a line is text.
        let mut out = marker.clone();
        cut_view(&mut out, &RunnerOutputTruncation::default(), 8);
        assert!(out.contains("of this line omitted"), "{out}");
    }
}
