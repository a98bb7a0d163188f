//! paths: the workspace rule, enforced by the stack's workspace layer
//! (`RemoteWorkspace` at the session's root) over every session.
//!
//! Each check takes a fresh session as the stack composes it and tries to
//! leave the workspace root; the outside directory
//! (`<root>/../conformance-outside-<uuid>`) is created by a command (commands
//! may write anywhere the runner lets them) and must be unchanged after every
//! refusal.

use std::path::{Path, PathBuf};

use runner_api::{
    RunnerCommandRequest, RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest,
};

use crate::catalogue::{Area, Capability::*, Check};
use crate::commands::{quote, sh_ok, unique_id};
use crate::context::{Cx, Session};
use crate::fixtures::outside::{Outside, SECRET};
use crate::outcome::{CheckResult, Expect, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Paths;
    const LINKS: &[crate::catalogue::Capability] = &[CommandExec, FileManagement];
    vec![
        Check::new(
            "paths_dotdot_read_refused",
            a,
            &[FileRead],
            "RemoteWorkspace: rejects `..` escapes — read_file is PermissionDenied.",
            |cx| Box::pin(dotdot_read_refused(cx)),
        ),
        Check::new(
            "paths_dotdot_write_refused",
            a,
            &[FileWrite],
            "RemoteWorkspace: \"writes … stay under root\"; `..` escapes are PermissionDenied, nothing outside changes.",
            |cx| Box::pin(dotdot_write_refused(cx)),
        ),
        Check::new(
            "paths_absolute_outside_refused",
            a,
            &[FileRead, FileWrite],
            "RemoteWorkspace: rejects \"absolute paths outside\" with PermissionDenied.",
            |cx| Box::pin(absolute_outside_refused(cx)),
        ),
        Check::new(
            "paths_nul_byte_invalid",
            a,
            &[FileRead, FileWrite],
            "RemoteWorkspace: \"Refusals are … InvalidRequest (NUL byte)\".",
            |cx| Box::pin(nul_byte_invalid(cx)),
        ),
        Check::new(
            "paths_absolute_inside_allowed",
            a,
            &[FileRead, FileWrite],
            "RemoteWorkspace: an absolute path inside the root is allowed (as a relative one).",
            |cx| Box::pin(absolute_inside_allowed(cx)),
        ),
        Check::new(
            "paths_symlink_escape_read_refused",
            a,
            &[CommandExec, FileManagement, FileRead],
            "RemoteWorkspace: \"a symlink that leads outside is refused\" — read_file of a link or through a linked dir.",
            |cx| Box::pin(symlink_escape_read_refused(cx)),
        ),
        Check::new(
            "paths_symlink_escape_write_refused",
            a,
            &[CommandExec, FileManagement, FileWrite],
            "RemoteWorkspace: a write through a symlink leading outside is refused; the outside target is unchanged.",
            |cx| Box::pin(symlink_escape_write_refused(cx)),
        ),
        Check::new(
            "paths_symlink_escape_list_dir_refused",
            a,
            LINKS,
            "RemoteWorkspace: list_dir of a symlinked directory outside is refused.",
            |cx| Box::pin(symlink_escape_list_dir_refused(cx)),
        ),
        Check::new(
            "paths_symlink_escape_make_dir_refused",
            a,
            LINKS,
            "RemoteWorkspace: make_dir through a symlinked directory outside is refused; nothing is created outside.",
            |cx| Box::pin(symlink_escape_make_dir_refused(cx)),
        ),
        Check::new(
            "paths_dangling_symlink_write_refused",
            a,
            &[CommandExec, FileManagement, FileWrite],
            "RemoteWorkspace: a dangling symlink whose target is outside cannot be written through.",
            |cx| Box::pin(dangling_symlink_write_refused(cx)),
        ),
        Check::new(
            "paths_cwd_outside_refused",
            a,
            &[CommandExec],
            "RemoteWorkspace: \"the working directory stay[s] under root\" (`..`, absolute, symlinked cwd refused).",
            |cx| Box::pin(cwd_outside_refused(cx)),
        ),
        Check::new(
            "paths_symlink_inside_allowed",
            a,
            &[CommandExec, FileManagement, FileRead],
            "RemoteWorkspace: a symlink that stays inside the workspace is followed, not refused.",
            |cx| Box::pin(symlink_inside_allowed(cx)),
        ),
    ]
}

const DENIED: RunnerErrorKind = RunnerErrorKind::PermissionDenied;

/// A session, its outside directory and a scratch dir.
struct Setup {
    s: Session,
    outside: Outside,
    scratch: PathBuf,
}

