//! Webroot mode: the web server owns the port and serves
//! `<webroot>/.well-known/acme-challenge/` as static files; the agent writes one file per
//! token there (content: the key authorization, mode 0644, written atomically) and removes
//! it when the challenge is cleared or expires.
//!
//! Owns only that directory. File names are tokens that passed [`valid_token`] (base64url,
//! so no `/` or `..`), and the webroot and the two directories below it must be real
//! directories, not symlinks (checked at config load and before every write), so nothing
//! is ever written outside it. Token files a previous run left
//! behind are removed once they are older than the challenge TTL; the directory should be
//! dedicated to the agent (not shared with another ACME client).

use super::valid_token;
use crate::error::AgentFailure;
use certfleet_shared::fsutil::write_atomic;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

#[derive(Clone, Debug)]
pub(super) struct Webroot {
    root: PathBuf,
    /// `<root>/.well-known/acme-challenge`
    dir: PathBuf,
}

impl Webroot {
    pub(super) fn new(root: PathBuf) -> Self {
        let dir = root.join(".well-known").join("acme-challenge");
        Self { root, dir }
    }

    pub(super) fn challenge_dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `(token, key authorization)` files. Blocking (fsync); run off the runtime.
    pub(super) fn write(&self, files: &[(String, String)]) -> Result<(), AgentFailure> {
        self.ensure_dirs()?;
        for (token, key_authorization) in files {
            let path = self.token_path(token)?;
            write_atomic(&path, key_authorization.as_bytes(), FILE_MODE)
                .map_err(|e| self.write_failed(&path, &e))?;
            tracing::debug!(path = %path.display(), "HTTP-01 token file written");
        }
        Ok(())
    }

    /// Removes the token files of `tokens` (missing files are fine).
    pub(super) fn remove<'a>(&self, tokens: impl IntoIterator<Item = &'a str>) {
        for token in tokens {
            let Ok(path) = self.token_path(token) else {
                continue;
            };
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "HTTP-01 token file removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cannot remove HTTP-01 token file; it is retried after the challenge TTL"),
            }
        }
    }

    /// Removes token files (and temp files of interrupted writes) older than `ttl` at
    /// `now_unix` whose token is not in `live`. Returns how many were removed.
    pub(super) fn sweep_stale(
        &self,
        live: &HashSet<String>,
        ttl: Duration,
        now_unix: i64,
    ) -> usize {
        if check_webroot(&self.root).is_err() {
            // Refused at load and at every write; never delete through a symlink either.
            return 0;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(token) = token_of(name) else {
                continue;
            };
            if live.contains(token) {
                continue;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let old = meta
                .modified()
                .ok()
                .and_then(certfleet_shared::clock::unix_secs)
                .is_some_and(|m| now_unix.saturating_sub(m) > ttl.as_secs() as i64);
            if meta.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(dir = %self.dir.display(), removed, "removed stale HTTP-01 token files");
        }
        removed
    }

    fn token_path(&self, token: &str) -> Result<PathBuf, AgentFailure> {
        if !valid_token(token) {
            return Err(AgentFailure::bad_request("malformed challenge token"));
        }
        Ok(self.dir.join(token))
    }

    /// Creates `<root>/.well-known/acme-challenge` (0755) where missing, and refuses a
    /// symlink (or a file) for the webroot itself and for the two directories below it.
    fn ensure_dirs(&self) -> Result<(), AgentFailure> {
        for dir in managed_dirs(&self.root) {
            match dir.symlink_metadata() {
                Ok(meta) => {
                    if let Some(why) = refusal(&self.root, &dir, &meta) {
                        return Err(AgentFailure::new("write_failed", why));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Explicit mode: the agent's umask (0077 under systemd) must not hide
                    // the files from the web server's user.
                    std::fs::create_dir(&dir)
                        .and_then(|()| {
                            std::fs::set_permissions(
                                &dir,
                                std::fs::Permissions::from_mode(DIR_MODE),
                            )
                        })
                        .map_err(|e| self.write_failed(&dir, &e))?;
                }
                Err(e) => return Err(self.write_failed(&dir, &e)),
            }
        }
        Ok(())
    }

    fn write_failed(&self, path: &Path, e: &std::io::Error) -> AgentFailure {
        AgentFailure::new(
            "write_failed",
            format!(
                "cannot write {} for HTTP-01: {e} ([http01] webroot {} must exist, or its \
                 parent must, and be writable by the agent; under systemd add \
                 ReadWritePaths={}, see deploy/systemd/certfleet-agent.service.d/webroot.conf)",
                path.display(),
                self.root.display(),
                self.root.display()
            ),
        )
    }
}

/// The webroot and the two directories below it that the agent manages, outermost first.
fn managed_dirs(root: &Path) -> [PathBuf; 3] {
    let well_known = root.join(".well-known");
    let challenges = well_known.join("acme-challenge");
    [root.to_path_buf(), well_known, challenges]
}

/// Checks `[http01] webroot` at config load: the webroot and the directories below it
/// that exist must be plain directories, not symlinks. Missing ones are fine (they are
/// created on the first challenge) and so is what cannot be inspected here (the write
/// reports it).
pub(crate) fn check_webroot(root: &Path) -> Result<(), String> {
    for dir in managed_dirs(root) {
        match dir.symlink_metadata() {
            Ok(meta) => {
                if let Some(why) = refusal(root, &dir, &meta) {
                    return Err(why);
                }
            }
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Why the agent will not write through `dir` (the webroot or a directory below it), or
/// `None` when it is a plain directory. A symlink could point the agent's writes anywhere
/// (another site's document root, a system directory), so none is followed, the webroot's
/// own included.
fn refusal(root: &Path, dir: &Path, meta: &std::fs::Metadata) -> Option<String> {
    if meta.is_dir() {
        return None;
    }
    let real = std::fs::canonicalize(dir)
        .ok()
        .filter(|r| r.is_dir())
        .map(|r| format!(" (its real path is {})", r.display()))
        .unwrap_or_default();
    if dir == root {
        return Some(if meta.file_type().is_symlink() {
            format!(
                "[http01] webroot {} is a symlink{real}: the agent does not follow it, \
                 because a symlink could point its writes anywhere; set webroot to the \
                 real directory",
                root.display()
            )
        } else {
            format!(
                "[http01] webroot {} is not a directory; set webroot to the web server's \
                 document root for /.well-known/acme-challenge/",
                root.display()
            )
        });
    }
    let what = if meta.file_type().is_symlink() {
        "a symlink"
    } else {
        "a file"
    };
    Some(format!(
        "{} is {what}{real}; it must be a directory, not a symlink or a file: the agent \
         writes HTTP-01 token files only inside [http01] webroot {}, and a symlink could \
         point its writes anywhere; replace it with a plain directory",
        dir.display(),
        root.display()
    ))
}

/// The token a file in the challenge directory belongs to: its name, or for a temp file
/// of an interrupted atomic write (`.<token>.tmp-…`), the name inside.
fn token_of(name: &str) -> Option<&str> {
    let token = match name.strip_prefix('.') {
        Some(rest) => rest.split_once(".tmp-")?.0,
        None => name,
    };
    valid_token(token).then_some(token)
}
