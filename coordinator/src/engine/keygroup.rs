//! Key groups: every host a `[[policy.certificate]]` with `key_group` goes to serves one
//! certificate and one key (a wildcard behind a load balancer). Each member host keeps its
//! own record (installs and served checks stay per host); the group adds three rules:
//!
//! - **Members by both sides' consent.** The policy puts a host in the group; its agent
//!   must list the group too (`key_groups`, sent in Hello), or the host's certificate
//!   stops with an error naming that setting, and the host is never asked for the key.
//! - **One order per renewal.** A member's run takes the group's lock (one decision at a
//!   time per group), kept while it orders; while another member has an order in flight,
//!   the others wait for it.
//!   Before deciding, a member takes the group's newest certificate when it is newer than
//!   its own ([`adopt_newest`], pure), so only the member whose renewal comes first orders,
//!   and the others install what it got. A member that orders makes the key and CSR on its
//!   own host (`CreateCsr.key_group`), like any certificate.
//! - **The key travels sealed.** Before installing, a member that does not hold the key of
//!   its certificate gets it from a member that does: that member's agent seals it to this
//!   host's current identity key (HPKE, `SealKey`), and this host's agent opens it
//!   (`ImportKey`) and keeps it as a pending key. The coordinator relays the envelope in
//!   the same call and never stores it; it cannot open it. Each hand-over is audited
//!   (`key_shared`: the key's fingerprint, from which host, to which host and identity key).
//!   Both agents must list the group in their own config (`key_groups`), or they refuse.
//! - **Nothing is lost.** A member whose key is gone gets it again; when no member holds
//!   the key any more, the member orders a new certificate (and key) for the group.
//!
//! The lock is this coordinator's, and with several coordinators (a shared database) also
//! a lease on the group in the store (`c-keygroup-…`), kept alive while the member orders.

use super::csr::key_digest;
use super::{Engine, IssueError, AGENT_QUICK};
use crate::audit::{Entry, Kind};
use crate::model::{CertRecord, HostRecord, IssuedCert};
use crate::sessions::SessionError;
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply, FailureCode};
use certfleet_shared::ids::CertId;
use certfleet_shared::x509::{parse_pem_chain, sha256_hex, CertInfo};
use std::sync::Arc;

/// The key of a key group's lease in a shared store (leases are keyed by certificate id;
/// this one names no certificate).
fn group_lease_key(group: &str) -> CertId {
    let digest = sha256_hex(group.as_bytes());
    CertId::parse(&format!("c-keygroup-{}", &digest[..32])).expect("a hex digest makes a valid id")
}

/// How soon a member that waits for its group (another member ordering or being worked
/// on, a key holder to connect) looks again.
pub(super) const GROUP_WAIT_SECS: i64 = 5;

impl Engine {
    /// A key group's lock in this coordinator.
    fn group_lock(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        super::lock(&self.group_locks)
            .entry(group.to_owned())
            .or_default()
            .clone()
    }

