//! The agent's local configuration — the only source of paths and commands on this host
//! (design invariant 3). Strict (`deny_unknown_fields`), versioned, env overrides
//! (`CERTFLEET_AGENT_SECTION__KEY`), validated with messages that name the fix.

use certfleet_shared::identifier::{parse_host_ip, parse_ip, DnsName};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::addresses::AutoIps;
pub use crate::addresses::IpsSetting;
use crate::target::Target;
pub use crate::target::TargetConfig;

pub const CONFIG_VERSION: u32 = 1;
const ENV_PREFIX: &str = "CERTFLEET_AGENT_";
const ENV_SKIP: &[&str] = &[
    "CERTFLEET_AGENT_CONFIG",
    "CERTFLEET_AGENT_LOG_FORMAT",
    crate::install::PAUSE_ENV,
];

pub use certfleet_shared::configenv::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub version: u32,
    pub state_dir: PathBuf,
    /// `ips`: this host's addresses, a list or `"auto"` (`crate::addresses`: taken from
    /// the interfaces, followed while the agent runs).
    #[serde(rename = "ips")]
    pub ips_setting: IpsSetting,
    /// `ips = "auto"` only: ranges taken although not public (CIDR or address).
    #[serde(default)]
    pub ips_include: Vec<String>,
    /// `ips = "auto"` only: ranges never taken.
    #[serde(default)]
    pub ips_exclude: Vec<String>,
    /// `ips = "auto"` only: how often the interfaces are looked at (humantime, 1s-1h,
    /// default 10s).
    pub ips_rescan: Option<String>,
    /// Canonical IP addresses of this host: the list, or what `"auto"` found (at
    /// [`AgentConfig::load`], and again on each change while the agent runs).
    #[serde(skip)]
    pub ips: Vec<String>,
    /// DNS names this host asks to have certificates for (sent in Hello as
    /// `requested_names`; the coordinator's policy decides). Canonical after load: lower
    /// case A-labels, no trailing dot.
    #[serde(default)]
    pub names: Vec<String>,
    /// Key groups this host takes part in (`crate::keygroup`): only for these may a key
    /// made here be sealed to another member, or a member's key be imported. Default none.
    #[serde(default)]
    pub key_groups: Vec<String>,
    /// Coordinator URLs (`https://HOST:PORT`) used instead of those given at enrollment
    /// (`crate::coordinators`); empty = the enrolled ones. Trimmed, no trailing `/`.
    #[serde(default)]
    pub coordinators: Vec<String>,
    #[serde(default)]
    pub http01: Http01Config,
    /// `[tls_alpn01]`: absent = this host answers no TLS-ALPN-01.
    pub tls_alpn01: Option<TlsAlpn01Config>,
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on `http://<listen>/metrics`; off when unset.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Http01Mode {
    /// The agent binds `port` on the host's addresses while a challenge is live.
    #[default]
    Standalone,
    /// The web server owns `port`; the agent writes token files under `webroot`.
    Webroot,
    /// The web server owns `port` and forwards the challenge path to `listen`.
    Proxy,
}

impl Http01Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Webroot => "webroot",
            Self::Proxy => "proxy",
        }
    }
}

/// `[http01]`: how this host answers HTTP-01 (see `deploy/agent.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http01Config {
    #[serde(default)]
    pub mode: Http01Mode,
    /// The port the CA connects to: bound by standalone; webroot and proxy fetch
    /// `http://<ip>:<port>/…` from it in their self-check.
    #[serde(default = "default_port")]
    pub port: u16,
    /// webroot: the web server's document root for the challenge path.
    pub webroot: Option<PathBuf>,
    /// proxy: the loopback address the web server forwards the challenge path to.
    pub listen: Option<std::net::SocketAddr>,
    /// webroot and proxy: fetch each challenge through the web server after presenting it
    /// and report what would stop the CA (default true).
    pub self_check: Option<bool>,
}

