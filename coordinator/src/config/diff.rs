//! What a configuration reload (SIGHUP) would change: the settings only a restart can
//! take over (a reload that changes one is refused, naming it), and a short summary of
//! what it applies — policies, issuers and DNS providers added, removed or changed.

use super::Config;
use std::collections::BTreeSet;

/// Settings read once at `serve` start (listeners bound, store opened, the fleet CA's
/// identity lifetime set). A reload that changes one of them is refused as a whole, so the
/// running configuration is always one whole file and never half of the new one.
/// `[server] names` / `ips` are not here: they are read by `init` and `node join` only.
pub fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.state_dir != new.state_dir {
        out.push("state_dir");
    }
    if old.server.listen != new.server.listen {
        out.push("[server] listen");
    }
    if old.server.identity_lifetime_secs != new.server.identity_lifetime_secs {
        out.push("[server] identity_lifetime_secs");
    }
    if old.metrics != new.metrics {
        out.push("[metrics] listen");
    }
    if old.store != new.store {
        out.push("[store]");
    }
    if old.web != new.web {
        out.push("[web]");
    }
    out
}

/// Named tables of one kind (`[[policy]]`, `[[issuer]]`, `[[dns_provider]]`) compared by
/// name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// The same names in another order (matters for policies: the first match wins).
    pub reordered: bool,
}

impl Changes {
    fn of<T: PartialEq>(old: &[T], new: &[T], name: impl Fn(&T) -> &str) -> Self {
        let find = |list: &'_ [T], n: &str| list.iter().position(|t| name(t) == n);
        let mut c = Changes::default();
        for t in new {
            match find(old, name(t)) {
                None => c.added.push(name(t).to_owned()),
                Some(i) if old[i] != *t => c.changed.push(name(t).to_owned()),
                Some(_) => {}
            }
        }
        for t in old {
            if find(new, name(t)).is_none() {
                c.removed.push(name(t).to_owned());
            }
        }
        let kept = |list: &'_ [T], other: &'_ [T]| -> Vec<String> {
            list.iter()
                .map(|t| name(t).to_owned())
                .filter(|n| find(other, n).is_some())
                .collect()
        };
        c.reordered = kept(old, new) != kept(new, old);
        c
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.reordered
    }

    /// `+a +b ~c -d (reordered)`, or `unchanged`.
    fn text(&self) -> String {
        if self.is_empty() {
            return "unchanged".into();
        }
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.added.iter().map(|n| format!("+{n}")));
        parts.extend(self.changed.iter().map(|n| format!("~{n}")));
        parts.extend(self.removed.iter().map(|n| format!("-{n}")));
        if self.reordered {
            parts.push("(reordered)".into());
        }
        parts.join(" ")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "reordered": self.reordered,
        })
    }
}

/// What a good reload applies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub policies: Changes,
    pub issuers: Changes,
    pub dns_providers: Changes,
    /// Other sections that changed and apply live (`[issuance]`, …), by name.
    pub sections: Vec<&'static str>,
}

impl Summary {
    pub fn of(old: &Config, new: &Config) -> Self {
        let mut sections = BTreeSet::new();
        if old.issuance != new.issuance {
            sections.insert("[issuance]");
        }
        Summary {
            policies: Changes::of(&old.policies, &new.policies, |p| &p.name),
            issuers: Changes::of(&old.issuers, &new.issuers, |i| &i.name),
            dns_providers: Changes::of(&old.dns_providers, &new.dns_providers, |d| &d.name),
            sections: sections.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.issuers.is_empty()
            && self.dns_providers.is_empty()
            && self.sections.is_empty()
    }

    /// One line for the log and `systemctl status`:
    /// `policies: +web ~base; issuers: unchanged; dns providers: -old; [issuance] changed`.
    pub fn text(&self) -> String {
        if self.is_empty() {
            return "no change".into();
        }
        let mut s = format!(
            "policies: {}; issuers: {}; dns providers: {}",
            self.policies.text(),
            self.issuers.text(),
            self.dns_providers.text()
        );
        for section in &self.sections {
            s.push_str(&format!("; {section} changed"));
        }
        s
    }

    /// The audit record's details.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "policies": self.policies.json(),
            "issuers": self.issuers.json(),
            "dns_providers": self.dns_providers.json(),
            "sections_changed": self.sections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
version = 1
state_dir = "/var/lib/certfleet"
[server]
listen = "127.0.0.1:7443"
[[issuer]]
name = "a"
directory = "https://ca.example/dir"
"#;

    fn cfg(extra: &str) -> Config {
        Config::from_toml(
            &format!("{BASE}{extra}"),
            Path::new("t.toml"),
            std::iter::empty(),
        )
        .expect("config")
    }

    fn policy(name: &str, issuer: &str) -> String {
        format!("[[policy]]\nname = \"{name}\"\nissuer = \"{issuer}\"\n")
    }

    const SECOND_ISSUER: &str =
        "[[issuer]]\nname = \"b\"\ndirectory = \"https://other.example/dir\"\n[issuance]\nissuer = \"a\"\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let a = cfg(&policy("web", "a"));
        let s = Summary::of(&a, &a.clone());
        assert!(s.is_empty());
        assert_eq!(s.text(), "no change");
        assert!(restart_only(&a, &a).is_empty());
    }

