//! `store backup` / `store restore` for sled: a consistent snapshot of a serving
//! coordinator's store, and a state directory made from one.
//!
//! sled lets one process open the database, so the snapshot is made inside the running
//! coordinator (`Admin/BackupStore`, admin role) and streamed to the CLI. The file is JSON
//! Lines, the records `store migrate` copies in the same order: a `header` (format,
//! version, the fleet CA as a `node export` bundle — agents trust only that CA), then
//! `account`, `budget`, `token`, `operator`, `host`, `cert`, `ip_holder` records, the
//! `audit` trail byte for byte, and an `end` record with the counts and the SHA-256 of
//! every byte before it: a truncated, cut or edited file is refused before anything is
//! written. It holds ACME account keys and the fleet CA key: written 0600, refused when
//! others may read it.
//!
//! Consistency: the records are read while the store's writes of them are paused
//! (`SledStore::with_writes_paused`); the audit trail is append-only, so its head is noted
//! in the same pause and the records up to it are read after.
//!
//! Restore: into an empty (or new) state directory with the coordinator stopped; the store
//! is filled, its audit chain verified, the counts checked, then the directory is made a
//! node of the fleet as `node join` does (CA files, a new server certificate and admin
//! credential).

use super::migrate::MigrateReport;
use super::{AccountRecord, AuditStore, SledStore, Store, StoreError, TokenRecord};
use crate::audit::{AuditError, AuditLog};
use crate::fleet_ca::StateDir;
use crate::model::{CertRecord, HostRecord, OperatorRecord};
use crate::node::Bundle;
use certfleet_shared::ids::HostId;
use certfleet_shared::ratelimit::Budget;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::Path;

/// The `format` of the header record.
pub const FORMAT: &str = "certfleet-store-backup";
/// The version this coordinator writes and reads.
pub const VERSION: u32 = 1;
/// The longest line read back (a record; certificates and audit records are far smaller).
const MAX_LINE: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// Unix time of the snapshot.
    pub created: i64,
    /// The coordinator that wrote it (`CARGO_PKG_VERSION`).
    pub coordinator: String,
    pub fleet_ca: Bundle,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Header(Box<Header>),
    Account {
        issuer: String,
        record: Box<AccountRecord>,
    },
    Budget {
        issuer: String,
        budget: Box<Budget>,
    },
    Token {
        hash: String,
        record: Box<TokenRecord>,
    },
    Operator {
        record: Box<OperatorRecord>,
    },
    Host {
        record: Box<HostRecord>,
    },
    Cert {
        record: Box<CertRecord>,
    },
    IpHolder {
        ip: IpAddr,
        host: HostId,
    },
    Audit {
        seq: u64,
        json: String,
    },
    End {
        counts: MigrateReport,
        sha256: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{0}")]
    Io(String),
    /// The file is not a whole, unchanged backup this coordinator reads.
    #[error("{0}")]
    Invalid(String),
}

fn io(what: &str) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io(format!("{what}: {e}"))
}

/// Hashes every byte written through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn line(&mut self, line: &Line) -> Result<(), BackupError> {
        let mut bytes = serde_json::to_vec(line).map_err(StoreError::from)?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.inner
            .write_all(&bytes)
            .map_err(io("writing the backup"))
    }
}

