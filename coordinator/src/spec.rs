//! Desired state: which certificates a host should have. They come from the first
//! `[[policy]]` whose labels the host carries (its `[[policy.certificate]]` list, or one
//! `default` certificate made from the policy's own fields), or from `[issuance]` when none
//! matches. Names come from the policy's templates; a name the agent asks for is taken only
//! when the policy's `allowed_names` covers it. Pure: no store, no network.

use crate::config::{
    in_some_zone, CertificateConfig, ChallengeKind, Config, IpSelection, NameTemplate,
    PolicyConfig, REQUESTED,
};
use crate::model::{CertSpec, HostRecord};
use certfleet_shared::identifier::{
    canonical_identifiers, canonical_set, is_public, DnsName, Identifier, NamePattern,
};
use std::net::IpAddr;

/// Why a host gets no certificate, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Target(String),
    #[error("host has no addresses the policy selects ({0})")]
    NoAddresses(String),
    #[error("{0}")]
    Name(String),
}

/// One certificate a host should have: its spec, or why it cannot have it; and the names
/// in it that the policy does not allow (the certificate is then `refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub spec: Result<CertSpec, SpecError>,
    pub refused_names: Option<RefusedNames>,
}

/// Names a host asked for (or a template made) that the policy's `allowed_names` does not
/// cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedNames {
    pub names: Vec<String>,
    pub reason: String,
}

/// The first `[[policy]]` whose labels the host carries.
fn policy_for<'c>(config: &'c Config, host: &HostRecord) -> Option<&'c PolicyConfig> {
    config.policies.iter().find(|p| {
        p.match_labels
            .iter()
            .all(|(k, v)| host.labels.get(k) == Some(v))
    })
}

/// Every certificate the host should have, in the policy's order.
pub fn desired_all(config: &Config, host: &HostRecord) -> Vec<Wanted> {
    let policy = policy_for(config, host);
    let certs = match policy {
        Some(p) => p.certificates(),
        None => vec![CertificateConfig::implicit(IpSelection::All)],
    };
    certs
        .iter()
        .map(|c| {
            let (spec, refused_names) = match one(config, policy, c, host) {
                Ok((spec, refused)) => (Ok(spec), refused),
                Err(e) => (Err(e), None),
            };
            Wanted {
                name: c.name.clone(),
                spec,
                refused_names,
            }
        })
        .collect()
}

/// The spec of the host's first certificate (the only one unless its policy lists more).
pub fn desired(config: &Config, host: &HostRecord) -> Result<CertSpec, SpecError> {
    desired_all(config, host)
        .into_iter()
        .next()
        .map(|w| w.spec)
        .unwrap_or_else(|| Err(SpecError::Target("the policy lists no certificates".into())))
}

fn one(
    config: &Config,
    policy: Option<&PolicyConfig>,
    c: &CertificateConfig,
    host: &HostRecord,
) -> Result<(CertSpec, Option<RefusedNames>), SpecError> {
    let policy_name = policy.map(|p| p.name.as_str()).unwrap_or("default");
    let (names, refused) = names_for(policy, c, host)?;
    let selection = c.ips.unwrap_or_else(|| {
        if c.names.is_empty() || c.names == [REQUESTED] {
            policy.map(|p| p.ips).unwrap_or_default()
        } else {
            IpSelection::None
        }
    });
    let ips: Vec<IpAddr> = host
        .ips
        .iter()
        .copied()
        .filter(|ip| match selection {
            IpSelection::All => true,
            IpSelection::Public => is_public(*ip),
            IpSelection::None => false,
        })
        .collect();
    if ips.is_empty() && names.is_empty() {
        return Err(SpecError::NoAddresses(format!(
            "the agent reports {:?}; policy {policy_name:?}, certificate {:?}",
            host.ips, c.name
        )));
    }
    if c.challenges.contains(&ChallengeKind::Dns01) {
        check_zones(config, &names)?;
    }
    let mut identifiers: Vec<Identifier> =
        canonical_set(ips).into_iter().map(Identifier::Ip).collect();
    identifiers.extend(names);
    let wanted_targets: Vec<String> = if !c.targets.is_empty() {
        c.targets.clone()
    } else {
        policy
            .and_then(|p| p.target.clone())
            .or_else(|| config.issuance.target.clone())
            .into_iter()
            .collect()
    };
    let targets = if wanted_targets.is_empty() {
        vec![choose_target(None, &host.targets).map_err(SpecError::Target)?]
    } else {
        wanted_targets
            .iter()
            .map(|t| choose_target(Some(t), &host.targets))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SpecError::Target)?
    };
    let (issuer, fallback_issuers) = if c.issuer.is_some() || !c.issuers.is_empty() {
        issuers_of(&c.issuer, &c.issuers)
    } else if let Some(p) = policy.filter(|p| p.issuer.is_some() || !p.issuers.is_empty()) {
        issuers_of(&p.issuer, &p.issuers)
    } else {
        (
            config.default_issuer_name().unwrap_or_default().to_owned(),
            Vec::new(),
        )
    };
    Ok((
        CertSpec {
            policy: policy.map(|p| p.name.clone()),
            name: c.name.clone(),
            identifiers: canonical_identifiers(identifiers),
            challenges: c.challenges.clone(),
            issuer,
            fallback_issuers,
            required_profile: c
                .profile
                .clone()
                .or_else(|| policy.and_then(|p| p.profile.clone())),
            key_type: c
                .key_type
                .or_else(|| policy.and_then(|p| p.key_type))
                .unwrap_or(config.issuance.key_type),
            targets,
            key_group: c.key_group.clone(),
        },
        refused,
    ))
}

