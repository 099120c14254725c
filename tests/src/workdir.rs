//! Temp directories for one test's processes. Removed on drop, unless the test panicked
//! and `CERTFLEET_KEEP_TMP=1` is set, in which case the path is printed and kept.

use std::path::{Path, PathBuf};

/// A temp directory owned by one harness object (pebble, coordinator, agent).
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    /// Creates `/tmp/certfleet-<prefix>-XXXX`.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("certfleet-{prefix}-"))
            .tempdir()?;
        let path = dir.path().to_path_buf();
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("CERTFLEET_KEEP_TMP").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("CERTFLEET_KEEP_TMP: kept {}", kept.display());
            }
        }
    }
}