    #[test]
    fn policies_added_removed_changed_and_reordered() {
        let old = cfg(&format!(
            "{SECOND_ISSUER}{}{}{}",
            policy("web", "a"),
            policy("db", "a"),
            policy("old", "a")
        ));
        let new = cfg(&format!(
            "{SECOND_ISSUER}{}{}{}",
            policy("db", "b"),
            policy("web", "a"),
            policy("new", "a")
        ));
        let s = Summary::of(&old, &new);
        assert_eq!(s.policies.added, vec!["new"]);
        assert_eq!(s.policies.removed, vec!["old"]);
        assert_eq!(s.policies.changed, vec!["db"]);
        assert!(s.policies.reordered);
        assert!(s.issuers.is_empty());
        assert_eq!(
            s.text(),
            "policies: +new ~db -old (reordered); issuers: unchanged; dns providers: unchanged"
        );
        let j = s.json();
        assert_eq!(j["policies"]["added"], serde_json::json!(["new"]));
        assert_eq!(j["policies"]["reordered"], true);
    }

    #[test]
    fn only_kept_names_count_for_the_order() {
        let old = cfg(&format!("{}{}", policy("web", "a"), policy("db", "a")));
        let new = cfg(&format!(
            "{}{}{}",
            policy("new", "a"),
            policy("web", "a"),
            policy("db", "a")
        ));
        let s = Summary::of(&old, &new);
        assert_eq!(s.policies.added, vec!["new"]);
        assert!(!s.policies.reordered, "{s:?}");
    }

    #[test]
    fn issuers_and_sections() {
        let old = cfg("");
        let new = cfg(&format!(
            "{}[issuance]\nissuer = \"a\"\nretry_base_secs = 5\n",
            "[[issuer]]\nname = \"b\"\ndirectory = \"https://other.example/dir\"\n"
        ));
        let s = Summary::of(&old, &new);
        assert_eq!(s.issuers.added, vec!["b"]);
        assert_eq!(s.sections, vec!["[issuance]"]);
        assert!(s.text().ends_with("; [issuance] changed"), "{}", s.text());

        // An issuer's settings changed (its contact): changed, not added.
        let contact = cfg("contact = [\"mailto:ops@example.org\"]\n");
        let s = Summary::of(&old, &contact);
        assert_eq!(s.issuers.changed, vec!["a"]);
        assert!(s.issuers.added.is_empty() && s.issuers.removed.is_empty());
    }

    #[test]
    fn settings_read_at_start_are_named() {
        let old = cfg("");
        let mut new = old.clone();
        new.server.listen = "127.0.0.1:7444".parse().unwrap();
        new.state_dir = "/srv/certfleet".into();
        new.metrics.listen = Some("127.0.0.1:9100".parse().unwrap());
        new.server.identity_lifetime_secs = 3600;
        new.store.pool_size = Some(3);
        assert_eq!(
            restart_only(&old, &new),
            vec![
                "state_dir",
                "[server] listen",
                "[server] identity_lifetime_secs",
                "[metrics] listen",
                "[store]"
            ]
        );
        // Read by init / node join only: no restart needed, nothing refused.
        let mut names = old.clone();
        names.server.names = vec!["coord.example".into()];
        assert!(restart_only(&old, &names).is_empty());
    }
}
