//! # certfleet-shared
//!
//! Types and pure mechanisms used by both the coordinator and the agent. Nothing in here
//! decides *policy* (what to issue, where to write, when to renew); it only parses,
//! validates, computes and builds.
//!
//! ## Layout
//! - [`ids`] — typed identifiers (`HostId`, `CertId`) as transparent newtypes.
//! - [`identifier`] — identifiers (IPs, DNS names, wildcards) in canonical form: IDNA,
//!   label rules, public suffixes, special-purpose IP ranges; `allowed_names` patterns.
//! - [`x509`] — PEM/DER parsing and inspection of certificates and CSRs.
//! - [`tls`] — rustls client configs (fleet CA trust, CA pinning by fingerprint, an
//!   observe-only config for checking which certificate a server presents).
//! - [`transport`] — a tonic `Channel` over our own rustls config.
//! - [`configenv`] — environment overrides for TOML config (`PREFIX_SECTION__KEY`).
//! - [`daemon`] — logging set-up, stop signals and systemd notifications for the binaries.
//! - [`cli_assets`] — shell completions and man pages from the binaries' clap definitions.
//! - [`clock`] — the `Clock` every time decision goes through.
//! - [`backoff`] — jittered exponential backoff.
//! - [`renewal`] — when to renew: ARI window or lifetime fraction, with jitter; expiry risk.
//! - [`ratelimit`] — Let's Encrypt rate limits counted as a budget before ordering.
//! - [`metrics_http`] — the tiny `GET /metrics`, `/healthz`, `/readyz` server both daemons use.
//! - [`envelope`] — a key group's private key sealed to a host's identity key (HPKE).
//! - [`fsutil`] — crash-safe file writes (temp, fsync, rename, dir fsync) with modes.
//! - [`timefmt`] — unix seconds ↔ RFC 3339 for humans and JSON.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli_assets;
pub mod clock;
pub mod configenv;
pub mod daemon;
pub mod envelope;
pub mod fsutil;
pub mod identifier;
pub mod ids;
pub mod metrics_http;
pub mod ratelimit;
pub mod renewal;
pub mod timefmt;
pub mod tls;
pub mod transport;
pub mod x509;

/// URI SAN prefix that marks an agent identity certificate: `certfleet://host/<host-id>`.
pub const HOST_URI_PREFIX: &str = "certfleet://host/";
/// URI SAN prefix that marks an operator certificate: `certfleet://admin/<name>`.
pub const ADMIN_URI_PREFIX: &str = "certfleet://admin/";
