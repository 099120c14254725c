//! `[[policy]]`: which certificates the hosts whose labels match get — their names (from
//! templates the operator writes, never from the host), which addresses, how they are
//! validated, by whom, with which key, into which of the agent's targets.

use super::{parse_net, IssuerConfig, KeyTypeName};
use certfleet_shared::identifier::{DnsName, Identifier, NamePattern};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Which of a host's addresses a certificate covers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpSelection {
    #[default]
    All,
    /// Only addresses outside the special-purpose ranges.
    Public,
    /// No addresses: names only.
    None,
}

/// An ACME challenge type, in the spelling of RFC 8555 / 8737.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// Done by the coordinator through a `[[dns_provider]]`; the host takes no part.
    #[serde(rename = "dns-01")]
    Dns01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }

    /// The order tried when a certificate does not say: HTTP-01, then TLS-ALPN-01.
    pub fn default_order() -> Vec<ChallengeKind> {
        vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    /// Every label here must be on the host (from enrollment). Empty matches every host.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Issuer for this policy; default: `[issuance] issuer`.
    pub issuer: Option<String>,
    /// Instead of `issuer`: an ordered list; when one CA fails, the next is tried.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// A profile the certificate must have. When set and the CA does not offer it, the
    /// certificate goes to an error state instead of silently getting another lifetime.
    pub profile: Option<String>,
    /// Target on the agent; default: `[issuance] target`, else the agent's only target.
    pub target: Option<String>,
    pub key_type: Option<KeyTypeName>,
    #[serde(default)]
    pub ips: IpSelection,
    /// Addresses (CIDR blocks, or single addresses) the policy's hosts may claim. Empty:
    /// any. A host claiming an address outside gets no certificate with it: the
    /// certificate is `refused`, naming the address and this list.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Names an agent may ask for in its own config (`names = [...]`): exact names, or
    /// `*.zone` for any name under the zone. Empty: agents may ask for none.
    #[serde(default)]
    pub allowed_names: Vec<String>,
    /// The certificates each matching host gets. None listed: one certificate, `default`,
    /// made from the fields above, with the host's addresses and the names it asks for.
    #[serde(rename = "certificate", default)]
    pub certificates: Vec<CertificateConfig>,
}

/// `[[policy.certificate]]`: one certificate every matching host gets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// Unique in the policy; the certificate keeps its identity (and history) under it.
    pub name: String,
    /// Name templates: literal names, or with `{hostname}` (the host's enrolled name) and
    /// `{label.KEY}` (a label's value) in place of whole labels or parts of one. The entry
    /// `"{requested}"` stands for the names the agent asks for, when `allowed_names`
    /// covers them.
    #[serde(default)]
    pub names: Vec<String>,
    /// Which of the host's addresses to include; default: none when `names` is given,
    /// else the policy's `ips`.
    pub ips: Option<IpSelection>,
    /// Challenge types in the order they are tried; when one fails for an identifier the
    /// next is tried. Default: http-01, then tls-alpn-01 (each only where the agent
    /// offers it).
    #[serde(default)]
    pub challenges: Vec<ChallengeKind>,
    pub issuer: Option<String>,
    #[serde(default)]
    pub issuers: Vec<String>,
    pub profile: Option<String>,
    pub key_type: Option<KeyTypeName>,
    /// Agent targets the certificate is installed into (one target holds one
    /// certificate). Default: the policy's `target`, `[issuance] target`, else the agent's
    /// only target.
    #[serde(default)]
    pub targets: Vec<String>,
    /// A key group: every host this certificate goes to serves one and the same
    /// certificate and key (a wildcard behind a load balancer). One member makes the key
    /// and CSR; each other member gets the key sealed to its own identity key, relayed by
    /// the coordinator, which never sees it in clear. One order per renewal for the group.
    /// Each member's agent must list the group in its own `key_groups`. Default: none
    /// (one key per host, which never leaves it).
    pub key_group: Option<String>,
}

