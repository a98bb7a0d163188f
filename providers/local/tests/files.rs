//! File API of the unix-local provider against a real temp directory:
//! confinement (symlinks, `..`, absolute paths, archives), atomic writes, and
//! the ordinary operations.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use runner_api::{
    RemoteRunnerProvider, RemoteRunnerSession, RunnerCommandRequest, RunnerErrorKind,
    RunnerFileKind, RunnerFileReadRequest, RunnerFileWriteRequest,
};
use support::{Area, kind, session, tree};

fn write(path: &str, contents: &str) -> RunnerFileWriteRequest {
    RunnerFileWriteRequest::new(path, contents.as_bytes().to_vec())
}

/// A tar built header by header, so it can hold what `tar::Builder` refuses
/// to write (absolute paths, `..`).
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut header = tar::Header::new_old();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("finish")
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_made_by_a_command_never_lead_the_file_api_outside() {
    let area = Area::new();
    let outside = area.path("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret.txt"), "secret").expect("secret");
    let before = tree(&outside);
    let s = session(area.rooted_config()).await;
    let script = format!(
        "ln -s {o} esc && ln -s {o}/secret.txt esc_file && ln -s ../outside rel_esc && echo hi > a.txt",
        o = outside.display()
    );
    let res = s
        .run_command(RunnerCommandRequest::shell("mk", script))
        .await
        .expect("run");
    assert_eq!(res.exit_code, Some(0), "{}", res.stderr);

    let denied = RunnerErrorKind::PermissionDenied;
    for link in ["esc", "rel_esc"] {
        let p = |rest: &str| PathBuf::from(format!("{link}/{rest}"));
        assert_eq!(
            kind(
                s.read_file(RunnerFileReadRequest::new(p("secret.txt")))
                    .await
            ),
            denied
        );
        assert_eq!(
            kind(s.write_file(write(&format!("{link}/new.txt"), "x")).await),
            denied
        );
        assert_eq!(
            kind(
                s.write_file(write(&format!("{link}/secret.txt"), "x"))
                    .await
            ),
            denied
        );
        assert_eq!(kind(s.list_dir(Path::new(link)).await), denied);
        assert_eq!(kind(s.remove(&p("secret.txt"), false).await), denied);
        assert_eq!(kind(s.make_dir(&p("sub")).await), denied);
        assert_eq!(
            kind(s.rename(&p("secret.txt"), Path::new("moved.txt")).await),
            denied
        );
        assert_eq!(
            kind(s.rename(Path::new("a.txt"), &p("a.txt")).await),
            denied
        );
        assert_eq!(kind(s.canonicalize(Path::new(link)).await), denied);
        assert_eq!(kind(s.download_archive(Path::new(link)).await), denied);
        let archive = raw_tar(&[("x.txt", tar::EntryType::Regular, b"x", None)]);
        assert_eq!(
            kind(s.upload_archive(Path::new(link), archive).await),
            denied
        );
        let through = raw_tar(&[(
            &format!("{link}/x.txt"),
            tar::EntryType::Regular,
            b"x",
            None,
        )]);
        assert_eq!(kind(s.upload_archive(Path::new(""), through).await), denied);
    }
    // Writing a symlink to an outside file: refused, the file is untouched.
    assert_eq!(kind(s.write_file(write("esc_file", "pwned")).await), denied);
    assert_eq!(
        kind(s.read_file(RunnerFileReadRequest::new("esc_file")).await),
        denied
    );
    // A command's cwd through the link is refused too.
    let escaped = RunnerCommandRequest::new("cwd", "pwd", Vec::<String>::new()).with_cwd("esc");
    assert_eq!(kind(s.run_command(escaped).await), denied);

    // The links themselves can be inspected and removed (lstat semantics).
    let st = s.stat(Path::new("esc")).await.expect("stat link");
    assert_eq!(st.kind, RunnerFileKind::Symlink);
    assert_eq!(st.symlink_target.as_deref(), Some(outside.as_path()));
    s.remove(Path::new("esc"), true)
        .await
        .expect("remove the link");

    assert_eq!(tree(&outside), before, "nothing outside changed");
    assert!(!area.path("moved.txt").exists());
    s.close().await.expect("close");
    assert_eq!(tree(&outside), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn dotdot_absolute_and_nul_paths() {
    let area = Area::new();
    std::fs::create_dir_all(area.path("root")).expect("root");
    std::fs::write(area.path("sibling.txt"), "s").expect("sibling");
    let s = session(area.rooted_config()).await;
    let root = s.workspace_root();
    let denied = RunnerErrorKind::PermissionDenied;
    assert_eq!(
        kind(
            s.read_file(RunnerFileReadRequest::new("../sibling.txt"))
                .await
        ),
        denied
    );
    assert_eq!(
        kind(
            s.read_file(RunnerFileReadRequest::new("/etc/hostname"))
                .await
        ),
        denied
    );
    assert_eq!(kind(s.write_file(write("a/../../x", "x")).await), denied);
    let abs_escape = root.join("..").join("sibling.txt");
    assert_eq!(
        kind(s.read_file(RunnerFileReadRequest::new(abs_escape)).await),
        denied
    );
    let err = s.write_file(write("../x", "x")).await.expect_err("outside");
    assert!(err.message().contains("outside the workspace"), "{err}");
    assert_eq!(
        kind(s.read_file(RunnerFileReadRequest::new("a\0b")).await),
        RunnerErrorKind::InvalidRequest
    );
    // Absolute paths under the root and harmless `..` inside work.
    s.write_file(RunnerFileWriteRequest::new(
        root.join("d/f.txt"),
        b"ok".to_vec(),
    ))
    .await
    .expect("absolute write");
    let read = s
        .read_file(RunnerFileReadRequest::new("d/../d/./f.txt"))
        .await
        .expect("read");
    assert_eq!(read.contents, b"ok");
    assert_eq!(
        kind(s.remove(Path::new("."), true).await),
        RunnerErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(s.remove(&root, true).await),
        RunnerErrorKind::PermissionDenied
    );
    assert!(!area.path("x").exists());
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_archive_refuses_escaping_entries() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let cases: Vec<(Vec<u8>, RunnerErrorKind, &str)> = vec![
        (
            raw_tar(&[("/tmp/abs.txt", tar::EntryType::Regular, b"x", None)]),
            RunnerErrorKind::PermissionDenied,
            "/tmp/abs.txt",
        ),
        (
            raw_tar(&[("../up.txt", tar::EntryType::Regular, b"x", None)]),
            RunnerErrorKind::PermissionDenied,
            "../up.txt",
        ),
        (
            raw_tar(&[("abs_link", tar::EntryType::Symlink, b"", Some("/etc"))]),
            RunnerErrorKind::PermissionDenied,
            "abs_link",
        ),
        (
            raw_tar(&[("d/up_link", tar::EntryType::Symlink, b"", Some("../../.."))]),
            RunnerErrorKind::PermissionDenied,
            "d/up_link",
        ),
        (
            raw_tar(&[("hard", tar::EntryType::Link, b"", Some("a.txt"))]),
            RunnerErrorKind::InvalidRequest,
            "hard",
        ),
        (
            raw_tar(&[("fifo", tar::EntryType::Fifo, b"", None)]),
            RunnerErrorKind::InvalidRequest,
            "fifo",
        ),
    ];
    for (archive, expected, entry) in cases {
        let err = s
            .upload_archive(Path::new("in"), archive)
            .await
            .expect_err(entry);
        assert_eq!(err.kind(), expected, "{err}");
        assert!(err.message().contains(entry), "{err}");
    }
    assert!(!area.path("up.txt").exists());
    assert!(!Path::new("/tmp/abs.txt").exists());
    // An inside symlink and a file through it are fine.
    let ok = raw_tar(&[
        ("d/", tar::EntryType::Directory, b"", None),
        ("d/f.txt", tar::EntryType::Regular, b"hello", None),
        ("d/link", tar::EntryType::Symlink, b"", Some("f.txt")),
        ("top", tar::EntryType::Symlink, b"", Some("d")),
    ]);
    s.upload_archive(Path::new("in"), ok).await.expect("upload");
    let read = s
        .read_file(RunnerFileReadRequest::new("in/top/link"))
        .await
        .expect("read through inside links");
    assert_eq!(read.contents, b"hello");
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_atomic_keep_modes_and_leave_no_temp_files() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = s.workspace_root();
    s.write_file(write("a/b/new.txt", "one"))
        .await
        .expect("write");
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("a/b/new.txt"), 0o644);
    let mut exec = write("run.sh", "#!/bin/sh\necho ran\n");
    exec.mode = Some(0o755);
    s.write_file(exec).await.expect("write with mode");
    assert_eq!(mode("run.sh"), 0o755);
    s.write_file(write("run.sh", "#!/bin/sh\necho again\n"))
        .await
        .expect("overwrite");
    assert_eq!(mode("run.sh"), 0o755, "an overwrite keeps the mode");
    let ran = s
        .run_command(RunnerCommandRequest::new(
            "x",
            "./run.sh",
            Vec::<String>::new(),
        ))
        .await
        .expect("run");
    assert_eq!(ran.stdout, "again\n");

    // Onto a directory: refused, nothing left behind.
    assert_eq!(
        kind(s.write_file(write("a/b", "x")).await),
        RunnerErrorKind::InvalidRequest
    );
    // Under a file: refused, nothing left behind.
    assert!(s.write_file(write("run.sh/x", "x")).await.is_err());
    // Through an inside symlink: the target changes, the link stays.
    std::os::unix::fs::symlink("a/b/new.txt", root.join("link")).expect("link");
    s.write_file(write("link", "two"))
        .await
        .expect("write through link");
    assert!(
        std::fs::symlink_metadata(root.join("link"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("a/b/new.txt")).expect("read"),
        "two"
    );

    let leftovers: Vec<_> = tree(&root)
        .into_iter()
        .filter(|(p, _, _)| p.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_list_stat_remove_make_dir_rename_canonicalize() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = s.workspace_root();
    let mut bin = RunnerFileWriteRequest::new("data.bin", (0..=255u8).collect::<Vec<_>>());
    bin.mode = Some(0o600);
    s.write_file(bin).await.expect("write");
    let mut ranged = RunnerFileReadRequest::new("data.bin");
    ranged.offset = Some(250);
    ranged.limit = Some(100);
    let read = s.read_file(ranged).await.expect("ranged read");
    assert_eq!(read.contents, vec![250, 251, 252, 253, 254, 255]);
    assert_eq!(read.size, 256);
    assert_eq!(
        kind(s.read_file(RunnerFileReadRequest::new("missing")).await),
        RunnerErrorKind::NotFound
    );
    s.make_dir(Path::new("dir/sub")).await.expect("mkdir -p");
    s.make_dir(Path::new("dir/sub"))
        .await
        .expect("existing dir is ok");
    assert_eq!(
        kind(s.make_dir(Path::new("data.bin")).await),
        RunnerErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(s.read_file(RunnerFileReadRequest::new("dir")).await),
        RunnerErrorKind::InvalidRequest
    );
    std::os::unix::fs::symlink("../data.bin", root.join("dir/ln")).expect("symlink");
    let listed = s.list_dir(Path::new("dir")).await.expect("list");
    let names: Vec<_> = listed.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        names,
        vec![
            ("ln", RunnerFileKind::Symlink),
            ("sub", RunnerFileKind::Directory)
        ]
    );
    assert_eq!(listed[0].path, Path::new("dir/ln"));
    let st = s.stat(Path::new("data.bin")).await.expect("stat");
    assert_eq!(
        (st.kind, st.size, st.mode),
        (RunnerFileKind::File, 256, 0o600)
    );
    assert_eq!(
        kind(s.list_dir(Path::new("data.bin")).await),
        RunnerErrorKind::InvalidRequest
    );
    let err = s
        .remove(Path::new("dir"), false)
        .await
        .expect_err("not empty");
    assert_eq!(err.kind(), RunnerErrorKind::AlreadyExists);
    assert!(err.message().contains("not empty"), "{err}");
    assert_eq!(
        s.canonicalize(Path::new("dir/ln"))
            .await
            .expect("canonicalize"),
        root.join("data.bin")
    );
    assert_eq!(s.canonicalize(Path::new(".")).await.expect("root"), root);
    s.rename(Path::new("data.bin"), Path::new("dir/sub/moved.bin"))
        .await
        .expect("rename");
    assert_eq!(
        kind(s.rename(Path::new("data.bin"), Path::new("x")).await),
        RunnerErrorKind::NotFound
    );
    s.remove(Path::new("dir"), true).await.expect("remove -r");
    assert_eq!(
        kind(s.stat(Path::new("dir")).await),
        RunnerErrorKind::NotFound
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_round_trip_with_symlinks_and_modes() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = s.workspace_root();
    std::fs::create_dir_all(root.join("src/nested")).expect("dirs");
    std::fs::write(root.join("src/nested/a.txt"), "a").expect("a");
    std::fs::write(root.join("src/tool.sh"), "#!/bin/sh\n").expect("tool");
    std::fs::set_permissions(
        root.join("src/tool.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("nested/a.txt", root.join("src/link")).expect("link");
    let archive = s
        .download_archive(Path::new("src"))
        .await
        .expect("download");
    s.upload_archive(Path::new("copy"), archive)
        .await
        .expect("upload");
    assert_eq!(tree(&root.join("copy")), tree(&root.join("src")));
    let single = s
        .download_archive(Path::new("src/tool.sh"))
        .await
        .expect("single file");
    s.upload_archive(Path::new("one"), single)
        .await
        .expect("upload one");
    assert_eq!(
        std::fs::metadata(root.join("one/tool.sh"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    assert_eq!(
        kind(s.download_archive(Path::new("nope")).await),
        RunnerErrorKind::NotFound
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn works_behind_remote_workspace() {
    let area = Area::new();
    std::fs::create_dir_all(area.path("outside")).expect("outside");
    std::fs::write(area.path("outside/secret.txt"), "secret").expect("secret");
    let s = session(area.rooted_config()).await;
    let ws = runner_stack::RemoteWorkspace::for_session(s.clone());
    ws.write_file(write("a/b.txt", "x")).await.expect("write");
    let read = ws
        .read_file(RunnerFileReadRequest::new("a/b.txt"))
        .await
        .expect("read");
    assert_eq!(read.contents, b"x");
    let res = ws
        .run_command(RunnerCommandRequest::shell(
            "ln",
            format!("ln -s {} esc && pwd", area.path("outside").display()),
        ))
        .await
        .expect("run");
    assert_eq!(
        res.stdout.trim_end(),
        s.workspace_root().display().to_string()
    );
    assert_eq!(
        kind(
            ws.read_file(RunnerFileReadRequest::new("esc/secret.txt"))
                .await
        ),
        RunnerErrorKind::PermissionDenied
    );
    let listed = ws.list_dir(Path::new("a")).await.expect("list");
    assert_eq!(listed[0].path, Path::new("a/b.txt"));
    ws.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn fifos_are_refused_at_once_and_the_session_keeps_working() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let made = s
        .run_command(RunnerCommandRequest::shell(
            "fifo",
            "mkdir d && mkfifo d/pipe && ln -s pipe d/link",
        ))
        .await
        .expect("mkfifo");
    assert_eq!(made.exit_code, Some(0), "{made:?}");
    let limit = std::time::Duration::from_secs(30);
    for path in ["d/pipe", "d/link"] {
        let read = tokio::time::timeout(limit, s.read_file(RunnerFileReadRequest::new(path)))
            .await
            .unwrap_or_else(|_| panic!("read_file {path} waits for a writer"));
        let err = read.expect_err("a FIFO is not a file to read");
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
        assert!(err.message().contains(path), "{err}");
        let download = tokio::time::timeout(limit, s.download_archive(Path::new(path)))
            .await
            .unwrap_or_else(|_| panic!("download_archive {path} waits for a writer"));
        assert_eq!(kind(download), RunnerErrorKind::InvalidRequest);
    }
    // A directory holding a FIFO downloads without it.
    let tar = tokio::time::timeout(limit, s.download_archive(Path::new("d")))
        .await
        .expect("download_archive of the directory waits")
        .expect("download the directory");
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(names, vec!["link".to_string()]);
    s.write_file(write("after.txt", "still works"))
        .await
        .expect("write after");
    let back = s
        .read_file(RunnerFileReadRequest::new("after.txt"))
        .await
        .expect("read after");
    assert_eq!(back.contents, b"still works");
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn set_id_bits_never_reach_the_workspace() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = s.workspace_root();
    let mut setuid = write("suid.sh", "#!/bin/sh\n");
    setuid.mode = Some(0o6755);
    s.write_file(setuid).await.expect("write");
    // Rewriting a file a command made set-id keeps its mode without the bits.
    s.run_command(RunnerCommandRequest::shell(
        "chmod",
        "touch made && chmod 4755 made",
    ))
    .await
    .expect("chmod");
    s.write_file(write("made", "new")).await.expect("rewrite");
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o4755);
    header.set_size(1);
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, "up.sh", &b"x"[..])
        .expect("append");
    s.upload_archive(Path::new("up"), builder.into_inner().expect("tar"))
        .await
        .expect("upload");
    for (name, want) in [("suid.sh", 0o755), ("made", 0o755), ("up/up.sh", 0o755)] {
        let mode = std::fs::metadata(root.join(name))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, want, "{name}: {mode:o}");
    }
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_bounded_by_max_upload_bytes() {
    let area = Area::new();
    let mut config = area.rooted_config();
    config["max_upload_bytes"] = serde_json::json!(16);
    let s = session(config).await;
    let tar = |size: usize| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(size as u64);
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_data(&mut header, "data.bin", &vec![b'x'; size][..])
            .expect("append");
        builder.into_inner().expect("tar")
    };
    let err = s
        .upload_archive(Path::new("big"), tar(17))
        .await
        .expect_err("17 bytes above a bound of 16");
    assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
    assert!(!s.workspace_root().join("big/data.bin").exists());
    s.upload_archive(Path::new("small"), tar(16))
        .await
        .expect("16 bytes fit");
    assert_eq!(
        std::fs::read(s.workspace_root().join("small/data.bin")).expect("read"),
        vec![b'x'; 16]
    );
    s.close().await.expect("close");
}

fn write_at(path: &str, offset: u64, contents: &str) -> RunnerFileWriteRequest {
    let mut request = write(path, contents);
    request.offset = Some(offset);
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_at_an_offset_patch_append_and_create_in_place() {
    let area = Area::new();
    let s = session(area.rooted_config()).await;
    let root = s.workspace_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect("read");
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777
    };
    s.write_file(write("f.txt", "hello world"))
        .await
        .expect("write");
    let inode = |p: &str| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(root.join(p)).expect("meta"))
    };
    let before = inode("f.txt");
    s.write_file(write_at("f.txt", 6, "there"))
        .await
        .expect("patch");
    assert_eq!(read("f.txt"), "hello there");
    s.write_file(write_at("f.txt", 11, "!"))
        .await
        .expect("append at the size");
    assert_eq!(read("f.txt"), "hello there!");
    assert_eq!(inode("f.txt"), before, "written in place, not replaced");
    // A mode in the request applies; without one the file keeps its own.
    let mut chmod = write_at("f.txt", 0, "H");
    chmod.mode = Some(0o4600);
    s.write_file(chmod).await.expect("write with a mode");
    assert_eq!(
        (read("f.txt").as_str(), mode("f.txt")),
        ("Hello there!", 0o600)
    );
    s.write_file(write_at("f.txt", 1, "E"))
        .await
        .expect("write");
    assert_eq!(mode("f.txt"), 0o600);
    // Offset 0 of a missing file creates it, its directories too, mode masked.
    let mut fresh = write_at("new/dir/fresh.txt", 0, "abc");
    fresh.mode = Some(0o2750);
    s.write_file(fresh).await.expect("create at 0");
    assert_eq!(
        (
            read("new/dir/fresh.txt").as_str(),
            mode("new/dir/fresh.txt")
        ),
        ("abc", 0o750)
    );
    s.write_file(write_at("new/plain.txt", 0, "x"))
        .await
        .expect("create");
    assert_eq!(mode("new/plain.txt"), 0o644);
    // Through an inside symlink: the target changes, the link stays.
    std::os::unix::fs::symlink("f.txt", root.join("link")).expect("link");
    s.write_file(write_at("link", 12, "?"))
        .await
        .expect("through the link");
    assert_eq!(read("f.txt"), "HEllo there!?");
    assert!(
        std::fs::symlink_metadata(root.join("link"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_at_an_offset_past_the_end_outside_or_read_only_are_refused_and_change_nothing() {
    let area = Area::new();
    let outside = area.path("outside.txt");
    std::fs::write(&outside, "outside").expect("outside");
    let manifest = runner_api::RunnerManifest {
        entries: vec![runner_api::RunnerManifestEntry {
            source: outside.clone(),
            target: "vendor/tool.txt".into(),
            writable: false,
        }],
        mounts: Vec::new(),
    };
    let s = runner_local::LocalProvider::new()
        .create_session(support::destination_with(area.rooted_config(), manifest))
        .await
        .expect("create");
    let root = s.workspace_root();
    s.write_file(write("f.txt", "12345")).await.expect("write");
    std::os::unix::fs::symlink(&outside, root.join("out")).expect("link out");
    std::os::unix::fs::symlink("vendor/tool.txt", root.join("ro-link")).expect("link");
    std::fs::create_dir(root.join("d")).expect("mkdir");
    let before = tree(&root);
    let made = s
        .run_command(RunnerCommandRequest::shell("fifo", "mkfifo pipe"))
        .await
        .expect("mkfifo");
    assert_eq!(made.exit_code, Some(0), "{made:?}");
    for (path, offset) in [("f.txt", 6), ("missing.txt", 1), ("no/such/dir/f.txt", 3)] {
        let err = s
            .write_file(write_at(path, offset, "x"))
            .await
            .expect_err("past the end");
        assert_eq!(err.kind(), RunnerErrorKind::InvalidRequest, "{err}");
        let size = if path == "f.txt" {
            "5 bytes"
        } else {
            "0 bytes"
        };
        for part in [path, &offset.to_string(), size] {
            assert!(err.message().contains(part), "{part} missing from: {err}");
        }
    }
    let limit = std::time::Duration::from_secs(30);
    let fifo = tokio::time::timeout(limit, s.write_file(write_at("pipe", 0, "x")))
        .await
        .expect("a write at an offset of a FIFO waits for a reader");
    assert_eq!(kind(fifo), RunnerErrorKind::InvalidRequest);
    assert_eq!(
        kind(s.write_file(write_at("d", 0, "x")).await),
        RunnerErrorKind::InvalidRequest
    );
    for path in ["out", "../escape.txt", "vendor/tool.txt", "ro-link"] {
        let err = s
            .write_file(write_at(path, 0, "x"))
            .await
            .expect_err("outside or read-only");
        assert_eq!(
            err.kind(),
            RunnerErrorKind::PermissionDenied,
            "{path}: {err}"
        );
    }
    // (`tree` would wait on the FIFO.)
    std::fs::remove_file(root.join("pipe")).expect("remove the FIFO");
    assert_eq!(tree(&root), before, "a refused write changed the workspace");
    assert_eq!(
        std::fs::read_to_string(&outside).expect("outside"),
        "outside"
    );
    assert!(!area.path("escape.txt").exists());
    s.close().await.expect("close");
}
