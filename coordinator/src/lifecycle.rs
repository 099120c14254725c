//! The end of a host's addresses and of the host itself (`[fleet]`):
//! - [`addresses_lost`]: a host's Hello no longer has addresses it had — audited, and the
//!   certificates covering them revoked (`revoke_on_address_loss`, default on). Revoked at
//!   once, not after the replacement is installed: the address may already be another
//!   host's (it is released at that Hello and claimable at once), and the old key must not
//!   be able to pose as it. The replacement for the new set is ordered by the same Hello.
//! - decommission: [`sweep_loop`] removes hosts not seen for `decommission_after`
//!   (certificates revoked, cessationOfOperation; `host_decommissioned`), one coordinator
//!   at a time under the store lease [`SWEEP_LEASE`]. [`due`] is the pure selection.
//! - [`leave`]: a host asking to be removed (`certfleet-agent leave`, `host_left`).

use crate::admin::{remove_host_as, revoke};
use crate::audit::{Entry, Kind};
use crate::engine::{Engine, IssueError};
use crate::model::HostRecord;
use certfleet_shared::identifier::Identifier;
use certfleet_shared::ids::{CertId, HostId};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The lease the decommission sweep runs under. The store's leases are keyed by certificate
/// id; generated ids have no '-' after their prefix, so this one is never a certificate's.
pub const SWEEP_LEASE: &str = "c-sweep-decommission";
const SWEEP_LEASE_SECS: i64 = 60;

/// Addresses in `before` that `after` no longer has.
pub fn lost(before: &[IpAddr], after: &[IpAddr]) -> Vec<IpAddr> {
    before
        .iter()
        .filter(|ip| !after.contains(ip))
        .copied()
        .collect()
}

/// `host` no longer reports `gone`: audited (`addresses_lost`), and with
/// `[fleet] revoke_on_address_loss` each current, unexpired certificate of the host that
/// names one of them is revoked (superseded) — except a key group's certificate another
/// member still has (the group replaces it). Returns the revoked serials.
pub async fn addresses_lost(
    engine: &Engine,
    host: &HostId,
    gone: &[IpAddr],
) -> Result<Vec<String>, IssueError> {
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    let revoking = engine.live().config.fleet.revoke_on_address_loss;
    engine.audit.append(
        Kind::AddressesLost,
        engine.clock.now_unix(),
        Entry::by(format!("host:{host}"))
            .host(host)
            .ips(gone)
            .detail("revoke_on_address_loss", revoking),
    )?;
    tracing::info!(host = %host, ips = ?gone, revoking, "the host no longer has these addresses");
    if !revoking {
        return Ok(Vec::new());
    }
    let now = engine.clock.now_unix();
    let mut revoked = Vec::new();
    for rec in engine.store.certs_for_host(host)? {
        let Some(cur) = &rec.observed.current else {
            continue;
        };
        let covers = cur
            .identifiers
            .iter()
            .any(|i| matches!(i, Identifier::Ip(ip) if gone.contains(ip)));
        if !covers || cur.not_after <= now || shared_in_group(engine, &rec)? {
            continue;
        }
        let by = format!("host:{host} (addresses lost)");
        if let Some(serial) = revoke(
            engine,
            &rec.id,
            instant_acme::RevocationReason::Superseded,
            "superseded",
            &by,
            false,
        )
        .await?
        {
            revoked.push(serial);
        }
    }
    Ok(revoked)
}

fn shared_in_group(
    engine: &Engine,
    rec: &crate::model::CertRecord,
) -> Result<bool, crate::store::StoreError> {
    let (Some(g), Some(cur)) = (&rec.spec.key_group, &rec.observed.current) else {
        return Ok(false);
    };
    Ok(engine.store.certs_in_group(g)?.iter().any(|m| {
        m.host_id != rec.host_id
            && m.observed.current.as_ref().map(|c| &c.serial) == Some(&cur.serial)
    }))
}

/// The host asked to leave: revoked (cessationOfOperation) and removed, audited
/// `host_left` by `host:<id>`.
pub async fn leave(engine: &Engine, host: &HostId) -> Result<Vec<String>, IssueError> {
    remove_host_as(
        engine,
        host,
        &format!("host:{host}"),
        true,
        Kind::HostLeft,
        Some("the host asked to leave (certfleet-agent leave)"),
    )
    .await
}

/// When a host was last seen: now if connected here, else its last session's end (or
/// Hello), else its enrollment.
pub fn last_seen(host: &HostRecord, connected: bool, now: i64) -> i64 {
    if connected {
        now
    } else {
        host.last_seen.unwrap_or(host.enrolled)
    }
}

/// Seconds until each host not connected here is decommissioned (≤ 0: due now).
pub fn countdown<'a>(
    hosts: impl IntoIterator<Item = &'a HostRecord>,
    connected: &dyn Fn(&HostId) -> bool,
    after_secs: i64,
    now: i64,
) -> Vec<(HostId, i64)> {
    hosts
        .into_iter()
        .filter(|h| !connected(&h.id))
        .map(|h| (h.id.clone(), last_seen(h, false, now) + after_secs - now))
        .collect()
}

/// The hosts to decommission now: not connected here and not seen for `after_secs`.
pub fn due<'a>(
    hosts: impl IntoIterator<Item = &'a HostRecord>,
    connected: &dyn Fn(&HostId) -> bool,
    after_secs: i64,
    now: i64,
) -> Vec<HostId> {
    countdown(hosts, connected, after_secs, now)
        .into_iter()
        .filter(|(_, left)| *left <= 0)
        .map(|(id, _)| id)
        .collect()
}