/// Writes a snapshot of `store` (with `fleet_ca`, taken at `now`) to `out`; returns what it
/// holds.
pub fn write(
    store: &SledStore,
    fleet_ca: &Bundle,
    now: i64,
    out: impl Write,
) -> Result<MigrateReport, BackupError> {
    let mut w = Hashing {
        inner: std::io::BufWriter::new(out),
        hash: Sha256::new(),
    };
    w.line(&Line::Header(Box::new(Header {
        format: FORMAT.into(),
        version: VERSION,
        created: now,
        coordinator: env!("CARGO_PKG_VERSION").into(),
        fleet_ca: fleet_ca.clone(),
    })))?;
    let mut n = MigrateReport::default();
    let mut paused = std::time::Duration::ZERO;
    let audit_end = store.with_writes_paused(|s| -> Result<u64, BackupError> {
        let started = std::time::Instant::now();
        let (account_issuers, budget_issuers) = s.issuers()?;
        for issuer in account_issuers {
            if let Some(record) = s.account(&issuer)? {
                w.line(&Line::Account {
                    issuer,
                    record: Box::new(record),
                })?;
                n.accounts += 1;
            }
        }
        for issuer in budget_issuers {
            if let Some(budget) = s.budget(&issuer)? {
                w.line(&Line::Budget {
                    issuer,
                    budget: Box::new(budget),
                })?;
                n.budgets += 1;
            }
        }
        for (hash, record) in s.tokens()? {
            let record = Box::new(record);
            w.line(&Line::Token { hash, record })?;
            n.tokens += 1;
        }
        for record in s.operators()? {
            w.line(&Line::Operator {
                record: Box::new(record),
            })?;
            n.operators += 1;
        }
        let mut after = None;
        loop {
            let page = s.hosts_page(after.as_ref(), 1_000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for record in page {
                w.line(&Line::Host {
                    record: Box::new(record),
                })?;
                n.hosts += 1;
            }
        }
        let mut failed = None;
        s.scan_certs(&mut |record| {
            if let Err(e) = w.line(&Line::Cert {
                record: Box::new(record),
            }) {
                failed = Some(e);
                return Err(StoreError::Io("backup write failed".into()));
            }
            n.certs += 1;
            Ok(())
        })
        .map_err(|e| failed.take().unwrap_or(BackupError::Store(e)))?;
        for (ip, host) in s.ip_holders()? {
            w.line(&Line::IpHolder { ip, host })?;
            n.ip_holders += 1;
        }
        let end = s
            .last_audit_record()?
            .map_or(0, |r| r.seq.saturating_add(1));
        paused = started.elapsed();
        Ok(end)
    })?;
    tracing::info!(
        paused_ms = paused.as_millis() as u64,
        "store backup: records read, writes resumed"
    );
    for stored in store.audit_records_from(0) {
        let stored = stored?;
        if stored.seq >= audit_end {
            break;
        }
        let json = String::from_utf8(stored.json).map_err(|e| AuditError::Corrupt {
            seq: stored.seq,
            detail: e.to_string(),
        })?;
        w.line(&Line::Audit {
            seq: stored.seq,
            json,
        })?;
        n.audit_records += 1;
    }
    let sha256 = hex::encode(std::mem::take(&mut w.hash).finalize());
    let mut end = serde_json::to_vec(&Line::End {
        counts: n.clone(),
        sha256,
    })
    .map_err(StoreError::from)?;
    end.push(b'\n');
    w.inner
        .write_all(&end)
        .and_then(|()| w.inner.flush())
        .map_err(io("writing the backup"))?;
    Ok(n)
}

/// Reads a backup, handing every record to `apply`, and checks it is whole: the header's
/// format and version, one `end` record last, its checksum and counts. `apply` runs as
/// records are read: a caller that must not act on a bad file reads it once with a no-op
/// first.
fn read(
    path: &Path,
    apply: &mut dyn FnMut(Line) -> Result<(), BackupError>,
) -> Result<(Box<Header>, MigrateReport), BackupError> {
    let name = path.display().to_string();
    let bad = |m: String| BackupError::Invalid(format!("backup {name}: {m}"));
    let file = std::fs::File::open(path).map_err(io(&name))?;
    let mut reader = std::io::BufReader::new(file);
    let (mut hash, mut header, mut seen) = (Sha256::new(), None, MigrateReport::default());
    let mut buf = Vec::new();
    for lineno in 1u64.. {
        buf.clear();
        let n = std::io::Read::take(&mut reader, MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(io(&name))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Err(bad(format!(
                "truncated at line {lineno}: it ends without its end record (the backup did \
                 not finish, or the file was cut); take a new backup with `store backup`"
            )));
        }
        let line: Line = serde_json::from_slice(&buf).map_err(|e| {
            bad(format!(
                "line {lineno} is not a backup record ({e}); the file is damaged or not a \
                 certfleet store backup"
            ))
        })?;
        match (header.is_some(), line) {
            (false, Line::Header(h)) => {
                if h.format != FORMAT || h.version != VERSION {
                    return Err(bad(format!(
                        "format {:?} version {}; this coordinator reads {FORMAT:?} version \
                         {VERSION} (restore with the coordinator version that wrote it: {})",
                        h.format, h.version, h.coordinator
                    )));
                }
                h.fleet_ca
                    .check()
                    .map_err(|e| bad(format!("its fleet CA: {e}")))?;
                hash.update(&buf);
                header = Some(h);
            }
            (false, _) => {
                return Err(bad(
                    "it does not start with a header: not a certfleet store backup".into(),
                ))
            }
            (true, Line::End { counts, sha256 }) => {
                let actual = hex::encode(hash.finalize());
                if actual != sha256 {
                    return Err(bad(format!(
                        "checksum mismatch (records hash to {actual}, the end record says \
                         {sha256}): the file was changed or damaged after it was written; \
                         use another backup"
                    )));
                }
                if counts != seen {
                    return Err(bad(format!(
                        "the end record counts {counts}, the file holds {seen}"
                    )));
                }
                let mut rest = [0u8; 1];
                if std::io::Read::read(&mut reader, &mut rest).map_err(io(&name))? != 0 {
                    return Err(bad(format!("data after the end record (line {lineno})")));
                }
                let header = header.take().ok_or_else(|| bad("no header".into()))?;
                return Ok((header, counts));
            }
            (true, Line::Header(_)) => {
                return Err(bad(format!("a second header at line {lineno}")));
            }
            (true, line) => {
                hash.update(&buf);
                match &line {
                    Line::Account { .. } => seen.accounts += 1,
                    Line::Budget { .. } => seen.budgets += 1,
                    Line::Token { .. } => seen.tokens += 1,
                    Line::Operator { .. } => seen.operators += 1,
                    Line::Host { .. } => seen.hosts += 1,
                    Line::Cert { .. } => seen.certs += 1,
                    Line::IpHolder { .. } => seen.ip_holders += 1,
                    Line::Audit { .. } => seen.audit_records += 1,
                    Line::Header(_) | Line::End { .. } => {}
                }
                apply(line)?;
            }
        }
    }
    Err(bad("too many lines".into()))
}

/// Checks a backup file without acting on it: whole, unchanged, a format this coordinator
/// reads. Returns its header and counts.
pub fn check(path: &Path) -> Result<(Box<Header>, MigrateReport), BackupError> {
    read(path, &mut |_| Ok(()))
}

/// Stores one record of a backup into `to`.
fn apply(to: &SledStore, line: Line) -> Result<(), BackupError> {
    match line {
        Line::Account { issuer, record } => to.put_account(&issuer, &record)?,
        Line::Budget { issuer, budget } => to.put_budget(&issuer, &budget)?,
        Line::Token { hash, record } => to.put_token(&hash, &record)?,
        Line::Operator { record } => {
            if !to.put_operator(&record, None)? {
                return Err(BackupError::Invalid(format!(
                    "operator {} appears twice in the backup",
                    record.name
                )));
            }
        }
        Line::Host { record } => to.put_host(&record)?,
        Line::Cert { record } => to.put_cert(&record)?,
        Line::IpHolder { ip, host } => {
            to.claim_ip(ip, &host, None)?;
        }
        Line::Audit { seq, json } => crate::audit::append_copy(to, seq, json.as_bytes())?,
        Line::Header(_) | Line::End { .. } => {}
    }
    Ok(())
}

/// What is in `dir` already, if anything (`None`: empty or absent).
fn occupied(dir: &Path) -> Result<Option<String>, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries
            .next()
            .transpose()
            .map_err(io(&dir.display().to_string()))?
            .map(|e| e.file_name().to_string_lossy().into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&dir.display().to_string())(e)),
    }
}

