//! The coordinator's DNS providers (`certfleet_coordinator::dns`) against real parts: a
//! real knotd (RFC 2136 + TSIG, propagation checks, CNAME delegation), real programs (the
//! exec provider), moto's Route53 server. Each test starts its own servers through guards.
//!
//! `rfc2136` — wildcard + apex in one RRset, wrong TSIG keys, propagation timeout, CNAME
//! delegation; `exec` — argv, non-zero exit, timeout; `route53` — moto.

mod exec;
mod rfc2136;
mod route53;

use certfleet_coordinator::config::DnsProviderConfig;
use certfleet_coordinator::dns::DnsProviders;
use certfleet_shared::identifier::DnsName;
use std::path::Path;

/// A DNS name.
pub fn name(s: &str) -> DnsName {
    DnsName::parse(s).expect("test name")
}

/// A provider config from JSON (the same serde shape as the TOML table).
pub fn provider_config(v: serde_json::Value) -> DnsProviderConfig {
    serde_json::from_value(v).expect("provider config")
}

/// The providers, built as `serve` builds them.
pub fn providers(configs: &[serde_json::Value]) -> DnsProviders {
    let configs: Vec<DnsProviderConfig> = configs.iter().cloned().map(provider_config).collect();
    DnsProviders::from_config(&configs).expect("providers build")
}

/// Writes a secret file readable by its owner only.
pub fn secret_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}
