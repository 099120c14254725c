//! Desired state: which certificates a host should have. A certificate spec comes from the
//! first `[[policy]]` whose labels the host carries, or from `[issuance]` when none match.
//! Pure: no store, no network.

use crate::config::{Config, IpSelection, PolicyConfig, DEFAULT_CERT};
use crate::model::{CertSpec, HostRecord};
use certfleet_shared::identifier::{canonical_set, is_public, Identifier};
use std::net::IpAddr;

/// Why a host gets no certificate, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Target(String),
    #[error("host has no addresses the policy selects ({0})")]
    NoAddresses(String),
}

/// The first `[[policy]]` whose labels the host carries.
fn policy_for<'c>(config: &'c Config, host: &HostRecord) -> Option<&'c PolicyConfig> {
    config.policies.iter().find(|p| {
        p.match_labels
            .iter()
            .all(|(k, v)| host.labels.get(k) == Some(v))
    })
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

/// The spec for `host`, or why there is none.
pub fn desired(config: &Config, host: &HostRecord) -> Result<CertSpec, SpecError> {
    let policy = policy_for(config, host);
    let selection = policy.map(|p| p.ips).unwrap_or_default();
    let ips: Vec<IpAddr> = host
        .ips
        .iter()
        .copied()
        .filter(|ip| selection == IpSelection::All || is_public(*ip))
        .collect();
    if ips.is_empty() {
        return Err(SpecError::NoAddresses(format!(
            "the agent reports {:?}; policy {:?}",
            host.ips,
            policy.map(|p| p.name.as_str()).unwrap_or("default")
        )));
    }
    let wanted_target = policy
        .and_then(|p| p.target.clone())
        .or_else(|| config.issuance.target.clone());
    let target =
        choose_target(wanted_target.as_deref(), &host.targets).map_err(SpecError::Target)?;
    Ok(CertSpec {
        policy: policy.map(|p| p.name.clone()),
        name: DEFAULT_CERT.to_owned(),
        identifiers: canonical_set(ips).into_iter().map(Identifier::Ip).collect(),
        challenges: Vec::new(),
        issuer: policy
            .and_then(|p| p.issuer.clone().or_else(|| p.issuers.first().cloned()))
            .or_else(|| config.default_issuer_name().map(str::to_owned))
            .unwrap_or_default(),
        fallback_issuers: policy
            .map(|p| p.issuers.iter().skip(1).cloned().collect())
            .unwrap_or_default(),
        required_profile: policy.and_then(|p| p.profile.clone()),
        key_type: policy
            .and_then(|p| p.key_type)
            .unwrap_or(config.issuance.key_type),
        targets: vec![target],
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
            id: HostId::generate(),
            hostname: "h".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            enrolled: 0,
            enrolled_from: String::new(),
            identity_serial: String::new(),
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
}
