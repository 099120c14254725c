//! `[[dns_provider]]`: who writes the DNS-01 TXT records of which zones, and how.
//!
//! One flat table per provider (strict: `deny_unknown_fields`), its kind-specific settings
//! checked by [`DnsProviderConfig::validate`], which refuses a setting of another kind. No
//! secret is ever written in the TOML: a TSIG secret comes from a file (`tsig_secret_file`)
//! or an environment variable (`tsig_secret_env`); Route53 takes the usual AWS sources
//! (environment, shared credentials file and profile). Loading the secrets is
//! `crate::dns`'s job (at `DnsProviders::from_config`), so operator commands that only read
//! the config never need them.

use certfleet_shared::identifier::DnsName;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default TTL of the TXT records written (seconds).
pub const DEFAULT_TTL: u32 = 60;
/// Default time to wait until every nameserver serves the records.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Default pause between two propagation checks.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Default bound of one provider call (an update, an API request, a program run).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a provider writes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProviderKind {
    /// RFC 2136 dynamic update signed with TSIG, to the zone's primary (`server`).
    Rfc2136,
    /// The AWS Route53 API.
    Route53,
    /// A program run as `command... present|cleanup FQDN VALUE` (lego's exec interface).
    Exec,
}

impl DnsProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rfc2136 => "rfc2136",
            Self::Route53 => "route53",
            Self::Exec => "exec",
        }
    }
}

/// The TSIG MAC algorithms the rfc2136 provider signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TsigAlgorithmName {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

/// One `[[dns_provider]]` table. Holds no secret (file paths and variable names only), so
/// its derived `Debug` shows nothing sensitive.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsProviderConfig {
    /// Letters, digits, `-`, `_`; unique.
    pub name: String,
    /// Zone apexes this provider writes to (`example.net`); a record goes to the provider
    /// with the longest zone containing it. Two providers may not claim the same zone.
    pub zones: Vec<String>,
    /// Zones whose `_acme-challenge` names are CNAMEs into this provider's `zones` (CNAME
    /// delegation): their names may be validated by DNS-01, but nothing is written in them,
    /// so the provider needs no credential for them. Their CNAMEs are asked at
    /// `check_nameservers` when given, else through the system resolver.
    #[serde(default)]
    pub delegated_zones: Vec<String>,
    pub kind: DnsProviderKind,
    /// TTL of the TXT records (seconds, 1..=86400: a number or a duration, "5m"). Default 60.
    #[serde(default, deserialize_with = "ttl_secs")]
    pub ttl: Option<u32>,
    /// How long to wait until every checked nameserver serves the records ("120s").
    pub propagation_timeout: Option<String>,
    /// Pause between propagation checks ("2s").
    pub poll_interval: Option<String>,
    /// Nameservers (`ip:port`, or `ip` for port 53) asked whether the records are served,
    /// and asked for `_acme-challenge` CNAMEs in these zones. Default: the zone's NS
    /// records, resolved through the system resolver, port 53.
    #[serde(default)]
    pub check_nameservers: Vec<String>,
    /// Bound of one call to the provider (update, API request, program run). Default "30s".
    pub timeout: Option<String>,

    // rfc2136
    /// The zone's primary, `host:port` (`port` 53 usually).
    pub server: Option<String>,
    /// The TSIG key's name, as the server knows it.
    pub tsig_key_name: Option<String>,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: Option<TsigAlgorithmName>,
    /// File holding the base64 secret of the key (its only content; 0600 advised).
    pub tsig_secret_file: Option<PathBuf>,
    /// Environment variable holding the base64 secret.
    pub tsig_secret_env: Option<String>,

    // route53
    /// The hosted zone's id (`Z…`); default: found with ListHostedZonesByName.
    pub hosted_zone_id: Option<String>,
    /// API endpoint; default `https://route53.amazonaws.com` (set it for a mock server).
    pub endpoint: Option<String>,
    /// Signing region; default `us-east-1` (Route53 is global).
    pub region: Option<String>,
    /// Profile of the shared credentials file; default env `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    /// Shared credentials file; default env `AWS_SHARED_CREDENTIALS_FILE`, else
    /// `~/.aws/credentials`. Environment credentials (`AWS_ACCESS_KEY_ID`, ...) come first.
    pub credentials_file: Option<PathBuf>,

    // exec
    /// argv of the program (no shell); `present|cleanup FQDN VALUE` are appended.
    #[serde(default)]
    pub command: Vec<String>,
}

