//! What agent and evaluation frameworks ask of a sandbox beyond the basics:
//! files moved in chunks (writes at an offset) and commands run as a chosen
//! user.

use runner_api::{RunnerErrorKind, RunnerFileReadRequest, RunnerFileWriteRequest};

use crate::catalogue::{Area, Capability, Capability::*, Check};
use crate::commands::{sh_ok, shell};
use crate::context::{Cx, Session};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    vec![
        Check::new(
            "files_write_at_offset",
            Area::Files,
            &[FileRead, FileWrite],
            "RunnerFileWriteRequest.offset: writes in place without truncating, appends at the size, creates at 0; past the end (or a missing file at another offset) is InvalidRequest and changes nothing.",
            |cx| Box::pin(write_at_offset(cx)),
        ),
        Check::new(
            "files_write_permission_denied",
            Area::Files,
            &[FileRead, FileWrite, CommandExec],
            "write_file obeys POSIX permissions: a non-root session user gets PermissionDenied for a file mode 0444 or a new file in a directory mode 0555, and nothing changes; root may replace a 0444 file, which keeps its mode.",
            |cx| Box::pin(write_permission_denied(cx)),
        ),
        Check::new(
            "exec_run_as_user",
            Area::Exec,
            &[CommandExec, RunAsUser],
            "RunnerCommandRequest.user: a command runs as the user it names; an unknown user is NotFound naming it; a user the session may not switch to is PermissionDenied naming it.",
            |cx| Box::pin(run_as_user(cx)),
        ),
        Check::new(
            "capabilities_run_as_user",
            Area::Capabilities,
            &[CommandExec],
            "run_as_user: \"RunnerCommandRequest::user is honoured\"; false → a request naming a user is Unsupported.",
            |cx| Box::pin(capability_run_as_user(cx)),
        ),
    ]
}

async fn read_all(s: &Session, path: &std::path::Path) -> CheckResult<Vec<u8>> {
    Ok(s.read_file(RunnerFileReadRequest::new(path))
        .await
        .or_fail(format!("read_file {}", path.display()))?
        .contents)
}

async fn write_at(
    s: &Session,
    path: &std::path::Path,
    offset: u64,
    bytes: &[u8],
) -> runner_api::RunnerResult<()> {
    let mut request = RunnerFileWriteRequest::new(path, bytes.to_vec());
    request.offset = Some(offset);
    s.write_file(request).await
}

/// Writes at an offset patch, append and create; holes are refused.
async fn write_at_offset(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let path = dir.join("chunked.bin");
    s.write_file(RunnerFileWriteRequest::new(&path, b"hello world".to_vec()))
        .await
        .or_fail("write_file hello world")?;
    write_at(&s, &path, 6, b"there")
        .await
        .or_fail("write_file at offset 6")?;
    same_bytes(
        &read_all(&s, &path).await?,
        b"hello there",
        "after a write at offset 6",
    )?;
    write_at(&s, &path, 11, b"!!")
        .await
        .or_fail("write_file at offset 11 (the size)")?;
    write_at(&s, &path, 2, b"")
        .await
        .or_fail("an empty write at offset 2")?;
    same_bytes(
        &read_all(&s, &path).await?,
        b"hello there!!",
        "after appending at the size",
    )?;
    write_at(&s, &path, 100, b"gap").await.fails_with(
        RunnerErrorKind::InvalidRequest,
        "write_file at offset 100 of a 13-byte file",
    )?;
    same_bytes(
        &read_all(&s, &path).await?,
        b"hello there!!",
        "after the refused write past the end",
    )?;
    let fresh = dir.join("fresh.bin");
    write_at(&s, &fresh, 0, b"abc")
        .await
        .or_fail("write_file at offset 0 of a missing file")?;
    same_bytes(
        &read_all(&s, &fresh).await?,
        b"abc",
        "a file created at offset 0",
    )?;
    let missing = dir.join("missing.bin");
    write_at(&s, &missing, 5, b"x").await.fails_with(
        RunnerErrorKind::InvalidRequest,
        "write_file at offset 5 of a missing file",
    )?;
    s.read_file(RunnerFileReadRequest::new(&missing))
        .await
        .fails_with(
            RunnerErrorKind::NotFound,
            "read_file of the file a refused write named",
        )?;
    // A chunked transfer: 3 chunks, then a rename into place.
    let staging = dir.join(".target.part");
    let chunks: [&[u8]; 3] = [&[1; 1000], &[2; 1000], &[3; 17]];
    let mut offset = 0;
    for chunk in chunks {
        write_at(&s, &staging, offset, chunk)
            .await
            .or_fail(format!("chunk at offset {offset}"))?;
        offset += chunk.len() as u64;
    }
    let back = read_all(&s, &staging).await?;
    ensure_eq!(back.len(), 2017, "length of the chunked file");
    ensure!(
        back[..1000].iter().all(|b| *b == 1)
            && back[1000..2000].iter().all(|b| *b == 2)
            && back[2000..].iter().all(|b| *b == 3),
        "the chunks are not where they were written"
    );
    s.close().await.or_fail("close")
}