fn issuers_of(issuer: &Option<String>, list: &[String]) -> (String, Vec<String>) {
    match issuer {
        Some(i) => (i.clone(), Vec::new()),
        None => (
            list.first().cloned().unwrap_or_default(),
            list.iter().skip(1).cloned().collect(),
        ),
    }
}

/// The names of a certificate: its templates filled in for the host, and the names the
/// agent asked for where the certificate takes them. A name the policy's `allowed_names`
/// does not cover is kept in the spec (so the operator sees what was asked) and reported
/// as refused. Agents' names are always checked; template names only when the policy has
/// an `allowed_names` list (the operator wrote the templates).
fn names_for(
    policy: Option<&PolicyConfig>,
    c: &CertificateConfig,
    host: &HostRecord,
) -> Result<(Vec<Identifier>, Option<RefusedNames>), SpecError> {
    let patterns: Vec<NamePattern> = policy
        .map(|p| p.allowed_name_patterns())
        .unwrap_or_default();
    let allowed_list = policy.map(|p| p.allowed_names.clone()).unwrap_or_default();
    let covered = |id: &Identifier| patterns.iter().any(|p| p.matches(id));
    let mut names = Vec::new();
    let mut refused = Vec::new();
    for t in &c.names {
        if t == REQUESTED {
            for asked in &host.requested_names {
                // The agent canonicalises at load; a name that still does not parse is
                // refused like one the policy does not allow.
                match DnsName::parse(asked) {
                    Ok(n) => {
                        let id = Identifier::Dns(n);
                        if !covered(&id) {
                            refused.push(id.to_string());
                        }
                        names.push(id);
                    }
                    Err(e) => {
                        return Err(SpecError::Name(format!(
                            "the agent asks for {asked:?}, which is not a valid name: {e}"
                        )))
                    }
                }
            }
            continue;
        }
        let tpl = NameTemplate::parse(t).map_err(SpecError::Name)?;
        let text = tpl
            .render(&host.hostname, &host.labels)
            .map_err(|e| SpecError::Name(format!("names entry {t:?}: {e}")))?;
        // A wildcard template (`*.{hostname}.example.net`) makes a wildcard; anything
        // else must be a name (an address written as a name is refused).
        let n = if text.starts_with("*.") {
            Identifier::parse(&text).map_err(|e| e.to_string())
        } else {
            DnsName::parse(&text)
                .map(Identifier::Dns)
                .map_err(|e| e.to_string())
        }
        .map_err(|e| {
            SpecError::Name(format!(
                "names entry {t:?} makes {text:?} for this host, which is not a valid name: {e}; fix the template or the host's hostname/labels"
            ))
        })?;
        if !patterns.is_empty() && !covered(&n) {
            refused.push(n.to_string());
        }
        names.push(n);
    }
    names.sort();
    names.dedup();
    let refused = (!refused.is_empty()).then(|| RefusedNames {
        reason: format!(
            "{} not allowed by policy {:?} (allowed_names = [{}]); add the name or a *.zone pattern covering it to the policy's allowed_names, or remove it from the agent's `names`",
            refused.join(", "),
            policy.map(|p| p.name.as_str()).unwrap_or("default (no [[policy]] matches this host)"),
            allowed_list.join(", ")
        ),
        names: refused,
    });
    Ok((names, refused))
}

