//! # certfleet-agent
//!
//! Runs on every host. Answers HTTP-01 for the host's own addresses, makes the host's keys
//! and CSRs (keys never leave the host), installs certificates into targets named in its
//! own config, and reloads them. No ACME, no database.
//!
//! ## Layout
//! - [`config`] — the local config: addresses, HTTP-01 port, targets (the only source of
//!   paths and commands).
//! - [`identity`] — enrollment (token + pinned CA) and the identity files.
//! - [`session`] — the mTLS stream to the coordinator and command handling.
//! - [`http01`] — the standalone HTTP-01 responder.
//! - [`keys`] — certificate keys and CSRs; pending keys wait in `state_dir/pending`.
//! - [`install`] — atomic install into a target, previous files kept, reload.
//! - [`metrics`] — the agent's small, optional `/metrics`.
//! - [`error`] — failures reported to the coordinator (code + message).
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod http01;
pub mod identity;
pub mod install;
pub mod keys;
pub mod metrics;
pub mod served;
pub mod session;
pub mod target;