async fn setup(cx: &Cx) -> CheckResult<Setup> {
    let s = cx.session().await?;
    let scratch = cx.scratch(&s);
    let outside = Outside::create(&s).await?;
    Ok(Setup {
        s,
        outside,
        scratch,
    })
}

impl Setup {
    /// Links `<scratch>/<name>` to `target` with `ln -s` (creating the scratch dir).
    async fn link(&self, name: &str, target: &str) -> CheckResult<PathBuf> {
        let link = self.scratch.join(name);
        sh_ok(
            self.s.as_ref(),
            &format!(
                "mkdir -p {} && ln -s {} {}",
                quote(&self.scratch.display().to_string()),
                quote(target),
                quote(&link.display().to_string())
            ),
        )
        .await?;
        Ok(link)
    }

    /// `../../<outside>` from inside the scratch directory.
    fn outside_from_scratch(&self) -> String {
        format!("../../{}", self.outside.name)
    }

    async fn finish(self) -> CheckResult {
        self.outside.remove(&self.s).await;
        self.s.close().await.or_fail("close")
    }
}

async fn refuse_read(s: &Session, path: &Path, kind: RunnerErrorKind) -> CheckResult {
    s.read_file(RunnerFileReadRequest::new(path))
        .await
        .fails_with(kind, format!("read_file {}", path.display()))
        .map(|_| ())
}

async fn refuse_write(s: &Session, path: &Path, kind: RunnerErrorKind) -> CheckResult {
    s.write_file(RunnerFileWriteRequest::new(path, b"escaped".to_vec()))
        .await
        .fails_with(kind, format!("write_file {}", path.display()))
        .map(|_| ())
}

/// `..` escapes are refused for reads.
async fn dotdot_read_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let secret = t.outside.rel().join("secret");
    refuse_read(&t.s, &secret, DENIED).await?;
    let deeper = t.scratch.join("a/../..").join(&secret);
    refuse_read(&t.s, &deeper, DENIED).await?;
    t.outside
        .ensure_unchanged(&t.s, "refused `..` reads")
        .await?;
    t.finish().await
}

/// `..` escapes are refused for writes, and nothing outside changes.
async fn dotdot_write_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    for path in [
        t.outside.rel().join("secret"),
        t.outside.rel().join("new.txt"),
        t.scratch
            .join("../..")
            .join(&t.outside.name)
            .join("deeper.txt"),
    ] {
        refuse_write(&t.s, &path, DENIED).await?;
        t.outside
            .ensure_unchanged(&t.s, &format!("a refused write_file {}", path.display()))
            .await?;
    }
    t.finish().await
}

/// Absolute paths outside the root are refused.
async fn absolute_outside_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let secret = t.outside.abs.join("secret");
    refuse_read(&t.s, &secret, DENIED).await?;
    refuse_read(&t.s, Path::new("/etc/passwd"), DENIED).await?;
    refuse_write(&t.s, &secret, DENIED).await?;
    refuse_write(&t.s, &t.outside.abs.join("new.txt"), DENIED).await?;
    t.outside
        .ensure_unchanged(&t.s, "refused absolute writes")
        .await?;
    t.finish().await
}

/// A NUL byte in a path is `InvalidRequest`.
async fn nul_byte_invalid(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let path = PathBuf::from("bad\0name.txt");
    refuse_read(&s, &path, RunnerErrorKind::InvalidRequest).await?;
    refuse_write(&s, &path, RunnerErrorKind::InvalidRequest).await?;
    s.close().await.or_fail("close")
}

/// An absolute path inside the workspace works like a relative one.
async fn absolute_inside_allowed(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let rel = cx.scratch(&s).join("inside.txt");
    let abs = s.workspace_root().join(&rel);
    s.write_file(RunnerFileWriteRequest::new(&abs, b"inside".to_vec()))
        .await
        .or_fail(format!("write_file {}", abs.display()))?;
    let got = s
        .read_file(RunnerFileReadRequest::new(&rel))
        .await
        .or_fail(format!("read_file {}", rel.display()))?;
    same_bytes(
        &got.contents,
        b"inside",
        "a file written by absolute path, read by relative path",
    )?;
    let got = s
        .read_file(RunnerFileReadRequest::new(&abs))
        .await
        .or_fail(format!("read_file {}", abs.display()))?;
    same_bytes(
        &got.contents,
        b"inside",
        "the same file read by absolute path",
    )?;
    s.close().await.or_fail("close")
}

/// Reading a link to an outside file, or through a linked outside dir, is refused.
async fn symlink_escape_read_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let file_link = t
        .link("file-link", &format!("{}/secret", t.outside_from_scratch()))
        .await?;
    let dir_link = t.link("dir-link", &t.outside_from_scratch()).await?;
    refuse_read(&t.s, &file_link, DENIED).await?;
    refuse_read(&t.s, &dir_link.join("secret"), DENIED).await?;
    t.outside
        .ensure_unchanged(&t.s, "refused reads through symlinks")
        .await?;
    t.finish().await
}