/// A certificate validated by DNS-01 names only what a `[[dns_provider]]` can write:
/// each name (or wildcard's base) must be in a zone one serves.
fn check_zones(config: &Config, names: &[Identifier]) -> Result<(), SpecError> {
    let zones = config.dns_zones();
    let outside: Vec<String> = names
        .iter()
        .filter(|id| id.dns_name().is_some_and(|n| !in_some_zone(n, &zones)))
        .map(|id| id.to_string())
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    Err(SpecError::Name(format!(
        "{} validated by DNS-01, but no [[dns_provider]] serves a zone for {} (zones served: {}); add the zone to a provider's zones (or delegated_zones, when its _acme-challenge is a CNAME into a zone a provider serves) or change the names",
        outside.join(", "),
        if outside.len() == 1 { "it" } else { "them" },
        if zones.is_empty() {
            "none".to_owned()
        } else {
            zones.iter().map(|z| z.as_str()).collect::<Vec<_>>().join(", ")
        }
    )))
}

/// Addresses the host claims that its policy's `allowed_ips` does not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disallowed {
    pub policy: String,
    pub ips: Vec<IpAddr>,
    pub allowed: Vec<String>,
}

impl Disallowed {
    /// For the operator: what is refused and how to fix it.
    pub fn reason(&self) -> String {
        let ips: Vec<String> = self.ips.iter().map(|i| i.to_string()).collect();
        format!(
            "{} not allowed by policy {:?} (allowed_ips = [{}]); remove the address from the agent's `ips`, or widen the policy's allowed_ips",
            ips.join(", "),
            self.policy,
            self.allowed.join(", ")
        )
    }
}

/// The host's addresses outside its policy's `allowed_ips` (none when the policy has no
/// such list).
pub fn disallowed(config: &Config, host: &HostRecord) -> Option<Disallowed> {
    let policy = policy_for(config, host)?;
    if policy.allowed_ips.is_empty() {
        return None;
    }
    let nets = policy.allowed_nets();
    let ips: Vec<IpAddr> = host
        .ips
        .iter()
        .copied()
        .filter(|ip| !nets.iter().any(|n| n.contains(ip)))
        .collect();
    (!ips.is_empty()).then(|| Disallowed {
        policy: policy.name.clone(),
        ips,
        allowed: policy.allowed_ips.clone(),
    })
}