/// How often the sweep looks (a tenth of `after`, 1 s to 1 min) and how stale a connected
/// host's `last_seen` may get before this coordinator refreshes it (a quarter, 1 s to 1 h):
/// a host connected to another coordinator of a shared store is seen by its refreshes.
fn intervals(after: Duration) -> (Duration, i64) {
    let tick = (after / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let refresh = (after.as_secs() / 4).clamp(1, 3600) as i64;
    (tick, refresh)
}

/// Runs the decommission sweep until shutdown, while `decommission_after` is set (read
/// again every round, so a reload that sets, changes or clears it takes effect).
pub async fn sweep_loop(engine: Arc<Engine>, shutdown: tokio_util::sync::CancellationToken) {
    let mut announced = None;
    loop {
        let after = engine.live().config.fleet.decommission_after();
        if after != announced {
            match after {
                Some(a) => tracing::info!(
                    after = %humantime::format_duration(a),
                    "hosts not seen for decommission_after are revoked and removed"
                ),
                None if announced.is_some() => {
                    tracing::info!("decommission_after cleared: no host is decommissioned")
                }
                None => {}
            }
            announced = after;
        }
        let tick = after.map_or(Duration::from_secs(60), |a| intervals(a).0);
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(after) = engine.live().config.fleet.decommission_after() else {
            continue;
        };
        let refresh = intervals(after).1;
        if let Err(e) = sweep(&engine, after.as_secs() as i64, refresh).await {
            tracing::error!(error = %e, "decommission sweep failed; trying again");
        }
    }
}

async fn sweep(engine: &Engine, after_secs: i64, refresh: i64) -> Result<(), IssueError> {
    let now = engine.clock.now_unix();
    // Hosts with a session here: seen now (for the other coordinators of a shared store).
    for mut h in engine.store.hosts()? {
        if engine.sessions.is_connected(&h.id) && h.last_seen.is_none_or(|t| now - t >= refresh) {
            h.last_seen = Some(now);
            engine.store.put_host(&h)?;
        }
    }
    let key = CertId::parse(SWEEP_LEASE).map_err(|e| IssueError::Policy(e.to_string()))?;
    let Some(lease) = engine
        .store
        .take_lease(&key, &engine.node, now, SWEEP_LEASE_SECS)?
    else {
        return Ok(()); // another coordinator sweeps
    };
    let result = decommission_due(engine, after_secs, now).await;
    if let Err(e) = engine.store.release_lease(&lease) {
        tracing::warn!(error = %e, "cannot give the sweep lease back; it expires by itself");
    }
    result
}

async fn decommission_due(engine: &Engine, after_secs: i64, now: i64) -> Result<(), IssueError> {
    let hosts = engine.store.hosts()?;
    // Connected to any coordinator of a shared store: never decommissioned (an error
    // reading the sessions stops the sweep rather than take them for lost).
    let anywhere = engine.sessions.connected_checked()?;
    let connected = |id: &HostId| anywhere.contains_key(id);
    for id in due(&hosts, &connected, after_secs, now) {
        let Some(h) = hosts.iter().find(|h| h.id == id) else {
            continue;
        };
        let seen = last_seen(h, false, now);
        let why = format!(
            "not seen since {} ({}s, decommission_after is {after_secs}s)",
            certfleet_shared::timefmt::rfc3339(seen),
            now - seen
        );
        tracing::warn!(host = %id, hostname = %h.hostname, "{why}; decommissioning");
        remove_host_as(
            engine,
            &id,
            "coordinator:decommission",
            true,
            Kind::HostDecommissioned,
            Some(&why),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, enrolled: i64, last_seen: Option<i64>) -> HostRecord {
        let mut h: HostRecord = serde_json::from_value(serde_json::json!({
            "id": id, "hostname": id, "labels": {}, "enrolled": enrolled,
            "enrolled_from": "", "identity_serial": "", "ips": [], "targets": [],
        }))
        .unwrap();
        h.last_seen = last_seen;
        h
    }

    #[test]
    fn due_are_the_hosts_not_seen_for_the_period_and_not_connected() {
        let now = 1_000_000;
        let hosts = [
            host("h-gone", 0, Some(now - 100)),
            host("h-recent", 0, Some(now - 99)),
            host("h-never", now - 200, None),
            host("h-new", now - 10, None),
            host("h-live", 0, Some(now - 5000)),
        ];
        let live = HostId::parse("h-live").unwrap();
        let connected = |id: &HostId| *id == live;
        let ids = |v: Vec<HostId>| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ids(due(&hosts, &connected, 100, now)),
            ["h-gone", "h-never"]
        );
        let left = countdown(&hosts, &connected, 100, now);
        let left: Vec<(String, i64)> = left.into_iter().map(|(h, s)| (h.to_string(), s)).collect();
        assert_eq!(
            left,
            [
                ("h-gone".into(), 0),
                ("h-recent".into(), 1),
                ("h-never".into(), -100),
                ("h-new".into(), 90)
            ]
        );
        // The clock moves on: the recent one is due a second later.
        assert_eq!(
            ids(due(&hosts, &connected, 100, now + 1)),
            ["h-gone", "h-recent", "h-never"]
        );
    }

    #[test]
    fn lost_addresses_and_sweep_intervals() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            lost(&[ip("192.0.2.1"), ip("2001:db8::1")], &[ip("2001:db8::1")]),
            [ip("192.0.2.1")]
        );
        assert!(lost(&[], &[ip("192.0.2.1")]).is_empty());
        assert_eq!(
            intervals(Duration::from_secs(5)),
            (Duration::from_secs(1), 1)
        );
        assert_eq!(
            intervals(Duration::from_secs(86400)),
            (Duration::from_secs(60), 3600)
        );
        assert!(CertId::parse(SWEEP_LEASE).is_ok());
    }
}
