//! The stdio transport: newline-delimited JSON-RPC, with a bound on the size
//! of one request line that is answered instead of dropped.
//!
//! rmcp's own stdio transport drops a line over its limit without a reply,
//! so a client waits forever for the answer. Here lines are read with the
//! bound [`MAX_REQUEST_BYTES`]: a longer line is read to its end and thrown
//! away without being kept, answered with a JSON-RPC error (`-32600`) that
//! names the limit and carries the request's id when the start or the end of
//! the line shows it, and logged (its size, never its content). Lines within
//! the bound are parsed by rmcp's own codec, with rmcp's rules for input that
//! is not a message.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::model::{ErrorCode, ErrorData};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::{JsonRpcMessageCodec, JsonRpcMessageCodecError};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::MAX_REQUEST_BYTES;

/// Bytes kept from the start and from the end of a refused line, to find its
/// request id in.
const ID_SCAN_BYTES: usize = 4096;

/// The writing half, shared by responses and refusals: one whole line at a
/// time. `None` once the transport is closed.
type SharedWriter<W> = Arc<Mutex<Option<W>>>;

/// A line longer than the bound, read to its end.
#[derive(Debug)]
struct Refused {
    /// The line's length in bytes, without its line ending.
    bytes: u64,
    /// Its first bytes (at most [`ID_SCAN_BYTES`]).
    head: Vec<u8>,
    /// Its last bytes (at most [`ID_SCAN_BYTES`]).
    tail: Vec<u8>,
}

impl Refused {
    /// Adds `piece`, the next bytes of the line.
    fn extend(&mut self, piece: &[u8]) {
        self.bytes = self.bytes.saturating_add(piece.len() as u64);
        let room = ID_SCAN_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&piece[..room.min(piece.len())]);
        self.tail
            .extend_from_slice(&piece[piece.len().saturating_sub(ID_SCAN_BYTES)..]);
        let excess = self.tail.len().saturating_sub(ID_SCAN_BYTES);
        self.tail.drain(..excess);
    }

    /// The JSON-RPC error answering the line, as one line of JSON.
    fn reply(&self) -> Vec<u8> {
        let id = request_id(&self.head).or_else(|| last_member_id(&self.tail));
        let message = format!(
            "request of {} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes per message; \
             send large files and stdin in chunks (write_file with offset, write_stdin)",
            self.bytes
        );
        let reply = json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": ErrorCode::INVALID_REQUEST.0,
                "message": message,
                "data": { "limit_bytes": MAX_REQUEST_BYTES, "request_bytes": self.bytes },
            },
        });
        line_of(&reply)
    }
}

/// What one bounded read gave.
enum LineRead {
    /// A whole line (with its `\n`) is in the line buffer.
    Line,
    /// A line over the bound was read to its end and dropped.
    Refused(Refused),
    /// The peer closed the stream.
    Eof,
    /// Reading failed.
    Io(std::io::Error),
}

/// Newline-delimited JSON-RPC over a reader and a writer, with request
/// lines bounded by [`MAX_REQUEST_BYTES`] (see the module docs).
pub(crate) struct BoundedLines<R, W> {
    read: BufReader<R>,
    /// The line being read, while it is within the bound.
    line: BytesMut,
    /// Set while the rest of a line over the bound is being dropped; kept
    /// here because `receive` may be cancelled between reads.
    refusing: Option<Refused>,
    codec: JsonRpcMessageCodec<RxJsonRpcMessage<RoleServer>>,
    write: SharedWriter<W>,
}

impl<R, W> BoundedLines<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    /// The transport over `read` and `write`.
    pub(crate) fn new(read: R, write: W) -> Self {
        Self {
            read: BufReader::new(read),
            line: BytesMut::new(),
            refusing: None,
            codec: JsonRpcMessageCodec::new(),
            write: Arc::new(Mutex::new(Some(write))),
        }
    }

    /// Reads the next line into `self.line`, or reads a line over the bound
    /// to its end without keeping it. Cancel-safe: `fill_buf` consumes
    /// nothing when dropped, and what was consumed is in `self`.
    async fn read_line(&mut self) -> LineRead {
        loop {
            let (consumed, ended) = {
                let available = match self.read.fill_buf().await {
                    Ok(available) => available,
                    Err(e) => return LineRead::Io(e),
                };
                if available.is_empty() {
                    // A partial line at the end is no message; a refused one
                    // is still answered.
                    self.line.clear();
                    return self
                        .refusing
                        .take()
                        .map_or(LineRead::Eof, LineRead::Refused);
                }
                let newline = available.iter().position(|b| *b == b'\n');
                let take = newline.map_or(available.len(), |at| at + 1);
                let content = &available[..newline.unwrap_or(take)];
                if let Some(refused) = &mut self.refusing {
                    refused.extend(content);
                } else if self.line.len().saturating_add(content.len()) > MAX_REQUEST_BYTES {
                    let mut refused = Refused {
                        bytes: 0,
                        head: Vec::new(),
                        tail: Vec::new(),
                    };
                    refused.extend(&self.line);
                    refused.extend(content);
                    self.line = BytesMut::new();
                    self.refusing = Some(refused);
                } else {
                    self.line.extend_from_slice(&available[..take]);
                }
                (take, newline.is_some())
            };
            self.read.consume(consumed);
            if ended {
                return self
                    .refusing
                    .take()
                    .map_or(LineRead::Line, LineRead::Refused);
            }
        }
    }

    /// Writes `line` from a task of its own, so a cancelled `receive` never
    /// leaves half a line on the stream.
    fn answer(&self, line: Vec<u8>) {
        let write = self.write.clone();
        tokio::spawn(async move {
            if let Err(e) = write_line(&write, &line).await {
                tracing::warn!(error = %e, "could not answer a refused request");
            }
        });
    }
}

