//! Provider secrets read from a file or an environment variable, never from the TOML.
//! [`Secret`] shows `<redacted>` in `Debug` and has no `Display`: it cannot reach a log by
//! accident.

use std::path::Path;

/// A secret string (a TSIG key, an AWS secret key).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Reads a secret file: owner-readable (no access for others), at most 64 KiB, its text
/// trimmed, not empty. `what` names the setting in the error.
pub(crate) fn read_secret_file(path: &Path, what: &str) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{what} {}: cannot read it: {e}", path.display()))?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(format!(
            "{what} {} is readable or writable by every user (mode {:o}); \
             `chmod 600` it (640 with the coordinator's group)",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "{what} {} is {} bytes; a secret file holds only the secret",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{what} {}: cannot read it: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    Ok(Secret(text.to_owned()))
}

/// Reads a secret from the environment variable `var` (trimmed, not empty).
pub(crate) fn read_secret_env(var: &str, what: &str) -> Result<Secret, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_owned())),
        Ok(_) => Err(format!("{what}: environment variable {var} is empty")),
        Err(_) => Err(format!(
            "{what}: environment variable {var} is not set (or not UTF-8) in the \
             coordinator's environment"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s = Secret::new("c2VjcmV0".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s)), "Some(<redacted>)");
    }

    #[test]
    fn a_secret_file_must_not_be_readable_by_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, " c2VjcmV0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path, "tsig_secret_file").unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path, "x").unwrap().expose(), "c2VjcmV0");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(&path, "x").unwrap_err().contains("empty"));
        let missing = read_secret_file(&dir.path().join("none"), "tsig_secret_file");
        assert!(missing.unwrap_err().contains("cannot read it"));
    }
}