impl Default for Http01Config {
    fn default() -> Self {
        Self {
            mode: Http01Mode::Standalone,
            port: default_port(),
            webroot: None,
            listen: None,
            self_check: None,
        }
    }
}

fn default_port() -> u16 {
    80
}

impl Http01Config {
    pub fn self_check(&self) -> bool {
        self.mode != Http01Mode::Standalone && self.self_check.unwrap_or(true)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mode = self.mode.as_str();
        let stray = |field: &str, modes: &str| {
            format!("[http01] {field} is only used with mode = {modes}; remove it or change the mode (now {mode:?})")
        };
        if self.port == 0 {
            return Err(
                "[http01] port must not be 0; it is the port the CA connects to (80)".into(),
            );
        }
        if self.mode != Http01Mode::Webroot && self.webroot.is_some() {
            return Err(stray("webroot", "\"webroot\""));
        }
        if self.mode != Http01Mode::Proxy && self.listen.is_some() {
            return Err(stray("listen", "\"proxy\""));
        }
        if self.mode == Http01Mode::Standalone && self.self_check.is_some() {
            return Err(stray("self_check", "\"webroot\" or \"proxy\""));
        }
        match self.mode {
            Http01Mode::Standalone => {}
            Http01Mode::Webroot => {
                let Some(root) = &self.webroot else {
                    return Err(format!("[http01] mode = \"webroot\" needs webroot = \"/path/to/docroot\": the directory the web server on port {} serves /.well-known/acme-challenge/ from", self.port));
                };
                if !root.is_absolute()
                    || root
                        .components()
                        .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(format!(
                        "[http01] webroot = {root:?} must be an absolute path without \"..\""
                    ));
                }
                crate::http01::check_webroot(root)?;
            }
            Http01Mode::Proxy => {
                let Some(listen) = self.listen else {
                    return Err("[http01] mode = \"proxy\" needs listen = \"127.0.0.1:8402\": the local address the web server forwards /.well-known/acme-challenge/ to".into());
                };
                if !listen.ip().is_loopback() || listen.port() == 0 {
                    return Err(format!("[http01] listen = \"{listen}\" must be a loopback address with a port, e.g. \"127.0.0.1:8402\": only the local web server forwards to it; the CA reaches the host on port {}", self.port));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsAlpn01Mode {
    /// The agent binds `port` (443) on the host's addresses while a challenge is live.
    Standalone,
    /// A front (nginx `stream` + `ssl_preread`) owns port 443 and routes ALPN
    /// `acme-tls/1` to the agent on the loopback `listen` address.
    Loopback,
}

impl TlsAlpn01Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Loopback => "loopback",
        }
    }
}

/// `[tls_alpn01]`: how this host answers TLS-ALPN-01 (see `deploy/agent.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsAlpn01Config {
    pub mode: TlsAlpn01Mode,
    /// standalone: the port the CA connects to (default 443).
    pub port: Option<u16>,
    /// loopback: where the ALPN-routing front sends `acme-tls/1` connections.
    pub listen: Option<std::net::SocketAddr>,
}