    /// One run of a key-group member: under the group's lock, wait for a member's order in
    /// flight, take the group's newest certificate, then act as for any certificate (the
    /// install first fetches the key, see [`Engine::ensure_group_key`]). A certificate this
    /// run ordered wakes the other members.
    pub(super) async fn act_in_group(
        &self,
        group: &str,
        rec: &mut CertRecord,
        host: &HostRecord,
        now: i64,
    ) -> Result<(), IssueError> {
        if !host.key_groups.iter().any(|g| g == group) {
            // Its agent would refuse to make, seal or take the group's key.
            return Err(IssueError::Policy(format!(
                "host {} is given the certificate of key group {group}, but its agent does not take part in it: add key_groups = [\"{group}\"] to the agent's config on that host and restart the agent",
                host.id
            )));
        }
        let lock = self.group_lock(group);
        let Ok(guard) = lock.try_lock_owned() else {
            return Err(IssueError::KeyGroup(format!(
                "key group {group}: another member is being worked on; this host takes its result"
            )));
        };
        // Several coordinators: the group's lock is a lease in the shared store, taken
        // before the members are read (so two nodes never both find no order in flight).
        let group_lease = if self.store.shared() {
            let key = group_lease_key(group);
            match self.store.take_lease(&key, &self.node, now, super::scheduler::LEASE_SECS)? {
                Some(l) => Some(l),
                None => {
                    return Err(IssueError::KeyGroup(format!(
                        "key group {group}: another coordinator works on a member; this host takes its result"
                    )))
                }
            }
        } else {
            None
        };
        let give_back = |lease: Option<crate::store::Lease>| {
            if let Some(l) = lease {
                if let Err(e) = self.store.release_lease(&l) {
                    tracing::warn!(group, error = %e, "cannot give the key group's lease back; it expires by itself");
                }
            }
        };
        let members: Vec<CertRecord> = self
            .store
            .certs_in_group(group)?
            .into_iter()
            .filter(|m| m.id != rec.id)
            .collect();
        if rec.observed.order.is_none() {
            if let Some(m) = members.iter().find(|m| m.observed.order.is_some()) {
                give_back(group_lease);
                return Err(IssueError::KeyGroup(format!(
                    "key group {group}: host {} has an order in flight; this host installs its certificate",
                    m.host_id
                )));
            }
            if let Some(from) = adopt_newest(rec, &members, now) {
                tracing::info!(cert = %rec.id, host = %rec.host_id, group, from = %from,
                    serial = ?rec.observed.current.as_ref().map(|c| &c.serial), "taking the key group's newest certificate");
            }
        }
        // The lock is kept only while this member orders (so no other member orders
        // meanwhile); installing what the group has needs no lock.
        let ordering = matches!(
            super::decide(rec, now),
            super::Decision::Issue(_) | super::Decision::Resume
        );
        let guard = ordering.then_some(guard);
        let group_lease = match ordering {
            true => group_lease,
            false => {
                give_back(group_lease);
                None
            }
        };
        let before = rec.observed.current.as_ref().map(|c| c.serial.clone());
        let outcome = match &group_lease {
            Some(l) => {
                tokio::select! {
                    outcome = self.act(rec, host, now) => outcome,
                    lost = self.keep_lease(l) => Err(lost.into()),
                }
            }
            None => self.act(rec, host, now).await,
        };
        give_back(group_lease);
        drop(guard);
        let after = rec.observed.current.as_ref().map(|c| &c.serial);
        if after.is_some() && after != before.as_ref() {
            self.wake_members(&members);
        }
        outcome
    }

    /// The other members look at the group's new certificate now (those running already
    /// look again shortly by themselves).
    fn wake_members(&self, members: &[CertRecord]) {
        let now = self.clock.now_unix();
        for m in members {
            if super::lock(&self.running).contains(&m.id) {
                continue;
            }
            let poke = |id: &CertId| -> Result<(), IssueError> {
                if let Some(mut fresh) = self.store.cert(id)? {
                    fresh.schedule.next_action = Some(now);
                    fresh.schedule.next_reason = Some("the key group has a new certificate".into());
                    self.save(&fresh)?;
                }
                Ok(())
            };
            if let Err(e) = poke(&m.id) {
                tracing::warn!(cert = %m.id, error = %e, "could not wake a key-group member; it looks at its schedule later");
            }
        }
        self.wake.notify_one();
    }

