//! artifacts: `export_artifact` uploads a file, or a directory as a tar, to the
//! destination's artifact store, with a content-derived id, a URL, size,
//! sha256 and file count.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use runner_api::{RunnerArtifactExportRequest, RunnerArtifactExportResult, RunnerFileWriteRequest};
use runner_mounts::object_store::path::Path as StorePath;
use sha2::{Digest, Sha256};

use crate::catalogue::{Area, Capability::*, Check};
use crate::checks::mounts::{client, get};
use crate::context::{Cx, Session};
use crate::fixtures::bytes::{all_byte_values, pseudo_random, seed};
use crate::outcome::{CheckResult, Expect, ensure, ensure_eq, same_bytes};

pub(crate) fn checks() -> Vec<Check> {
    let a = Area::Artifacts;
    vec![
        Check::new(
            "artifacts_export_file",
            a,
            &[ArtifactExport, FileWrite],
            "export_artifact: a file is uploaded as it is; id, url, size, sha256 and file count match the object read back.",
            |cx| Box::pin(export_file(cx)),
        ),
        Check::new(
            "artifacts_export_directory_tar",
            a,
            &[ArtifactExport, FileWrite, FileManagement],
            "export_artifact with recursive: a directory is uploaded as a tar of its contents.",
            |cx| Box::pin(export_directory_tar(cx)),
        ),
        Check::new(
            "artifacts_id_content_derived",
            a,
            &[ArtifactExport, FileWrite, FileManagement],
            "RunnerArtifactExportResult.artifact_id: \"Stable, content-derived id\" — same content, same id; other content, other id.",
            |cx| Box::pin(id_content_derived(cx)),
        ),
    ]
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn export(
    s: &Session,
    path: &Path,
    recursive: bool,
) -> CheckResult<RunnerArtifactExportResult> {
    s.export_artifact(RunnerArtifactExportRequest {
        path: path.to_path_buf(),
        recursive,
    })
    .await
    .or_fail(format!("export_artifact {}", path.display()))
}

/// Reads the exported object back from the artifact store, checks the
/// result's id, url and metadata against it, and returns its bytes.
async fn verify(
    cx: &Cx,
    result: &RunnerArtifactExportResult,
    expected_files: u64,
) -> CheckResult<Vec<u8>> {
    let target = cx.store()?;
    let meta = &result.metadata;
    let key = meta["key"]
        .as_str()
        .ok_or_else(|| format!("export_artifact metadata has no key: {meta}"))?;
    let sha = meta["sha256"]
        .as_str()
        .ok_or_else(|| format!("export_artifact metadata has no sha256: {meta}"))?;
    let (store, _) = client(&target, "").await?;
    let bytes = get(&store, &StorePath::from(key))
        .await?
        .ok_or_else(|| format!("the exported object {key} is not in the artifact store"))?;
    ensure_eq!(
        meta["size"].as_u64(),
        Some(bytes.len() as u64),
        "metadata size"
    );
    ensure_eq!(
        sha.to_string(),
        sha256_hex(&bytes),
        "metadata sha256 of the object read back"
    );
    ensure_eq!(result.artifact_id, format!("sha256-{sha}"), "artifact_id");
    ensure_eq!(
        meta["file_count"].as_u64(),
        Some(expected_files),
        "metadata file_count"
    );
    let url = result.url.clone().unwrap_or_default();
    ensure!(
        url.starts_with(&format!("s3://{}/", target.bucket))
            && url.ends_with(key.rsplit('/').next().unwrap_or(key)),
        "export_artifact url {url:?} does not name the object {key} in bucket {}",
        target.bucket
    );
    Ok(bytes)
}

async fn export_file(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let contents = pseudo_random(300 * 1024, seed());
    let path = dir.join("report.bin");
    s.write_file(RunnerFileWriteRequest::new(path.clone(), contents.clone()))
        .await
        .or_fail("write_file report.bin")?;
    let result = export(&s, &path, false).await?;
    ensure_eq!(result.path, path, "path of the export result");
    let back = verify(&cx, &result, 1).await?;
    same_bytes(&back, &contents, "the exported file read back")?;
    ensure_eq!(
        result.artifact_id,
        format!("sha256-{}", sha256_hex(&contents)),
        "artifact_id of a file"
    );
    s.close().await.or_fail("close")
}

async fn export_directory_tar(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let out = dir.join("out");
    let mut files = BTreeMap::new();
    files.insert(PathBuf::from("a.txt"), b"alpha\n".to_vec());
    files.insert(PathBuf::from("sub/b.bin"), all_byte_values());
    files.insert(PathBuf::from("sub/deeper/c.txt"), b"gamma".to_vec());
    files.insert(PathBuf::from("empty.txt"), Vec::new());
    for (rel, bytes) in &files {
        s.write_file(RunnerFileWriteRequest::new(out.join(rel), bytes.clone()))
            .await
            .or_fail(format!("write_file {}", rel.display()))?;
    }
    let result = export(&s, &out, true).await?;
    ensure_eq!(
        result.metadata["format"].as_str(),
        Some("tar"),
        "metadata format"
    );
    let tar_bytes = verify(&cx, &result, files.len() as u64).await?;
    let mut found = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive
        .entries()
        .map_err(|e| format!("reading the exported tar: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("reading the exported tar: {e}"))?;
        if entry.header().entry_type().is_file() {
            let path = entry
                .path()
                .map_err(|e| format!("tar entry path: {e}"))?
                .into_owned();
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("tar entry {}: {e}", path.display()))?;
            found.insert(path, bytes);
        }
    }
    ensure_eq!(found, files, "files in the exported tar");
    s.close().await.or_fail("close")
}

async fn id_content_derived(cx: Cx) -> CheckResult {
    let s = cx.session().await?;
    let dir = cx.scratch(&s);
    let path = dir.join("same.txt");
    s.write_file(RunnerFileWriteRequest::new(path.clone(), b"same".to_vec()))
        .await
        .or_fail("write_file same.txt")?;
    let first = export(&s, &path, false).await?;
    let second = export(&s, &path, false).await?;
    ensure_eq!(
        second.artifact_id,
        first.artifact_id,
        "artifact_id of the same file exported twice"
    );
    s.write_file(RunnerFileWriteRequest::new(path.clone(), b"other".to_vec()))
        .await
        .or_fail("write_file same.txt again")?;
    let third = export(&s, &path, false).await?;
    ensure!(
        third.artifact_id != first.artifact_id,
        "artifact_id did not change with the content: {}",
        third.artifact_id
    );
    let tree_first = export(&s, &dir, true).await?;
    let tree_second = export(&s, &dir, true).await?;
    ensure_eq!(
        tree_second.artifact_id,
        tree_first.artifact_id,
        "artifact_id of the same directory exported twice"
    );
    s.close().await.or_fail("close")
}
