//! Install targets: what a `[targets.<name>]` table in the agent's config means on disk.
//!
//! A target is either a *preset* (`nginx`, `apache`, `haproxy`, `lego`, `certbot`) that
//! lays out files the way that software expects under a `dir`, or custom paths, or a preset
//! with some paths overridden. [`TargetConfig::resolve`] turns the table into a
//! [`Target`]: the exact files (role, path, owner, group, mode), the config-test and reload
//! commands, and the addresses on which the new certificate must be seen served.
//!
//! This module owns no I/O beyond looking up user and group names; `install.rs` writes.

use crate::install::hook::DeployHook;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Software whose file layout and commands a target can follow.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `dir/fullchain.pem` + `dir/privkey.pem`; `nginx -t`; `nginx -s reload`.
    Nginx,
    /// `dir/cert.pem` + `dir/chain.pem` (`SSLCertificateChainFile`) + `dir/privkey.pem`;
    /// `apachectl configtest`; `apachectl graceful`.
    Apache,
    /// `dir/<name>.pem`: leaf, intermediates and key in one file; `haproxy -c`; reload.
    Haproxy,
    /// lego's layout: `dir/certificates/<name>.crt|.issuer.crt|.key|.json`.
    Lego,
    /// certbot's layout: `dir/live/<name>/{cert,chain,fullchain,privkey}.pem`, symlinks
    /// into the versioned `dir/archive/<name>/`.
    Certbot,
}

/// What a file holds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    /// The leaf only.
    Cert,
    /// The intermediates only.
    Chain,
    /// Leaf and intermediates.
    Fullchain,
    /// The private key.
    Key,
    /// Leaf, intermediates and key (haproxy).
    Combined,
    /// lego's JSON resource file.
    Meta,
}

impl FileRole {
    pub fn as_str(self) -> &'static str {
        match self {
            FileRole::Cert => "cert",
            FileRole::Chain => "chain",
            FileRole::Fullchain => "fullchain",
            FileRole::Key => "key",
            FileRole::Combined => "combined",
            FileRole::Meta => "meta",
        }
    }

    /// Whether the file holds the private key.
    pub fn secret(self) -> bool {
        matches!(self, FileRole::Key | FileRole::Combined)
    }

    fn default_mode(self) -> u32 {
        if self.secret() {
            0o600
        } else {
            0o644
        }
    }
}

/// Owner, group and mode of one file; unset fields keep the defaults (the agent's own
/// user and group; 0600 for keys, 0644 otherwise).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FilePerms {
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Octal, as a string: `"0640"`.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub preset: Option<Preset>,
    /// Base directory of a preset's layout.
    pub dir: Option<PathBuf>,
    /// File name stem for haproxy, lego and certbot layouts (default: the target's name).
    pub name: Option<String>,
    /// Custom paths (or overrides of a preset's).
    pub cert: Option<PathBuf>,
    pub chain: Option<PathBuf>,
    pub fullchain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub combined: Option<PathBuf>,
    /// Owner, group and mode per file role, e.g. `files.key = { group = "ssl-cert", mode = "0640" }`.
    #[serde(default)]
    pub files: BTreeMap<FileRole, FilePerms>,
    /// Config test run after the files are in place and before the reload (argv, no
    /// shell). A preset brings its own; `check = []` turns it off.
    pub check: Option<Vec<String>>,
    /// Reload command (argv, no shell). A preset brings its own; `reload = []` for none.
    pub reload: Option<Vec<String>>,
    /// Instead of a command: send this signal (e.g. "HUP") to the pid in `pid_file`.
    pub reload_signal: Option<String>,
    pub pid_file: Option<PathBuf>,
    #[serde(
        default = "default_reload_timeout",
        deserialize_with = "certfleet_shared::timefmt::de_secs",
        alias = "reload_timeout"
    )]
    pub reload_timeout_secs: u64,
    /// Where the new certificate must be seen served after the reload, `"ip:port"`
    /// (`"[v6]:port"`). Default: each of the host's ips on port 443. `verify = []` turns
    /// the check off (the certificate is then reported installed, never served).
    pub verify: Option<Vec<String>>,
    /// How long the served check keeps retrying after the reload.
    #[serde(
        default = "default_verify_grace",
        deserialize_with = "certfleet_shared::timefmt::de_secs",
        alias = "verify_grace"
    )]
    pub verify_grace_secs: u64,
    /// Where the versions of this target's files live; the configured paths become
    /// symlinks into `<store_dir>/current/`, and an install switches `current` in one
    /// rename. Default: `.certfleet-<target>` beside the certificate file. (Not used by
    /// the certbot preset, which keeps certbot's own `live/` → `archive/` links.)
    pub store_dir: Option<PathBuf>,
    /// Run after a successful install, reload and served check (argv, no shell), with
    /// the installed paths in its environment (see `install/hook.rs`).
    pub deploy_hook: Option<Vec<String>>,
    /// How long the deploy hook may run, e.g. "60s" (the default) or "2m".
    pub deploy_hook_timeout: Option<String>,
}

