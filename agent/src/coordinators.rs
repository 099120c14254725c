//! The coordinators an agent talks to: the URLs given at enrollment (or the config's
//! `coordinators`, which override them), each host resolved to all its addresses; which
//! one to dial next and how long to wait first ([`Failover`]); and what
//! `certfleet-agent status` shows about the session (`state_dir/session.json`).
//!
//! Every agent starts at a random point of the list (so a fleet spreads over the
//! coordinators instead of all landing on the first) and, whenever a session ends or a
//! connection fails, moves on to the next address after a jittered delay that grows one
//! step per full round ([`failover_delay`]): the next coordinator is tried within a
//! second, while a fleet-wide outage still backs off to [`Backoff::RECONNECT`]'s ceiling.

use anyhow::Context;
use certfleet_shared::backoff::Backoff;
use certfleet_shared::fsutil::{read_limited, write_atomic};
use certfleet_shared::transport::{parse_coordinator_url, TransportError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// At most this many coordinator URLs (each may resolve to several addresses).
pub const MAX_COORDINATORS: usize = 16;

/// Checks a list of coordinator URLs: 1 to [`MAX_COORDINATORS`], each `https://HOST:PORT`,
/// none twice. `what` names the setting in the error (`--coordinator`, `coordinators`).
pub fn check_urls(urls: &[String], what: &str) -> Result<Vec<String>, String> {
    if urls.is_empty() {
        return Err(format!(
            "{what}: no coordinator URL; give at least one https://HOST:PORT"
        ));
    }
    if urls.len() > MAX_COORDINATORS {
        return Err(format!(
            "{what}: {} coordinator URLs; at most {MAX_COORDINATORS} (a name with several addresses counts once)",
            urls.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let url = url.trim().trim_end_matches('/').to_owned();
        parse_coordinator_url(&url).map_err(|e| format!("{what}[{i}]: {e}"))?;
        if out.contains(&url) {
            return Err(format!("{what}[{i}]: {url} is listed twice"));
        }
        out.push(url);
    }
    Ok(out)
}

/// One address to dial: the coordinator URL (its host is the TLS server name) and one
/// address that host resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match parse_coordinator_url(&self.url) {
            Ok((host, _)) if host.parse::<std::net::IpAddr>().is_ok() => f.write_str(&self.url),
            _ => write!(f, "{} ({})", self.url, self.addr),
        }
    }
}

/// Every endpoint of `urls`, in list order, each host's addresses sorted. A URL that does
/// not resolve is left out and its error returned beside the others.
pub async fn resolve_all(urls: &[String]) -> (Vec<Endpoint>, Vec<String>) {
    let mut endpoints = Vec::new();
    let mut errors = Vec::new();
    for url in urls {
        match certfleet_shared::transport::resolve(url).await {
            Ok(addrs) => endpoints.extend(addrs.into_iter().map(|addr| Endpoint {
                url: url.clone(),
                addr,
            })),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (endpoints, errors)
}

/// The delay before the next attempt after `failures` (≥ 1) attempts in a row failed or
/// ended, over `endpoints` addresses: `backoff`'s jittered delay for the number of full
/// rounds already failed, so each other address is tried soon, and every address failing
/// backs off further. `unit` is the random draw in [0, 1).
pub fn failover_delay(backoff: &Backoff, failures: u32, endpoints: usize, unit: f64) -> Duration {
    let per_round = u32::try_from(endpoints.max(1)).unwrap_or(u32::MAX);
    backoff.delay(failures.saturating_sub(1) / per_round, unit)
}

/// Where this agent is in its list of endpoints, and how many attempts in a row failed.
#[derive(Debug, Clone)]
pub struct Failover {
    position: usize,
    failures: u32,
}

impl Failover {
    /// Starting at position `start` (taken modulo the list's length).
    pub fn new(start: usize) -> Self {
        Self {
            position: start,
            failures: 0,
        }
    }

    /// Starting at a random position: agents spread over the coordinators.
    pub fn random() -> Self {
        Self::new(rand::random::<u32>() as usize)
    }

    /// The index to dial now in a list of `len` (> 0) endpoints.
    pub fn current(&self, len: usize) -> usize {
        self.position % len.max(1)
    }

    /// A session ended (`healthy`: it lasted long enough to count as working) or a
    /// connection failed: moves on to the next endpoint and returns how long to wait
    /// before dialling it.
    pub fn ended(&mut self, healthy: bool, len: usize, unit: f64) -> Duration {
        self.position = self.position.wrapping_add(1);
        self.failures = if healthy {
            1
        } else {
            self.failures.saturating_add(1)
        };
        failover_delay(&Backoff::RECONNECT, self.failures, len, unit)
    }
}

/// `len` indexes starting at `first`, round the list once.
pub fn round_from(first: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |i| (first + i) % len)
}

/// The endpoint of the session now open, if any (identity rotation goes there first).
pub type Current = Arc<Mutex<Option<Endpoint>>>;

/// Dials `endpoints` in order until one connects with `tls`. A connection that fails moves
/// on to the next, unless `stop(error)` says the failure must not be tried elsewhere
/// (e.g. a CA fingerprint that does not match at enrollment). All failing: one error
/// naming each.
pub async fn first_reachable(
    endpoints: &[Endpoint],
    tls: Arc<rustls::ClientConfig>,
    stop: impl Fn(&TransportError) -> bool,
) -> anyhow::Result<(Channel, &Endpoint)> {
    let mut failed = Vec::new();
    for ep in endpoints {
        match certfleet_shared::transport::connect_at(&ep.url, ep.addr, tls.clone()).await {
            Ok(channel) => return Ok((channel, ep)),
            Err(e) if stop(&e) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(coordinator = %ep, error = %e, "coordinator unreachable; trying the next");
                failed.push(e.to_string());
            }
        }
    }
    if failed.is_empty() {
        anyhow::bail!("no coordinator address to dial");
    }
    anyhow::bail!("no coordinator reachable: {}", failed.join("; "))
}

/// What `certfleet-agent status` shows about the session, written by the running agent
/// to `state_dir/session.json` whenever it connects or loses a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionStatus {
    /// The agent process that wrote it (`status` says when it no longer runs).
    pub pid: u32,
    pub connected: bool,
    /// The coordinator URL of the session now open, or of the last one tried.
    pub coordinator: Option<String>,
    /// The address dialled for it.
    pub address: Option<String>,
    /// Unix time of this change.
    pub since: i64,
    /// Why the last session or connection ended, while not connected.
    pub last_error: Option<String>,
}

impl SessionStatus {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("session.json")
    }

    /// Written atomically; a failure is only logged (the session does not depend on it).
    pub fn write(&self, state_dir: &Path) {
        let written = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|json| write_atomic(&Self::path(state_dir), &json, 0o644));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write session.json (status will not show the session)");
        }
    }

    /// The last status written, if any.
    pub fn read(state_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(state_dir);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = read_limited(&path, 64 * 1024)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is corrupt (the agent rewrites it)", path.display())
        })?))
    }

    /// Whether the process that wrote it still runs (Linux: `/proc/<pid>`).
    pub fn writer_running(&self) -> bool {
        Path::new("/proc").join(self.pid.to_string()).exists()
    }
}

#[cfg(test)]
#[path = "coordinators_tests.rs"]
mod tests;
