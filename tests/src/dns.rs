//! [`KnotServer`]: a real authoritative DNS server (Knot DNS, Debian `knot`) for one test.
//!
//! Each instance runs its own `knotd` in a temp dir, on a random `127.X.Y.Z` address and a
//! free port (UDP and TCP), serving one or more zones (SOA, NS and the records given at
//! start). A TSIG key (fresh per instance; hmac-sha256 unless `tsig_algorithm` says
//! otherwise) may send dynamic updates (RFC 2136) to every zone (or to `update_zones`
//! only); the changes live in Knot's
//! journal (`zonefile-sync: -1`), the zone files are never rewritten.
//!
//! Changes while running go through `knsupdate` (Debian `knot-dnsutils`) signed with that
//! key — the same path an ACME DNS-01 client (RFC 2136 + TSIG) takes, so the key and the
//! update ACL are exercised by every change, not bypassed as `knotc zone-set` over the
//! control socket would. [`KnotServer::resolve`] asks with `kdig` (no recursion) and
//! reports the answer, the response code and the AA flag.
//!
//! Pebble resolves through it with `PebbleOptions::dns_server` (`pebble -dnsserver`).
//! The process is a [`ChildGuard`]: killed by PID on drop (success, failure, panic),
//! its log dumped when a test panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use rand::RngCore as _;

use crate::process::{describe_output, run_output, ChildGuard};
use crate::workdir::WorkDir;

/// The first zone every default [`KnotOptions`] serves.
pub const ZONE: &str = "example.test";
/// A second zone of the default [`KnotOptions`] (names in two zones, one server).
pub const SECOND_ZONE: &str = "certfleet.test";
/// TTL of the records the harness writes (short: tests change them).
pub const TTL: u32 = 60;
/// The TSIG key's name in knot's config and in every update.
pub const TSIG_KEY_NAME: &str = "certfleet-update";

const START_TIMEOUT: Duration = Duration::from_secs(15);
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
const INSTALL_HINT: &str = "install it with `apt-get install -y knot knot-dnsutils`";

/// The data of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// One character-string (at most 255 bytes, printable ASCII).
    Txt(String),
    /// Target name (absolute; a trailing dot is added when missing).
    Cname(String),
}

impl RData {
    /// The record type's mnemonic (`A`, `AAAA`, `TXT`, `CNAME`).
    pub fn rtype(&self) -> &'static str {
        match self {
            Self::A(_) => "A",
            Self::Aaaa(_) => "AAAA",
            Self::Txt(_) => "TXT",
            Self::Cname(_) => "CNAME",
        }
    }

    /// Presentation format, as in a zone file and in `kdig`'s answer.
    fn presentation(&self) -> anyhow::Result<String> {
        Ok(match self {
            Self::A(ip) => ip.to_string(),
            Self::Aaaa(ip) => ip.to_string(),
            Self::Txt(s) => {
                anyhow::ensure!(
                    s.len() <= 255 && s.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "TXT value must be at most 255 printable ASCII bytes: {s:?}"
                );
                format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
            }
            Self::Cname(target) => fqdn(target)?,
        })
    }
}

/// One resource record: an owner name (absolute, trailing dot optional), a TTL, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

impl Record {
    pub fn new(name: &str, data: RData) -> Self {
        Self {
            name: name.to_owned(),
            ttl: TTL,
            data,
        }
    }

    /// An A or AAAA record for `ip`.
    pub fn address(name: &str, ip: IpAddr) -> Self {
        Self::new(
            name,
            match ip {
                IpAddr::V4(v4) => RData::A(v4),
                IpAddr::V6(v6) => RData::Aaaa(v6),
            },
        )
    }

    /// One A/AAAA record per address.
    pub fn addresses(name: &str, ips: &[IpAddr]) -> Vec<Self> {
        ips.iter().map(|ip| Self::address(name, *ip)).collect()
    }

    pub fn txt(name: &str, value: &str) -> Self {
        Self::new(name, RData::Txt(value.to_owned()))
    }

    /// `NAME. TTL TYPE DATA`, the shape of a zone file line and of `update add`.
    fn line(&self) -> anyhow::Result<String> {
        Ok(format!(
            "{} {} {} {}",
            fqdn(&self.name)?,
            self.ttl,
            self.data.rtype(),
            self.data.presentation()?
        ))
    }
}