/// Writing to a link to an outside file, or through a linked dir, is refused.
async fn symlink_escape_write_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let file_link = t
        .link("file-link", &format!("{}/secret", t.outside_from_scratch()))
        .await?;
    let dir_link = t.link("dir-link", &t.outside_from_scratch()).await?;
    refuse_write(&t.s, &file_link, DENIED).await?;
    t.outside
        .ensure_unchanged(&t.s, "a refused write_file to a symlink")
        .await?;
    refuse_write(&t.s, &dir_link.join("secret"), DENIED).await?;
    refuse_write(&t.s, &dir_link.join("new.txt"), DENIED).await?;
    t.outside
        .ensure_unchanged(&t.s, "refused writes through a symlinked directory")
        .await?;
    let secret = sh_ok(
        t.s.as_ref(),
        &format!(
            "cat {}",
            quote(&t.outside.abs.join("secret").display().to_string())
        ),
    )
    .await?;
    ensure_eq!(secret, SECRET, "the outside file after refused writes");
    t.finish().await
}

/// Listing a linked outside directory is refused.
async fn symlink_escape_list_dir_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let dir_link = t.link("dir-link", &t.outside_from_scratch()).await?;
    t.s.list_dir(&dir_link)
        .await
        .fails_with(DENIED, format!("list_dir {}", dir_link.display()))?;
    t.finish().await
}

/// `make_dir` through a linked outside directory is refused.
async fn symlink_escape_make_dir_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let dir_link = t.link("dir-link", &t.outside_from_scratch()).await?;
    let sub = dir_link.join("made-outside/deeper");
    t.s.make_dir(&sub)
        .await
        .fails_with(DENIED, format!("make_dir {}", sub.display()))?;
    t.outside
        .ensure_unchanged(&t.s, "a refused make_dir through a symlink")
        .await?;
    t.finish().await
}

/// A dangling link pointing outside cannot be written through.
async fn dangling_symlink_write_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let target = format!("{}/created-through-dangling-link", t.outside_from_scratch());
    let link = t.link("dangling", &target).await?;
    refuse_write(&t.s, &link, DENIED).await?;
    t.outside
        .ensure_unchanged(&t.s, "a refused write_file to a dangling symlink")
        .await?;
    t.finish().await
}

/// A cwd outside the root (`..`, absolute, through a symlink) is refused and nothing runs.
async fn cwd_outside_refused(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let dir_link = t.link("dir-link", &t.outside_from_scratch()).await?;
    let mut cwds = vec![PathBuf::from(".."), t.outside.rel(), t.outside.abs.clone()];
    if cx.has(FileManagement) {
        cwds.push(dir_link);
    }
    for cwd in cwds {
        let request =
            RunnerCommandRequest::shell(unique_id("cwd-outside"), "printf ran > ran-here.txt")
                .with_cwd(&cwd)
                .with_timeout_ms(30_000);
        t.s.run_command(request)
            .await
            .fails_with(DENIED, format!("run_command with cwd {}", cwd.display()))?;
        t.outside
            .ensure_unchanged(
                &t.s,
                &format!("a refused command with cwd {}", cwd.display()),
            )
            .await?;
    }
    t.finish().await
}

/// A symlink that stays inside the workspace is followed.
async fn symlink_inside_allowed(cx: Cx) -> CheckResult {
    let t = setup(&cx).await?;
    let target = t.scratch.join("real/file.txt");
    sh_ok(
        t.s.as_ref(),
        &format!(
            "mkdir -p {dir} && printf inside > {file}",
            dir = quote(&t.scratch.join("real").display().to_string()),
            file = quote(&target.display().to_string())
        ),
    )
    .await?;
    let link = t.link("inner-link", "real/file.txt").await?;
    let got =
        t.s.read_file(RunnerFileReadRequest::new(&link))
            .await
            .or_fail(format!(
                "read_file {} (a link inside the workspace)",
                link.display()
            ))?;
    same_bytes(
        &got.contents,
        b"inside",
        "contents read through an inside symlink",
    )?;
    let dir_link = t.link("inner-dir-link", "real").await?;
    let entries = t.s.list_dir(&dir_link).await.or_fail(format!(
        "list_dir {} (a link inside the workspace)",
        dir_link.display()
    ))?;
    let names: Vec<String> = entries.into_iter().map(|e| e.name).collect();
    ensure_eq!(
        names,
        vec!["file.txt".to_string()],
        "entries listed through an inside directory link"
    );
    t.finish().await
}