fn default_reload_timeout() -> u64 {
    60
}

fn default_verify_grace() -> u64 {
    10
}

/// One file of a resolved target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFile {
    pub role: FileRole,
    pub path: PathBuf,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// How a target's web server picks up new files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    None,
    Command(Vec<String>),
    Signal { signal: String, pid_file: PathBuf },
}

/// A target as the installer uses it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub files: Vec<TargetFile>,
    /// certbot layout: `files` are symlinks into this versioned archive directory.
    pub archive_dir: Option<PathBuf>,
    /// Every other layout: the versioned store the files link into (see `install.rs`).
    pub store_dir: Option<PathBuf>,
    pub check: Vec<String>,
    pub reload: Reload,
    pub reload_timeout: Duration,
    pub verify: Vec<SocketAddr>,
    pub verify_grace: Duration,
    pub deploy_hook: Option<DeployHook>,
}

const SIGNALS: &[&str] = &["HUP", "USR1", "USR2", "TERM", "QUIT", "WINCH"];

impl Target {
    /// The file the served leaf is read back from (leaf, full chain or combined).
    pub fn leaf_source(&self) -> Option<&TargetFile> {
        [FileRole::Cert, FileRole::Fullchain, FileRole::Combined]
            .iter()
            .find_map(|r| self.files.iter().find(|f| f.role == *r))
    }

    /// The file the key is read back from.
    pub fn key_source(&self) -> Option<&TargetFile> {
        [FileRole::Key, FileRole::Combined]
            .iter()
            .find_map(|r| self.files.iter().find(|f| f.role == *r))
    }
}

impl TargetConfig {
    /// Resolves the table `[targets.<name>]` for a host with `ips`. Errors name the fix.
    pub fn resolve(&self, name: &str, ips: &[IpAddr]) -> Result<Target, String> {
        self.resolve_with(name, ips, &SystemIds)
    }

