//! `ips = "auto"`: the host's addresses come from its interfaces (getifaddrs), filtered by
//! [`select`] — public addresses only unless `ips_include` names a range, never link-local
//! (no CA can reach it), never what `ips_exclude` names — and followed while the agent
//! runs: [`Follow`] rescans every `ips_rescan` (default 10 s) and says when the set
//! changed, and `main.rs` then restarts the agent's session with the new set (a fresh
//! Hello, so the coordinator issues for it; see `session.rs`).

use certfleet_shared::identifier::{canonical_set, is_link_local, is_public};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// Default rescan interval of `ips = "auto"`.
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(10);

/// `ips`: a list of addresses, or `"auto"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpsSetting {
    List(Vec<String>),
    Auto,
}

impl<'de> Deserialize<'de> for IpsSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IpsSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of this host's addresses, or \"auto\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<IpsSetting, E> {
                if s == "auto" {
                    Ok(IpsSetting::Auto)
                } else {
                    Err(E::custom(format!(
                        "ips = {:?}: write a list (ips = [\"203.0.113.10\"]) or \"auto\" (the host's public addresses, followed live)",
                        s.chars().take(64).collect::<String>()
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<IpsSetting, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(IpsSetting::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// What `ips = "auto"` takes from the interfaces (checked at load).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoIps {
    pub include: Vec<IpNet>,
    pub exclude: Vec<IpNet>,
    pub rescan: Duration,
}

impl AutoIps {
    /// Checks `ips_include`, `ips_exclude` (CIDR blocks or single addresses) and
    /// `ips_rescan` (humantime, 1 s to 1 h).
    pub fn parse(
        include: &[String],
        exclude: &[String],
        rescan: Option<&str>,
    ) -> Result<Self, String> {
        let nets = |key: &str, list: &[String]| -> Result<Vec<IpNet>, String> {
            list.iter()
                .enumerate()
                .map(|(i, s)| parse_net(s).map_err(|e| format!("{key}[{i}]: {e}")))
                .collect()
        };
        let rescan = match rescan {
            None => DEFAULT_RESCAN,
            Some(s) => {
                let d = humantime::parse_duration(s).map_err(|e| {
                    format!("ips_rescan = {s:?} is not a duration ({e}); write it like \"10s\"")
                })?;
                if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                    return Err(format!(
                        "ips_rescan = {s:?} must be between 1s and 1h (default 10s)"
                    ));
                }
                d
            }
        };
        Ok(Self {
            include: nets("ips_include", include)?,
            exclude: nets("ips_exclude", exclude)?,
            rescan,
        })
    }

    /// The host's addresses now, by this filter.
    pub fn scan(&self) -> Result<Vec<IpAddr>, String> {
        Ok(select(
            &interface_addresses()?,
            &self.include,
            &self.exclude,
        ))
    }
}

impl crate::config::AgentConfig {
    /// `ips = "auto"`'s filter and rescan interval (`None` for a list; checked at load).
    pub fn auto_ips(&self) -> Option<AutoIps> {
        (self.ips_setting == IpsSetting::Auto).then(|| {
            AutoIps::parse(
                &self.ips_include,
                &self.ips_exclude,
                self.ips_rescan.as_deref(),
            )
            .unwrap_or_default()
        })
    }

    /// Sets the host's current addresses (what `ips = "auto"` found).
    pub fn set_ips(&mut self, ips: &[IpAddr]) {
        self.ips = ips.iter().map(ToString::to_string).collect();
    }
}

/// A CIDR block or a single address; host bits set are refused.
use certfleet_shared::identifier::parse_net;

/// The addresses of `found` this host claims: never link-local; not in `exclude`; in
/// `include`, or public (the special-purpose ranges of `shared::identifier` — loopback,
/// private, shared, documentation, ULA … — only when `include` names them). Canonical,
/// sorted, each once.
pub fn select(found: &[IpAddr], include: &[IpNet], exclude: &[IpNet]) -> Vec<IpAddr> {
    let picked = found
        .iter()
        .map(|ip| canonical(*ip))
        .filter(|ip| !is_link_local(*ip))
        .filter(|ip| !exclude.iter().any(|n| n.contains(ip)))
        .filter(|ip| include.iter().any(|n| n.contains(ip)) || is_public(*ip))
        .collect();
    canonical_set(picked)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Every IPv4 and IPv6 address on the host's interfaces that are up (getifaddrs).
pub fn interface_addresses() -> Result<Vec<IpAddr>, String> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list the host's addresses (getifaddrs): {e}"))?;
    let mut out = Vec::new();
    for a in addrs {
        if !a.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

/// Follows the address set of `ips = "auto"`: [`Follow::changed`] returns once a rescan
/// finds a set other than `current` (a failed scan is logged and tried again).
pub struct Follow {
    pub auto: AutoIps,
    pub current: Vec<IpAddr>,
}

impl Follow {
    /// Waits for the next different set and returns it (and remembers it).
    pub async fn changed(&mut self) -> Vec<IpAddr> {
        loop {
            tokio::time::sleep(self.auto.rescan).await;
            match self.auto.scan() {
                Ok(now) if now != self.current => {
                    self.current = now.clone();
                    return now;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("ips = \"auto\": {e}; keeping the last set"),
            }
        }
    }
}

/// Runs the agent until `shutdown`. With `ips = "auto"`, a changed address set ends the
/// running agent (its commands drain as at shutdown) and starts it again with the new set:
/// its responders bind the new addresses, its targets check them, and the new session's
/// Hello tells the coordinator. With no address at all it waits for one.
pub async fn run_agent(
    mut config: crate::config::AgentConfig,
    clock: certfleet_shared::clock::SharedClock,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let Some(auto) = config.auto_ips() else {
        let agent = crate::session::Agent::with_clock(config, clock)?;
        return agent.run(shutdown).await;
    };
    let mut follow = Follow {
        current: config.ip_addrs(),
        auto,
    };
    loop {
        if follow.current.is_empty() {
            tracing::warn!(
                include = ?config.ips_include,
                exclude = ?config.ips_exclude,
                "ips = \"auto\" finds no address on this host's interfaces (public ones, or in ips_include, not in ips_exclude); waiting for one"
            );
            certfleet_shared::daemon::notify_systemd(certfleet_shared::daemon::Notify::Status(
                "waiting for an address (ips = \"auto\")",
            ));
            tokio::select! {
                _ = follow.changed() => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            config.set_ips(&follow.current);
            continue;
        }
        tracing::info!(ips = ?config.ips, "ips = \"auto\": this host's addresses");
        let agent = crate::session::Agent::with_clock(config.clone(), clock.clone())?;
        let stop = shutdown.child_token();
        let run = agent.run(stop.clone());
        tokio::pin!(run);
        let new = tokio::select! {
            r = &mut run => return r,
            new = follow.changed() => new,
        };
        tracing::info!(from = ?config.ips, to = ?new, "the host's addresses changed; restarting the session with the new set");
        stop.cancel();
        run.await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        config.set_ips(&new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    #[test]
    fn public_only_by_default() {
        let found = ips(&[
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "192.168.1.5",
            "172.16.0.9",
            "100.64.0.1",
            "169.254.3.4",
            "fe80::1",
            "fd00::5",
            "8.8.8.8",
            "2001:4860::8888",
            "::ffff:1.1.1.1",
            "8.8.8.8",
        ]);
        assert_eq!(
            select(&found, &[], &[]),
            ips(&["1.1.1.1", "8.8.8.8", "2001:4860::8888"])
        );
    }

    #[test]
    fn include_adds_special_ranges_but_never_link_local() {
        let found = ips(&[
            "10.99.7.11",
            "10.1.0.1",
            "fd99:7::11",
            "169.254.1.1",
            "fe80::2",
        ]);
        let include = nets(&["10.99.0.0/16", "fd99::/16", "169.254.0.0/16", "fe80::/10"]);
        assert_eq!(
            select(&found, &include, &[]),
            ips(&["10.99.7.11", "fd99:7::11"])
        );
    }

    #[test]
    fn exclude_wins_over_include_and_public() {
        let found = ips(&["8.8.8.8", "8.8.4.4", "10.99.7.11", "10.99.7.12"]);
        let include = nets(&["10.99.7.0/24"]);
        let exclude = nets(&["8.8.4.4", "10.99.7.12/32"]);
        assert_eq!(
            select(&found, &include, &exclude),
            ips(&["8.8.8.8", "10.99.7.11"])
        );
        assert!(select(&[], &include, &exclude).is_empty());
    }

    #[test]
    fn settings_are_checked_naming_the_key() {
        let ok =
            AutoIps::parse(&["10.0.0.0/8".into()], &["203.0.113.7".into()], Some("2s")).unwrap();
        assert_eq!(ok.rescan, Duration::from_secs(2));
        assert_eq!(ok.exclude, nets(&["203.0.113.7/32"]));
        assert_eq!(
            AutoIps::parse(&[], &[], None).unwrap().rescan,
            DEFAULT_RESCAN
        );
        let cases = [
            (
                vec!["10.0.0.1/8".to_owned()],
                vec![],
                None,
                "ips_include[0]: \"10.0.0.1/8\" has host bits set; did you mean 10.0.0.0/8?",
            ),
            (
                vec![],
                vec!["x".to_owned()],
                None,
                "ips_exclude[0]: \"x\" is not an address or CIDR block",
            ),
            (vec![], vec![], Some("0s"), "must be between 1s and 1h"),
            (
                vec![],
                vec![],
                Some("soon"),
                "ips_rescan = \"soon\" is not a duration",
            ),
        ];
        for (inc, exc, rescan, want) in cases {
            let err = AutoIps::parse(&inc, &exc, rescan).unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn agent_config_takes_auto_and_its_settings_only_with_auto() {
        use crate::config::AgentConfig;
        let text = |ips: &str| {
            format!("version = 1\nstate_dir = \"/var/lib/cfa\"\n{ips}\n[targets.default]\nfullchain = \"/tmp/x/f.pem\"\nkey = \"/tmp/x/k.pem\"\n")
        };
        let parse = |ips: &str| {
            AgentConfig::from_toml(&text(ips), std::path::Path::new("t.toml"), Vec::new())
        };
        let cfg =
            parse("ips = \"auto\"\nips_include = [\"10.99.0.0/16\"]\nips_rescan = \"2s\"").unwrap();
        let auto = cfg.auto_ips().unwrap();
        assert_eq!(
            (auto.include, auto.rescan),
            (nets(&["10.99.0.0/16"]), Duration::from_secs(2))
        );
        assert!(cfg.ips.is_empty(), "from_toml does not scan; load() does");
        assert!(parse("ips = [\"192.0.2.1\"]").unwrap().auto_ips().is_none());
        let cases = [
            (
                "ips = \"any\"",
                "write a list (ips = [\"203.0.113.10\"]) or \"auto\"",
            ),
            (
                "ips = [\"192.0.2.1\"]\nips_exclude = [\"192.0.2.0/24\"]",
                "only used with ips = \"auto\"",
            ),
            (
                "ips = \"auto\"\nips_include = [\"10.0.0.1/8\"]",
                "ips_include[0]",
            ),
            ("ips = []", "ips is empty"),
        ];
        for (ips, want) in cases {
            let err = parse(ips).unwrap_err().to_string();
            assert!(err.contains(want), "{ips}: {err:?} should contain {want:?}");
        }
    }

    #[test]
    fn the_commented_auto_example_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let on = text
            .replace("ips = [\"203.0.113.10\", \"2001:db8:10::10\"]\n", "")
            .replace("# ips = \"auto\"", "ips = \"auto\"")
            .replace("# ips_", "ips_");
        let cfg = crate::config::AgentConfig::from_toml(&on, &path, Vec::new()).unwrap();
        let auto = cfg.auto_ips().unwrap();
        assert_eq!(
            (auto.include, auto.exclude),
            (nets(&["10.20.0.0/16"]), nets(&["203.0.113.99"]))
        );
    }

    #[test]
    fn the_interfaces_can_be_listed() {
        // Every Linux host has loopback up; it is never picked by default.
        let all = interface_addresses().unwrap();
        assert!(all.iter().any(|ip| ip.is_loopback()), "{all:?}");
        assert!(!AutoIps::default()
            .scan()
            .unwrap()
            .iter()
            .any(|ip| ip.is_loopback()));
    }
}