impl TlsAlpn01Config {
    /// The port standalone mode binds.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(443)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mode = self.mode.as_str();
        let stray = |field: &str, modes: &str| {
            format!("[tls_alpn01] {field} is only used with mode = {modes}; remove it or change the mode (now {mode:?})")
        };
        match self.mode {
            TlsAlpn01Mode::Standalone => {
                if self.listen.is_some() {
                    return Err(stray("listen", "\"loopback\""));
                }
                if self.port == Some(0) {
                    return Err(
                        "[tls_alpn01] port must not be 0; it is the port the CA connects to (443)"
                            .into(),
                    );
                }
            }
            TlsAlpn01Mode::Loopback => {
                if self.port.is_some() {
                    return Err(stray("port", "\"standalone\" (the front keeps port 443)"));
                }
                let Some(listen) = self.listen else {
                    return Err("[tls_alpn01] mode = \"loopback\" needs listen = \"127.0.0.1:8443\": the local address the front on port 443 sends ALPN acme-tls/1 connections to (deploy/nginx/acme-tls-alpn.conf)".into());
                };
                if !listen.ip().is_loopback() || listen.port() == 0 {
                    return Err(format!("[tls_alpn01] listen = \"{listen}\" must be a loopback address with a port, e.g. \"127.0.0.1:8443\": only the local front connects to it; the CA reaches the host on port 443"));
                }
            }
        }
        Ok(())
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text, path, std::env::vars())?;
        if let Some(auto) = cfg.auto_ips() {
            let found = auto.scan().map_err(|detail| ConfigError::Invalid {
                path: path.into(),
                detail,
            })?;
            cfg.set_ips(&found);
        }
        Ok(cfg)
    }

    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |detail: String| ConfigError::Parse {
            path: path.into(),
            detail,
        };
        let mut cfg: AgentConfig =
            certfleet_shared::configenv::parse_with_env(text, ENV_PREFIX, ENV_SKIP, env)
                .map_err(parse_err)?;
        if let IpsSetting::List(list) = &cfg.ips_setting {
            cfg.ips = list.clone();
        }
        let invalid = |detail| ConfigError::Invalid {
            path: path.into(),
            detail,
        };
        cfg.names = canonical_names(&cfg.names).map_err(invalid)?;
        if !cfg.coordinators.is_empty() {
            cfg.coordinators = crate::coordinators::check_urls(&cfg.coordinators, "coordinators")
                .map_err(invalid)?;
        }
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.version != CONFIG_VERSION {
            return Err(format!(
                "version = {} is not supported; this agent reads version = {CONFIG_VERSION}",
                self.version
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir {:?} must be an absolute path",
                self.state_dir
            ));
        }
        if self.ips_setting == IpsSetting::Auto {
            AutoIps::parse(
                &self.ips_include,
                &self.ips_exclude,
                self.ips_rescan.as_deref(),
            )?;
        } else if !self.ips_include.is_empty()
            || !self.ips_exclude.is_empty()
            || self.ips_rescan.is_some()
        {
            return Err("ips_include, ips_exclude and ips_rescan are only used with ips = \"auto\"; remove them or set ips = \"auto\"".into());
        } else if self.ips.is_empty() {
            return Err(
                "ips is empty; list this host's addresses, e.g. ips = [\"203.0.113.10\"], or write ips = \"auto\"".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, ip) in self.ips.iter().enumerate() {
            let parsed = parse_host_ip(ip).map_err(|e| format!("ips[{i}]: {e}"))?;
            if !seen.insert(parsed) {
                return Err(format!("ips[{i}]: {ip:?} is listed twice"));
            }
        }
        let names = canonical_names(&self.names)?;
        if let Some((given, canonical)) = self.names.iter().zip(&names).find(|(g, c)| g != c) {
            return Err(format!(
                "names: {given:?} is not in canonical form; write it as {canonical:?}"
            ));
        }
        crate::keygroup::check_config(&self.key_groups)?;
        if !self.coordinators.is_empty() {
            crate::coordinators::check_urls(&self.coordinators, "coordinators")?;
        }
        self.http01.validate()?;
        if let Some(t) = &self.tls_alpn01 {
            t.validate()?;
            self.check_challenge_ports(t)?;
        }
        self.resolve_targets()?;
        Ok(())
    }

    /// HTTP-01 and TLS-ALPN-01 may be live at once: they must not need the same socket.
    fn check_challenge_ports(&self, t: &TlsAlpn01Config) -> Result<(), String> {
        let h = &self.http01;
        if t.mode == TlsAlpn01Mode::Standalone
            && h.mode == Http01Mode::Standalone
            && h.port == t.port()
        {
            return Err(format!("[tls_alpn01] port {} is also [http01] port: both standalone responders would bind it on the same addresses; pick another port (443 for TLS-ALPN-01)", t.port()));
        }
        if let (Some(a), Some(b)) = (h.listen, t.listen) {
            if a == b {
                return Err(format!("[tls_alpn01] listen = \"{b}\" is also [http01] listen: pick another port for one of them (and the same in the web server's config)"));
            }
        }
        Ok(())
    }

    /// Every `[targets.*]` table resolved for this host (preset layouts, commands, verify
    /// addresses). No path may belong to two targets.
    pub fn resolve_targets(&self) -> Result<BTreeMap<String, Target>, String> {
        let ips = self.ip_addrs();
        let mut out = BTreeMap::new();
        let mut paths = HashSet::new();
        for (name, t) in &self.targets {
            if !crate::target::valid_name(name) {
                return Err(format!(
                    "target name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"
                ));
            }
            let resolved = t
                .resolve(name, &ips)
                .map_err(|m| format!("[targets.{name}]: {m}"))?;
            for f in &resolved.files {
                if !paths.insert(f.path.clone()) {
                    return Err(format!(
                        "[targets.{name}]: {} = {:?} is used twice",
                        f.role.as_str(),
                        f.path
                    ));
                }
            }
            out.insert(name.clone(), resolved);
        }
        Ok(out)
    }

    /// The configured addresses, parsed (validated at load).
    pub fn ip_addrs(&self) -> Vec<IpAddr> {
        self.ips.iter().filter_map(|s| parse_ip(s).ok()).collect()
    }
}

