//! The versioned layout (every preset but certbot): the target's configured paths are
//! symlinks into `<store>/current/<file>`, `current` → `<version>/`. An install stages a
//! new version directory, links any plain path without changing what it holds (the first
//! time, the files in place become `initial`), then switches `current` in one rename, so
//! no instant shows a new certificate with an old key. The current and previous versions
//! are kept; older ones are pruned.

use super::files::{copy_entry, make_symlink, promote, staged_path, write_failed, write_file};
use super::journal::{Journal, Phase, VersionedJournal};
use super::{Installer, Staged};
use crate::error::AgentFailure;
use crate::target::{FileRole, Target, TargetFile};
use certfleet_shared::fsutil::{create_dir_with_mode, sync_dir};
use std::path::Path;

impl Installer {
    /// Stages the new version, links the paths, switches `current`; each step journaled.
    /// Returns the journal of the switched install (what [`Installer::restore`] undoes).
    pub(super) async fn swap_version(
        &self,
        target: &Target,
        serial: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<Journal, AgentFailure> {
        let store = target
            .store_dir
            .clone()
            .ok_or_else(|| AgentFailure::new("internal", "target without a store"))?;
        create_dir_with_mode(&store, 0o755).map_err(|e| write_failed(&store, e))?;
        let prev = current_version(&store);
        let version = if prev.as_deref() == Some(serial) {
            format!("{serial}-{:08x}", rand::random::<u32>())
        } else {
            serial.to_owned()
        };
        let mut journal = VersionedJournal {
            target: target.name.clone(),
            serial: serial.to_owned(),
            phase: Phase::Staging,
            store: store.clone(),
            version: version.clone(),
            prev: prev.clone(),
        };
        self.write_journal(&Journal::Versioned(journal.clone()))?;
        let result = self.stage_version(&store, &version, contents).await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(store.join(format!(".staging-{version}")));
            self.remove_journal(&target.name);
            return Err(e);
        }
        self.pause("staged").await;
        journal.prev = ensure_links(target, &store, prev)?;
        journal.phase = Phase::Committed;
        self.write_journal(&Journal::Versioned(journal.clone()))?;
        self.pause("linked").await;
        point_current(&store, &version)?;
        journal.phase = Phase::Swapped;
        let journal = Journal::Versioned(journal);
        self.write_journal(&journal)?;
        Ok(journal)
    }

    /// Writes the files into `<store>/.staging-<version>/`, then renames it to
    /// `<store>/<version>/`.
    pub(super) async fn stage_version(
        &self,
        store: &Path,
        version: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<(), AgentFailure> {
        let staging = store.join(format!(".staging-{version}"));
        let _ = std::fs::remove_dir_all(&staging);
        create_dir_with_mode(&staging, 0o755).map_err(|e| write_failed(&staging, e))?;
        for (i, (file, staged)) in contents.iter().enumerate() {
            let path = staging.join(version_file_name(file.role));
            write_file(&path, staged.bytes(), file)?;
            self.pause(&format!("staging:{i}")).await;
        }
        sync_dir(&staging).map_err(|e| write_failed(&staging, e))?;
        let dest = store.join(version);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&staging, &dest).map_err(|e| write_failed(&dest, e))?;
        sync_dir(store).map_err(|e| write_failed(store, e))
    }

    /// After a crash: `None` if `current` already points at the new version (to be
    /// finished); otherwise the new version is dropped and the message says so.
    pub(super) fn settle_versioned(&self, j: &VersionedJournal) -> Option<String> {
        let (store, version) = (&j.store, &j.version);
        if current_version(store).as_deref() == Some(version.as_str()) {
            return None;
        }
        let _ = std::fs::remove_dir_all(store.join(format!(".staging-{version}")));
        if j.prev.as_deref() != Some(version.as_str()) {
            let _ = std::fs::remove_dir_all(store.join(version));
        }
        Some(format!(
            "serial {} was not switched in; the previous certificate stays",
            j.serial
        ))
    }
}

/// Puts `current` back at the version it pointed at before, in one rename.
pub(super) fn restore_version(j: &VersionedJournal) -> Result<(), AgentFailure> {
    if let Some(prev) = &j.prev {
        point_current(&j.store, prev)?;
    }
    Ok(())
}

/// File name of a role inside a version directory of the store.
pub(super) fn version_file_name(role: FileRole) -> &'static str {
    match role {
        FileRole::Cert => "cert.pem",
        FileRole::Chain => "chain.pem",
        FileRole::Fullchain => "fullchain.pem",
        FileRole::Key => "key.pem",
        FileRole::Combined => "combined.pem",
        FileRole::Meta => "meta.json",
    }
}

/// The version `<store>/current` points at.
pub(super) fn current_version(store: &Path) -> Option<String> {
    std::fs::read_link(store.join("current"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Points `<store>/current` at `version` in one rename.
fn point_current(store: &Path, version: &str) -> Result<(), AgentFailure> {
    let tmp = store.join(".current.tmp");
    make_symlink(Path::new(version), &tmp)?;
    let current = store.join("current");
    std::fs::rename(&tmp, &current).map_err(|e| write_failed(&current, e))?;
    sync_dir(store).map_err(|e| write_failed(store, e))
}

/// Makes every configured path a symlink to `<store>/current/<file>`, without changing
/// what any of them holds at any instant: the first time, the files in place become the
/// `initial` version and `current` points at it before any path is turned into a link.
/// Returns the version `current` points at (the one to roll back to).
fn ensure_links(
    target: &Target,
    store: &Path,
    mut prev: Option<String>,
) -> Result<Option<String>, AgentFailure> {
    let link_to = |f: &TargetFile| store.join("current").join(version_file_name(f.role));
    let unlinked: Vec<&TargetFile> = target
        .files
        .iter()
        .filter(|f| std::fs::read_link(&f.path).ok() != Some(link_to(f)))
        .collect();
    if unlinked.is_empty() {
        return Ok(prev);
    }
    let anything_there = unlinked.iter().any(|f| std::fs::metadata(&f.path).is_ok());
    let keep_in = match &prev {
        Some(v) => store.join(v),
        // Nothing installed before: nothing to keep, nothing to roll back to.
        None if !anything_there => store.to_path_buf(),
        None => {
            let initial = store.join("initial");
            let _ = std::fs::remove_dir_all(&initial);
            create_dir_with_mode(&initial, 0o755).map_err(|e| write_failed(&initial, e))?;
            initial
        }
    };
    // What each unlinked path holds now is kept in the version `current` will show.
    for f in &unlinked {
        if std::fs::metadata(&f.path).is_ok() {
            copy_entry(&f.path, &keep_in.join(version_file_name(f.role)), true)?;
        }
    }
    sync_dir(&keep_in).map_err(|e| write_failed(&keep_in, e))?;
    if prev.is_none() && anything_there {
        point_current(store, "initial")?;
        prev = Some("initial".into());
    }
    for f in &unlinked {
        let tmp = staged_path(&f.path);
        if let Some(dir) = f.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| write_failed(dir, e))?;
        }
        make_symlink(&link_to(f), &tmp)?;
        promote(&f.path)?;
    }
    Ok(prev)
}

/// Keeps the store small: the current and previous versions stay, older ones go.
pub(super) fn prune_versions(store: &Path, current: &str, prev: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(store) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "current" || name == current || Some(name.as_str()) == prev {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