impl<R, W> Transport<RoleServer> for BoundedLines<R, W>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let write = self.write.clone();
        async move {
            let line = serde_json::to_vec(&item)?;
            write_line(&write, &[line.as_slice(), b"\n"].concat()).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.read_line().await {
                LineRead::Line => {}
                LineRead::Refused(refused) => {
                    tracing::warn!(
                        request_bytes = refused.bytes,
                        limit_bytes = MAX_REQUEST_BYTES,
                        "refused a request over the size limit; answered with a JSON-RPC error"
                    );
                    self.answer(refused.reply());
                    continue;
                }
                LineRead::Eof => return None,
                LineRead::Io(e) => {
                    tracing::error!(error = %e, "reading stdin failed");
                    return None;
                }
            }
            // The same rules as rmcp's own transport: unparsable input is
            // ignored (answering it can start an error storm with a peer that
            // echoes), JSON that is no message gets an Invalid Request.
            match self.codec.decode(&mut self.line) {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                Err(JsonRpcMessageCodecError::Serde(e)) => match e.classify() {
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                        tracing::debug!("ignoring unparsable input: {e}");
                    }
                    serde_json::error::Category::Data | serde_json::error::Category::Io => {
                        tracing::debug!("protocol error on incoming message: {e}");
                        let error = TxJsonRpcMessage::<RoleServer>::error(
                            ErrorData::invalid_request("Invalid request", None),
                            None,
                        );
                        if let Ok(line) = serde_json::to_value(&error) {
                            self.answer(line_of(&line));
                        }
                    }
                },
                Err(e) => tracing::debug!("ignoring input: {e}"),
            }
            self.line.clear();
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        let writer = self.write.lock().await.take();
        match writer {
            Some(mut writer) => writer.shutdown().await,
            None => Ok(()),
        }
    }
}

/// `value` as one line of JSON.
fn line_of(value: &Value) -> Vec<u8> {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Writes `line` whole and flushes, holding the writer throughout.
async fn write_line<W: AsyncWrite + Unpin>(
    write: &SharedWriter<W>,
    line: &[u8],
) -> std::io::Result<()> {
    let mut guard = write.lock().await;
    let writer = guard.as_mut().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotConnected, "transport is closed")
    })?;
    writer.write_all(line).await?;
    writer.flush().await
}

/// An id as JSON-RPC allows it (a number or a string), parsed from `text`.
fn id_value(text: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(text)
        .ok()
        .filter(|id| id.is_number() || id.is_string())
}

/// The `id` of the JSON object `head` starts, when it is among the members
/// that lie whole within `head`.
fn request_id(head: &[u8]) -> Option<Value> {
    let mut at = skip_space(head, 0);
    if head.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_space(head, at);
        let key_end = string_end(head, at)?;
        let key = &head[at..key_end];
        at = skip_space(head, key_end);
        if head.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(head, at + 1);
        let value_end = value_end(head, at)?;
        if key == b"\"id\"" {
            return id_value(&head[at..value_end]);
        }
        at = skip_space(head, value_end);
        match head.get(at) {
            Some(b',') => at += 1,
            _ => return None,
        }
    }
}

/// The `id` of the JSON object `tail` ends, when `id` is its last member (as
/// some clients write it, after the params).
fn last_member_id(tail: &[u8]) -> Option<Value> {
    let text = trim_end(tail);
    let text = trim_end(text.strip_suffix(b"}")?);
    let value_start = if text.ends_with(b"\"") {
        // The opening quote: the last quote before it with an even number
        // of backslashes in front.
        (0..text.len() - 1).rev().find(|&i| {
            text[i] == b'"' && text[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 0
        })?
    } else {
        text.iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || b"+-.".contains(b)))
            .map_or(0, |i| i + 1)
    };
    let before = trim_end(&text[..value_start]);
    let before = trim_end(before.strip_suffix(b":")?);
    let before = trim_end(before.strip_suffix(b"\"id\"")?);
    if !(before.ends_with(b",") || before.ends_with(b"{")) {
        return None;
    }
    id_value(&text[value_start..])
}

