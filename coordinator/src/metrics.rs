//! Prometheus metrics (OpenMetrics text on `GET /metrics`, off unless `[metrics] listen` is
//! set). Gauges about the fleet are computed from the store at scrape time, so they always
//! match what `certs` and `hosts` show; counters and the ACME latency histogram are kept
//! in memory from the moment the coordinator starts.
//!
//! The remaining-lifetime ratio lets one alert rule cover 6-day and 90-day certificates
//! alike (see `deploy/prometheus/alerts.yml`).

use crate::sessions::Sessions;
use crate::store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabel {
    state: String,
}

impl NodeStateLabel {
    fn of(alive: bool) -> Self {
        Self {
            state: if alive { "alive" } else { "dead" }.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerReason {
    pub issuer: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcmeOp {
    pub issuer: String,
    pub op: String,
}

/// A certificate's series: the ids, plus what a person reads in an alert — the host's
/// name, the primary (first) identifier and the issuer of the current certificate. One
/// series per certificate: the ids alone pick it; the readable labels are cut to
/// [`LABEL_MAX_CHARS`] characters so a long name cannot blow up a series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    cert_id: String,
    host_id: String,
    hostname: String,
    identifier: String,
    issuer: String,
}

/// The longest value of the `hostname`, `identifier` and `issuer` labels, in characters;
/// a longer one is cut and ends in `…` (documented in the README's metrics section).
pub const LABEL_MAX_CHARS: usize = 64;

/// `value`, cut to [`LABEL_MAX_CHARS`] characters (the last being `…` when cut).
pub fn label_value(value: &str) -> String {
    if value.chars().count() <= LABEL_MAX_CHARS {
        return value.to_owned();
    }
    let mut out: String = value.chars().take(LABEL_MAX_CHARS - 1).collect();
    out.push('…');
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// `ip_conflict` or `ip_refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockLabel {
    pub kind: String,
}

/// A host's series: its id and (cut like a certificate's labels) its name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host_id: String,
    hostname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    issuer: String,
    limit: String,
}

/// `kind`: `operator` (`name` the operator), `server_certificate` (`name` its serial),
/// `fleet_ca` (`name` "fleet-ca").
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    kind: String,
    name: String,
}

/// The coordinator's own credentials, for `certfleet_credential_not_after_seconds`
/// (operators come from the store).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub server: crate::server_cert::ServerCertInfo,
    pub fleet_ca_not_after: i64,
}

fn acme_histogram() -> Histogram {
    // 5 ms … ~40 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Counters and histograms that live as long as the coordinator.
pub struct Metrics {
    pub renewals: Family<IssuerReason, Counter>,
    pub failures: Family<IssuerReason, Counter>,
    pub acme_latency: Family<AcmeOp, Histogram, fn() -> Histogram>,
    /// Certificates newly held back by an address conflict or a policy refusal.
    pub ip_blocked: Family<BlockLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            renewals: Family::default(),
            failures: Family::default(),
            acme_latency: Family::new_with_constructor(acme_histogram),
            ip_blocked: Family::default(),
        }
    }
}

impl Metrics {
    pub fn observe_acme(&self, issuer: &str, op: &str, seconds: f64) {
        self.acme_latency
            .get_or_create(&AcmeOp {
                issuer: issuer.to_owned(),
                op: op.to_owned(),
            })
            .observe(seconds);
    }

