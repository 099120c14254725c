//! DNS providers: the coordinator writes the DNS-01 TXT records itself, so no host ever
//! holds DNS credentials (`../shared/DESIGN.md`, invariant 1).
//!
//! [`DnsProviders`] is what the engine uses, built from `[[dns_provider]]`
//! ([`DnsProviders::from_config`]):
//! - [`DnsProviders::zone_for`] — pure: the provider and zone that serve a name (longest
//!   zone suffix), to refuse a name no provider serves when the spec is made;
//! - [`DnsProviders::plan`] → [`PresentedSet`] — where each value goes: `_acme-challenge.NAME`,
//!   or, when that is a CNAME, its target (followed through the check nameservers of the
//!   zone, else the system resolver), and which provider serves that; values grouped by
//!   record, so a wildcard and its apex (which share `_acme-challenge.example.net`) are one
//!   RRset. The engine stores the set in the order *before* presenting it, so a coordinator
//!   that crashed can still clean up;
//! - [`DnsProviders::present_set`] writes each record in one change (one RFC 2136 update,
//!   one Route53 change); [`DnsProviders::present`] is plan + present;
//! - [`DnsProviders::wait_propagated`] polls every authoritative nameserver until each
//!   serves all values, up to the provider's `propagation_timeout`;
//! - [`DnsProviders::cleanup`] removes exactly our values (idempotent).
//!
//! Every failure is a [`DnsError`] naming provider, zone, record and cause, and saying
//! whether a retry can help. The backends: `rfc2136.rs` (TSIG-signed dynamic updates,
//! hickory-proto), `route53.rs` (the AWS API, SigV4), `exec.rs` (lego's exec interface);
//! `query.rs` moves DNS messages; `secret.rs` reads credentials (redacted in `Debug`).
//! This module never touches the store or the ACME client: the engine does.

mod error;
mod exec;
mod query;
mod rfc2136;
mod route53;
pub(crate) mod secret;

pub use error::{DnsError, DnsErrorKind};

use crate::config::{DnsProviderConfig, DnsProviderKind};
use certfleet_shared::clock::{Clock, SystemClock};
use certfleet_shared::identifier::DnsName;
use error::CallError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The label DNS-01 puts in front of the identifier's name (RFC 8555 §8.4).
pub const CHALLENGE_LABEL: &str = "_acme-challenge";

/// The TXT records of one order: where each value goes, and who writes it. Stored in the
/// order (JSON) so cleanup works after a restart, with the configuration of that time
/// resolved (provider by name, zone, record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresentedSet {
    pub records: Vec<PresentedRecord>,
}

/// One TXT RRset: all the order's values at one owner name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresentedRecord {
    /// The `[[dns_provider]]` name that writes it.
    pub provider: String,
    /// The zone apex it is written in.
    pub zone: String,
    /// The owner name, lower case, no trailing dot (`_acme-challenge.example.net`, or a
    /// CNAME's target).
    pub fqdn: String,
    /// The TXT values (base64url of SHA-256 of each key authorization), no duplicates.
    pub values: Vec<String>,
    /// The identifiers (wildcards without `*.`) whose values are here.
    pub names: Vec<DnsName>,
}

impl PresentedSet {
    /// Every `(fqdn, value)` pair.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.records
            .iter()
            .flat_map(|r| r.values.iter().map(move |v| (r.fqdn.as_str(), v.as_str())))
    }
}

enum Backend {
    Rfc2136(rfc2136::Rfc2136),
    Route53(Box<route53::Route53>),
    Exec(exec::Exec),
}

struct Provider {
    name: String,
    zones: Vec<DnsName>,
    /// Zones whose `_acme-challenge` names are CNAMEs into `zones`; never written to.
    delegated: Vec<DnsName>,
    ttl: u32,
    propagation_timeout: Duration,
    poll_interval: Duration,
    check_nameservers: Vec<SocketAddr>,
    backend: Backend,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Provider");
        d.field("name", &self.name)
            .field("zones", &self.zones)
            .field("delegated_zones", &self.delegated)
            .field("ttl", &self.ttl)
            .field("propagation_timeout", &self.propagation_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("check_nameservers", &self.check_nameservers);
        match &self.backend {
            Backend::Rfc2136(b) => d.field("rfc2136", b),
            Backend::Route53(b) => d.field("route53", b),
            Backend::Exec(b) => d.field("exec", b),
        };
        d.finish()
    }
}