impl CertificateConfig {
    /// The one certificate a policy without `[[policy.certificate]]` (or no policy) gives:
    /// the host's addresses as selected, and the names its agent asks for.
    pub fn implicit(ips: IpSelection) -> Self {
        CertificateConfig {
            name: DEFAULT_CERT.into(),
            names: vec![REQUESTED.into()],
            ips: Some(ips),
            challenges: Vec::new(),
            issuer: None,
            issuers: Vec::new(),
            profile: None,
            key_type: None,
            targets: Vec::new(),
            key_group: None,
        }
    }
}

/// The placeholder for the names an agent asks for.
pub const REQUESTED: &str = "{requested}";

/// One piece of a name template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Hostname,
    Label(String),
}

/// A parsed name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate(Vec<Piece>);

impl NameTemplate {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("name template {s:?}: a \"{{\" is not closed"))?
                + open;
            let key = &rest[open + 1..close];
            pieces.push(match key {
                "hostname" => Piece::Hostname,
                _ => match key.strip_prefix("label.") {
                    Some(l) if !l.is_empty() => Piece::Label(l.to_owned()),
                    _ => {
                        return Err(format!(
                            "name template {s:?}: unknown placeholder {{{key}}}; use {{hostname}}, {{label.KEY}} or, alone, {REQUESTED}"
                        ))
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("name template {s:?}: a \"}}\" has no \"{{\""));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(NameTemplate(pieces))
    }

    /// Fills the template in for a host; the result still has to pass [`DnsName::parse`].
    pub fn render(
        &self,
        hostname: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Hostname => out.push_str(hostname),
                Piece::Label(k) => match labels.get(k) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(format!(
                            "the host has no label {k:?} (the template uses {{label.{k}}}); enroll it with --label {k}=VALUE or change the template"
                        ))
                    }
                },
            }
        }
        Ok(out)
    }

    /// Whether the template is a fixed name.
    pub fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Piece::Text(_)))
    }
}

impl PolicyConfig {
    /// `allowed_ips` parsed (validated at load, so nothing is dropped here).
    pub fn allowed_nets(&self) -> Vec<ipnet::IpNet> {
        self.allowed_ips
            .iter()
            .filter_map(|s| parse_net(s).ok())
            .collect()
    }

    /// `allowed_names` parsed (validated at load, so nothing is dropped here).
    pub fn allowed_name_patterns(&self) -> Vec<NamePattern> {
        self.allowed_names
            .iter()
            .filter_map(|s| NamePattern::parse(s).ok())
            .collect()
    }

    /// The certificates the policy gives, with the implicit `default` one when none is
    /// listed.
    pub fn certificates(&self) -> Vec<CertificateConfig> {
        if !self.certificates.is_empty() {
            return self.certificates.clone();
        }
        vec![CertificateConfig::implicit(self.ips)]
    }

    /// Certificates that give every matching host the very same identifiers: with Let's
    /// Encrypt's limit of 5 certificates per identifier set per week, more than 5 such
    /// hosts (or frequent re-issues) get refused. Said once at start, naming the fix. A key
    /// group is exempt: it orders one certificate for all its hosts.
    pub fn shared_set_warnings(&self) -> Vec<String> {
        self.certificates
            .iter()
            .filter(|c| {
                let host_specific = c.names.iter().any(|t| {
                    t == REQUESTED || NameTemplate::parse(t).is_ok_and(|tpl| !tpl.is_literal())
                });
                let ips = c.ips.unwrap_or(IpSelection::None) != IpSelection::None;
                // A key group is one certificate for all its hosts: that is its point.
                !c.names.is_empty() && !host_specific && !ips && c.key_group.is_none()
            })
            .map(|c| {
                format!(
                    "[[policy]] {:?}, certificate {:?}: every host the policy matches gets the same names ({}); Let's Encrypt issues at most 5 certificates per identifier set per week, so a 6th host (or a 6th re-issue) waits for the budget. Add a host-specific name, e.g. \"{{hostname}}.example.net\", so each host's set differs, give the certificate a key_group (one certificate and key shared by every host, for names by dns-01), or terminate the shared name on a load balancer that holds one certificate",
                    self.name,
                    c.name,
                    c.names.join(", ")
                )
            })
            .collect()
    }