    fn resolve_with(
        &self,
        name: &str,
        ips: &[IpAddr],
        ids: &dyn IdLookup,
    ) -> Result<Target, String> {
        let stem = self.name.clone().unwrap_or_else(|| name.to_owned());
        if !valid_name(&stem) {
            return Err(format!(
                "name {stem:?} must be 1-64 letters, digits, '-', '_' or '.' (not starting with '.')"
            ));
        }
        let mut paths: BTreeMap<FileRole, PathBuf> = BTreeMap::new();
        let mut archive_dir = None;
        let (check, reload): (&[&str], &[&str]) = match self.preset {
            None => {
                if self.dir.is_some() {
                    return Err("dir is only used with a preset; give file paths (cert, fullchain, key, …) or set preset".into());
                }
                (&[], &[])
            }
            Some(p) => {
                let dir = self.dir.as_ref().ok_or_else(|| {
                    format!(
                        "preset = \"{}\" needs dir = \"/path\" (where its files go)",
                        preset_name(p)
                    )
                })?;
                match p {
                    Preset::Nginx => {
                        paths.insert(FileRole::Fullchain, dir.join("fullchain.pem"));
                        paths.insert(FileRole::Key, dir.join("privkey.pem"));
                        (
                            &["/usr/sbin/nginx", "-t", "-q"],
                            &["/usr/sbin/nginx", "-s", "reload"],
                        )
                    }
                    Preset::Apache => {
                        paths.insert(FileRole::Cert, dir.join("cert.pem"));
                        paths.insert(FileRole::Chain, dir.join("chain.pem"));
                        paths.insert(FileRole::Key, dir.join("privkey.pem"));
                        (
                            &["/usr/sbin/apachectl", "configtest"],
                            &["/usr/sbin/apachectl", "graceful"],
                        )
                    }
                    Preset::Haproxy => {
                        paths.insert(FileRole::Combined, dir.join(format!("{stem}.pem")));
                        (
                            &[
                                "/usr/sbin/haproxy",
                                "-c",
                                "-q",
                                "-f",
                                "/etc/haproxy/haproxy.cfg",
                            ],
                            &["/bin/systemctl", "reload", "haproxy"],
                        )
                    }
                    Preset::Lego => {
                        let d = dir.join("certificates");
                        paths.insert(FileRole::Fullchain, d.join(format!("{stem}.crt")));
                        paths.insert(FileRole::Chain, d.join(format!("{stem}.issuer.crt")));
                        paths.insert(FileRole::Key, d.join(format!("{stem}.key")));
                        paths.insert(FileRole::Meta, d.join(format!("{stem}.json")));
                        (&[], &[])
                    }
                    Preset::Certbot => {
                        let live = dir.join("live").join(&stem);
                        paths.insert(FileRole::Cert, live.join("cert.pem"));
                        paths.insert(FileRole::Chain, live.join("chain.pem"));
                        paths.insert(FileRole::Fullchain, live.join("fullchain.pem"));
                        paths.insert(FileRole::Key, live.join("privkey.pem"));
                        archive_dir = Some(dir.join("archive").join(&stem));
                        (&[], &[])
                    }
                }
            }
        };
        for (role, custom) in [
            (FileRole::Cert, &self.cert),
            (FileRole::Chain, &self.chain),
            (FileRole::Fullchain, &self.fullchain),
            (FileRole::Key, &self.key),
            (FileRole::Combined, &self.combined),
        ] {
            if let Some(p) = custom {
                if archive_dir.is_some() {
                    return Err("the certbot preset fixes its paths (live/<name>/…); drop the custom paths or use another preset".into());
                }
                paths.insert(role, p.clone());
            }
        }
        let has_leaf = [FileRole::Cert, FileRole::Fullchain, FileRole::Combined]
            .iter()
            .any(|r| paths.contains_key(r));
        if !has_leaf {
            return Err(
                "needs a file for the certificate: cert, fullchain or combined (or a preset)"
                    .into(),
            );
        }
        if !paths.contains_key(&FileRole::Key) && !paths.contains_key(&FileRole::Combined) {
            return Err("needs key = \"/path\" (or combined, or a preset)".into());
        }
        for role in self.files.keys() {
            if !paths.contains_key(role) {
                return Err(format!(
                    "files.{} sets permissions for a file this target does not write",
                    role.as_str()
                ));
            }
        }
        let mut files = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (role, path) in paths {
            let role_name = role.as_str();
            if !path.is_absolute() {
                return Err(format!("{role_name} = {path:?} must be an absolute path"));
            }
            if path.file_name().is_none() {
                return Err(format!("{role_name} = {path:?} must name a file"));
            }
            if !seen.insert(path.clone()) {
                return Err(format!("{role_name} = {path:?} is used twice"));
            }
            let perms = self.files.get(&role).cloned().unwrap_or_default();
            let mode = match &perms.mode {
                None => role.default_mode(),
                Some(m) => parse_mode(m).map_err(|e| format!("files.{role_name}.mode: {e}"))?,
            };
            if role.secret() && mode & 0o007 != 0 {
                return Err(format!(
                    "files.{role_name}.mode = {:?} lets every user on the host read or write the private key; use \"0600\" or \"0640\" with a group",
                    perms.mode.unwrap_or_default()
                ));
            }
            if mode & 0o022 != 0 {
                return Err(format!(
                    "files.{role_name}.mode = {:?}: group or world write is not allowed",
                    perms.mode.unwrap_or_default()
                ));
            }
            let uid = match &perms.owner {
                None => None,
                Some(u) => Some(
                    ids.uid(u)
                        .map_err(|e| format!("files.{role_name}.owner: {e}"))?,
                ),
            };
            let gid = match &perms.group {
                None => None,
                Some(g) => Some(
                    ids.gid(g)
                        .map_err(|e| format!("files.{role_name}.group: {e}"))?,
                ),
            };
            files.push(TargetFile {
                role,
                path,
                mode,
                uid,
                gid,
            });
        }

        let check = match &self.check {
            Some(v) => v.clone(),
            None => check.iter().map(|s| (*s).to_owned()).collect(),
        };
        check_argv("check", &check)?;
        let reload = match (&self.reload, &self.reload_signal, &self.pid_file) {
            (Some(_), Some(_), _) => {
                return Err(
                    "set either reload (a command) or reload_signal + pid_file, not both".into(),
                )
            }
            (_, Some(sig), Some(pid)) => {
                let sig = sig.trim_start_matches("SIG").to_ascii_uppercase();
                if !SIGNALS.contains(&sig.as_str()) {
                    return Err(format!(
                        "reload_signal {sig:?} is not one of {}",
                        SIGNALS.join(", ")
                    ));
                }
                if !pid.is_absolute() {
                    return Err(format!("pid_file = {pid:?} must be an absolute path"));
                }
                Reload::Signal {
                    signal: sig,
                    pid_file: pid.clone(),
                }
            }
            (_, Some(_), None) => {
                return Err("reload_signal needs pid_file = \"/run/….pid\"".into())
            }
            (_, None, Some(_)) => return Err("pid_file is only used with reload_signal".into()),
            (Some(argv), None, None) => {
                check_argv("reload", argv)?;
                if argv.is_empty() {
                    Reload::None
                } else {
                    Reload::Command(argv.clone())
                }
            }
            (None, None, None) if reload.is_empty() => Reload::None,
            (None, None, None) => Reload::Command(reload.iter().map(|s| (*s).to_owned()).collect()),
        };
        if self.reload_timeout_secs == 0 || self.reload_timeout_secs > 3600 {
            return Err("reload_timeout_secs must be between 1 and 3600".into());
        }
        if self.verify_grace_secs == 0 || self.verify_grace_secs > 600 {
            return Err("verify_grace_secs must be between 1 and 600".into());
        }
        let verify = match &self.verify {
            None => ips.iter().map(|ip| SocketAddr::new(*ip, 443)).collect(),
            Some(list) => list
                .iter()
                .map(|s| {
                    s.parse::<SocketAddr>().map_err(|_| {
                        format!("verify: {s:?} is not an address with a port, e.g. \"203.0.113.10:443\" or \"[2001:db8::10]:443\"")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let store_dir = if archive_dir.is_some() {
            if self.store_dir.is_some() {
                return Err(
                    "the certbot preset keeps certbot's archive/ layout; drop store_dir".into(),
                );
            }
            None
        } else {
            let dir = match &self.store_dir {
                Some(d) => d.clone(),
                None => files
                    .iter()
                    .find(|f| {
                        matches!(
                            f.role,
                            FileRole::Cert | FileRole::Fullchain | FileRole::Combined
                        )
                    })
                    .and_then(|f| f.path.parent())
                    .map(|p| p.join(format!(".certfleet-{name}")))
                    .ok_or("cannot place the store: set store_dir")?,
            };
            if !dir.is_absolute() {
                return Err(format!("store_dir = {dir:?} must be an absolute path"));
            }
            if files.iter().any(|f| f.path.starts_with(&dir)) {
                return Err(format!(
                    "store_dir = {dir:?} must not contain the target's files"
                ));
            }
            Some(dir)
        };
        Ok(Target {
            name: name.to_owned(),
            files,
            archive_dir,
            store_dir,
            check,
            reload,
            reload_timeout: Duration::from_secs(self.reload_timeout_secs),
            verify,
            verify_grace: Duration::from_secs(self.verify_grace_secs),
            deploy_hook: DeployHook::resolve(
                self.deploy_hook.as_deref(),
                self.deploy_hook_timeout.as_deref(),
            )?,
        })
    }
}

fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Nginx => "nginx",
        Preset::Apache => "apache",
        Preset::Haproxy => "haproxy",
        Preset::Lego => "lego",
        Preset::Certbot => "certbot",
    }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check_argv(what: &str, argv: &[String]) -> Result<(), String> {
    if let Some(cmd) = argv.first() {
        if !Path::new(cmd).is_absolute() {
            return Err(format!(
                "{what} command {cmd:?} must be an absolute path (no shell, no PATH lookup)"
            ));
        }
    }
    Ok(())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return Err(format!("{s:?} is not an octal mode like \"0640\""));
    }
    let m = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{s:?} is not an octal mode like \"0640\""))?;
    if m > 0o777 {
        return Err(format!(
            "{s:?}: only permission bits (0000-0777) may be set"
        ));
    }
    Ok(m)
}

/// User and group names → ids (the system's databases; a table in tests).
trait IdLookup {
    fn uid(&self, name: &str) -> Result<u32, String>;
    fn gid(&self, name: &str) -> Result<u32, String>;
}

struct SystemIds;

impl IdLookup for SystemIds {
    fn uid(&self, name: &str) -> Result<u32, String> {
        if let Ok(n) = name.parse::<u32>() {
            return Ok(n);
        }
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            Ok(None) => Err(format!("no user {name:?} on this host")),
            Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
        }
    }
    fn gid(&self, name: &str) -> Result<u32, String> {
        if let Ok(n) = name.parse::<u32>() {
            return Ok(n);
        }
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(format!("no group {name:?} on this host")),
            Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table;
    impl IdLookup for Table {
        fn uid(&self, name: &str) -> Result<u32, String> {
            match name {
                "www" => Ok(33),
                _ => Err(format!("no user {name:?} on this host")),
            }
        }
        fn gid(&self, name: &str) -> Result<u32, String> {
            match name {
                "ssl-cert" => Ok(110),
                _ => Err(format!("no group {name:?} on this host")),
            }
        }
    }

    fn parse(t: &str) -> TargetConfig {
        toml::from_str(t).unwrap()
    }

    fn resolve(t: &str) -> Result<Target, String> {
        let ips: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        parse(t).resolve_with("web", &ips, &Table)
    }

    fn paths(t: &Target) -> Vec<(FileRole, String)> {
        t.files
            .iter()
            .map(|f| (f.role, f.path.display().to_string()))
            .collect()
    }

    #[test]
    fn presets_lay_out_files_and_commands() {
        let t = resolve("preset = \"nginx\"\ndir = \"/etc/nginx/tls\"").unwrap();
        assert_eq!(
            paths(&t),
            vec![
                (FileRole::Fullchain, "/etc/nginx/tls/fullchain.pem".into()),
                (FileRole::Key, "/etc/nginx/tls/privkey.pem".into()),
            ]
        );
        assert_eq!(t.check, vec!["/usr/sbin/nginx", "-t", "-q"]);
        assert_eq!(
            t.reload,
            Reload::Command(vec!["/usr/sbin/nginx".into(), "-s".into(), "reload".into()])
        );
        assert_eq!(
            t.verify,
            vec![
                "192.0.2.7:443".parse::<SocketAddr>().unwrap(),
                "[2001:db8::7]:443".parse().unwrap()
            ]
        );

        let t = resolve("preset = \"apache\"\ndir = \"/etc/apache2/tls\"").unwrap();
        assert_eq!(
            paths(&t).iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![FileRole::Cert, FileRole::Chain, FileRole::Key]
        );
        assert_eq!(t.check[1], "configtest");

        let t = resolve("preset = \"haproxy\"\ndir = \"/etc/haproxy/certs\"").unwrap();
        assert_eq!(
            paths(&t),
            vec![(FileRole::Combined, "/etc/haproxy/certs/web.pem".into())]
        );
        assert_eq!(t.files[0].mode, 0o600);

        let t = resolve("preset = \"lego\"\ndir = \"/var/lib/lego\"\nname = \"edge\"").unwrap();
        assert_eq!(
            paths(&t),
            vec![
                (
                    FileRole::Chain,
                    "/var/lib/lego/certificates/edge.issuer.crt".into()
                ),
                (
                    FileRole::Fullchain,
                    "/var/lib/lego/certificates/edge.crt".into()
                ),
                (FileRole::Key, "/var/lib/lego/certificates/edge.key".into()),
                (
                    FileRole::Meta,
                    "/var/lib/lego/certificates/edge.json".into()
                ),
            ]
        );
        assert_eq!(t.reload, Reload::None);

        let t = resolve("preset = \"certbot\"\ndir = \"/etc/letsencrypt\"").unwrap();
        assert_eq!(t.files.len(), 4);
        assert_eq!(
            t.archive_dir.as_deref(),
            Some(Path::new("/etc/letsencrypt/archive/web"))
        );
        assert!(t
            .files
            .iter()
            .all(|f| f.path.starts_with("/etc/letsencrypt/live/web")));
    }

    #[test]
    fn overrides_perms_and_reload_choices() {
        let t = resolve(
            r#"
preset = "nginx"
dir = "/etc/nginx/tls"
key = "/etc/ssl/private/web.key"
check = []
reload_signal = "SIGHUP"
pid_file = "/run/nginx.pid"
verify = ["192.0.2.7:8443"]
files.key = { owner = "www", group = "ssl-cert", mode = "0640" }
files.fullchain = { mode = "0444" }
"#,
        )
        .unwrap();
        let key = t.key_source().unwrap();
        assert_eq!(key.path, Path::new("/etc/ssl/private/web.key"));
        assert_eq!((key.uid, key.gid, key.mode), (Some(33), Some(110), 0o640));
        assert_eq!(t.leaf_source().unwrap().mode, 0o444);
        assert!(t.check.is_empty());
        assert_eq!(
            t.reload,
            Reload::Signal {
                signal: "HUP".into(),
                pid_file: "/run/nginx.pid".into()
            }
        );
        assert_eq!(t.verify.len(), 1);
        let t = resolve("fullchain = \"/x/f.pem\"\nkey = \"/x/k.pem\"\nverify = []").unwrap();
        assert!(t.verify.is_empty());
        assert_eq!(t.reload, Reload::None);
    }

    #[test]
    fn bad_targets_name_the_fix() {
        let cases = [
            ("preset = \"nginx\"", "needs dir"),
            ("dir = \"/x\"\nkey = \"/x/k\"", "only used with a preset"),
            ("key = \"/x/k\"", "needs a file for the certificate"),
            ("fullchain = \"/x/f\"", "needs key"),
            ("fullchain = \"x/f\"\nkey = \"/x/k\"", "absolute path"),
            ("fullchain = \"/x/f\"\nkey = \"/x/f\"", "used twice"),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nfiles.key = { mode = \"0644\" }",
                "every user",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nfiles.fullchain = { mode = \"0666\" }",
                "write is not allowed",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nfiles.key = { mode = \"rw\" }",
                "octal mode",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nfiles.key = { owner = \"nobody-here\" }",
                "no user",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nfiles.chain = { mode = \"0644\" }",
                "does not write",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nreload = [\"nginx\"]",
                "absolute path",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nreload_signal = \"HUP\"",
                "needs pid_file",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nreload_signal = \"KILL\"\npid_file = \"/p\"",
                "not one of",
            ),
            (
                "fullchain = \"/x/f\"\nkey = \"/x/k\"\nverify = [\"192.0.2.7\"]",
                "with a port",
            ),
            (
                "preset = \"certbot\"\ndir = \"/e\"\nkey = \"/x/k\"",
                "fixes its paths",
            ),
            (
                "preset = \"lego\"\ndir = \"/e\"\nname = \"../x\"",
                "letters, digits",
            ),
        ];
        for (text, want) in cases {
            let err = resolve(text).unwrap_err();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should contain {want:?}"
            );
        }
    }
}