    /// Before an install: this host must hold the key of the certificate. If the record
    /// does not say so, a member holding it seals it to this host's identity key and this
    /// host imports it.
    pub(super) async fn ensure_group_key(
        &self,
        agent: &crate::sessions::AgentHandle,
        rec: &mut CertRecord,
    ) -> Result<(), IssueError> {
        let (Some(group), Some(cur)) = (rec.spec.key_group.clone(), rec.observed.current.clone())
        else {
            return Ok(());
        };
        let digest = leaf_key_digest(&cur)?;
        if rec.observed.group_key.as_ref() == Some(&digest) {
            return Ok(());
        }
        let me = self
            .store
            .host(&rec.host_id)?
            .ok_or(IssueError::WaitingForAgent)?;
        let recipient_spki = me
            .identity_spki
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| {
                IssueError::KeyGroup(format!(
                    "key group {group}: host {}'s identity key is not on record yet (it is recorded when the host connects)",
                    rec.host_id
                ))
            })?;
        let holders: Vec<CertRecord> = self
            .store
            .certs_in_group(&group)?
            .into_iter()
            .filter(|m| m.id != rec.id && m.observed.group_key.as_ref() == Some(&digest))
            .collect();
        if holders.is_empty() {
            // Nobody has the key of this certificate: the group needs a new one.
            tracing::warn!(cert = %rec.id, host = %rec.host_id, group = %group, key = %digest,
                "no member of the key group holds the certificate's key; ordering a new certificate for the group");
            rec.observed.group_key_lost = Some(cur.serial.clone());
            rec.observed.current = None;
            rec.observed.ari = None;
            return Err(IssueError::KeyGroup(format!(
                "key group {group}: no member holds the key {digest} of serial {} any more; this host orders a new certificate for the group",
                cur.serial
            )));
        }
        let mut last: Option<SessionError> = None;
        let mut all_lost = true;
        let mut offline = Vec::new();
        for holder in &holders {
            let Some(sender) = self.sessions.get(&holder.host_id) else {
                offline.push(holder.host_id.to_string());
                all_lost = false;
                continue;
            };
            let seal = Cmd::SealKey(pb::SealKey {
                key_group: group.clone(),
                key_spki_sha256: digest.clone(),
                recipient_host_id: rec.host_id.to_string(),
                recipient_identity_spki_der: recipient_spki.clone(),
            });
            let sealed = match sender.request(seal, "seal key", AGENT_QUICK).await {
                Ok(reply::Result::SealedKey(s))
                    if s.key_spki_sha256 == digest
                        && s.sender_host_id == holder.host_id.as_str() =>
                {
                    s
                }
                Ok(_) => {
                    all_lost = false;
                    last = Some(SessionError::Unexpected {
                        host: holder.host_id.clone(),
                        what: "seal key",
                    });
                    continue;
                }
                Err(e) => {
                    let lost = matches!(&e, SessionError::Failed { kind, .. } if *kind == FailureCode::NoMatchingKey);
                    all_lost &= lost;
                    tracing::warn!(cert = %rec.id, group = %group, holder = %holder.host_id, error = %e, "a key-group member could not seal the key");
                    last = Some(e);
                    continue;
                }
            };
            let import = Cmd::ImportKey(pb::ImportKey {
                key_group: group.clone(),
                cert_id: rec.id.to_string(),
                envelope: Some(sealed),
            });
            match agent.request(import, "import key", AGENT_QUICK).await? {
                reply::Result::Done(_) => {}
                _ => {
                    return Err(SessionError::Unexpected {
                        host: rec.host_id.clone(),
                        what: "import key",
                    }
                    .into())
                }
            }
            self.record(
                Kind::KeyShared,
                rec,
                Entry::by("coordinator")
                    .ids(&cur.identifiers)
                    .serial(cur.serial.clone())
                    .detail("key_group", &group)
                    .detail("key_sha256", &digest)
                    .detail("from_host", holder.host_id.as_str())
                    .detail("recipient_identity_sha256", sha256_hex(&recipient_spki)),
            )?;
            tracing::info!(cert = %rec.id, host = %rec.host_id, group = %group, key = %digest, from = %holder.host_id,
                "key-group key sealed by a member and imported on this host");
            rec.observed.group_key = Some(digest);
            // Durable before the install that uses it.
            self.save(rec)?;
            return Ok(());
        }
        if all_lost && offline.is_empty() {
            tracing::warn!(cert = %rec.id, group = %group, key = %digest,
                "every member said it no longer has the key; ordering a new certificate for the group");
            rec.observed.group_key_lost = Some(cur.serial.clone());
            rec.observed.current = None;
            rec.observed.ari = None;
            return Err(IssueError::KeyGroup(format!(
                "key group {group}: no member has the key {digest} any more; this host orders a new certificate for the group"
            )));
        }
        match last {
            Some(e) => Err(e.into()),
            None => Err(IssueError::KeyGroup(format!(
                "key group {group}: waiting for a member holding the key to connect (hosts {})",
                offline.join(", ")
            ))),
        }
    }
}

