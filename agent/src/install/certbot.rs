//! certbot's own layout, kept as certbot keeps it: `live/<name>/<file>.pem` are symlinks
//! into numbered `archive/<name>/<file><n>.pem` files. An install writes the new archive
//! files and staged links (`.cf-new`) and copies each current link to `.prev`, commits,
//! then renames the staged links one by one, as certbot itself does. A kill between two
//! renames leaves whole files (a mix of old and new links, certbot's own weakness) that
//! [`Installer::recover`](super::Installer::recover) finishes before any reload.

use super::files::{
    copy_entry, exists, make_symlink, promote, staged_path, write_failed, write_file,
};
use super::journal::{CertbotJournal, Journal, Phase};
use super::{Installer, Staged};
use crate::error::AgentFailure;
use crate::target::{Target, TargetFile};
use certfleet_shared::fsutil::sync_dir;
use std::path::{Path, PathBuf};

impl Installer {
    /// Stages every file (journal), commits, renames them one by one. Returns the journal
    /// of the switched install (what [`Installer::restore`] undoes).
    pub(super) async fn swap_files(
        &self,
        target: &Target,
        serial: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<Journal, AgentFailure> {
        let files = match self.stage(target, serial, contents).await {
            Ok(f) => f,
            Err(e) => {
                for (f, _) in contents {
                    let _ = std::fs::remove_file(staged_path(&f.path));
                }
                self.remove_journal(&target.name);
                return Err(e);
            }
        };
        self.pause("committed").await;
        for (i, (path, _)) in files.iter().enumerate() {
            promote(path)?;
            self.pause(&format!("renamed:{i}")).await;
        }
        let journal = Journal::Certbot(CertbotJournal {
            target: target.name.clone(),
            serial: serial.to_owned(),
            phase: Phase::Swapped,
            files,
        });
        self.write_journal(&journal)?;
        Ok(journal)
    }

    /// Writes the journal, the staged files and the `.prev` copies; returns the
    /// destinations with whether each had a previous version.
    pub(super) async fn stage(
        &self,
        target: &Target,
        serial: &str,
        contents: &[(TargetFile, Staged)],
    ) -> Result<Vec<(PathBuf, bool)>, AgentFailure> {
        let files: Vec<(PathBuf, bool)> = contents
            .iter()
            .map(|(f, _)| (f.path.clone(), exists(&f.path)))
            .collect();
        let mut journal = CertbotJournal {
            target: target.name.clone(),
            serial: serial.to_owned(),
            phase: Phase::Staging,
            files: files.clone(),
        };
        self.write_journal(&Journal::Certbot(journal.clone()))?;
        for (i, (file, staged)) in contents.iter().enumerate() {
            if let Some(dir) = file.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| write_failed(dir, e))?;
            }
            match staged {
                Staged::Content(bytes) => write_file(&staged_path(&file.path), bytes, file)?,
                Staged::Link { archive, link, .. } => {
                    if let Some(dir) = archive.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| write_failed(dir, e))?;
                    }
                    write_file(archive, staged.bytes(), file)?;
                    make_symlink(link, &staged_path(&file.path))?;
                }
            }
            if files[i].1 {
                copy_entry(&file.path, &prev_path(&file.path), false)?;
            }
            self.pause(&format!("staging:{i}")).await;
        }
        for dir in parents(&files) {
            sync_dir(&dir).map_err(|e| write_failed(&dir, e))?;
        }
        journal.phase = Phase::Committed;
        self.write_journal(&Journal::Certbot(journal))?;
        Ok(files)
    }

    /// After a crash: an install that was not committed is dropped (`Some(message)`); a
    /// committed one is rolled forward, every staged file renamed (`None`: to be finished).
    pub(super) fn settle_certbot(
        &self,
        j: &mut CertbotJournal,
    ) -> Result<Option<String>, AgentFailure> {
        match j.phase {
            Phase::Staging => {
                for (path, _) in &j.files {
                    let _ = std::fs::remove_file(staged_path(path));
                }
                return Ok(Some(format!(
                    "serial {} was not committed; the previous certificate stays",
                    j.serial
                )));
            }
            Phase::Committed => {
                // Renames every staged file that is still there over its destination.
                for (path, _) in &j.files {
                    if exists(&staged_path(path)) {
                        promote(path)?;
                    }
                }
                j.phase = Phase::Swapped;
                self.write_journal(&Journal::Certbot(j.clone()))?;
            }
            Phase::Swapped => {}
        }
        Ok(None)
    }
}

/// Puts the `.prev` copies back (files that had none keep the new content).
pub(super) fn restore_files(j: &CertbotJournal) -> Result<(), AgentFailure> {
    for (path, had_prev) in &j.files {
        if *had_prev {
            copy_entry(&prev_path(path), &staged_path(path), false)?;
            promote(path)?;
        }
    }
    Ok(())
}

/// The archive file and the link to it for `file` at archive number `n`:
/// `archive/<name>/cert3.pem` and `../../archive/<name>/cert3.pem`.
pub(super) fn archive_entry(dir: &Path, n: u32, file: &TargetFile) -> (PathBuf, PathBuf) {
    let stem = file
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let archive = dir.join(format!("{stem}{n}.pem"));
    let link = relative_link(&file.path, &archive);
    (archive, link)
}

/// certbot numbers archive files 1, 2, …: the next number not used by any file.
pub(super) fn next_archive_version(dir: &Path) -> u32 {
    let mut max = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".pem") {
                let digits: String = stem
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                let digits: String = digits.chars().rev().collect();
                if let Ok(n) = digits.parse::<u32>() {
                    max = max.max(n);
                }
            }
        }
    }
    max + 1
}

/// `live/<name>/cert.pem` → `../../archive/<name>/cert3.pem`, as certbot writes it.
fn relative_link(link: &Path, archive: &Path) -> PathBuf {
    let from: Vec<_> = link
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let to: Vec<_> = archive.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

fn prev_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".prev");
    PathBuf::from(s)
}

fn parents(files: &[(PathBuf, bool)]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|(p, _)| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}