/// Writes obey the session user's permissions.
async fn write_permission_denied(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let d = crate::commands::quote(&dir.display().to_string());
    let locked = dir.join("locked.txt");
    s.write_file(RunnerFileWriteRequest::new(&locked, b"original".to_vec()))
        .await
        .or_fail("write_file locked.txt")?;
    sh_ok(
        s.as_ref(),
        &format!("chmod 444 {d}/locked.txt && mkdir {d}/sealed && chmod 555 {d}/sealed"),
    )
    .await?;
    let me = session_uid(&s).await?;
    let replaced = s
        .write_file(RunnerFileWriteRequest::new(&locked, b"replaced".to_vec()))
        .await;
    if me == "0" {
        replaced.or_fail("write_file of a 0444 file as root")?;
        same_bytes(
            &read_all(&s, &locked).await?,
            b"replaced",
            "a 0444 file root replaced",
        )?;
        let mode = sh_ok(s.as_ref(), &format!("stat -c %a {d}/locked.txt")).await?;
        ensure_eq!(
            mode.trim(),
            "444",
            "mode of a 0444 file after root replaced it"
        );
    } else {
        replaced.fails_with(
            RunnerErrorKind::PermissionDenied,
            format!("write_file of a 0444 file as uid {me}"),
        )?;
        same_bytes(
            &read_all(&s, &locked).await?,
            b"original",
            "a 0444 file after the refused write",
        )?;
        let mode = sh_ok(s.as_ref(), &format!("stat -c %a {d}/locked.txt")).await?;
        ensure_eq!(
            mode.trim(),
            "444",
            "mode of a 0444 file after the refused write"
        );
        s.write_file(RunnerFileWriteRequest::new(
            dir.join("sealed/new.txt"),
            b"x".to_vec(),
        ))
        .await
        .fails_with(
            RunnerErrorKind::PermissionDenied,
            format!("write_file into a 0555 directory as uid {me}"),
        )?;
        let left = sh_ok(s.as_ref(), &format!("ls -A {d}/sealed")).await?;
        ensure_eq!(
            left,
            "",
            "entries of the 0555 directory after the refused write"
        );
    }
    sh_ok(
        s.as_ref(),
        &format!("chmod 755 {d}/sealed && chmod 644 {d}/locked.txt"),
    )
    .await?;
    s.close().await.or_fail("close")
}

/// The numeric uid the session's commands run as.
async fn session_uid(s: &Session) -> CheckResult<String> {
    Ok(sh_ok(s.as_ref(), "id -u").await?.trim().to_string())
}

/// `id -u` run as `user`.
async fn uid_as(
    s: &Session,
    user: &str,
) -> runner_api::RunnerResult<runner_api::RunnerCommandResult> {
    let mut request = shell(s.as_ref(), "as-user", "id -u");
    request.user = Some(user.to_string());
    s.run_command(request).await
}

/// Commands run as the named user, or fail with the right kind.
async fn run_as_user(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let me = session_uid(&s).await?;
    let name = sh_ok(s.as_ref(), "id -un").await?.trim().to_string();
    let out = uid_as(&s, &name)
        .await
        .or_fail(format!("run_command as the session's own user {name:?}"))?;
    ensure_eq!(
        out.stdout.trim(),
        me,
        "uid of a command run as the session's own user"
    );
    let ghost = "runner-no-such-user-7f3a";
    let err = uid_as(&s, ghost).await.fails_with(
        RunnerErrorKind::NotFound,
        format!("run_command as the unknown user {ghost:?}"),
    )?;
    ensure!(
        err.message().contains(ghost),
        "the error for an unknown user does not name it: {}",
        err.message()
    );
    if me == "0" {
        // Root may switch: to nobody, whose uid the runner tells.
        let nobody = sh_ok(s.as_ref(), "id -u nobody").await?.trim().to_string();
        let out = uid_as(&s, "nobody")
            .await
            .or_fail("run_command as nobody")?;
        ensure_eq!(out.stdout.trim(), nobody, "uid of a command run as nobody");
    } else {
        let err = uid_as(&s, "root").await.fails_with(
            RunnerErrorKind::PermissionDenied,
            "run_command as root from a non-root session",
        )?;
        ensure!(
            err.message().contains("root"),
            "the error for a user the session may not switch to does not name it: {}",
            err.message()
        );
    }
    s.close().await.or_fail("close")
}

/// The flag is honest.
async fn capability_run_as_user(cx: Cx) -> CheckResult {
    let flag = Capability::RunAsUser;
    let s = cx.session().await?;
    if cx.caps.run_as_user {
        let me = session_uid(&s).await?;
        let name = sh_ok(s.as_ref(), "id -un").await?.trim().to_string();
        let out = uid_as(&s, &name).await.or_fail("run_command with user")?;
        ensure_eq!(
            out.stdout.trim(),
            me,
            "uid of a command run as the session's own user"
        );
    } else {
        let result = uid_as(&s, "root").await;
        crate::checks::capabilities::unsupported(result, "run_command with user \"root\"", flag)?;
    }
    s.close().await.or_fail("close")
}