/// SHA-256 (hex) of the public key of `cert`'s leaf: how the group's key is named.
pub(super) fn leaf_key_digest(cert: &IssuedCert) -> Result<String, IssueError> {
    let chain = parse_pem_chain(&cert.chain_pem).map_err(|e| IssueError::BadCert(e.to_string()))?;
    let leaf = CertInfo::from_der(&chain[0]).map_err(|e| IssueError::BadCert(e.to_string()))?;
    Ok(key_digest(&leaf.spki_der))
}

/// Takes the group's newest certificate into `rec` when it is newer than `rec`'s own
/// (same identifiers, not expired, not the one an operator revoked here, not one whose key
/// the group lost). Returns the
/// member it came from. Pure.
pub(super) fn adopt_newest(
    rec: &mut CertRecord,
    members: &[CertRecord],
    now: i64,
) -> Option<CertId> {
    let (from, newest) = members
        .iter()
        .filter_map(|m| m.observed.current.as_ref().map(|c| (m, c)))
        .filter(|(_, c)| {
            c.identifiers == rec.spec.identifiers
                && c.not_after > now
                && rec.observed.revoked_serial.as_ref() != Some(&c.serial)
                && rec.observed.group_key_lost.as_ref() != Some(&c.serial)
        })
        .max_by_key(|(_, c)| c.issued_at)?;
    if rec
        .observed
        .current
        .as_ref()
        .is_some_and(|c| c.serial == newest.serial || c.issued_at >= newest.issued_at)
    {
        return None;
    }
    let renewed = rec.observed.current.is_some();
    rec.observed.current = Some(newest.clone());
    rec.observed.ari = from.observed.ari.clone();
    rec.schedule.ari_retry_at = None;
    rec.schedule.forced_by = None;
    rec.observed.revoked_serial = None;
    if renewed {
        rec.schedule.renewals += 1;
    }
    rec.schedule.last_renewal_reason = Some(format!("key group: issued for host {}", from.host_id));
    Some(from.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testutil::rec;

    fn member(serial: &str, issued_at: i64, not_after: i64) -> CertRecord {
        let mut r = rec(issued_at, not_after);
        let c = r.observed.current.as_mut().unwrap();
        c.serial = serial.into();
        c.issued_at = issued_at;
        r
    }

    #[test]
    fn a_member_takes_the_newest_certificate_only_when_newer() {
        let mut mine = member("01", 100, 10_000);
        let older = member("00", 50, 10_000);
        let newer = member("02", 200, 10_000);
        let newest_expired = member("03", 300, 150);
        // Nothing newer: nothing changes.
        assert_eq!(
            adopt_newest(&mut mine, std::slice::from_ref(&older), 160),
            None
        );
        assert_eq!(mine.observed.current.as_ref().unwrap().serial, "01");
        // The newest that is still valid wins; an expired one is never taken.
        let from = adopt_newest(&mut mine, &[older, newer.clone(), newest_expired], 160);
        assert_eq!(from, Some(newer.id.clone()));
        assert_eq!(mine.observed.current.as_ref().unwrap().serial, "02");
        assert_eq!(mine.schedule.renewals, 1);
        // Taken once: not again.
        assert_eq!(adopt_newest(&mut mine, &[newer], 160), None);
    }

    #[test]
    fn a_revoked_or_different_certificate_is_not_taken() {
        let mut mine = member("01", 100, 10_000);
        mine.observed.current = None;
        mine.observed.revoked_serial = Some("02".into());
        let revoked = member("02", 200, 10_000);
        assert_eq!(adopt_newest(&mut mine, &[revoked], 160), None);
        let mut other_names = member("04", 400, 10_000);
        other_names.observed.current.as_mut().unwrap().identifiers =
            vec!["www.example.net".parse().unwrap()];
        assert_eq!(adopt_newest(&mut mine, &[other_names], 160), None);
        assert!(mine.observed.current.is_none());
        // A fresh member (nothing yet) takes what the group has.
        // One whose key no member holds any more is not taken either.
        mine.observed.group_key_lost = Some("05".into());
        let lost = member("05", 500, 10_000);
        assert_eq!(
            adopt_newest(&mut mine, std::slice::from_ref(&lost), 600),
            None
        );
        mine.observed.group_key_lost = None;
        assert!(adopt_newest(&mut mine, &[lost], 600).is_some());
        assert_eq!(mine.observed.revoked_serial, None);
    }
}