fn skip_space(text: &[u8], mut at: usize) -> usize {
    while text.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

fn trim_end(text: &[u8]) -> &[u8] {
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &text[..end]
}

/// The end (after the closing quote) of the JSON string starting at `at`.
fn string_end(text: &[u8], at: usize) -> Option<usize> {
    if text.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    while let Some(&b) = text.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The end of the JSON value starting at `at`, when it ends within `text`.
fn value_end(text: &[u8], at: usize) -> Option<usize> {
    match text.get(at)? {
        b'"' => string_end(text, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&b) = text.get(i) {
                match b {
                    b'"' => {
                        i = string_end(text, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = text[at..].iter().position(|b| b",}] \t\r\n".contains(b))?;
            Some(at + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_at_the_start_or_the_end_of_a_line() {
        let cases: [(&[u8], Option<Value>); 9] = [
            (
                br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"#,
                Some(json!(7)),
            ),
            (br#" { "id" : "a\"b" , "method""#, Some(json!("a\"b"))),
            (
                br#"{"method":"x","params":{"id":1,"s":"}]\""},"id":-3,"params2""#,
                Some(json!(-3)),
            ),
            (br#"{"jsonrpc":"2.0","id":null,"#, None),
            (br#"{"id":{"a":1},"#, None),
            (br#"{"method":"tools/call","params":{"a":"xxxxx"#, None),
            (b"[1,2", None),
            (b"", None),
            (br#"{"id":12"#, None),
        ];
        for (head, id) in cases {
            assert_eq!(request_id(head), id, "{}", String::from_utf8_lossy(head));
        }
        let tails: [(&[u8], Option<Value>); 7] = [
            (br#"xxxx"}},"jsonrpc":"2.0","id":42}"#, Some(json!(42))),
            (br#"xxxx"} , "id" : "q\\" }  "#, Some(json!("q\\"))),
            (br#"xx","arguments":{"id":3}}}"#, None),
            (br#"xx\",\"id\":5}"}"#, None),
            (br#"x","other":5}"#, None),
            (br#""id":5"#, None),
            (b"}", None),
        ];
        for (tail, id) in tails {
            assert_eq!(
                last_member_id(tail),
                id,
                "{}",
                String::from_utf8_lossy(tail)
            );
        }
    }

    #[test]
    fn a_refused_line_keeps_only_its_ends() {
        let mut refused = Refused {
            bytes: 0,
            head: Vec::new(),
            tail: Vec::new(),
        };
        refused.extend(br#"{"jsonrpc":"2.0","method":"m","params":""#);
        for _ in 0..1000 {
            refused.extend(&[b'x'; 1000]);
        }
        refused.extend(br#"","id":"late"}"#);
        assert_eq!(refused.head.len(), ID_SCAN_BYTES);
        assert_eq!(refused.tail.len(), ID_SCAN_BYTES);
        let reply: Value = serde_json::from_slice(&refused.reply()).expect("JSON reply");
        assert_eq!(reply["id"], "late");
        assert_eq!(reply["error"]["code"], -32600);
        assert_eq!(reply["error"]["data"]["request_bytes"], refused.bytes);
        let message = reply["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(&MAX_REQUEST_BYTES.to_string()),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_oversized_line_is_answered_and_the_next_one_served() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

        let (mut client, server_in) = tokio::io::duplex(64 * 1024);
        let (server_out, client_out) = tokio::io::duplex(64 * 1024);
        let mut transport = BoundedLines::new(server_in, server_out);
        let writer = tokio::spawn(async move {
            let call = |id: u8| {
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t","arguments":{{"x":""#
                )
                .into_bytes()
            };
            let mut big = call(5);
            big.resize(MAX_REQUEST_BYTES + 10, b'a');
            big.extend_from_slice(b"\"}}}\n");
            client.write_all(&big).await.expect("big line");
            // Exactly at the limit (not counting the newline) is accepted.
            let mut at_limit = call(6);
            at_limit.resize(MAX_REQUEST_BYTES - 4, b'b');
            at_limit.extend_from_slice(b"\"}}}\n");
            client
                .write_all(&at_limit)
                .await
                .expect("line at the limit");
            client.write_all(b"\n").await.expect("empty line");
            client
                .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\"}\n")
                .await
                .expect("ping");
        });
        let message = transport.receive().await.expect("the line at the limit");
        let message = serde_json::to_value(&message).expect("JSON");
        assert_eq!(message["id"], 6, "{}", &message.to_string()[..200]);
        let message = transport.receive().await.expect("the ping");
        assert_eq!(serde_json::to_value(&message).expect("JSON")["id"], 8);
        writer.await.expect("writer");
        let mut lines = tokio::io::BufReader::new(client_out).lines();
        let reply = lines.next_line().await.expect("read").expect("a reply");
        let reply: Value = serde_json::from_str(&reply).expect("JSON reply");
        assert_eq!(reply["id"], 5, "{reply}");
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
        assert_eq!(
            reply["error"]["data"]["request_bytes"],
            MAX_REQUEST_BYTES + 14,
            "{reply}"
        );
    }
}
