//! The four stream methods of unix-local: read windows, write bodies that
//! fail or are dropped, archives in small chunks.

mod support;

use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use runner_api::{
    RemoteRunnerSession, RunnerByteStream, RunnerError, RunnerErrorKind, RunnerFileReadRequest,
    RunnerFileWriteRequest, RunnerResult, bytes_stream, collect_stream,
};
use support::{Area, eventually, kind, session};

/// Every byte of a read stream, with its reported size.
async fn read_window(
    s: &dyn RemoteRunnerSession,
    path: &str,
    offset: Option<u64>,
    limit: Option<u64>,
) -> RunnerResult<(u64, Vec<u8>)> {
    let file = s
        .read_file_stream(RunnerFileReadRequest {
            path: path.into(),
            offset,
            limit,
        })
        .await?;
    let bytes = collect_stream("read", path, file.bytes, u64::MAX).await?;
    Ok((file.size, bytes))
}

/// `chunks`, then an `Unavailable` error.
fn failing_body(chunks: &[&[u8]]) -> RunnerByteStream {
    let mut items: Vec<RunnerResult<Bytes>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    items.push(Err(RunnerError::new(
        RunnerErrorKind::Unavailable,
        "body: the sender went away",
    )));
    Box::pin(futures_util::stream::iter(items))
}