/// Settings of one kind only, named for the refusal of a stray one.
const RFC2136_KEYS: &[&str] = &[
    "server",
    "tsig_key_name",
    "tsig_algorithm",
    "tsig_secret_file",
    "tsig_secret_env",
];
const ROUTE53_KEYS: &[&str] = &[
    "hosted_zone_id",
    "endpoint",
    "region",
    "profile",
    "credentials_file",
];
const EXEC_KEYS: &[&str] = &["command"];

/// `ttl`: seconds as a number or a duration ([`certfleet_shared::timefmt::de_secs`]).
fn ttl_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let secs = certfleet_shared::timefmt::de_secs(d)?;
    u32::try_from(secs)
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("ttl {secs} is out of range (1..=86400)")))
}

impl DnsProviderConfig {
    /// TTL of the records written.
    pub fn ttl(&self) -> u32 {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }

    pub fn propagation_timeout(&self) -> Duration {
        parse_duration(self.propagation_timeout.as_deref()).unwrap_or(DEFAULT_PROPAGATION_TIMEOUT)
    }

    pub fn poll_interval(&self) -> Duration {
        parse_duration(self.poll_interval.as_deref()).unwrap_or(DEFAULT_POLL_INTERVAL)
    }

    pub fn timeout(&self) -> Duration {
        parse_duration(self.timeout.as_deref()).unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The zones, canonical (validated by [`DnsProviderConfig::validate`]).
    pub fn zone_names(&self) -> Vec<DnsName> {
        self.zones
            .iter()
            .filter_map(|z| DnsName::parse(z).ok())
            .collect()
    }

    /// The delegated zones, canonical (validated by [`DnsProviderConfig::validate`]).
    pub fn delegated_zone_names(&self) -> Vec<DnsName> {
        self.delegated_zones
            .iter()
            .filter_map(|z| DnsName::parse(z).ok())
            .collect()
    }

    /// `check_nameservers` as socket addresses (port 53 when none is given).
    pub fn check_nameserver_addrs(&self) -> Vec<SocketAddr> {
        self.check_nameservers
            .iter()
            .filter_map(|s| parse_nameserver(s).ok())
            .collect()
    }

    fn set_keys(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let mut mark = |present: bool, key: &'static str| {
            if present {
                set.push(key)
            }
        };
        mark(self.server.is_some(), "server");
        mark(self.tsig_key_name.is_some(), "tsig_key_name");
        mark(self.tsig_algorithm.is_some(), "tsig_algorithm");
        mark(self.tsig_secret_file.is_some(), "tsig_secret_file");
        mark(self.tsig_secret_env.is_some(), "tsig_secret_env");
        mark(self.hosted_zone_id.is_some(), "hosted_zone_id");
        mark(self.endpoint.is_some(), "endpoint");
        mark(self.region.is_some(), "region");
        mark(self.profile.is_some(), "profile");
        mark(self.credentials_file.is_some(), "credentials_file");
        mark(!self.command.is_empty(), "command");
        set
    }

