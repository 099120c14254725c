//! # certfleet-agent
//!
//! Runs on every host. Answers HTTP-01 (and, when configured, TLS-ALPN-01) for the host's own addresses and names, makes the host's keys
//! and CSRs (keys never leave the host, except a key group's, sealed to a member), installs certificates into targets named in its
//! own config, tests the web server's config, reloads it and checks the new certificate is
//! served, rolling back if not. No ACME, no database.
//!
//! ## Layout
//! - [`addresses`] — `ips = "auto"`: the host's addresses from its interfaces, filtered, followed.
//! - [`config`] — the local config: addresses, names asked for, HTTP-01 port, targets (the
//!   only source of paths and commands).
//! - [`coordinators`] — the coordinator addresses: spreading, failover order and delay,
//!   what `status` shows about the session.
//! - [`identity`] — enrollment (token + pinned CA) and the identity files.
//! - [`leave`] — `certfleet-agent leave`: the host asks to be removed, then forgets its
//!   identity.
//! - [`session`] — the mTLS stream to the coordinator and command handling.
//! - [`http01`] — the HTTP-01 responder: standalone, webroot or proxy, with a self-check.
//! - [`tlsalpn01`] — the TLS-ALPN-01 responder: standalone on port 443 or loopback behind
//!   an ALPN-routing front.
//! - [`resolve`] — whether a challenge's name resolves to this host (warnings only).
//! - [`keygroup`] — key groups: a group's key sealed to another member's identity
//!   (`SealKey`) or imported from one (`ImportKey`), only for groups the config lists.
//! - [`keys`] — certificate keys (ECDSA, RSA) and CSRs (IPs, names); pending keys wait in
//!   `state_dir/pending`.
//! - [`target`] — `[targets.*]` resolved: preset layouts, perms, commands, verify addresses.
//! - [`install`] — journaled install, config test, reload, served check, rollback, recovery.
//! - [`served`] — the TLS handshake that observes which certificate an address serves.
//! - [`metrics`] — the agent's small, optional `/metrics`.
//! - [`error`] — failures reported to the coordinator (code + message).
#![forbid(unsafe_code)]

pub mod addresses;
pub mod bootstrap;
pub mod config;
pub mod coordinators;
pub mod error;
pub mod http01;
pub mod identity;
pub mod install;
pub mod keygroup;
pub mod keys;
pub mod leave;
mod live_listener;
pub mod metrics;
pub mod reload;
pub mod resolve;
mod rotation;
pub mod served;
pub mod session;
pub mod target;
pub mod tlsalpn01;