/// The TSIG key allowed to update every zone. `Debug` does not show the secret.
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    /// `hmac-sha256` unless [`KnotOptions::tsig_algorithm`] says otherwise.
    pub algorithm: &'static str,
    /// Base64 of 32 random bytes.
    pub secret: String,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What to serve.
#[derive(Debug, Clone)]
pub struct KnotOptions {
    /// Zone apexes (e.g. `example.test`). Each gets SOA, `NS ns1.<zone>` and
    /// `ns1.<zone> A <server address>`.
    pub zones: Vec<String>,
    /// Records at start; each must be inside one of `zones`.
    pub records: Vec<Record>,
    /// The `knotd` binary (default: env `KNOTD_BIN`, else `/usr/sbin/knotd` where it
    /// exists — not on every PATH — else `knotd` on PATH).
    pub binary: Option<PathBuf>,
    /// The TSIG key's algorithm: `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: &'static str,
    /// The port (UDP and TCP) on its random `127.X.Y.Z`; default a free one. Port 53 is
    /// for clients that cannot be given a port (acme2certifier's `dns_server_list`).
    pub port: Option<u16>,
    /// The zones the TSIG key may update; default all. Updates to the others are refused
    /// (NOTAUTH), as for a DNS-01 client whose key is limited to a validation zone.
    pub update_zones: Option<Vec<String>>,
}

impl Default for KnotOptions {
    fn default() -> Self {
        Self {
            zones: vec![ZONE.to_owned(), SECOND_ZONE.to_owned()],
            records: Vec::new(),
            binary: None,
            tsig_algorithm: "hmac-sha256",
            port: None,
            update_zones: None,
        }
    }
}

/// One `kdig` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, ...
    pub rcode: String,
    /// The AA flag: the server answered as the zone's authority.
    pub authoritative: bool,
    /// Data of the answer records of the asked type and name, in presentation format
    /// (TXT values quoted), sorted.
    pub values: Vec<String>,
}

/// A running `knotd`, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct KnotServer {
    // Field order is drop order: the process dies before its directory goes.
    child: ChildGuard,
    addr: SocketAddr,
    zones: Vec<String>,
    tsig: TsigKey,
    key_file: PathBuf,
    dir: WorkDir,
}