/// Names in `dir` (hidden ones included).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn read_stream_windows_report_the_whole_size() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = area.path("root");
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    std::fs::write(root.join("f.bin"), &data).expect("seed");
    let s = s.as_ref();
    let whole = read_window(s, "f.bin", None, None).await.expect("whole");
    assert_eq!(whole, (1000, data.clone()));
    let middle = read_window(s, "f.bin", Some(100), Some(50))
        .await
        .expect("middle");
    assert_eq!(middle, (1000, data[100..150].to_vec()));
    let tail = read_window(s, "f.bin", Some(990), Some(50))
        .await
        .expect("tail");
    assert_eq!(tail, (1000, data[990..].to_vec()));
    let rest = read_window(s, "f.bin", Some(400), None)
        .await
        .expect("rest");
    assert_eq!(rest, (1000, data[400..].to_vec()));
    let past = read_window(s, "f.bin", Some(5000), None)
        .await
        .expect("past");
    assert_eq!(past, (1000, Vec::new()));
    let none = read_window(s, "f.bin", Some(10), Some(0))
        .await
        .expect("empty");
    assert_eq!(none, (1000, Vec::new()));
    // The stream has no maximum; the whole-buffer read keeps its own.
    let huge = read_window(s, "f.bin", None, Some(u64::MAX))
        .await
        .expect("huge");
    assert_eq!(huge, (1000, data.clone()));
    let mut request = RunnerFileReadRequest::new("f.bin");
    request.limit = Some(u64::MAX);
    assert_eq!(
        kind(s.read_file(request).await),
        RunnerErrorKind::InvalidRequest
    );
    let mut request = RunnerFileReadRequest::new("f.bin");
    request.offset = Some(100);
    request.limit = Some(50);
    let result = s.read_file(request).await.expect("whole-buffer window");
    assert_eq!(
        (result.size, result.contents),
        (1000, data[100..150].to_vec())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_and_download_streams_fail_before_the_first_chunk() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    std::fs::create_dir_all(area.path("root/d")).expect("dir");
    let s = s.as_ref();
    let open = |path: &'static str| async move {
        s.read_file_stream(RunnerFileReadRequest::new(path))
            .await
            .map(drop)
    };
    assert_eq!(kind(open("missing").await), RunnerErrorKind::NotFound);
    assert_eq!(kind(open("d").await), RunnerErrorKind::InvalidRequest);
    assert_eq!(kind(open("../x").await), RunnerErrorKind::PermissionDenied);
    let err = s
        .download_archive_stream(Path::new("missing"))
        .await
        .map(drop)
        .expect_err("missing");
    assert_eq!(err.kind(), RunnerErrorKind::NotFound);
    assert!(err.message().contains("download_archive missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn write_stream_joins_contents_and_body_in_chunks() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let body: RunnerByteStream = Box::pin(futures_util::stream::iter(
        [&b"b"[..], b"", b"cd", b"efg"].map(|c| Ok(Bytes::from_static(c))),
    ));
    let request = RunnerFileWriteRequest::new("sub/out.txt", b"a".to_vec());
    s.write_file_stream(request, body).await.expect("write");
    let written = std::fs::read(area.path("root/sub/out.txt")).expect("read");
    assert_eq!(written, b"abcdefg");
    // An offset write appends from the body the same way.
    let mut request = RunnerFileWriteRequest::new("sub/out.txt", Vec::new());
    request.offset = Some(7);
    s.write_file_stream(request, bytes_stream(b"hij".to_vec()))
        .await
        .expect("append");
    let written = std::fs::read(area.path("root/sub/out.txt")).expect("read");
    assert_eq!(written, b"abcdefghij");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_write_body_leaves_no_file_and_keeps_the_old_one() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = area.path("root");
    let before = names(&root);

    // A new file: nothing appears, not even a temp file.
    let request = RunnerFileWriteRequest::new("new.txt", b"head".to_vec());
    let err = s
        .write_file_stream(request, failing_body(&[b"one", b"two"]))
        .await
        .expect_err("the body fails");
    assert_eq!(err.kind(), RunnerErrorKind::Unavailable, "{err}");
    assert_eq!(err.message(), "body: the sender went away");
    assert_eq!(names(&root), before);

    // An existing file keeps its contents.
    std::fs::write(root.join("old.txt"), b"old contents").expect("seed");
    let request = RunnerFileWriteRequest::new("old.txt", Vec::new());
    let err = s
        .write_file_stream(request, failing_body(&[b"new"]))
        .await
        .expect_err("the body fails");
    assert_eq!(err.kind(), RunnerErrorKind::Unavailable);
    assert_eq!(
        std::fs::read(root.join("old.txt")).expect("read"),
        b"old contents"
    );
    assert_eq!(names(&root), vec!["old.txt".to_string()]);

    // An offset write in place changes nothing either (the body is spooled
    // before a byte is written), and a file it would create is not left.
    let mut request = RunnerFileWriteRequest::new("old.txt", Vec::new());
    request.offset = Some(4);
    request.mode = Some(0o600);
    let err = s
        .write_file_stream(request, failing_body(&[b"NEW"]))
        .await
        .expect_err("the body fails");
    assert_eq!(err.kind(), RunnerErrorKind::Unavailable);
    assert_eq!(
        std::fs::read(root.join("old.txt")).expect("read"),
        b"old contents"
    );
    let mut request = RunnerFileWriteRequest::new("created.txt", Vec::new());
    request.offset = Some(0);
    let err = s
        .write_file_stream(request, failing_body(&[b"x"]))
        .await
        .expect_err("the body fails");
    assert_eq!(err.kind(), RunnerErrorKind::Unavailable);
    assert_eq!(names(&root), vec!["old.txt".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_write_leaves_no_temp_file() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = area.path("root");
    std::fs::write(root.join("kept.txt"), b"kept").expect("seed");
    for target in ["kept.txt", "fresh.txt"] {
        // One chunk, then a body that never ends.
        let body: RunnerByteStream = Box::pin(
            futures_util::stream::iter([Ok(Bytes::from_static(b"partial"))])
                .chain(futures_util::stream::pending()),
        );
        let request = RunnerFileWriteRequest::new(target, Vec::new());
        let write = s.write_file_stream(request, body);
        let root_now = root.clone();
        // Drive the write until its temp file exists, then drop it.
        let started = async {
            eventually(std::time::Duration::from_secs(10), || {
                let root = root_now.clone();
                async move { names(&root).iter().any(|n| n.starts_with(".runner-write-")) }
            })
            .await
        };
        tokio::select! {
            result = write => panic!("a body that never ends finished: {result:?}"),
            started = started => assert!(started, "the write never began"),
        }
        let root_now = root.clone();
        let cleaned = eventually(std::time::Duration::from_secs(10), || {
            let root = root_now.clone();
            async move { !names(&root).iter().any(|n| n.starts_with(".runner-write-")) }
        })
        .await;
        assert!(cleaned, "a temp file was left: {:?}", names(&root));
        assert_eq!(names(&root), vec!["kept.txt".to_string()], "{target}");
        assert_eq!(std::fs::read(root.join("kept.txt")).expect("read"), b"kept");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_stream_both_ways_in_small_chunks() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let mut builder = tar::Builder::new(Vec::new());
    let big: Vec<u8> = (0..=250u8).cycle().take(700_000).collect();
    for (name, data) in [("a/one.txt", &b"one"[..]), ("a/b/big.bin", &big[..])] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, name, data)
            .expect("append");
    }
    let archive = builder.into_inner().expect("tar");
    // 1000-byte chunks: headers and contents split across chunk boundaries.
    let chunks: Vec<RunnerResult<Bytes>> = archive
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    s.upload_archive_stream(
        Path::new("up"),
        Box::pin(futures_util::stream::iter(chunks)),
    )
    .await
    .expect("upload");
    let root = area.path("root");
    assert_eq!(
        std::fs::read(root.join("up/a/b/big.bin")).expect("big"),
        big
    );
    assert_eq!(
        std::fs::read(root.join("up/a/one.txt")).expect("one"),
        b"one"
    );

    let stream = s
        .download_archive_stream(Path::new("up"))
        .await
        .expect("download");
    let mut largest = 0;
    let mut all = Vec::new();
    let mut stream = stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        largest = largest.max(chunk.len());
        all.extend_from_slice(&chunk);
    }
    assert!(largest <= 256 * 1024, "a chunk of {largest} bytes");
    let mut reader = tar::Archive::new(all.as_slice());
    let mut seen = Vec::new();
    for entry in reader.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
        seen.push((name, data.len()));
    }
    assert_eq!(
        seen,
        vec![
            ("a".to_string(), 0),
            ("a/b".to_string(), 0),
            ("a/b/big.bin".to_string(), big.len()),
            ("a/one.txt".to_string(), 3),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_upload_body_writes_nothing() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(3);
    builder
        .append_data(&mut header, "first.txt", &b"one"[..])
        .expect("append");
    let archive = builder.into_inner().expect("tar");
    // The first entry whole, then the body fails.
    let err = s
        .upload_archive_stream(Path::new("up"), failing_body(&[&archive[..1024]]))
        .await
        .expect_err("the body fails");
    assert_eq!(err.kind(), RunnerErrorKind::Unavailable, "{err}");
    assert!(!area.path("root/up/first.txt").exists());
    // A target the session may not write is refused before the body is read.
    let unread: RunnerByteStream = Box::pin(futures_util::stream::once(async {
        panic!("the body of a refused upload was read")
    }));
    let err = s
        .upload_archive_stream(Path::new("../outside"), unread)
        .await
        .expect_err("outside");
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied);
}