    /// The whole exposition, computed now.
    pub fn render(
        &self,
        store: &dyn Store,
        sessions: &Sessions,
        budgets: &[(String, u32)],
        decommission_after: Option<i64>,
        credentials: &Credentials,
        now: i64,
    ) -> Result<String, crate::store::StoreError> {
        let mut reg = Registry::default();
        let credential_not_after = Family::<CredentialLabels, Gauge>::default();
        let credential = |kind: &str, name: &str, not_after: i64| {
            credential_not_after
                .get_or_create(&CredentialLabels {
                    kind: kind.into(),
                    name: name.into(),
                })
                .set(not_after);
        };
        credential(
            "server_certificate",
            &credentials.server.serial,
            credentials.server.not_after,
        );
        credential("fleet_ca", "fleet-ca", credentials.fleet_ca_not_after);
        // Revoked operators are gone for good: no series, so no alert about them.
        for op in store.operators()? {
            if op.revoked_at.is_none() {
                credential("operator", &op.name, op.not_after);
            }
        }
        let not_after = Family::<CertLabels, Gauge>::default();
        let remaining = Family::<CertLabels, FloatGauge>::default();
        let next_renewal = Family::<CertLabels, Gauge>::default();
        let cert_at_risk = Family::<CertLabels, Gauge>::default();
        let by_state = Family::<StateLabel, Gauge>::default();
        let at_risk = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        for s in [
            "pending",
            "ordering",
            "issued",
            "installed",
            "served",
            "failed",
            "conflict",
            "refused",
        ] {
            by_state
                .get_or_create(&StateLabel { state: s.into() })
                .set(0);
        }
        let hosts = store.hosts()?;
        let hostnames: std::collections::HashMap<_, String> = hosts
            .iter()
            .map(|h| (h.id.clone(), label_value(&h.hostname)))
            .collect();
        store.scan_certs(&mut |c| {
            by_state
                .get_or_create(&StateLabel {
                    state: c.state.as_str().into(),
                })
                .inc();
            if c.schedule.at_risk {
                at_risk.inc();
            }
            if let Some(cur) = &c.observed.current {
                let l = CertLabels {
                    cert_id: c.id.to_string(),
                    host_id: c.host_id.to_string(),
                    hostname: hostnames.get(&c.host_id).cloned().unwrap_or_default(),
                    identifier: cur
                        .identifiers
                        .first()
                        .or(c.spec.identifiers.first())
                        .map(|i| label_value(&i.to_string()))
                        .unwrap_or_default(),
                    issuer: label_value(&cur.issuer),
                };
                not_after.get_or_create(&l).set(cur.not_after);
                cert_at_risk
                    .get_or_create(&l)
                    .set(i64::from(c.schedule.at_risk));
                remaining
                    .get_or_create(&l)
                    .set(certfleet_shared::renewal::remaining_fraction(
                        &cur.validity(),
                        now,
                    ));
                if let Some((at, _)) = c.renew_time(now) {
                    next_renewal.get_or_create(&l).set(at);
                }
            }
            Ok(())
        })?;
        let agents = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let connected = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let last_seen = Family::<HostLabel, Gauge>::default();
        // Fleet-wide (every node's sessions when the store is shared): each node reports
        // the same figure, so aggregate with max, not sum.
        let anywhere = sessions.connected();
        let decommission_in = Family::<HostLabel, Gauge>::default();
        if let Some(after) = decommission_after {
            let connected = |h: &certfleet_shared::ids::HostId| anywhere.contains_key(h);
            for (id, left) in crate::lifecycle::countdown(&hosts, &connected, after, now) {
                decommission_in
                    .get_or_create(&HostLabel {
                        hostname: hostnames.get(&id).cloned().unwrap_or_default(),
                        host_id: id.to_string(),
                    })
                    .set(left.max(0));
            }
        }
        for h in hosts {
            agents.inc();
            let is_connected = anywhere.contains_key(&h.id);
            if is_connected {
                connected.inc();
            }
            let seen = if is_connected { Some(now) } else { h.last_seen };
            if let Some(t) = seen {
                last_seen
                    .get_or_create(&HostLabel {
                        host_id: h.id.to_string(),
                        hostname: label_value(&h.hostname),
                    })
                    .set(t);
            }
        }
        // This node and its view of the others.
        let node_sessions = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        node_sessions.set(sessions.local_count() as i64);
        let store_up = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        store_up.set(i64::from(sessions.accepting()));
        let nodes = Family::<NodeStateLabel, Gauge>::default();
        for alive in [true, false] {
            nodes.get_or_create(&NodeStateLabel::of(alive)).set(0);
        }
        for n in store.nodes(now)? {
            nodes.get_or_create(&NodeStateLabel::of(n.alive)).inc();
        }
        let leases_held = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let held = store
            .live_leases(now)?
            .iter()
            .filter(|l| l.holder == sessions.node())
            .count();
        leases_held.set(held as i64);
        let remaining_orders = Family::<LimitLabels, Gauge>::default();
        for (issuer, left) in budgets {
            remaining_orders
                .get_or_create(&LimitLabels {
                    issuer: issuer.clone(),
                    limit: "new_orders_per_account".into(),
                })
                .set(i64::from(*left));
        }

        reg.register(
            "certfleet_certificate_not_after_timestamp_seconds",
            "notAfter of the current certificate",
            not_after,
        );
        reg.register(
            "certfleet_certificate_remaining_lifetime_ratio",
            "Share of the certificate's lifetime still ahead (1 = fresh, 0 = expired)",
            remaining,
        );
        reg.register(
            "certfleet_certificate_next_renewal_timestamp_seconds",
            "When the certificate is planned to be renewed",
            next_renewal,
        );
        reg.register(
            "certfleet_certificate_at_risk",
            "1 while the certificate's remaining lifetime is below the safety margin",
            cert_at_risk,
        );
        reg.register(
            "certfleet_certificates",
            "Managed certificates by state",
            by_state,
        );
        reg.register(
            "certfleet_certificates_at_risk",
            "Certificates whose remaining lifetime is below the safety margin",
            at_risk,
        );
        reg.register("certfleet_agents", "Enrolled agents", agents);
        reg.register(
            "certfleet_agents_connected",
            "Agents with a live session",
            connected,
        );
        reg.register(
            "certfleet_node_sessions",
            "Agent sessions this coordinator node holds",
            node_sessions,
        );
        reg.register(
            "certfleet_node_store_up",
            "1 while this node reaches its store (0: cut off from a shared database, sessions refused)",
            store_up,
        );
        reg.register(
            "certfleet_node_leases",
            "Certificate leases this node holds (work in progress)",
            leases_held,
        );
        reg.register(
            "certfleet_cluster_nodes",
            "Coordinator nodes sharing the store, by state (alive: heartbeat within 15 s)",
            nodes,
        );
        reg.register(
            "certfleet_agent_last_seen_timestamp_seconds",
            "Last time each agent was seen",
            last_seen,
        );
        reg.register(
            "certfleet_host_decommission_in_seconds",
            "Seconds until a host without a session is decommissioned ([fleet] decommission_after; only hosts not connected to this coordinator)",
            decommission_in,
        );
        reg.register(
            "certfleet_rate_limit_remaining",
            "What is left of a rate limit the coordinator counts for an issuer",
            remaining_orders,
        );
        reg.register(
            "certfleet_credential_not_after_seconds",
            "notAfter of the coordinator's own credentials: operators, its server certificate, the fleet CA",
            credential_not_after,
        );
        reg.register(
            "certfleet_renewals",
            "Certificates issued to replace another, by issuer and reason",
            self.renewals.clone(),
        );
        reg.register(
            "certfleet_issuance_failures",
            "Failed reconcile attempts, by issuer and reason",
            self.failures.clone(),
        );
        reg.register(
            "certfleet_ip_blocked",
            "Certificates held back because a host claimed an address another host holds (ip_conflict) or its policy does not allow (ip_refused)",
            self.ip_blocked.clone(),
        );
        reg.register(
            "certfleet_acme_request_duration_seconds",
            "Duration of requests to the CA",
            self.acme_latency.clone(),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|e| {
            crate::store::StoreError::Corrupt {
                key: "metrics".into(),
                detail: e.to_string(),
            }
        })?;
        Ok(out)
    }
}

pub use certfleet_shared::metrics_http::serve;

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
