//! `certfleet-coordinator store migrate --to postgres://…`: copies a (stopped) sled store
//! into an empty PostgreSQL database through the store traits — accounts, tokens, hosts,
//! certificates with their indexes, address holders, budgets, operators, and the audit trail byte for
//! byte — then checks the copy: the same counts, the audit chain verified on the target,
//! the same head hash.

use super::{AuditStore, PgSyncStore, SledStore, Store, StoreError};
use crate::audit::{AuditError, AuditLog};
use std::sync::Arc;

/// What a copy (`store migrate`, `store backup`, `store restore`) holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigrateReport {
    pub accounts: usize,
    pub tokens: usize,
    pub hosts: usize,
    pub certs: usize,
    pub ip_holders: usize,
    pub budgets: usize,
    pub operators: usize,
    pub audit_records: u64,
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} accounts, {} tokens, {} hosts, {} certificates, {} address holders, \
             {} budgets, {} operators, {} audit records",
            self.accounts,
            self.tokens,
            self.hosts,
            self.certs,
            self.ip_holders,
            self.budgets,
            self.operators,
            self.audit_records
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(
        "the target database already holds a certfleet store ({0}); migrate into an empty \
         database (create a new one, or drop this one's tables if it is a failed earlier copy)"
    )]
    NotEmpty(String),
    #[error(
        "the sled store's audit trail is broken at record {seq} ({reason}); it is not \
         copied — see `certfleet-coordinator audit verify`"
    )]
    SourceBroken { seq: u64, reason: String },
    #[error("the copy does not match: {0}")]
    Mismatch(String),
}

fn check(what: &str, source: usize, copied: usize) -> Result<(), MigrateError> {
    if source == copied {
        Ok(())
    } else {
        Err(MigrateError::Mismatch(format!(
            "{what}: {source} in sled, {copied} in PostgreSQL"
        )))
    }
}

/// `store migrate`: opens the sled store of `config`'s state directory (the coordinator
/// must be stopped) and the database of `target`, then [`sled_to_postgres`].
pub fn sled_to_postgres_at(
    config: &crate::config::Config,
    target: super::PgOptions,
) -> anyhow::Result<MigrateReport> {
    use anyhow::Context as _;
    let path = crate::fleet_ca::StateDir::new(&config.state_dir).store();
    anyhow::ensure!(
        path.exists(),
        "no sled store at {} (is state_dir right?)",
        path.display()
    );
    let from = SledStore::open(&path).with_context(|| {
        format!(
            "opening the sled store at {} (stop the coordinator first)",
            path.display()
        )
    })?;
    let to = PgSyncStore::open(target).context("opening the target PostgreSQL database")?;
    Ok(sled_to_postgres(Arc::new(from), Arc::new(to))?)
}

/// Copies `from` into `to` (which must be empty) and checks the copy.
pub fn sled_to_postgres(
    from: Arc<SledStore>,
    to: Arc<PgSyncStore>,
) -> Result<MigrateReport, MigrateError> {
    let source_log = AuditLog::open(from.clone())?;
    if let Some(broken) = source_log.verify()? {
        return Err(MigrateError::SourceBroken {
            seq: broken.seq,
            reason: broken.reason,
        });
    }
    let (target_hosts, target_certs) = (to.hosts()?.len(), to.certs()?.len());
    let target_audit = to.last_audit_record()?.is_some();
    if target_hosts + target_certs > 0 || target_audit || !to.tokens()?.is_empty() {
        return Err(MigrateError::NotEmpty(format!(
            "{target_hosts} hosts, {target_certs} certificates{}",
            if target_audit { ", audit records" } else { "" }
        )));
    }
    let mut report = MigrateReport::default();
    let (account_issuers, budget_issuers) = from.issuers()?;
    for issuer in &account_issuers {
        if let Some(acct) = from.account(issuer)? {
            to.put_account(issuer, &acct)?;
            report.accounts += 1;
        }
    }
    for issuer in &budget_issuers {
        if let Some(budget) = from.budget(issuer)? {
            to.put_budget(issuer, &budget)?;
            report.budgets += 1;
        }
    }
    for (hash, tok) in from.tokens()? {
        to.put_token(&hash, &tok)?;
        report.tokens += 1;
    }
    for op in from.operators()? {
        if !to.put_operator(&op, None)? {
            return Err(MigrateError::NotEmpty(format!("operator {}", op.name)));
        }
        report.operators += 1;
    }
    for host in from.hosts()? {
        to.put_host(&host)?;
        report.hosts += 1;
    }
    from.scan_certs(&mut |rec| {
        to.put_cert(&rec)?;
        report.certs += 1;
        Ok(())
    })?;
    for (ip, holder) in from.ip_holders()? {
        to.claim_ip(ip, &holder, None)?;
        report.ip_holders += 1;
    }
    report.audit_records = source_log.copy_to(to.as_ref())?;

    // Check the copy as the coordinator will read it.
    check("accounts", account_issuers.len(), {
        let mut n = 0;
        for i in &account_issuers {
            n += usize::from(to.account(i)?.is_some());
        }
        n
    })?;
    check("tokens", report.tokens, to.tokens()?.len())?;
    check("hosts", report.hosts, to.hosts()?.len())?;
    check("operators", report.operators, to.operators()?.len())?;
    check("certificates", report.certs, to.certs()?.len())?;
    check(
        "scheduled certificates",
        from.due(i64::MAX - 1, usize::MAX)?.len(),
        to.due(i64::MAX - 1, usize::MAX)?.len(),
    )?;
    let copied_log = AuditLog::open(to.clone() as Arc<dyn AuditStore>)?;
    if copied_log.len() != source_log.len() || copied_log.head_hash() != source_log.head_hash() {
        return Err(MigrateError::Mismatch(format!(
            "audit: {} records ending in {} in sled, {} ending in {} in PostgreSQL",
            source_log.len(),
            source_log.head_hash(),
            copied_log.len(),
            copied_log.head_hash()
        )));
    }
    if let Some(broken) = copied_log.verify()? {
        return Err(MigrateError::Mismatch(format!(
            "audit chain broken at record {} in the copy: {}",
            broken.seq, broken.reason
        )));
    }
    Ok(report)
}