    /// Checks one provider; the message names it and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let ctx = |m: String| format!("[[dns_provider]] {:?}: {m}", self.name);
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "[[dns_provider]] name {:?} must be non-empty letters, digits, - or _",
                self.name
            ));
        }
        if self.zones.is_empty() {
            return Err(ctx(
                "zones is empty; list the zones it writes to, like zones = [\"example.net\"]"
                    .into(),
            ));
        }
        for z in &self.zones {
            DnsName::parse(z).map_err(|e| {
                ctx(format!(
                    "zones: {z:?} is not a zone name ({e}); give the apex, like \"example.net\""
                ))
            })?;
        }
        for z in &self.delegated_zones {
            let name = DnsName::parse(z).map_err(|e| {
                ctx(format!(
                    "delegated_zones: {z:?} is not a zone name ({e}); give the apex, like \"example.net\""
                ))
            })?;
            if self.zone_names().contains(&name) {
                return Err(ctx(format!(
                    "{name} is in both zones and delegated_zones; keep it in zones if this \
                     provider writes to it, in delegated_zones if its _acme-challenge names are \
                     CNAMEs into the other zones"
                )));
            }
        }
        if let Some(ttl) = self.ttl {
            if !(1..=86400).contains(&ttl) {
                return Err(ctx(format!("ttl = {ttl} must be between 1 and 86400")));
            }
        }
        let timeout = check_duration(&ctx, "propagation_timeout", &self.propagation_timeout)?;
        let poll = check_duration(&ctx, "poll_interval", &self.poll_interval)?;
        check_duration(&ctx, "timeout", &self.timeout)?;
        if let (Some(t), Some(p)) = (timeout, poll) {
            if p > t {
                return Err(ctx(format!(
                    "poll_interval {:?} is longer than propagation_timeout {:?}; make it shorter",
                    self.poll_interval.as_deref().unwrap_or_default(),
                    self.propagation_timeout.as_deref().unwrap_or_default()
                )));
            }
        }
        for ns in &self.check_nameservers {
            parse_nameserver(ns).map_err(|e| ctx(format!("check_nameservers: {e}")))?;
        }
        let own: &[&str] = match self.kind {
            DnsProviderKind::Rfc2136 => RFC2136_KEYS,
            DnsProviderKind::Route53 => ROUTE53_KEYS,
            DnsProviderKind::Exec => EXEC_KEYS,
        };
        if let Some(stray) = self.set_keys().into_iter().find(|k| !own.contains(k)) {
            let of = if RFC2136_KEYS.contains(&stray) {
                "rfc2136"
            } else if ROUTE53_KEYS.contains(&stray) {
                "route53"
            } else {
                "exec"
            };
            return Err(ctx(format!(
                "{stray} is a setting of kind = \"{of}\", not of kind = \"{}\"; remove it \
                 or change the kind",
                self.kind.as_str()
            )));
        }
        match self.kind {
            DnsProviderKind::Rfc2136 => self.validate_rfc2136().map_err(ctx),
            DnsProviderKind::Route53 => self.validate_route53().map_err(ctx),
            DnsProviderKind::Exec => self.validate_exec().map_err(ctx),
        }
    }

    fn validate_rfc2136(&self) -> Result<(), String> {
        let server = self
            .server
            .as_deref()
            .ok_or("kind = \"rfc2136\" needs server = \"host:port\" (the zone's primary)")?;
        check_host_port(server).map_err(|e| format!("server: {e}"))?;
        let key = self
            .tsig_key_name
            .as_deref()
            .ok_or("kind = \"rfc2136\" needs tsig_key_name (the key's name on the server)")?;
        if key.is_empty()
            || key.len() > 253
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "tsig_key_name {key:?} must be a DNS name (letters, digits, -, _, .)"
            ));
        }
        match (&self.tsig_secret_file, &self.tsig_secret_env) {
            (None, None) => Err(
                "kind = \"rfc2136\" needs the key's secret from tsig_secret_file (a file \
                 holding the base64 secret) or tsig_secret_env (an environment variable)"
                    .into(),
            ),
            (Some(_), Some(_)) => {
                Err("give one of tsig_secret_file and tsig_secret_env, not both".into())
            }
            (_, Some(env)) if env.is_empty() => Err("tsig_secret_env is empty".into()),
            (Some(f), _) if !f.is_absolute() => Err(format!(
                "tsig_secret_file {} must be an absolute path",
                f.display()
            )),
            _ => Ok(()),
        }
    }

    fn validate_route53(&self) -> Result<(), String> {
        if let Some(id) = &self.hosted_zone_id {
            let bare = id.strip_prefix("/hostedzone/").unwrap_or(id);
            if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!(
                    "hosted_zone_id {id:?} is not a hosted zone id (like \"Z0123456789ABC\")"
                ));
            }
            if self.zones.len() > 1 {
                return Err(
                    "hosted_zone_id names one hosted zone but zones lists several; use one \
                     [[dns_provider]] per hosted zone, or drop hosted_zone_id to look each up"
                        .into(),
                );
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return Err(format!("endpoint {e:?} must be an http:// or https:// URL"));
            }
            e.parse::<hyper::Uri>()
                .map_err(|err| format!("endpoint {e:?} is not a URL: {err}"))?;
        }
        if let Some(r) = &self.region {
            if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!(
                    "region {r:?} is not an AWS region (like us-east-1)"
                ));
            }
        }
        Ok(())
    }

    fn validate_exec(&self) -> Result<(), String> {
        let Some(program) = self.command.first() else {
            return Err(
                "kind = \"exec\" needs command = [\"/path/to/program\", \"arg\", ...]; \
                 present|cleanup FQDN VALUE are appended"
                    .into(),
            );
        };
        if !std::path::Path::new(program).is_absolute() {
            return Err(format!(
                "command[0] {program:?} must be an absolute path (no shell, no PATH search)"
            ));
        }
        Ok(())
    }
}

