//! Operator actions on the fleet, outside the engine: revoke a certificate, remove a host,
//! force renewals, release an address. Each is audited under the operator's name and wakes
//! the engine for what it changed.

use crate::audit::{Entry, Kind};
use crate::engine::reconcile::state_of;
use crate::engine::{Engine, IssueError};
use crate::store::{RenewalRequest, StoreError};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::x509::parse_pem_chain;
use std::net::IpAddr;

/// Revokes the current certificate at its CA and records it. With `reissue`, the
/// reconciler then issues a replacement at once.
pub async fn revoke(
    engine: &Engine,
    id: &CertId,
    reason: instant_acme::RevocationReason,
    reason_name: &str,
    by: &str,
    reissue: bool,
) -> Result<Option<String>, IssueError> {
    let Some(rec) = engine.store.cert(id)? else {
        return Err(IssueError::Policy(format!("no such certificate: {id}")));
    };
    let Some(cur) = rec.observed.current.clone() else {
        return Ok(None);
    };
    let issuer = engine.issuer(&cur.issuer)?;
    let chain = parse_pem_chain(&cur.chain_pem).map_err(|e| IssueError::BadCert(e.to_string()))?;
    // Revoked already at the CA (an earlier `certs revoke`, or an answer lost on the way):
    // done, recorded as such, not an error that blocks the host's removal.
    let already = match issuer.revoke(&chain[0], reason).await {
        Ok(()) => false,
        Err(e) if e.is_already_revoked() => true,
        Err(e) => return Err(e.into()),
    };
    let mut entry = Entry::by(by)
        .ids(&cur.identifiers)
        .serial(cur.serial.clone())
        .issuer(cur.issuer.clone())
        .detail("reason", reason_name);
    if already {
        entry = entry.detail("already_revoked", true);
    }
    engine.record(Kind::CertificateRevoked, &rec, entry)?;
    tracing::warn!(cert = %id, serial = %cur.serial, reason = reason_name, by, already_revoked = already, "certificate revoked");
    if reissue {
        // A key group's certificate is every member's: all of them drop it, and the
        // group orders one replacement.
        let mut records = vec![rec.clone()];
        if let Some(g) = &rec.spec.key_group {
            records.extend(engine.store.certs_in_group(g)?.into_iter().filter(|m| {
                m.id != rec.id
                    && m.observed.current.as_ref().map(|c| &c.serial) == Some(&cur.serial)
            }));
        }
        for mut rec in records {
            rec.observed.current = None;
            rec.observed.ari = None;
            rec.schedule.ari_retry_at = None;
            rec.schedule.last_renewal_reason = Some(format!("revoked ({reason_name}) by {by}"));
            rec.observed.revoked_serial = Some(cur.serial.clone());
            rec.schedule.next_action = Some(engine.clock.now_unix());
            rec.schedule.next_reason = Some("replace the revoked certificate".into());
            rec.state = state_of(&rec, engine.clock.now_unix());
            engine.store.put_cert(&rec)?;
        }
        engine.wake.notify_one();
    }
    Ok(Some(cur.serial))
}

/// Whether another member of `rec`'s key group still has the same certificate (so removing
/// this host must not revoke it).
fn shared_with_group(engine: &Engine, rec: &crate::model::CertRecord) -> Result<bool, StoreError> {
    let (Some(g), Some(cur)) = (&rec.spec.key_group, &rec.observed.current) else {
        return Ok(false);
    };
    Ok(engine.store.certs_in_group(g)?.iter().any(|m| {
        m.host_id != rec.host_id
            && m.observed.current.as_ref().map(|c| &c.serial) == Some(&cur.serial)
    }))
}

/// Removes a host: revokes its certificates (cessationOfOperation) unless told not to,
/// forgets them and the host; its identity is refused from then on.
pub async fn remove_host(
    engine: &Engine,
    host: &HostId,
    by: &str,
    revoke_certs: bool,
) -> Result<Vec<String>, IssueError> {
    remove_host_as(engine, host, by, revoke_certs, Kind::HostRemoved, None).await
}

/// [`remove_host`], audited as `kind` (`host_removed`, `host_decommissioned`,
/// `host_left`) with `why` as its `reason` detail.
pub async fn remove_host_as(
    engine: &Engine,
    host: &HostId,
    by: &str,
    revoke_certs: bool,
    kind: Kind,
    why: Option<&str>,
) -> Result<Vec<String>, IssueError> {
    let mut revoked = Vec::new();
    let mut kept = Vec::new();
    for rec in engine.store.certs_for_host(host)? {
        if revoke_certs && shared_with_group(engine, &rec)? {
            // The group's other members still serve it: not revoked.
            if let Some(c) = &rec.observed.current {
                kept.push(c.serial.clone());
            }
        } else if revoke_certs
            && rec
                .observed
                .current
                .as_ref()
                .is_some_and(|c| c.not_after > engine.clock.now_unix())
        {
            if let Some(serial) = revoke(
                engine,
                &rec.id,
                instant_acme::RevocationReason::CessationOfOperation,
                "cessationOfOperation",
                by,
                false,
            )
            .await?
            {
                revoked.push(serial);
            }
        }
        engine.store.delete_cert(&rec)?;
    }
    let mut entry = Entry::by(by)
        .host(host)
        .detail("revoked_serials", &revoked)
        .detail("kept_for_key_group", &kept)
        .detail("revoked", revoke_certs);
    if let Some(why) = why {
        entry = entry.detail("reason", why);
    }
    engine.audit.append(kind, engine.clock.now_unix(), entry)?;
    engine.store.delete_host(host)?;
    engine.sessions.disconnect(host);
    tracing::warn!(host = %host, by, revoked = ?revoked, "host removed");
    // Its addresses are free now: a host waiting for one gets its certificate.
    for ip in engine.store.ips_held_by(host)? {
        engine.release_address(ip, host, by, true)?;
    }
    Ok(revoked)
}

/// Forces a renewal of these certificates now (operator command).
pub fn force_renew(engine: &Engine, ids: &[CertId], by: &str) -> Result<Vec<CertId>, StoreError> {
    let now = engine.clock.now_unix();
    for id in ids {
        if engine.store.cert(id)?.is_none() {
            return Ok(Vec::new());
        }
    }
    let mut done = Vec::new();
    for id in ids {
        if let Some(rec) = engine.store.cert(id)? {
            if let Err(e) = engine.record(
                Kind::RenewalForced,
                &rec,
                Entry::by(format!("operator:{by}")),
            ) {
                tracing::error!(error = %e, "audit append failed; renewal not forced");
                continue;
            }
            // A request apart from the record, never a write of the record here: a task
            // running on the certificate (on any node) would write its older copy over
            // the force, and this copy, read before that task stored its order's URL,
            // would drop the URL — another node then ordered a second time (seen in the
            // three-coordinator kill test). The engine takes the request under the
            // certificate's lease and puts it in the record (`forced_by`, attempts 0).
            engine.store.request_renewal(&RenewalRequest {
                cert: id.clone(),
                by: by.to_owned(),
                at: now,
                nonce: format!("{:016x}", rand::random::<u64>()),
            })?;
            done.push(id.clone());
        }
    }
    engine.wake.notify_one();
    Ok(done)
}

/// Frees `ip` held by `host` (operator command); hosts waiting for it are looked at now.
pub fn release_ip(
    engine: &Engine,
    ip: IpAddr,
    host: &HostId,
    by: &str,
) -> Result<Vec<HostId>, StoreError> {
    engine.release_address(ip, host, by, true)
}
