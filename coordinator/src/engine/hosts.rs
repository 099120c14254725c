//! A host's facts changed (it said Hello): the addresses it may hold (one IP, one live host,
//! inside the policy's ranges), its desired certificates (one record per certificate name;
//! those the policy no longer gives are retired), and what blocks each.

use super::reconcile::{new_record, state_of, RECHECK_SECS};
use super::Engine;
use crate::audit::{Entry, Kind};
use crate::model::CertSpec;
use crate::model::{Blocked, BlockedState, CertRecord, HostRecord};
use crate::spec::{self};
use crate::store::StoreError;
use certfleet_shared::identifier::Identifier;
use certfleet_shared::ids::HostId;
use std::collections::BTreeMap;
use std::net::IpAddr;

impl Engine {
    /// The host's facts changed (it said Hello): claim its addresses, recompute its desired
    /// certificate and look at it now.
    pub fn host_changed(&self, host_id: &HostId) -> Result<(), StoreError> {
        self.rederive(host_id, "host connected")
    }

    /// Recomputes the host's desired certificates from the configuration in force (its
    /// addresses claimed, records made, changed or retired) and looks at each now, for
    /// `reason` (a Hello, a reload of the configuration, an address released).
    pub fn rederive(&self, host_id: &HostId, reason: &str) -> Result<(), StoreError> {
        let Some(host) = self.store.host(host_id)? else {
            return Ok(());
        };
        let now = self.clock.now_unix();
        let live = self.live();
        let disallowed = spec::disallowed(&live.config, &host);
        let conflicts = self.claim_addresses(&host, disallowed.as_ref())?;
        let mut existing: BTreeMap<String, CertRecord> = self
            .store
            .certs_for_host(host_id)?
            .into_iter()
            .map(|r| (r.spec.name.clone(), r))
            .collect();
        for wanted in spec::desired_all(&live.config, &host) {
            let found = existing.remove(&wanted.name);
            match wanted.spec {
                Ok(spec) => {
                    let mut rec = found.unwrap_or_else(|| new_record(&host, spec.clone(), now));
                    rec.observed.installed_in = host
                        .inventory
                        .iter()
                        .filter(|i| spec.targets.contains(&i.target))
                        .map(|i| (i.target.clone(), i.serial.clone()))
                        .collect();
                    // What a target serves is only known again after its next served
                    // check when what is installed there changed.
                    let obs = &mut rec.observed;
                    let installed = &obs.installed_in;
                    obs.served_in
                        .retain(|t, serial| installed.get(t) == Some(serial));
                    obs.summarise(&spec.targets);
                    let blocked = blocked_by(
                        &spec,
                        disallowed.as_ref(),
                        wanted.refused_names.as_ref(),
                        &conflicts,
                        &host,
                        now,
                    );
                    rec.spec = spec;
                    self.set_blocked(&mut rec, blocked)?;
                    rec.state = state_of(&rec, now);
                    rec.schedule.next_action = Some(now);
                    rec.schedule.next_reason = Some(reason.into());
                    rec.updated = now;
                    self.save(&rec)?;
                }
                Err(e) => {
                    tracing::warn!(host = %host_id, certificate = %wanted.name, error = %e, "no certificate for this host");
                    if let Some(mut rec) = found {
                        rec.schedule.last_error = Some(e.to_string());
                        rec.schedule.next_action = Some(now + RECHECK_SECS);
                        rec.schedule.next_reason = Some("configuration error".into());
                        self.save(&rec)?;
                    }
                }
            }
        }
        // Certificates the policy no longer gives this host: no longer renewed. What is
        // installed stays on the host until a target is given another certificate.
        for (name, rec) in existing {
            tracing::info!(host = %host_id, cert = %rec.id, certificate = %name, "the policy no longer gives this certificate; retiring it");
            let entry = Entry::by("coordinator")
                .ids(&rec.spec.identifiers)
                .detail("certificate", &name)
                .detail("policy", &rec.spec.policy);
            if let Err(e) = self.record(Kind::CertificateRetired, &rec, entry) {
                tracing::error!(error = %e, "audit append failed");
            }
            self.store.delete_cert(&rec)?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Claims the host's allowed addresses for it (first come; a holder that is no longer
    /// enrolled is taken over) and frees those it no longer reports. Returns the addresses
    /// another enrolled host holds, with that host.
    pub(super) fn claim_addresses(
        &self,
        host: &HostRecord,
        disallowed: Option<&spec::Disallowed>,
    ) -> Result<Vec<(IpAddr, HostId)>, StoreError> {
        let mut conflicts = Vec::new();
        for ip in &host.ips {
            if disallowed.is_some_and(|d| d.ips.contains(ip)) {
                continue;
            }
            let mut holder = self.store.claim_ip(*ip, &host.id, None)?;
            if holder != host.id && self.store.host(&holder)?.is_none() {
                holder = self.store.claim_ip(*ip, &host.id, Some(&holder))?;
            }
            if holder != host.id {
                conflicts.push((*ip, holder));
            }
        }
        for ip in self.store.ips_held_by(&host.id)? {
            if !host.ips.contains(&ip) || disallowed.is_some_and(|d| d.ips.contains(&ip)) {
                self.release_address(ip, &host.id, "host:no longer reports it", false)?;
            }
        }
        Ok(conflicts)
    }

    /// Records a change of `blocked` (audit, metric, WARN once per new reason).
    pub(super) fn set_blocked(
        &self,
        rec: &mut CertRecord,
        blocked: Option<Blocked>,
    ) -> Result<(), StoreError> {
        let same = match (&rec.observed.blocked, &blocked) {
            (Some(a), Some(b)) => {
                a.state == b.state && a.ips == b.ips && a.names == b.names && a.held_by == b.held_by
            }
            (None, None) => true,
            _ => false,
        };
        if same {
            return Ok(());
        }
        match &blocked {
            Some(b) => {
                let kind = match b.state {
                    BlockedState::Conflict => Kind::IpConflict,
                    BlockedState::Refused if !b.names.is_empty() => Kind::NameRefused,
                    BlockedState::Refused => Kind::IpRefused,
                };
                let mut entry = Entry::by("coordinator")
                    .ips(&b.ips)
                    .detail("reason", &b.reason);
                entry.names = b.names.clone();
                if let Some(h) = &b.held_by {
                    entry = entry.detail("held_by", h.as_str());
                }
                if let Err(e) = self.record(kind, rec, entry) {
                    tracing::error!(error = %e, "audit append failed");
                }
                self.metrics
                    .ip_blocked
                    .get_or_create(&crate::metrics::BlockLabel {
                        kind: kind.as_str(),
                    })
                    .inc();
                tracing::warn!(host = %rec.host_id, cert = %rec.id, ips = ?b.ips, names = ?b.names, held_by = ?b.held_by,
                    state = ?b.state, "{}", b.reason);
                rec.schedule.last_error = Some(b.reason.clone());
            }
            None => {
                tracing::info!(host = %rec.host_id, cert = %rec.id, "address conflict resolved; the certificate can be ordered");
                rec.schedule.last_error = None;
            }
        }
        rec.observed.blocked = blocked;
        Ok(())
    }

    /// Frees `ip` if `host` holds it, audits it, and lets any host waiting for it claim it
    /// now (its certificate then proceeds without a restart). Returns the hosts looked at.
    pub fn release_address(
        &self,
        ip: IpAddr,
        host: &HostId,
        by: &str,
        audit: bool,
    ) -> Result<Vec<HostId>, StoreError> {
        if !self.store.release_ip(ip, host)? {
            return Ok(Vec::new());
        }
        if audit {
            if let Err(e) = self.audit.append(
                Kind::IpReleased,
                self.clock.now_unix(),
                Entry::by(by).host(host).ips(&[ip]),
            ) {
                tracing::error!(error = %e, "audit append failed");
            }
        }
        tracing::info!(ip = %ip, host = %host, by, "address released");
        let mut waiting = Vec::new();
        for other in self.store.hosts()? {
            if other.id != *host && other.ips.contains(&ip) {
                waiting.push(other.id);
            }
        }
        for h in &waiting {
            self.host_changed(h)?;
        }
        // The host that had it now sees the conflict itself (when someone took the address).
        if !waiting.is_empty() && self.store.host(host)?.is_some() {
            self.host_changed(host)?;
        }
        Ok(waiting)
    }
}

/// What keeps `spec` from being ordered: names the policy does not allow, addresses outside
/// the policy (refused first), or addresses of the spec that another host holds.
fn blocked_by(
    spec: &CertSpec,
    disallowed: Option<&spec::Disallowed>,
    refused_names: Option<&spec::RefusedNames>,
    conflicts: &[(IpAddr, HostId)],
    host: &HostRecord,
    now: i64,
) -> Option<Blocked> {
    if let Some(r) = refused_names {
        return Some(Blocked {
            names: r.names.clone(),
            state: BlockedState::Refused,
            ips: Vec::new(),
            held_by: None,
            reason: r.reason.clone(),
            since: now,
        });
    }
    if let Some(d) = disallowed {
        return Some(Blocked {
            names: Default::default(),
            state: BlockedState::Refused,
            ips: d.ips.clone(),
            held_by: None,
            reason: d.reason(),
            since: now,
        });
    }
    let mine: Vec<&(IpAddr, HostId)> = conflicts
        .iter()
        .filter(|(ip, _)| spec.identifiers.contains(&Identifier::Ip(*ip)))
        .collect();
    let (_, holder) = mine.first()?;
    let ips: Vec<IpAddr> = mine.iter().map(|(ip, _)| *ip).collect();
    let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    Some(Blocked {
        names: Default::default(),
        state: BlockedState::Conflict,
        held_by: Some(holder.clone()),
        reason: format!(
            "{} held by host {holder}; host {} gets no certificate with it until that host is removed (`hosts remove {holder}`) or the address is released (`hosts release-ip {holder} {}`)",
            list.join(", "),
            host.id,
            list[0]
        ),
        ips,
        since: now,
    })
}
