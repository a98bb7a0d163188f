//! Staged bulk transfers (`serve --stage-dir`): an upload put into the
//! staging directory is written into the workspace by the agent with every
//! check of `write_file`; a download is staged by the agent after every check
//! of `read_file`; only directories the agent made are accepted, and nothing
//! stays staged. (These tests run as root, the one user whose agent stages.)

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use runner_agent::Download;
use runner_api::{RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest};
use support::{ConnectPids, Launcher};

fn staged_left(socket: &Path) -> usize {
    std::fs::read_dir(Launcher::stage_dir(socket))
        .map(|entries| entries.count())
        .unwrap_or(usize::MAX)
}

#[tokio::test]
async fn staged_uploads_and_downloads_keep_every_check() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let launcher = Launcher::staging();
    let agent = launcher
        .launch(&support::root_destination("stage-tests", root.path()), None)
        .await
        .unwrap();
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    if !nix::unistd::geteuid().is_root() {
        // Not root: the flag is ignored, every byte takes the stream.
        assert!(!session.stages(), "only an agent running as root stages");
        return;
    }
    assert!(session.stages(), "an agent as root with --stage-dir stages");

    // An upload: put into the staged path, committed by the agent.
    let staged = session.stage_upload().await.unwrap();
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    std::fs::write(&staged.path, &bytes).unwrap();
    let mut request = RunnerFileWriteRequest::new("deep/up.bin", Vec::new());
    request.mode = Some(0o640);
    session.commit_upload(request, &staged.stage).await.unwrap();
    let written = root.path().join("deep/up.bin");
    assert_eq!(std::fs::read(&written).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&written).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(staged_left(&agent.socket), 0, "the committed stage is gone");

    // A commit through a symlink out of the workspace is refused; nothing
    // lands outside and the stage is removed all the same.
    std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
    let staged = session.stage_upload().await.unwrap();
    std::fs::write(&staged.path, b"escape").unwrap();
    let err = session
        .commit_upload(
            RunnerFileWriteRequest::new("out/x", Vec::new()),
            &staged.stage,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
    assert!(!outside.path().join("x").exists());
    assert_eq!(staged_left(&agent.socket), 0);

    // A staged file that is a symlink is not followed.
    let staged = session.stage_upload().await.unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &staged.path).unwrap();
    let err = session
        .commit_upload(
            RunnerFileWriteRequest::new("passwd", Vec::new()),
            &staged.stage,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            RunnerErrorKind::InvalidRequest | RunnerErrorKind::PermissionDenied
        ),
        "{err}"
    );
    assert!(!root.path().join("passwd").exists());

    // Only the agent's own stages are accepted.
    let err = session
        .commit_upload(RunnerFileWriteRequest::new("y", Vec::new()), "../../etc")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::NotFound, "{err}");

    // Downloads: small ones inline, large ones staged with the same bytes.
    match session
        .stage_download(RunnerFileReadRequest::new("deep/up.bin"), u64::MAX)
        .await
        .unwrap()
    {
        Download::Inline(read) => assert_eq!(read.contents, bytes),
        Download::Staged(staged) => panic!("a read under min_bytes was staged: {staged:?}"),
    }
    let mut window = RunnerFileReadRequest::new("deep/up.bin");
    window.offset = Some(1000);
    window.limit = Some(2 * 1024 * 1024);
    match session.stage_download(window, 1).await.unwrap() {
        Download::Staged(staged) => {
            assert_eq!(staged.size, 2 * 1024 * 1024);
            assert_eq!(
                std::fs::read(&staged.path).unwrap(),
                bytes[1000..1000 + 2 * 1024 * 1024]
            );
            session.drop_stage(&staged.stage).await.unwrap();
        }
        Download::Inline(_) => panic!("a read over min_bytes came back inline"),
    }
    assert_eq!(staged_left(&agent.socket), 0, "a dropped stage is gone");
    let err = session
        .stage_download(RunnerFileReadRequest::new("out/../../etc/passwd"), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::PermissionDenied, "{err}");
    runner_api::RemoteRunnerSession::close(&session)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_agent_without_a_stage_dir_stages_nothing() {
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new();
    let agent = launcher
        .launch(&support::root_destination("stage-tests", root.path()), None)
        .await
        .unwrap();
    let session = support::connect(&agent, ConnectPids::default())
        .await
        .unwrap();
    assert!(!session.stages());
    let err = session.stage_upload().await.unwrap_err();
    assert_eq!(err.kind(), RunnerErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("--stage-dir"), "{err}");
    runner_api::RemoteRunnerSession::close(&session)
        .await
        .unwrap();
}
