//! End-to-end tests: the real `certfleet-coordinator` and `certfleet-agent` binaries
//! against a real pebble, over real sockets, each test with its own pebble, coordinator,
//! agents, ports, addresses and directories (see `certfleet_tests`).
//!
//! Needs root (IPv6 addresses on `lo`, network namespaces for the multi-host tests),
//! `pebble`, `nginx` and `apache2` installed and the binaries built:
//! `cargo build --workspace --bins` (tests/run.sh does all of it).
//!
//! Tests panic (`expect`) rather than return errors, so the harness guards see the panic
//! and print every process's logs.

mod ari;
mod audit;
mod bootstrap;
mod challenge_fallback;
mod chaos;
mod cli;
mod cli_json;
mod crash;
mod deploy_hooks;
mod dns01_errors;
mod dns01_paths;
mod dns01_route53;
mod dns_harness;
mod eab;
mod enroll_repeat;
mod fallback;
mod fleet;
mod ha;
mod happy_path;
mod harness;
mod hostile;
mod identity;
mod ip_ownership;
mod key_group;
mod lifecycle;
mod metrics;
mod mtls;
mod multi_coord;
mod names;
mod names_alpn;
mod names_refusals;
mod netns_smoke;
mod operator;
mod operators;
mod pending_keys;
mod policy;
mod readiness;
mod refusals;
mod reload;
mod renewal;
mod restart;
mod revocation;
mod stale_replies;
mod store_backup;
mod support;
mod tls_alpn;
mod validation;
mod web;
mod wildcard;
mod world;