/// Checks every provider and what they share: unique names, no zone claimed twice.
pub fn validate_providers(providers: &[DnsProviderConfig]) -> Result<(), String> {
    let mut names = HashMap::new();
    let mut zones: HashMap<DnsName, &str> = HashMap::new();
    for p in providers {
        p.validate()?;
        if names.insert(p.name.as_str(), ()).is_some() {
            return Err(format!(
                "[[dns_provider]] name {:?} is used twice; give each provider its own name",
                p.name
            ));
        }
        for z in p.zone_names().into_iter().chain(p.delegated_zone_names()) {
            if let Some(other) = zones.insert(z.clone(), p.name.as_str()) {
                return Err(format!(
                    "zone {z} is claimed by [[dns_provider]] {other:?} and {:?} (in zones or \
                     delegated_zones); a zone has one provider — remove it from one of them",
                    p.name
                ));
            }
        }
    }
    Ok(())
}

fn parse_duration(s: Option<&str>) -> Option<Duration> {
    s.and_then(|s| humantime::parse_duration(s).ok())
}

fn check_duration(
    ctx: &impl Fn(String) -> String,
    key: &str,
    value: &Option<String>,
) -> Result<Option<Duration>, String> {
    let Some(s) = value else { return Ok(None) };
    let d = humantime::parse_duration(s).map_err(|e| {
        ctx(format!(
            "{key} = {s:?} is not a duration ({e}); write it like \"60s\" or \"2m\""
        ))
    })?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err(ctx(format!(
            "{key} = {s:?} must be more than 0 and at most 1h"
        )));
    }
    Ok(Some(d))
}

/// `ip:port`, `[v6]:port` or a bare `ip` (port 53).
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not an address (like \"192.0.2.53\", \"192.0.2.53:5353\" or \"[2001:db8::53]:53\")"
    ))
}

/// `host:port` where host is an IP (v6 in brackets) or a DNS name.
fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad =
        || format!("{s:?} must be host:port, like \"ns1.example.net:53\" or \"192.0.2.1:53\"");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(bad());
    }
    DnsName::parse(host).map_err(|e| format!("{s:?}: host {host:?} is not a name ({e})"))?;
    Ok(())
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