/// The configured DNS providers (see the module documentation). `Debug` shows no secret.
#[derive(Debug)]
pub struct DnsProviders {
    providers: Vec<Provider>,
}

impl DnsProviders {
    /// Builds every provider. TSIG secrets are read now (a missing or unreadable secret
    /// stops `serve` at start, not the first order); AWS credentials are read on every
    /// Route53 request (so rotated keys are picked up). The configs are validated again.
    pub fn from_config(configs: &[DnsProviderConfig]) -> Result<Self, DnsError> {
        Self::with_clock(configs, Arc::new(SystemClock))
    }

    /// [`DnsProviders::from_config`] with the clock that dates TSIG and SigV4 signatures.
    pub fn with_clock(
        configs: &[DnsProviderConfig],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DnsError> {
        crate::config::validate_providers(configs)
            .map_err(|cause| DnsError::new(DnsErrorKind::Config, "-", "-", "-", cause))?;
        let mut providers = Vec::with_capacity(configs.len());
        for cfg in configs {
            let fail = |cause: String| {
                DnsError::new(
                    DnsErrorKind::Config,
                    cfg.name.as_str(),
                    cfg.zones.join(","),
                    "-",
                    format!("[[dns_provider]] {:?}: {cause}", cfg.name),
                )
            };
            let backend = match cfg.kind {
                DnsProviderKind::Rfc2136 => {
                    Backend::Rfc2136(rfc2136::Rfc2136::new(cfg, clock.clone()).map_err(fail)?)
                }
                DnsProviderKind::Route53 => Backend::Route53(Box::new(
                    route53::Route53::new(cfg, clock.clone()).map_err(fail)?,
                )),
                DnsProviderKind::Exec => {
                    Backend::Exec(exec::Exec::new(&cfg.command, cfg.timeout()).map_err(fail)?)
                }
            };
            providers.push(Provider {
                name: cfg.name.clone(),
                zones: cfg.zone_names(),
                delegated: cfg.delegated_zone_names(),
                ttl: cfg.ttl(),
                propagation_timeout: cfg.propagation_timeout(),
                poll_interval: cfg.poll_interval(),
                check_nameservers: cfg.check_nameserver_addrs(),
                backend,
            });
        }
        Ok(Self { providers })
    }

    /// No provider configured (DNS-01 unavailable).
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The provider name and zone serving `name` (longest zone that is `name` or above
    /// it, a delegated zone included), before any CNAME is followed. Pure.
    pub fn zone_for(&self, name: &DnsName) -> Option<(&str, &DnsName)> {
        self.providers
            .iter()
            .flat_map(|p| p.zones.iter().chain(&p.delegated).map(move |z| (p, z)))
            .filter(|(_, z)| name.is_at_or_under(z))
            .max_by_key(|(_, z)| z.as_str().len())
            .map(|(p, z)| (p.name.as_str(), z))
    }

    /// The provider and zone for an owner name that may hold `_` labels (a record name).
    fn provider_for_fqdn(&self, fqdn: &str) -> Option<(&Provider, &DnsName)> {
        self.providers
            .iter()
            .flat_map(|p| p.zones.iter().map(move |z| (p, z)))
            .filter(|(_, z)| in_zone(fqdn, z.as_str()))
            .max_by_key(|(_, z)| z.as_str().len())
    }

    /// The provider whose zone or delegated zone holds `fqdn` (where its CNAME is asked).
    fn delegation_for_fqdn(&self, fqdn: &str) -> Option<(&Provider, &DnsName)> {
        self.providers
            .iter()
            .flat_map(|p| p.zones.iter().chain(&p.delegated).map(move |z| (p, z)))
            .filter(|(_, z)| in_zone(fqdn, z.as_str()))
            .max_by_key(|(_, z)| z.as_str().len())
    }

    fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Where each value goes (CNAMEs followed), grouped by record. Nothing is written.
    /// `values`: (identifier name — for a wildcard the name without `*.` —, TXT value).
    pub async fn plan(&self, values: &[(DnsName, String)]) -> Result<PresentedSet, DnsError> {
        let mut placed = Vec::with_capacity(values.len());
        for (name, value) in values {
            let fqdn = self.challenge_target(name).await?;
            let (provider, zone) = self.provider_for_fqdn(&fqdn).ok_or_else(|| {
                let start = format!("{CHALLENGE_LABEL}.{name}");
                if let Some((p, z)) = self.delegation_for_fqdn(&fqdn) {
                    return DnsError::new(
                        DnsErrorKind::Config,
                        p.name.as_str(),
                        z.as_str(),
                        fqdn.as_str(),
                        format!(
                            "{fqdn} is in {z}, which [[dns_provider]] {:?} lists in \
                             delegated_zones, but it is not a CNAME into a zone the provider \
                             writes to ({}); add `{fqdn}. CNAME <name in one of them>.` to {z}",
                            p.name,
                            p.zones
                                .iter()
                                .map(|z| z.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
                let via = if fqdn == start {
                    String::new()
                } else {
                    format!(" (the CNAME target of {start})")
                };
                DnsError::new(
                    DnsErrorKind::NoProvider,
                    "-",
                    "-",
                    fqdn.as_str(),
                    format!(
                        "no [[dns_provider]] serves {fqdn}{via}; add its zone to a provider's \
                         zones"
                    ),
                )
            })?;
            placed.push(PresentedRecord {
                provider: provider.name.clone(),
                zone: zone.to_string(),
                fqdn,
                values: vec![value.clone()],
                names: vec![name.clone()],
            });
        }
        Ok(group_records(placed))
    }

    /// `_acme-challenge.NAME`, or the end of its CNAME chain.
    async fn challenge_target(&self, name: &DnsName) -> Result<String, DnsError> {
        let start = format!("{CHALLENGE_LABEL}.{name}");
        let mut current = start.clone();
        let mut seen = HashSet::from([current.clone()]);
        for _ in 0..query::MAX_CNAME_HOPS {
            let (servers, recurse, provider, zone) = match self.delegation_for_fqdn(&current) {
                Some((p, z)) if !p.check_nameservers.is_empty() => (
                    p.check_nameservers.clone(),
                    false,
                    p.name.clone(),
                    z.to_string(),
                ),
                found => {
                    let (p, z) = found
                        .map(|(p, z)| (p.name.clone(), z.to_string()))
                        .unwrap_or_else(|| ("-".into(), "-".into()));
                    let servers =
                        query::system_nameservers().map_err(|e| call_error(&p, &z, &current, e))?;
                    (servers, true, p, z)
                }
            };
            let wire = query::wire_name(&current)
                .map_err(|e| call_error(&provider, &zone, &current, e))?;
            let target = query::cname_target(&servers, &wire, recurse)
                .await
                .map_err(|e| {
                    let mut err = call_error(&provider, &zone, &current, e);
                    err.cause = format!("looking up a CNAME at {current}: {}", err.cause);
                    err
                })?;
            let Some(target) = target else {
                return Ok(current);
            };
            let next = query::text_name(&target);
            if !seen.insert(next.clone()) {
                return Err(DnsError::new(
                    DnsErrorKind::Config,
                    provider,
                    zone,
                    start.as_str(),
                    format!("the CNAME chain from {start} loops at {next}"),
                ));
            }
            tracing::debug!(from = %current, to = %next, "following the _acme-challenge CNAME");
            current = next;
        }
        Err(DnsError::new(
            DnsErrorKind::Config,
            "-",
            "-",
            start.clone(),
            format!(
                "the CNAME chain from {start} is longer than {} links",
                query::MAX_CNAME_HOPS
            ),
        ))
    }

    /// Plans and writes the records ([`DnsProviders::plan`] + [`DnsProviders::present_set`]).
    pub async fn present(&self, values: &[(DnsName, String)]) -> Result<PresentedSet, DnsError> {
        let set = self.plan(values).await?;
        self.present_set(&set).await?;
        Ok(set)
    }

    /// Writes every record of the set, each in one change. On a failure, what was written
    /// (and the failed record) is removed again before the error is returned.
    pub async fn present_set(&self, set: &PresentedSet) -> Result<(), DnsError> {
        for (i, rec) in set.records.iter().enumerate() {
            let result = self.present_record(rec).await;
            if let Err(err) = result {
                let done = PresentedSet {
                    records: set.records[..=i].to_vec(),
                };
                if let Err(cleanup) = self.cleanup(&done).await {
                    tracing::warn!(error = %cleanup, "removing the records of a failed present");
                }
                return Err(err);
            }
            tracing::info!(
                provider = %rec.provider,
                record = %rec.fqdn,
                values = rec.values.len(),
                "DNS-01 TXT record presented"
            );
        }
        Ok(())
    }

    async fn present_record(&self, rec: &PresentedRecord) -> Result<(), DnsError> {
        let p = self.configured(rec)?;
        let result = match &p.backend {
            Backend::Rfc2136(b) => b.add(&rec.zone, &rec.fqdn, &rec.values, p.ttl).await,
            Backend::Route53(b) => b.add(&rec.zone, &rec.fqdn, &rec.values, p.ttl).await,
            Backend::Exec(b) => b.present(&rec.fqdn, &rec.values).await,
        };
        result.map_err(|e| call_error(&rec.provider, &rec.zone, &rec.fqdn, e))
    }

    /// The provider named by a record (the configuration may have changed since it was
    /// planned).
    fn configured(&self, rec: &PresentedRecord) -> Result<&Provider, DnsError> {
        self.provider(&rec.provider).ok_or_else(|| {
            DnsError::new(
                DnsErrorKind::Config,
                rec.provider.as_str(),
                rec.zone.as_str(),
                rec.fqdn.as_str(),
                format!(
                    "no [[dns_provider]] named {:?} is configured any more; put it back to \
                     let the record be removed, or remove it by hand",
                    rec.provider
                ),
            )
        })
    }

    /// Waits until every authoritative nameserver of each record's zone (or the provider's
    /// `check_nameservers`) serves all its values; fails after the provider's
    /// `propagation_timeout`, naming the nameservers and values still missing.
    pub async fn wait_propagated(&self, set: &PresentedSet) -> Result<(), DnsError> {
        let waits = set.records.iter().map(|rec| self.wait_record(rec));
        for result in futures::future::join_all(waits).await {
            result?;
        }
        Ok(())
    }

    async fn wait_record(&self, rec: &PresentedRecord) -> Result<(), DnsError> {
        let p = self.configured(rec)?;
        let fail = |e: CallError| call_error(&rec.provider, &rec.zone, &rec.fqdn, e);
        let servers = if p.check_nameservers.is_empty() {
            query::zone_nameservers(&rec.zone).await.map_err(fail)?
        } else {
            p.check_nameservers.clone()
        };
        let name = query::wire_name(&rec.fqdn).map_err(fail)?;
        let start = tokio::time::Instant::now();
        let mut pending: Vec<(SocketAddr, String)> =
            servers.iter().map(|s| (*s, String::new())).collect();
        loop {
            let mut still = Vec::new();
            for (server, _) in pending {
                match query::txt_values(server, &name).await {
                    Ok(served) => {
                        let missing: Vec<&str> = rec
                            .values
                            .iter()
                            .filter(|v| !served.contains(v))
                            .map(String::as_str)
                            .collect();
                        if !missing.is_empty() {
                            still.push((
                                server,
                                format!("{} of {} values missing", missing.len(), rec.values.len()),
                            ));
                        }
                    }
                    Err(e) => still.push((server, e.cause)),
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= p.propagation_timeout {
                let which: Vec<String> = still
                    .iter()
                    .map(|(s, why)| format!("{s} ({why})"))
                    .collect();
                return Err(DnsError::new(
                    DnsErrorKind::NotPropagated,
                    rec.provider.as_str(),
                    rec.zone.as_str(),
                    rec.fqdn.as_str(),
                    format!(
                        "not served by every nameserver after {:?} (propagation_timeout): \
                         still missing at {}",
                        p.propagation_timeout,
                        which.join(", ")
                    ),
                ));
            }
            pending = still;
            tokio::time::sleep(p.poll_interval).await;
        }
    }

    /// Removes exactly the set's values (values already gone are fine). Every record is
    /// tried; the first error is returned.
    pub async fn cleanup(&self, set: &PresentedSet) -> Result<(), DnsError> {
        let mut first = None;
        for rec in &set.records {
            let result = match self.configured(rec) {
                Ok(p) => match &p.backend {
                    Backend::Rfc2136(b) => b.remove(&rec.zone, &rec.fqdn, &rec.values).await,
                    Backend::Route53(b) => b.remove(&rec.zone, &rec.fqdn, &rec.values).await,
                    Backend::Exec(b) => b.cleanup(&rec.fqdn, &rec.values).await,
                }
                .map_err(|e| call_error(&rec.provider, &rec.zone, &rec.fqdn, e)),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => tracing::info!(
                    provider = %rec.provider,
                    record = %rec.fqdn,
                    "DNS-01 TXT record removed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "removing a DNS-01 TXT record");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Merges records with the same owner name into one (values and names without
/// duplicates, in first-seen order): a wildcard and its apex become one RRset.
fn group_records(placed: Vec<PresentedRecord>) -> PresentedSet {
    let mut records: Vec<PresentedRecord> = Vec::new();
    for rec in placed {
        match records.iter_mut().find(|r| r.fqdn == rec.fqdn) {
            Some(group) => {
                for v in rec.values {
                    if !group.values.contains(&v) {
                        group.values.push(v);
                    }
                }
                for n in rec.names {
                    if !group.names.contains(&n) {
                        group.names.push(n);
                    }
                }
            }
            None => records.push(rec),
        }
    }
    PresentedSet { records }
}

/// Reads `data` the way the providers read what DNS servers and the Route53 API send
/// them: as a DNS reply (TXT values, CNAME target, rcode) and as a Route53 XML answer
/// (hosted zone, TXT RRset, change, error). For the fuzz target `coordinator_dns_answer`:
/// nothing here may panic on any input.
#[doc(hidden)]
pub fn parse_untrusted_answer(data: &[u8]) {
    if let Ok(reply) = hickory_proto::op::Message::from_vec(data) {
        for name in ["_acme-challenge.example.net", "example.net"] {
            if let Ok(n) = query::wire_name(name) {
                std::hint::black_box(query::txt_answers(&reply, &n));
                if let Some(target) = query::cname_answer(&reply, &n) {
                    let text = query::text_name(&target);
                    std::hint::black_box(in_zone(&text, "example.net"));
                    std::hint::black_box(query::wire_name(&text).ok());
                }
            }
        }
        std::hint::black_box(reply.response_code());
    }
    route53::parse_untrusted(&String::from_utf8_lossy(data));
}

fn call_error(provider: &str, zone: &str, record: &str, e: CallError) -> DnsError {
    DnsError::new(e.kind, provider, zone, record, e.cause)
}

/// `fqdn` is `zone` or under it (text, lower case, no trailing dots).
fn in_zone(fqdn: &str, zone: &str) -> bool {
    let fqdn = fqdn.trim_end_matches('.');
    fqdn.eq_ignore_ascii_case(zone)
        || (fqdn.len() > zone.len()
            && fqdn.as_bytes()[fqdn.len() - zone.len() - 1] == b'.'
            && fqdn
                .get(fqdn.len() - zone.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(zone)))
}

#[cfg(test)]
mod tests;