/// The canonical form of each entry of `names` ([`DnsName::parse`]: lower-case A-labels,
/// no trailing dot); a bad entry is refused naming its index and the rule, a name listed
/// twice (after canonicalisation) too.
fn canonical_names(names: &[String]) -> Result<Vec<String>, String> {
    const MAX_NAMES: usize = 100;
    if names.len() > MAX_NAMES {
        return Err(format!(
            "names lists {} names; at most {MAX_NAMES} (a certificate names at most 100)",
            names.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, given) in names.iter().enumerate() {
        let name = DnsName::parse(given).map_err(|e| format!("names[{i}]: {e}"))?;
        let name = name.as_str().to_owned();
        if out.contains(&name) {
            return Err(format!(
                "names[{i}]: {given:?} is listed twice (as {name:?})"
            ));
        }
        out.push(name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
version = 1
state_dir = "/var/lib/cfa"
ips = ["127.0.0.11", "::1"]
[http01]
port = 5002
[targets.default]
fullchain = "/tmp/x/fullchain.pem"
key = "/tmp/x/key.pem"
reload = ["/bin/true"]
"#;

    fn parse(t: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_toml(t, Path::new("t.toml"), Vec::new())
    }

    #[test]
    fn example_config_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = AgentConfig::from_toml(&text, &path, Vec::new()).unwrap();
        assert_eq!(cfg.ip_addrs().len(), 2);
        assert!(cfg.targets.contains_key("nginx"));
        // Durations ("30s") where seconds are counted.
        assert_eq!(cfg.targets["nginx"].reload_timeout_secs, 30);
        assert_eq!(cfg.targets["nginx"].verify_grace_secs, 10);
        assert!(cfg.names.is_empty(), "names is a commented example");
        let text = text.replace("# names = [", "names = [");
        let cfg = AgentConfig::from_toml(&text, &path, Vec::new()).unwrap();
        assert_eq!(cfg.names, ["web-1.example.net", "api.example.net"]);
        assert!(
            cfg.key_groups.is_empty(),
            "key_groups is a commented example"
        );
        let text = text.replace("# key_groups = [", "key_groups = [");
        let cfg = AgentConfig::from_toml(&text, &path, Vec::new()).unwrap();
        assert_eq!(cfg.key_groups, ["edge-wildcard"]);
    }

    #[test]
    fn names_are_canonicalised_and_bad_ones_refused_naming_the_entry_and_rule() {
        let with = |names: &str| MINIMAL.replace("ips = [", &format!("names = [{names}]\nips = ["));
        let cfg = parse(&with(r#""Web-1.Example.NET.", "bücher.example""#)).unwrap();
        assert_eq!(cfg.names, ["web-1.example.net", "xn--bcher-kva.example"]);
        assert!(parse(MINIMAL).unwrap().names.is_empty());
        let cases = [
            (
                r#""ok.example.net", "10.0.0.1""#,
                "names[1]: \"10.0.0.1\" is an IP address, not a name",
            ),
            (r#""com""#, "names[0]: \"com\" is a public suffix"),
            (
                r#""_x.example""#,
                "names[0]: \"_x.example\": label \"_x\" holds '_'",
            ),
            (
                r#""*.example.net""#,
                "names[0]: \"*.example.net\": \"*\" is allowed only",
            ),
            (r#""intranet""#, "names[0]: \"intranet\" has only one label"),
            (
                r#""a.example.net", "A.example.net""#,
                "names[1]: \"A.example.net\" is listed twice",
            ),
        ];
        for (names, want) in cases {
            let err = parse(&with(names)).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{names}: {err:?} should contain {want:?}"
            );
        }
        // Built by hand (not loaded), a name must already be canonical.
        let mut cfg = parse(MINIMAL).unwrap();
        cfg.names = vec!["API.example.net".into()];
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("write it as \"api.example.net\""), "{err}");
    }

    #[test]
    fn minimal_parses() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.http01.port, 5002);
        assert_eq!(cfg.targets["default"].reload_timeout_secs, 60);
        let t = &cfg.resolve_targets().unwrap()["default"];
        assert_eq!(t.files.len(), 2);
        assert_eq!(t.verify.len(), 2, "each ip on 443 by default");
    }

    #[test]
    fn bad_configs_name_the_fix() {
        let cases = [
            (
                MINIMAL.replace("\"::1\"", "\"0:0:0:0:0:0:0:1\""),
                "write it as \"::1\"",
            ),
            (MINIMAL.replace("\"::1\"", "\"127.0.0.11\""), "listed twice"),
            (
                MINIMAL.replace("/bin/true", "true"),
                "must be an absolute path",
            ),
            (
                MINIMAL.replace("fullchain = ", "fullchian = "),
                "unknown field `fullchian`",
            ),
            (
                MINIMAL.replace("key = \"/tmp/x/key.pem\"", "key = \"/tmp/x/fullchain.pem\""),
                "used twice",
            ),
            (
                MINIMAL.replace("/tmp/x/key.pem", "key.pem"),
                "absolute path",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn http01_modes() {
        let with = |h: &str| MINIMAL.replace("[http01]\nport = 5002", &format!("[http01]\n{h}"));
        let cfg = parse(&with(
            "mode = \"webroot\"\nwebroot = \"/var/www/certfleet\"",
        ))
        .unwrap();
        assert_eq!(
            (cfg.http01.mode, cfg.http01.port, cfg.http01.self_check()),
            (Http01Mode::Webroot, 80, true)
        );
        let cfg = parse(&with(
            "mode = \"proxy\"\nlisten = \"[::1]:8402\"\nself_check = false",
        ))
        .unwrap();
        assert_eq!(
            (cfg.http01.mode, cfg.http01.self_check()),
            (Http01Mode::Proxy, false)
        );
        assert!(
            !parse(&with("")).unwrap().http01.self_check(),
            "standalone has no self-check"
        );
        let cases = [
            ("mode = \"webroot\"", "needs webroot = \"/path/to/docroot\""),
            ("mode = \"webroot\"\nwebroot = \"www\"", "absolute path"),
            (
                "mode = \"webroot\"\nwebroot = \"/var/www/../etc\"",
                "without \"..\"",
            ),
            (
                "mode = \"webroot\"\nwebroot = \"/w\"\nlisten = \"127.0.0.1:8402\"",
                "listen is only used with mode = \"proxy\"",
            ),
            ("mode = \"proxy\"", "needs listen = \"127.0.0.1:8402\""),
            (
                "mode = \"proxy\"\nlisten = \"0.0.0.0:8402\"",
                "must be a loopback address",
            ),
            (
                "mode = \"proxy\"\nlisten = \"127.0.0.1:8402\"\nwebroot = \"/w\"",
                "webroot is only used with mode = \"webroot\"",
            ),
            ("self_check = true", "self_check is only used with"),
            ("mode = \"nginx\"", "unknown variant `nginx`"),
            ("port = 0", "port must not be 0"),
            ("webroots = \"/w\"", "unknown field `webroots`"),
        ];
        for (h, want) in cases {
            let err = parse(&with(h)).unwrap_err().to_string();
            assert!(err.contains(want), "{h:?}: {err:?} should contain {want:?}");
        }
        // The commented-out modes in deploy/agent.example.toml parse when switched on.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let example = std::fs::read_to_string(&path).unwrap();
        for (mode, key) in [("webroot", "webroot ="), ("proxy", "listen =")] {
            let on = example
                .replace("mode = \"standalone\"\n", "")
                .replace(
                    &format!("#   mode = \"{mode}\""),
                    &format!("mode = \"{mode}\""),
                )
                .replace(&format!("#   {key}"), key)
                .replace("#   self_check", "self_check");
            let cfg = AgentConfig::from_toml(&on, &path, Vec::new()).unwrap();
            assert_eq!(cfg.http01.mode.as_str(), mode);
        }
    }

    #[test]
    fn tls_alpn01_modes() {
        assert!(
            parse(MINIMAL).unwrap().tls_alpn01.is_none(),
            "absent = not offered"
        );
        let with = |t: &str| format!("{MINIMAL}[tls_alpn01]\n{t}\n");
        let cfg = parse(&with("mode = \"standalone\"")).unwrap();
        let t = cfg.tls_alpn01.unwrap();
        assert_eq!((t.mode, t.port()), (TlsAlpn01Mode::Standalone, 443));
        let t = parse(&with("mode = \"standalone\"\nport = 8443"))
            .unwrap()
            .tls_alpn01
            .unwrap();
        assert_eq!(t.port(), 8443);
        let t = parse(&with("mode = \"loopback\"\nlisten = \"[::1]:8443\""))
            .unwrap()
            .tls_alpn01
            .unwrap();
        assert_eq!(
            (t.mode, t.listen),
            (TlsAlpn01Mode::Loopback, Some("[::1]:8443".parse().unwrap()))
        );
        let cases = [
            ("", "missing field `mode`"),
            ("mode = \"nginx\"", "unknown variant `nginx`"),
            (
                "mode = \"standalone\"\nport = 0",
                "[tls_alpn01] port must not be 0",
            ),
            (
                "mode = \"standalone\"\nlisten = \"127.0.0.1:8443\"",
                "[tls_alpn01] listen is only used with mode = \"loopback\"",
            ),
            ("mode = \"loopback\"", "needs listen = \"127.0.0.1:8443\""),
            (
                "mode = \"loopback\"\nlisten = \"0.0.0.0:8443\"",
                "must be a loopback address",
            ),
            (
                "mode = \"loopback\"\nlisten = \"127.0.0.1:0\"",
                "must be a loopback address with a port",
            ),
            (
                "mode = \"loopback\"\nlisten = \"127.0.0.1:8443\"\nport = 443",
                "[tls_alpn01] port is only used with mode = \"standalone\"",
            ),
            (
                "mode = \"loopback\"\nlistn = \"x\"",
                "unknown field `listn`",
            ),
            // The same port for both standalone responders on the same addresses.
            ("mode = \"standalone\"\nport = 5002", "[http01] port"),
        ];
        for (t, want) in cases {
            let err = parse(&with(t)).unwrap_err().to_string();
            assert!(err.contains(want), "{t:?}: {err:?} should contain {want:?}");
        }
        // One loopback address for both proxy responders.
        let both = MINIMAL.replace(
            "[http01]\nport = 5002",
            "[http01]\nmode = \"proxy\"\nlisten = \"127.0.0.1:8402\"",
        ) + "[tls_alpn01]\nmode = \"loopback\"\nlisten = \"127.0.0.1:8402\"\n";
        let err = parse(&both).unwrap_err().to_string();
        assert!(err.contains("pick another port"), "{err}");
        // The commented-out loopback example in deploy/agent.example.toml parses.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let example = std::fs::read_to_string(&path).unwrap();
        let on = example
            .replace("# [tls_alpn01]", "[tls_alpn01]")
            .replace("#    mode = \"loopback\"", "mode = \"loopback\"")
            .replace(
                "#    listen = \"127.0.0.1:8443\"",
                "listen = \"127.0.0.1:8443\"",
            );
        let cfg = AgentConfig::from_toml(&on, &path, Vec::new()).unwrap();
        assert_eq!(cfg.tls_alpn01.unwrap().mode, TlsAlpn01Mode::Loopback);
    }

    #[test]
    fn ips_errors_name_the_entry_and_value() {
        let with_ips = |ips: &str| MINIMAL.replace(r#"ips = ["127.0.0.11", "::1"]"#, ips);
        let cases = [
            (
                r#"ips = ["127.0.0.11", "::1", "10.0.0.300"]"#,
                r#"ips[2]: "10.0.0.300" is not an IP address"#,
            ),
            (
                r#"ips = ["127.0.0.11", "169.254.10.20"]"#,
                "ips[1]: 169.254.10.20 is a link-local address (169.254.0.0/16): no CA can reach it",
            ),
            (
                r#"ips = ["fe80::1", "::1"]"#,
                "ips[0]: fe80::1 is a link-local address (fe80::/10)",
            ),
            (
                r#"ips = ["127.0.0.11", "febf::2"]"#,
                "not unique to this host",
            ),
            (
                r#"ips = ["127.0.0.11", "::1", "127.0.0.11"]"#,
                r#"ips[2]: "127.0.0.11" is listed twice"#,
            ),
        ];
        for (ips, want) in cases {
            let err = parse(&with_ips(ips)).unwrap_err().to_string();
            assert!(err.contains(want), "{ips}: {err:?} should contain {want:?}");
        }
        // Neighbours of the link-local ranges are host addresses.
        assert!(parse(&with_ips(r#"ips = ["169.255.0.1", "fec0::1"]"#)).is_ok());
    }

    #[test]
    fn symlinked_webroot_is_refused_at_load() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("www");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let with_root = |root: &Path| {
            MINIMAL.replace(
                "[http01]\nport = 5002",
                &format!(
                    "[http01]\nmode = \"webroot\"\nwebroot = {:?}",
                    root.display().to_string()
                ),
            )
        };
        let err = parse(&with_root(&link)).unwrap_err().to_string();
        for want in [
            format!("[http01] webroot {} is a symlink", link.display()),
            format!(
                "its real path is {}",
                real.canonicalize().unwrap().display()
            ),
            "could point its writes anywhere".into(),
            "set webroot to the real directory".into(),
        ] {
            assert!(err.contains(&want), "{err:?} should contain {want:?}");
        }
        // The real path is fine, existing or not (created on the first challenge) ...
        assert!(parse(&with_root(&real)).is_ok());
        assert!(parse(&with_root(&tmp.path().join("later"))).is_ok());
        // ... but not with a symlinked challenge directory below it.
        std::os::unix::fs::symlink(tmp.path(), real.join(".well-known")).unwrap();
        let err = parse(&with_root(&real)).unwrap_err().to_string();
        assert!(
            err.contains(".well-known is a symlink") && err.contains("not a symlink or a file"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides() {
        let env = vec![("CERTFLEET_AGENT_HTTP01__PORT".to_owned(), "8080".to_owned())];
        let cfg = AgentConfig::from_toml(MINIMAL, Path::new("t"), env).unwrap();
        assert_eq!(cfg.http01.port, 8080);
    }
}
