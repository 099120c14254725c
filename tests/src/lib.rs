//! # certfleet-tests — the end-to-end harness
//!
//! Drives the *real* `certfleet-coordinator` and `certfleet-agent` binaries, a real
//! pebble ACME server and real sockets. Everything that is started or created is owned by
//! a guard that cleans up on drop — also when a test panics — so a failing test leaves
//! nothing running and no address on `lo` behind.
//!
//! This crate links only `certfleet-proto` (the wire schema). It must never depend on the
//! coordinator, agent or shared crates: the binaries are black boxes here.
//!
//! ## Layout
//! - [`process`] — [`ChildGuard`]: a spawned process, killed by PID on drop, with its
//!   stdout/stderr captured to files (dumped on panic).
//! - [`netns`] — [`netns::Lan`] (a bridge with its own subnet) and [`netns::NsHost`]
//!   (a network namespace on it): many real hosts with their own IPv4/IPv6 addresses and
//!   ports 80/443 on one machine. [`netns::require_namespaces`] skips a test with a clear
//!   `SKIPPED:` line where namespaces are unavailable (a failure with
//!   `CERTFLEET_REQUIRE_NETNS=1`).
//! - [`webserver`] — [`webserver::WebServer`]: a real nginx or apache on one namespace host
//!   (own config, pid, logs; bootstrap certificate; webroot / proxy / standalone port 80),
//!   with the check and reload commands to give the agent.
//! - [`net`] — free ports and per-host addresses: a random `127.X.Y.Z` and an IPv6 address
//!   added to `lo` by [`net::Ipv6Guard`] and removed on drop.
//! - [`postgres`] — [`postgres::PostgresServer`]: a private PostgreSQL server (initdb in a
//!   temp dir, its own port), a database per test, stopped by a guard; `SKIPPED:` where it
//!   is not installed (a failure with `CERTFLEET_REQUIRE_POSTGRES=1`).
//! - [`pebble`] — [`Pebble`]: its own listener CA (rcgen), config, process, readiness.
//! - [`tlsutil`] — rustls client configs, PEM helpers, a tiny HTTPS GET, and what a TLS
//!   server serves ([`tlsutil::served_leaf`], [`tlsutil::served_chain_verifies`]).
//! - [`bins`] — where the binaries under test are (`CERTFLEET_BIN_DIR` overrides).
//! - [`coordinator`] — [`Coordinator`]: config, `init`, `serve`, operator CLI, restart.
//! - [`agent`] — [`Agent`]: a host directory, config, `enroll`, `run`, waiting for install.
//! - [`pki`] — checks on issued certificates (SANs, chain, key match, key-leak scan).
//! - [`dns`] — [`dns::KnotServer`]: a real authoritative DNS server (knotd) with its own
//!   zones, a TSIG key for dynamic updates, `kdig` lookups; pebble resolves through it.
//! - [`resolver`] — [`resolver::Resolver`]: a real recursive resolver (unbound) in front of
//!   knot, so a CA follows an `_acme-challenge` CNAME into another zone.
//! - [`moto`] — [`moto::MotoServer`]: moto's mock AWS server (Route53 API) from a venv the
//!   harness creates, for the coordinator's `route53` DNS provider.
//! - [`venv`] — [`venv::VenvSpec`]: the Python venvs (acme2certifier, moto) made once per
//!   machine under `/var/cache/certfleet-tests`, rebuilt when a pin changes.
//! - [`loadgen`] — [`loadgen::SimFleet`]: many simulated agents in one process (own
//!   enrolled identities, real mTLS sessions, answers to every command) for the scale
//!   benchmark and the `certfleet-loadgen` binary; `/proc` CPU and RSS samples.
//! - [`direct`] — the baseline: a minimal direct instant-acme client.
//! - [`http01`] — a minimal HTTP-01 responder for the direct-ACME baseline.
//! - [`file_tls`] — a TLS server presenting a target's current files (the demo's served
//!   check, on hosts without a web server).
//! - [`tlsalpn01`] — a minimal TLS-ALPN-01 responder (validation certificates by SNI) for it.
//! - [`grpc`] — tonic channels over a hand-made tokio-rustls connector (mTLS tests).
//! - [`workdir`] — temp dirs that can be kept for post-mortem (`CERTFLEET_KEEP_TMP=1`).

pub mod acme2certifier;
pub mod agent;
pub mod alpn_front;
pub mod bins;
pub mod bootstrap;
pub mod coordinator;
pub mod direct;
pub mod dns;
pub mod fake_coordinator;
pub mod file_tls;
pub mod fleet;
pub mod grpc;
pub mod http01;
pub mod loadgen;
pub mod moto;
pub mod net;
pub mod netns;
pub mod pebble;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod resolver;
pub mod tcp_cut;
pub mod tlsalpn01;
pub mod tlsutil;
pub mod venv;
pub mod webserver;
pub mod workdir;

pub use agent::{Agent, InstalledPair};
pub use coordinator::{CertRow, Coordinator, HostRow, RestartMode};
pub use netns::{Lan, NsHost};
pub use pebble::{Pebble, PebbleOptions};
pub use process::ChildGuard;
pub use webserver::WebServer;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every `every` until it yields `Some`, or fails after `timeout` with the
/// last error (or "timed out") and `what` in the message.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// Fails early with a clear message when the harness cannot do its job (not root).
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!(
            "the end-to-end harness must run as root (it adds IPv6 addresses to `lo`); \
             run tests/run.sh as root"
        );
    }
    Ok(())
}

/// Installs the ring crypto provider as rustls' process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
