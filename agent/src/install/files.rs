//! File operations both layouts use: whole files written with their mode and owner before
//! any content, symlinks, renames made durable, copies that keep mode and owner.

use crate::error::AgentFailure;
use crate::target::{FileRole, TargetFile};
use certfleet_shared::fsutil::{read_limited, sync_dir};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(super) fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Where a file waits before it is renamed over `path`: `.<name>.cf-new` beside it.
pub(super) fn staged_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.cf-new"))
}

/// Renames the staged file over `path` and makes the rename durable.
pub(super) fn promote(path: &Path) -> Result<(), AgentFailure> {
    std::fs::rename(staged_path(path), path).map_err(|e| write_failed(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(|e| write_failed(dir, e))?;
    }
    Ok(())
}

/// Writes a whole file (replacing any leftover), fsynced, with the file's mode and owner
/// set before any content is in it.
pub(super) fn write_file(path: &Path, bytes: &[u8], f: &TargetFile) -> Result<(), AgentFailure> {
    let _ = std::fs::remove_file(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
        if f.uid.is_some() || f.gid.is_some() {
            std::os::unix::fs::fchown(&file, f.uid, f.gid)?;
        }
        file.write_all(bytes)?;
        file.sync_all()
    })();
    result.map_err(|e| write_failed(path, e))
}

pub(super) fn make_symlink(to: &Path, at: &Path) -> Result<(), AgentFailure> {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(to, at).map_err(|e| write_failed(at, e))
}

/// Makes `dst` a copy of `src`, keeping mode and owner. A symlink stays a symlink, or
/// with `follow` is copied as the file it points at.
pub(super) fn copy_entry(src: &Path, dst: &Path, follow: bool) -> Result<(), AgentFailure> {
    use std::os::unix::fs::MetadataExt;
    let meta = if follow {
        std::fs::metadata(src)
    } else {
        std::fs::symlink_metadata(src)
    }
    .map_err(|e| write_failed(src, e))?;
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(src).map_err(|e| write_failed(src, e))?;
        return make_symlink(&to, dst);
    }
    let bytes = read_limited(src, 1024 * 1024).map_err(|e| write_failed(src, e))?;
    let f = TargetFile {
        role: FileRole::Key,
        path: dst.to_path_buf(),
        mode: meta.mode() & 0o777,
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
    };
    write_file(dst, &bytes, &f)
}

pub(super) fn write_failed(path: &Path, e: std::io::Error) -> AgentFailure {
    AgentFailure::new(
        "write_failed",
        format!("cannot write {}: {e}", path.display()),
    )
}