fn choose_target(wanted: Option<&str>, targets: &[String]) -> Result<String, String> {
    match wanted {
        Some(t) if targets.iter().any(|x| x == t) => Ok(t.to_owned()),
        Some(t) => Err(format!(
            "host has no install target named {t:?} (it has: {}); add [targets.{t}] to the agent's config",
            targets.join(", ")
        )),
        None => match targets {
            [only] => Ok(only.clone()),
            [] => Err("host has no install targets; add a [targets.NAME] section to the agent's config".into()),
            many => Err(format!(
                "host has several targets ({}); set [issuance] target or a policy target",
                many.join(", ")
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_shared::ids::HostId;
    use std::path::Path;

    #[test]
    fn allowed_ips_names_what_is_outside() {
        let cfg = config(
            "[[policy]]\nname = \"web\"\nallowed_ips = [\"203.0.113.0/24\", \"2001:db8::1\"]\nips = \"all\"\n",
        );
        let h = host(
            &[],
            &["203.0.113.7", "198.51.100.9", "2001:db8::1", "2001:db8::2"],
            &["t"],
        );
        let d = disallowed(&cfg, &h).expect("outside addresses");
        assert_eq!(d.policy, "web");
        assert_eq!(
            d.ips,
            vec![
                "198.51.100.9".parse::<IpAddr>().unwrap(),
                "2001:db8::2".parse().unwrap()
            ]
        );
        assert!(d
            .reason()
            .contains("198.51.100.9, 2001:db8::2 not allowed by policy \"web\""));
        let inside = host(&[], &["203.0.113.7", "2001:db8::1"], &["t"]);
        assert_eq!(disallowed(&cfg, &inside), None);
        // No list: anything goes.
        assert_eq!(disallowed(&config(""), &h), None);
    }

    fn config(extra: &str) -> Config {
        let text = format!(
            "version = 1\nstate_dir = \"/x\"\n[server]\nlisten = \"127.0.0.1:1\"\n\
             [[issuer]]\nname = \"a\"\ndirectory = \"https://a/dir\"\n\
             [[issuer]]\nname = \"b\"\ndirectory = \"https://b/dir\"\n\
             [issuance]\nissuer = \"a\"\n{extra}"
        );
        Config::from_toml(&text, Path::new("t"), Vec::new()).unwrap()
    }

    fn host(labels: &[(&str, &str)], ips: &[&str], targets: &[&str]) -> HostRecord {
        HostRecord {
            requested_names: Default::default(),
            challenge_modes: Default::default(),
            key_groups: Default::default(),
            id: HostId::generate(),
            hostname: "h".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            enrolled: 0,
            enrolled_from: String::new(),
            identity_serial: String::new(),
            identity_spki: None,
            identity_not_after: None,
            identity_rotated: None,
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            last_seen: None,
            inventory: vec![],
        }
    }

    #[test]
    fn default_spec_without_policies() {
        let s = desired(
            &config(""),
            &host(&[], &["8.8.8.8", "10.0.0.1"], &["nginx"]),
        )
        .unwrap();
        assert_eq!(s.policy, None);
        assert_eq!(s.issuer, "a");
        assert_eq!(s.targets, vec!["nginx".to_owned()]);
        assert_eq!(s.identifiers.len(), 2);
        assert_eq!(s.required_profile, None);
    }

    #[test]
    fn first_matching_policy_wins_and_selects_public_ips() {
        let cfg = config(
            "[[policy]]\nname = \"web\"\nmatch_labels = { role = \"web\" }\nissuer = \"b\"\nprofile = \"shortlived\"\n\
             target = \"nginx\"\nips = \"public\"\n[[policy]]\nname = \"all\"\n",
        );
        let h = host(
            &[("role", "web")],
            &["8.8.8.8", "10.0.0.1"],
            &["nginx", "other"],
        );
        let s = desired(&cfg, &h).unwrap();
        assert_eq!(s.policy.as_deref(), Some("web"));
        assert_eq!(s.ips(), vec!["8.8.8.8".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.issuer, "b");
        assert_eq!(s.required_profile.as_deref(), Some("shortlived"));
        let fb_cfg = config("[[policy]]\nname = \"fb\"\nissuers = [\"b\", \"a\"]\n");
        let fb = desired(&fb_cfg, &host(&[], &["8.8.8.8"], &["t"])).unwrap();
        assert_eq!(fb.issuers().collect::<Vec<_>>(), vec!["b", "a"]);
        let other = host(&[("role", "db")], &["8.8.8.8"], &["x"]);
        assert_eq!(
            desired(&cfg, &other).unwrap().policy.as_deref(),
            Some("all")
        );
    }

    #[test]
    fn refusals_name_the_fix() {
        let cfg = config("[[policy]]\nname = \"pub\"\nips = \"public\"\n");
        assert!(matches!(
            desired(&cfg, &host(&[], &["10.0.0.1"], &["t"])),
            Err(SpecError::NoAddresses(_))
        ));
        let e = desired(&config(""), &host(&[], &["8.8.8.8"], &["a", "b"])).unwrap_err();
        assert!(e.to_string().contains("several targets"));
    }

    #[test]
    fn policy_certificates_render_names_and_pick_targets() {
        let cfg = config(
            "[[policy]]\nname = \"web\"\nissuer = \"b\"\nallowed_names = [\"*.example.net\"]\n\
             [[policy.certificate]]\nname = \"site\"\nnames = [\"{hostname}.web.example.net\", \"{label.region}.api.example.net\"]\n\
             targets = [\"nginx\", \"haproxy\"]\nkey_type = \"ecdsa-p384\"\n\
             [[policy.certificate]]\nname = \"ip\"\nips = \"public\"\nissuer = \"a\"\ntargets = [\"default\"]\n",
        );
        let mut h = host(
            &[("region", "EU")],
            &["8.8.8.8", "10.0.0.1"],
            &["nginx", "haproxy", "default"],
        );
        h.hostname = "Web-3".into();
        let all = desired_all(&cfg, &h);
        assert_eq!(all.len(), 2);
        let site = all[0].spec.clone().unwrap();
        assert_eq!(site.name, "site");
        let ids: Vec<String> = site.identifiers.iter().map(|i| i.to_string()).collect();
        // Names only (ips default to none when names are given), canonical, sorted.
        assert_eq!(ids, vec!["eu.api.example.net", "web-3.web.example.net"]);
        assert_eq!(site.targets, vec!["nginx", "haproxy"]);
        assert_eq!(site.issuer, "b");
        assert_eq!(site.key_type, crate::config::KeyTypeName::EcdsaP384);
        assert_eq!(all[0].refused_names, None);
        let ip = all[1].spec.clone().unwrap();
        assert_eq!(ip.ips(), vec!["8.8.8.8".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            (ip.issuer.as_str(), ip.targets.clone()),
            ("a", vec!["default".to_owned()])
        );

        // A missing label or a target the host lacks is that certificate's error only.
        let bare = host(&[], &["8.8.8.8"], &["nginx", "default"]);
        let all = desired_all(&cfg, &bare);
        let e = all[0].spec.clone().unwrap_err().to_string();
        assert!(
            e.contains("no label \"region\"") && e.contains("--label region="),
            "{e}"
        );
        assert!(all[1].spec.is_ok());
    }

    #[test]
    fn names_the_agent_asks_for_need_allowed_names() {
        let cfg = config(
            "[[policy]]\nname = \"web\"\nallowed_names = [\"*.example.net\", \"api.example.org\"]\n",
        );
        let mut h = host(&[], &["8.8.8.8"], &["t"]);
        h.requested_names = vec!["a.b.example.net".into(), "api.example.org".into()];
        let w = &desired_all(&cfg, &h)[0];
        let ids: Vec<String> = w
            .spec
            .clone()
            .unwrap()
            .identifiers
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ids, vec!["8.8.8.8", "a.b.example.net", "api.example.org"]);
        assert_eq!(w.refused_names, None);

        // Outside the list, or no list at all (no policy): kept in the spec, refused, the
        // rule named.
        h.requested_names = vec!["example.net".into(), "www.other.org".into()];
        let w = &desired_all(&cfg, &h)[0];
        let r = w.refused_names.clone().expect("refused");
        assert_eq!(r.names, vec!["example.net", "www.other.org"]);
        assert!(
            r.reason
                .contains("allowed_names = [*.example.net, api.example.org]"),
            "{}",
            r.reason
        );
        let r = desired_all(&config(""), &h)[0]
            .refused_names
            .clone()
            .expect("refused");
        assert!(r.reason.contains("no [[policy]] matches"), "{}", r.reason);
        // Without names the certificate is the IP one it always was.
        h.requested_names.clear();
        assert_eq!(desired_all(&cfg, &h)[0].refused_names, None);
    }

    /// DNS-01: a wildcard template makes a wildcard; a name no provider's zone holds
    /// (here from a template, so only known per host) gives no spec, naming the zones.
    #[test]
    fn dns01_certificates_make_wildcards_and_need_a_zone() {
        let cfg = config(
            "[[dns_provider]]\nname = \"s\"\nzones = [\"example.net\"]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n\
             [[policy]]\nname = \"p\"\n[[policy.certificate]]\nname = \"w\"\nnames = [\"*.{hostname}.example.net\", \"{hostname}.example.net\"]\nchallenges = [\"dns-01\"]\n\
             [[policy.certificate]]\nname = \"o\"\nnames = [\"www.{label.zone}\"]\nchallenges = [\"dns-01\"]\n",
        );
        let h = host(&[("zone", "web.example.org")], &["8.8.8.8"], &["t"]);
        let all = desired_all(&cfg, &h);
        let w = all[0].spec.as_ref().expect("wildcard spec");
        let ids: Vec<String> = w.identifiers.iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, vec!["*.h.example.net", "h.example.net"]);
        assert!(w.identifiers[0].is_wildcard());
        assert_eq!(w.challenge_order(), vec![ChallengeKind::Dns01]);
        let err = all[1]
            .spec
            .clone()
            .expect_err("outside every zone")
            .to_string();
        assert!(
            err.contains("www.web.example.org validated by DNS-01, but no [[dns_provider]] serves a zone for it (zones served: example.net)"),
            "{err}"
        );
    }
}