    /// Everything `Config::validate` checks about one policy.
    /// `dns_zones`: every zone a `[[dns_provider]]` serves.
    pub(super) fn validate(
        &self,
        issuers: &[IssuerConfig],
        dns_zones: &[DnsName],
    ) -> Result<(), String> {
        let ctx = |m: String| format!("[[policy]] {:?}: {m}", self.name);
        check_issuers(&self.issuer, &self.issuers, issuers).map_err(ctx)?;
        for n in &self.allowed_ips {
            parse_net(n).map_err(|e| ctx(format!("allowed_ips: {e}")))?;
        }
        for n in &self.allowed_names {
            NamePattern::parse(n).map_err(|e| ctx(format!("allowed_names: {e}")))?;
        }
        let mut names = HashSet::new();
        let mut targets: HashMap<&str, &str> = HashMap::new();
        for c in &self.certificates {
            let ctx = |m: String| {
                format!(
                    "[[policy]] {:?}, [[policy.certificate]] {:?}: {m}",
                    self.name, c.name
                )
            };
            if !valid_cert_name(&c.name) || !names.insert(c.name.as_str()) {
                return Err(ctx(
                    "name must be unique in the policy: letters, digits, - or _ (up to 64)".into(),
                ));
            }
            check_issuers(&c.issuer, &c.issuers, issuers).map_err(ctx)?;
            for t in &c.names {
                check_template(t).map_err(ctx)?;
            }
            let ips = c.ips.unwrap_or(if c.names.is_empty() {
                self.ips
            } else {
                IpSelection::None
            });
            if c.names.is_empty() && ips == IpSelection::None {
                return Err(ctx(
                    "no names and ips = \"none\": the certificate would name nothing; add names or choose ips = \"public\" or \"all\"".into(),
                ));
            }
            let mut seen = HashSet::new();
            for ch in &c.challenges {
                if !seen.insert(*ch) {
                    return Err(ctx(format!("challenge {:?} is listed twice", ch.as_str())));
                }
            }
            check_dns01(c, ips, dns_zones).map_err(ctx)?;
            check_key_group(c).map_err(ctx)?;
            for t in &c.targets {
                if let Some(other) = targets.insert(t, &c.name) {
                    return Err(ctx(format!(
                        "target {t:?} is also the target of certificate {other:?}; a target holds one certificate, so give each its own target (two targets may reload the same server)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The name of the certificate a policy without `[[policy.certificate]]` gives (and every
/// host had before certificates were listed).
pub const DEFAULT_CERT: &str = "default";

fn valid_cert_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_issuers(
    issuer: &Option<String>,
    list: &[String],
    configured: &[IssuerConfig],
) -> Result<(), String> {
    if issuer.is_some() && !list.is_empty() {
        return Err("give issuer or issuers, not both".into());
    }
    for i in issuer.iter().chain(list) {
        if !configured.iter().any(|x| &x.name == i) {
            return Err(format!(
                "issuer {i:?} is not one of the configured [[issuer]] names"
            ));
        }
    }
    Ok(())
}

/// DNS-01's rules: a wildcard is validated only by DNS-01, so a certificate with one lists
/// exactly that; IP addresses are never validated by DNS-01 (Let's Encrypt refuses it); a
/// literal name validated by DNS-01 must be in a zone a `[[dns_provider]]` serves (names
/// from templates are checked when each host's spec is made).
fn check_dns01(
    c: &CertificateConfig,
    ips: IpSelection,
    dns_zones: &[DnsName],
) -> Result<(), String> {
    let dns01 = c.challenges.contains(&ChallengeKind::Dns01);
    let wildcards: Vec<&str> = c
        .names
        .iter()
        .filter(|t| t.starts_with("*."))
        .map(String::as_str)
        .collect();
    if !wildcards.is_empty() && c.challenges != [ChallengeKind::Dns01] {
        return Err(format!(
            "{} is a wildcard, which only DNS-01 can validate; set challenges = [\"dns-01\"] \
             (and a [[dns_provider]] serving its zone), or list the names instead",
            wildcards.join(", ")
        ));
    }
    if dns01 && ips != IpSelection::None {
        return Err(
            "challenges lists dns-01, but IP addresses are never validated by DNS-01 (Let's \
             Encrypt refuses it); set ips = \"none\" and give the addresses a certificate of \
             their own with http-01 or tls-alpn-01"
                .into(),
        );
    }
    if !dns01 {
        return Ok(());
    }
    for t in &c.names {
        let Ok(tpl) = NameTemplate::parse(t) else {
            continue;
        };
        if t == REQUESTED || !tpl.is_literal() {
            continue;
        }
        let Ok(id) = Identifier::parse(t) else {
            continue; // check_template names the problem
        };
        let Some(name) = id.dns_name() else {
            continue;
        };
        if !in_some_zone(name, dns_zones) {
            return Err(format!(
                "{t:?} is validated by DNS-01, but no [[dns_provider]] serves a zone it is in \
                 (zones served: {}); add its zone to a provider's zones (or, when its _acme-challenge is a CNAME into a zone a provider serves, to that provider's delegated_zones)",
                if dns_zones.is_empty() {
                    "none".to_owned()
                } else {
                    dns_zones
                        .iter()
                        .map(|z| z.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    Ok(())
}

/// A key group's rules: a valid name; every member's certificate must be the same one, so
/// only literal names (no `{hostname}`, `{label.…}` or `{requested}`) and no addresses;
/// validated by DNS-01 only, because behind a load balancer the CA's HTTP-01 or
/// TLS-ALPN-01 request may reach any member, and only the one that made the key would
/// answer.
fn check_key_group(c: &CertificateConfig) -> Result<(), String> {
    let Some(g) = &c.key_group else {
        return Ok(());
    };
    if !valid_cert_name(g) {
        return Err(format!(
            "key_group {g:?}: a group name is letters, digits, - or _ (up to 64)"
        ));
    }
    if c.names.is_empty() {
        return Err(format!(
            "key_group {g:?} needs names: a key group shares one certificate for names, never for addresses"
        ));
    }
    if let Some(t) = c
        .names
        .iter()
        .find(|t| *t == REQUESTED || !NameTemplate::parse(t).is_ok_and(|p| p.is_literal()))
    {
        return Err(format!(
            "key_group {g:?}: {t:?} would differ from host to host, but every member of a key group serves the same certificate; list the names literally"
        ));
    }
    if c.challenges != [ChallengeKind::Dns01] {
        return Err(format!(
            "key_group {g:?} needs challenges = [\"dns-01\"]: behind a load balancer the CA's HTTP-01 or TLS-ALPN-01 request may reach any member, and only the one that made the key answers it"
        ));
    }
    Ok(())
}

/// Whether `name` is one of `zones` or below one of them.
pub fn in_some_zone(name: &DnsName, zones: &[DnsName]) -> bool {
    zones.iter().any(|z| name.is_at_or_under(z))
}

/// A template is valid when it parses and, filled in with a plausible host, is a valid
/// name; a literal name must be valid as it stands.
fn check_template(t: &str) -> Result<(), String> {
    if t == REQUESTED {
        return Ok(());
    }
    if t.contains(REQUESTED) {
        return Err(format!(
            "names entry {t:?}: {REQUESTED} stands alone, as its own entry"
        ));
    }
    let tpl = NameTemplate::parse(t)?;
    let sample_labels: BTreeMap<String, String> = tpl
        .0
        .iter()
        .filter_map(|p| match p {
            Piece::Label(k) => Some((k.clone(), "x1".to_owned())),
            _ => None,
        })
        .collect();
    let sample = tpl.render("host-1", &sample_labels)?;
    let parsed = match sample.strip_prefix("*.") {
        // A wildcard: checked as one (its base a valid name, not a public suffix).
        Some(_) => Identifier::parse(&sample).map(|_| ()),
        None => DnsName::parse(&sample).map(|_| ()),
    };
    parsed.map_err(|e| {
        if tpl.is_literal() {
            format!("names entry {t:?}: {e}")
        } else {
            format!("names entry {t:?} does not make a valid name (filled in: {sample:?}): {e}")
        }
    })
}