impl KnotServer {
    /// `example.test` and `certfleet.test`, no records beyond SOA/NS.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(KnotOptions::default()).await
    }

    pub async fn start_with(opts: KnotOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(!opts.zones.is_empty(), "KnotOptions: no zones");
        anyhow::ensure!(
            ["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&opts.tsig_algorithm),
            "KnotOptions: tsig_algorithm {:?} is not hmac-sha256/384/512",
            opts.tsig_algorithm
        );
        let zones: Vec<String> = opts
            .zones
            .iter()
            .map(|z| Ok(fqdn(z)?.trim_end_matches('.').to_ascii_lowercase()))
            .collect::<anyhow::Result<_>>()?;
        let dir = WorkDir::new("knot")?;
        let addr = pick_address(opts.port)?;
        let tsig = TsigKey {
            name: TSIG_KEY_NAME.to_owned(),
            algorithm: opts.tsig_algorithm,
            secret: {
                let mut raw = [0u8; 32];
                rand::rng().fill_bytes(&mut raw);
                base64::engine::general_purpose::STANDARD.encode(raw)
            },
        };

        let mut by_zone: Vec<Vec<&Record>> = vec![Vec::new(); zones.len()];
        for r in &opts.records {
            by_zone[zone_index(&zones, &r.name)?].push(r);
        }
        for (zone, records) in zones.iter().zip(&by_zone) {
            let text = zone_file(zone, addr.ip(), records)?;
            std::fs::write(dir.join(format!("{zone}.zone")), text)?;
        }
        std::fs::create_dir(dir.join("db"))?;
        let conf = dir.join("knot.conf");
        let updatable: Vec<String> = match &opts.update_zones {
            None => zones.clone(),
            Some(u) => u
                .iter()
                .map(|z| Ok(fqdn(z)?.trim_end_matches('.').to_ascii_lowercase()))
                .collect::<anyhow::Result<_>>()?,
        };
        for z in &updatable {
            anyhow::ensure!(
                zones.contains(z),
                "KnotOptions: update zone {z} is not served"
            );
        }
        write_secret_file(
            &conf,
            &knot_conf(dir.path(), addr, &zones, &updatable, &tsig),
        )?;
        let key_file = dir.join("update.tsig");
        write_secret_file(
            &key_file,
            &format!("{}:{}:{}\n", tsig.algorithm, tsig.name, tsig.secret),
        )?;

        let binary = opts
            .binary
            .clone()
            .or_else(|| std::env::var_os("KNOTD_BIN").map(PathBuf::from))
            .or_else(|| {
                let packaged = PathBuf::from("/usr/sbin/knotd");
                packaged.exists().then_some(packaged)
            })
            .unwrap_or_else(|| PathBuf::from("knotd"));
        let mut cmd = Command::new(&binary);
        cmd.arg("-c").arg(&conf).current_dir(dir.path());
        let child = ChildGuard::spawn("knotd", &mut cmd, dir.path())
            .with_context(|| format!("starting {} ({INSTALL_HINT})", binary.display()))?;
        let mut server = Self {
            child,
            addr,
            zones,
            tsig,
            key_file,
            dir,
        };
        server.wait_ready(START_TIMEOUT).await?;
        Ok(server)
    }

    /// Waits until every zone's SOA is answered authoritatively; fails early (with the
    /// log) when knotd exits or reports a zone it could not load.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                anyhow::bail!(
                    "knotd exited during startup ({st}); its log:\n{}",
                    self.child.logs()
                );
            }
            let log = self.child.logs();
            if let Some(line) = log.lines().find(|l| {
                (l.contains("error:") || l.contains("critical:"))
                    && self.zones.iter().any(|z| l.contains(&format!("[{z}.]")))
            }) {
                anyhow::bail!("knotd could not load a zone: {line}\nits log:\n{log}");
            }
            let mut ready = true;
            for zone in &self.zones {
                match self.resolve(zone, "SOA").await {
                    Ok(l) if l.rcode == "NOERROR" && l.authoritative && !l.values.is_empty() => {}
                    _ => ready = false,
                }
            }
            if ready {
                return Ok(());
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "knotd on {} did not answer SOA for {:?} within {timeout:?}; its log:\n{log}",
                    self.addr,
                    self.zones
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where it answers (UDP and TCP): give this to `pebble -dnsserver`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone apexes, without trailing dot.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The key that may update every zone (for a DNS-01 client).
    pub fn tsig_key(&self) -> &TsigKey {
        &self.tsig
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn child(&self) -> &ChildGuard {
        &self.child
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds records with a TSIG-signed dynamic update (one update per zone).
    pub async fn add_records(&self, records: &[Record]) -> anyhow::Result<()> {
        self.update("add", records).await
    }

    /// Deletes exactly these records (name, type and data) with a TSIG-signed update.
    pub async fn remove_records(&self, records: &[Record]) -> anyhow::Result<()> {
        self.update("delete", records).await
    }

    async fn update(&self, verb: &str, records: &[Record]) -> anyhow::Result<()> {
        let mut script = format!("server {} {}\n", self.addr.ip(), self.addr.port());
        for (i, zone) in self.zones.iter().enumerate() {
            let mut lines = Vec::new();
            for r in records {
                if zone_index(&self.zones, &r.name)? == i {
                    lines.push(format!("update {verb} {}\n", r.line()?));
                }
            }
            if !lines.is_empty() {
                script.push_str(&format!("zone {zone}.\n"));
                script.extend(lines);
                script.push_str("send\n");
            }
        }
        let script_path = self.dir.join("update.txt");
        std::fs::write(&script_path, &script)?;
        let mut cmd = tokio::process::Command::new("knsupdate");
        cmd.arg("-t")
            .arg("5")
            .arg("-k")
            .arg(&self.key_file)
            .arg(&script_path);
        let out = run_output(&mut cmd, TOOL_TIMEOUT)
            .await
            .with_context(|| format!("running knsupdate ({INSTALL_HINT})"))?;
        anyhow::ensure!(
            out.status.success(),
            "knsupdate {verb} refused or failed: {}\nscript:\n{script}",
            describe_output(&out)
        );
        Ok(())
    }

    /// Asks the server (`kdig`, no recursion) for `name`'s records of type `rtype`.
    pub async fn resolve(&self, name: &str, rtype: &str) -> anyhow::Result<Lookup> {
        let name = fqdn(name)?;
        let mut cmd = tokio::process::Command::new("kdig");
        cmd.arg(format!("@{}", self.addr.ip()))
            .arg("-p")
            .arg(self.addr.port().to_string())
            .args(["+norecurse", "+timeout=2", "+retry=1", "-t", rtype])
            .arg(&name);
        let out = run_output(&mut cmd, TOOL_TIMEOUT)
            .await
            .with_context(|| format!("running kdig ({INSTALL_HINT})"))?;
        anyhow::ensure!(
            out.status.success(),
            "kdig {name} {rtype} @{} failed: {}",
            self.addr,
            describe_output(&out)
        );
        parse_kdig(&String::from_utf8_lossy(&out.stdout), &name, rtype)
    }

    /// Stops knotd with SIGTERM (SIGKILL after 5 s). Dropping the server kills it too.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.child.stop(Duration::from_secs(5)).await?;
        Ok(())
    }
}

/// `name` lowercased with exactly one trailing dot; refuses what is not a plain hostname
/// (the harness writes it into zone files and update scripts).
fn fqdn(name: &str) -> anyhow::Result<String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    anyhow::ensure!(
        !bare.is_empty()
            && bare.split('.').all(|label| {
                label == "*"
                    || (!label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            }),
        "not a DNS name the harness can write: {name:?}"
    );
    Ok(format!("{}.", bare.to_ascii_lowercase()))
}

/// The index of the zone (longest apex) that contains `name`.
fn zone_index(zones: &[String], name: &str) -> anyhow::Result<usize> {
    let name = fqdn(name)?;
    let name = name.trim_end_matches('.');
    zones
        .iter()
        .enumerate()
        .filter(|(_, z)| name == z.as_str() || name.ends_with(&format!(".{z}")))
        .max_by_key(|(_, z)| z.len())
        .map(|(i, _)| i)
        .with_context(|| format!("{name} is in none of the served zones {zones:?}"))
}

/// `port` (default a free one) on a random `127.X.Y.Z`, bindable for both UDP and TCP.
pub(crate) fn pick_address(port: Option<u16>) -> anyhow::Result<SocketAddr> {
    for _ in 0..16 {
        let port = match port {
            Some(p) => p,
            None => crate::net::free_port()?,
        };
        let ip = crate::net::random_loopback_v4(port)?;
        if UdpSocket::bind((ip, port)).is_ok() {
            return Ok(SocketAddr::new(IpAddr::V4(ip), port));
        }
    }
    anyhow::bail!("no 127.X.Y.Z address with a port free for both UDP and TCP after 16 tries")
}

fn zone_file(zone: &str, ns_ip: IpAddr, records: &[&Record]) -> anyhow::Result<String> {
    let mut text = format!(
        "$TTL {TTL}\n\
         {zone}. SOA ns1.{zone}. hostmaster.{zone}. 1 3600 900 604800 {TTL}\n\
         {zone}. NS ns1.{zone}.\n\
         {}\n",
        Record::address(&format!("ns1.{zone}"), ns_ip).line()?
    );
    for r in records {
        text.push_str(&r.line()?);
        text.push('\n');
    }
    Ok(text)
}

fn knot_conf(
    dir: &Path,
    addr: SocketAddr,
    zones: &[String],
    updatable: &[String],
    tsig: &TsigKey,
) -> String {
    let d = dir.display();
    let mut conf = format!(
        "server:\n    listen: {ip}@{port}\n    rundir: \"{d}\"\n\
         log:\n  - target: stderr\n    any: info\n\
         database:\n    storage: \"{d}/db\"\n\
         key:\n  - id: {key}\n    algorithm: {alg}\n    secret: {secret}\n\
         acl:\n  - id: update\n    key: {key}\n    action: update\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    \
         zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: all\n\
         zone:\n",
        ip = addr.ip(),
        port = addr.port(),
        key = tsig.name,
        alg = tsig.algorithm,
        secret = tsig.secret,
    );
    for z in zones {
        conf.push_str(&format!("  - domain: {z}\n    file: \"{z}.zone\"\n"));
        if updatable.contains(z) {
            conf.push_str("    acl: update\n");
        }
    }
    conf
}

/// Writes a file readable by its owner only (it holds the TSIG secret).
fn write_secret_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Reads `kdig`'s default output: the status and flags of the header and the answer
/// records for `name`/`rtype`.
fn parse_kdig(out: &str, name: &str, rtype: &str) -> anyhow::Result<Lookup> {
    let header = out
        .lines()
        .find(|l| l.contains("->>HEADER<<-"))
        .with_context(|| format!("kdig printed no header:\n{out}"))?;
    let rcode = header
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("no status in kdig header {header:?}"))?;
    let authoritative = out
        .lines()
        .find_map(|l| l.strip_prefix(";; Flags: "))
        .and_then(|f| f.split(';').next())
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == "aa"));
    let mut values = Vec::new();
    let mut in_answer = false;
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
            continue;
        }
        if in_answer && (line.trim().is_empty() || line.starts_with(";;")) {
            break;
        }
        if in_answer {
            // NAME TTL CLASS TYPE DATA...
            let mut parts = line.split_whitespace();
            let (Some(owner), Some(_ttl), Some(_class), Some(ty)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if owner.eq_ignore_ascii_case(name) && ty.eq_ignore_ascii_case(rtype) {
                values.push(parts.collect::<Vec<_>>().join(" "));
            }
        }
    }
    values.sort();
    Ok(Lookup {
        rcode,
        authoritative,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_made_absolute() {
        assert_eq!(fqdn("Host-1.Example.test").unwrap(), "host-1.example.test.");
        assert_eq!(fqdn("a.test.").unwrap(), "a.test.");
        assert_eq!(fqdn("*.a.test").unwrap(), "*.a.test.");
        for bad in [
            "",
            ".",
            "a..test",
            "a b.test",
            "a\nupdate delete x",
            "x;y.test",
            "a*.test",
        ] {
            assert!(fqdn(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_go_to_the_longest_matching_zone() {
        let zones = vec!["test".to_owned(), "example.test".to_owned()];
        assert_eq!(zone_index(&zones, "a.example.test").unwrap(), 1);
        assert_eq!(zone_index(&zones, "example.test").unwrap(), 1);
        assert_eq!(zone_index(&zones, "other.test").unwrap(), 0);
        assert_eq!(zone_index(&zones, "badexample.test").unwrap(), 0);
        let err = zone_index(&zones[1..], "x.org").unwrap_err().to_string();
        assert!(err.contains("none of the served zones"), "{err}");
    }

    #[test]
    fn txt_values_are_quoted_and_bounded() {
        assert_eq!(
            RData::Txt(r#"a"b\c"#.to_owned()).presentation().unwrap(),
            r#""a\"b\\c""#
        );
        assert!(RData::Txt("x".repeat(256)).presentation().is_err());
        assert!(RData::Txt("a\nb".to_owned()).presentation().is_err());
    }

    #[test]
    fn kdig_output_is_read() {
        let out = ";; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 7295\n\
            ;; Flags: qr aa; QUERY: 1; ANSWER: 2; AUTHORITY: 0; ADDITIONAL: 0\n\n\
            ;; QUESTION SECTION:\n;; www.example.test.   \t\tIN\tA\n\n\
            ;; ANSWER SECTION:\nwww.example.test.   \t60\tIN\tA\t10.1.2.4\n\
            www.example.test.   \t60\tIN\tA\t10.1.2.3\n\n;; Received 50 B\n";
        let l = parse_kdig(out, "www.example.test.", "A").unwrap();
        assert_eq!(l.rcode, "NOERROR");
        assert!(l.authoritative);
        assert_eq!(l.values, vec!["10.1.2.3", "10.1.2.4"]);
        let nx = ";; ->>HEADER<<- opcode: QUERY; status: NXDOMAIN; id: 1\n\
            ;; Flags: qr rd; QUERY: 1; ANSWER: 0; AUTHORITY: 1; ADDITIONAL: 0\n";
        let l = parse_kdig(nx, "x.example.test.", "A").unwrap();
        assert_eq!((l.rcode.as_str(), l.authoritative), ("NXDOMAIN", false));
        assert!(l.values.is_empty());
        assert!(parse_kdig("garbage", "x.", "A").is_err());
    }

    #[test]
    fn the_tsig_secret_is_not_in_debug_output() {
        let k = TsigKey {
            name: "k".to_owned(),
            algorithm: "hmac-sha256",
            secret: "c2VjcmV0LXNlY3JldA==".to_owned(),
        };
        assert!(!format!("{k:?}").contains("c2VjcmV0"));
    }
}