/// `store restore --from FILE`: makes `config`'s (empty) state directory from a backup.
pub fn restore(
    config: &crate::config::Config,
    from: &Path,
    now: i64,
) -> Result<MigrateReport, BackupError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(from)
        .map_err(io(&from.display().to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(BackupError::Invalid(format!(
            "{} is readable by others (mode {:o}) and holds ACME account keys and the fleet \
             CA's key; run `chmod 600 {}` first",
            from.display(),
            mode & 0o777,
            from.display()
        )));
    }
    let dir = StateDir::new(&config.state_dir);
    if let Some(entry) = occupied(&dir.root)? {
        return Err(BackupError::Invalid(format!(
            "state directory {} is not empty (it holds {entry}): restore only into an empty \
             or new one — stop the coordinator, move {} aside (or point state_dir at a new \
             directory) and run `store restore` again",
            dir.root.display(),
            dir.root.display()
        )));
    }
    // Everything is checked before anything is written.
    let (header, counts) = check(from)?;
    let made = restore_into(&dir, from, &header, &counts, config, now);
    if made.is_err() {
        // The directory was empty: what is in it now is this failed restore's.
        if let Ok(entries) = std::fs::read_dir(&dir.root) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    made
}

fn restore_into(
    dir: &StateDir,
    from: &Path,
    header: &Header,
    counts: &MigrateReport,
    config: &crate::config::Config,
    now: i64,
) -> Result<MigrateReport, BackupError> {
    certfleet_shared::fsutil::create_dir_with_mode(&dir.root, 0o700)
        .map_err(io(&dir.root.display().to_string()))?;
    let store = std::sync::Arc::new(SledStore::open(&dir.store())?);
    read(from, &mut |line| apply(&store, line))?;
    store.flush_audit()?;
    let log = AuditLog::open(store.clone() as std::sync::Arc<dyn AuditStore>)?;
    if let Some(broken) = log.verify()? {
        return Err(BackupError::Invalid(format!(
            "the restored audit chain is broken at record {}: {} (the backup's source was \
             broken; see `audit verify` on it)",
            broken.seq, broken.reason
        )));
    }
    let restored = MigrateReport {
        accounts: store.issuers()?.0.len(),
        budgets: store.issuers()?.1.len(),
        tokens: store.tokens()?.len(),
        operators: store.operators()?.len(),
        hosts: store.hosts()?.len(),
        certs: store.certs()?.len(),
        ip_holders: store.ip_holders()?.len(),
        audit_records: log.len(),
    };
    if &restored != counts {
        return Err(BackupError::Invalid(format!(
            "the restored store holds {restored}, the backup {counts}"
        )));
    }
    drop(log);
    drop(store);
    crate::node::join(
        dir,
        &header.fleet_ca,
        &config.server.names,
        &config.server.ips,
        config.server.certificate_lifetime_secs as i64,
        now,
    )
    .map_err(|e| BackupError::Invalid(format!("writing the fleet CA and credentials: {e}")))?;
    Ok(restored)
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
