//! A fleet of namespace hosts: each [`FleetHost`] is a network namespace on a [`Lan`]
//! with its own IPv4 and IPv6 address, a real web server (nginx or apache) on port 443, and
//! a certfleet agent configured for one of the three HTTP-01 modes, its target pointing at
//! the web server's certificate files with the server's real config test and reload.
//! Optionally ([`HostSpec::with_tls_alpn`]) the agent also answers TLS-ALPN-01, standalone
//! on a port of its addresses (the web server's TLS moved off it with
//! [`HostSpec::with_https_port`]) or on loopback behind nginx's shipped ALPN front.
//!
//! Used by the fleet e2e tests and the fleet benchmark. Everything is behind guards: the
//! agent and web server die with their `FleetHost`, the namespace after them.
//!
//! DNS names: a [`HostSpec`] with [`HostSpec::with_names`] is made with
//! [`FleetHost::new_with_dns`], which publishes A + AAAA records for each name (pointing
//! at the host's bridge addresses) in a [`KnotServer`] before it returns — so before the
//! agent is enrolled or started.
//!
//! Several certificates: [`FleetHost::add_second_target`] starts a second web server in the
//! namespace (another port) with its own agent target; [`wait_all_served_n`] waits for
//! every certificate of every host.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::CertificateDer;

use crate::coordinator::{toml_path, toml_str, CertRow, Coordinator};
use crate::dns::{KnotServer, Record};
use crate::netns::{Lan, NsHost};
use crate::webserver::{CertPaths, Port80, Redirect, ServerKind, WebServer, WebServerOptions};
use crate::workdir::WorkDir;
use crate::{pki, tlsutil, Agent};

/// Where the agent's proxy-mode listener is, inside each namespace.
pub const PROXY_LISTEN: &str = "127.0.0.1:8402";
/// [`TlsAlpn::Front`]: the agent's `[tls_alpn01]` loopback `listen`, inside the namespace.
pub const ALPN_AGENT_LISTEN: &str = "127.0.0.1:8443";
/// [`TlsAlpn::Front`]: where nginx's own TLS server moves, behind the front.
pub const ALPN_WEB_LISTEN: &str = "127.0.0.1:8444";

/// How the agent answers TLS-ALPN-01, if at all (its `[tls_alpn01]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsAlpn {
    /// No `[tls_alpn01]`: the host offers HTTP-01 only.
    Off,
    /// `mode = "standalone"` on this port of the host's addresses (the web server must not
    /// hold it: see [`HostSpec::https_port`]).
    Standalone(u16),
    /// `mode = "loopback"` on [`ALPN_AGENT_LISTEN`], behind nginx running the shipped
    /// `deploy/nginx/acme-tls-alpn.conf` on port 443 of the host's addresses, its TLS
    /// server moved to [`ALPN_WEB_LISTEN`] (nginx only).
    Front,
}

/// How the agent answers HTTP-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// The agent binds port 80 itself (the web server does not use port 80).
    Standalone,
    /// The web server serves port 80 from a document root the agent writes into.
    Webroot,
    /// The web server forwards the challenge path to the agent on [`PROXY_LISTEN`].
    Proxy,
}

/// One host of a fleet.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    pub server: ServerKind,
    pub challenge: Challenge,
    /// The agent's reload does nothing (a web server that ignores the reload).
    pub reload_ignored: bool,
    /// `verify_grace_secs` of the target.
    pub verify_grace_secs: u64,
    /// A redirect on the web server's port 80.
    pub redirect: Redirect,
    /// DNS names (e.g. `host-1.example.test`) that get A + AAAA records for the host's
    /// addresses; needs [`FleetHost::new_with_dns`].
    pub names: Vec<String>,
    /// Key groups the agent takes part in (its `key_groups`).
    pub key_groups: Vec<String>,
    /// The web server's TLS port (443); the target's `verify` addresses follow it.
    pub https_port: u16,
    /// The agent's `[tls_alpn01]`.
    pub tls_alpn: TlsAlpn,
}

impl HostSpec {
    pub fn new(name: &str, server: ServerKind, challenge: Challenge) -> Self {
        Self {
            name: name.to_owned(),
            server,
            challenge,
            reload_ignored: false,
            verify_grace_secs: 10,
            redirect: Redirect::Off,
            names: Vec::new(),
            key_groups: Vec::new(),
            https_port: 443,
            tls_alpn: TlsAlpn::Off,
        }
    }

    /// The web server serves TLS on `port` instead of 443 (e.g. to leave 443 to the
    /// agent's standalone TLS-ALPN-01).
    pub fn with_https_port(mut self, port: u16) -> Self {
        self.https_port = port;
        self
    }

    /// The agent answers TLS-ALPN-01 this way.
    pub fn with_tls_alpn(mut self, tls_alpn: TlsAlpn) -> Self {
        self.tls_alpn = tls_alpn;
        self
    }

    /// Lets the agent share keys in these key groups (`key_groups` in its config).
    pub fn with_key_groups<S: AsRef<str>>(mut self, groups: &[S]) -> Self {
        self.key_groups = groups.iter().map(|g| g.as_ref().to_owned()).collect();
        self
    }

    /// Gives the host these DNS names (see [`FleetHost::new_with_dns`]).
    pub fn with_names<S: AsRef<str>>(mut self, names: &[S]) -> Self {
        self.names = names.iter().map(|n| n.as_ref().to_owned()).collect();
        self
    }
}

/// A namespace host with its web server (running) and agent (not yet enrolled).
/// Field order is drop order: agent, then web server, then the namespace.
pub struct FleetHost {
    pub agent: Agent,
    pub web: WebServer,
    pub ns: NsHost,
    pub spec: HostSpec,
    webroot: Option<WorkDir>,
}

impl FleetHost {
    /// Creates the namespace, starts the web server with a bootstrap certificate, and
    /// writes the agent's config. A spec with names needs [`Self::new_with_dns`].
    pub async fn new(lan: &Lan, spec: HostSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(
            spec.names.is_empty(),
            "{}: HostSpec names {:?} need a DNS server: use FleetHost::new_with_dns",
            spec.name,
            spec.names
        );
        Self::build(lan, spec).await
    }

    /// Like [`Self::new`], and publishes `spec.names` in `dns`: for each name one A and one
    /// AAAA record per bridge address of the host (TSIG-signed dynamic update), checked to
    /// resolve before this returns. The agent is not started yet.
    pub async fn new_with_dns(lan: &Lan, spec: HostSpec, dns: &KnotServer) -> anyhow::Result<Self> {
        let host = Self::build(lan, spec).await?;
        host.publish_names(dns).await?;
        Ok(host)
    }

    /// `spec.names` → A/AAAA records for the host's current addresses, in `dns`.
    async fn publish_names(&self, dns: &KnotServer) -> anyhow::Result<()> {
        let ips = self.ns.ips();
        let records: Vec<Record> = self
            .spec
            .names
            .iter()
            .flat_map(|n| Record::addresses(n, &ips))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        dns.add_records(&records)
            .await
            .with_context(|| format!("{}: publishing {:?}", self.spec.name, self.spec.names))?;
        for r in &records {
            let want = match r.data {
                crate::dns::RData::A(ip) => ip.to_string(),
                crate::dns::RData::Aaaa(ip) => ip.to_string(),
                _ => continue,
            };
            let got = dns.resolve(&r.name, r.data.rtype()).await?;
            anyhow::ensure!(
                got.values.contains(&want),
                "{}: {} {} does not resolve to {want} after the update: {got:?}",
                self.spec.name,
                r.name,
                r.data.rtype()
            );
        }
        Ok(())
    }

    /// The host's DNS names (empty unless made with [`Self::new_with_dns`]).
    pub fn names(&self) -> &[String] {
        &self.spec.names
    }

    async fn build(lan: &Lan, spec: HostSpec) -> anyhow::Result<Self> {
        let ns = lan.add_host(&spec.name)?;
        let ips = ns.ips();
        let webroot = match spec.challenge {
            Challenge::Webroot => {
                // The web server's workers must read it: not a 0700 temp dir.
                let dir = WorkDir::new(&format!("webroot-{}", spec.name))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
                Some(dir)
            }
            _ => None,
        };
        let port80 = match (&spec.challenge, &webroot) {
            (Challenge::Webroot, Some(dir)) => Port80::Webroot(dir.path().to_path_buf()),
            (Challenge::Proxy, _) => Port80::Proxy(PROXY_LISTEN.parse()?),
            _ => Port80::None,
        };
        let mut agent = Agent::in_netns(&spec.name, ns.ns_name(), ips.clone(), |_| String::new())?;
        let certs = CertPaths::in_dir(agent.tls_dir());
        let mut opts = WebServerOptions::new(spec.server, ips.clone(), certs)
            .port80(port80)
            .redirect(spec.redirect)
            .https_port(spec.https_port);
        if spec.tls_alpn == TlsAlpn::Front {
            opts = opts.alpn_front(ALPN_AGENT_LISTEN.parse()?, ALPN_WEB_LISTEN.parse()?);
        }
        let mut web = WebServer::new(&ns, opts)?;
        web.start()
            .await
            .with_context(|| format!("starting {:?} on {}", spec.server, spec.name))?;
        let body = agent_config_body(
            &spec,
            &web,
            webroot.as_ref().map(|w| w.path().to_path_buf()),
            agent.tls_dir(),
        );
        agent.set_netns_ips(ips, &body)?;
        Ok(Self {
            agent,
            web,
            ns,
            spec,
            webroot,
        })
    }

    /// The agent's `[http01]` and `[targets.default]` for the host as it is now.
    pub fn config_body(&self) -> String {
        agent_config_body(
            &self.spec,
            &self.web,
            self.webroot.as_ref().map(|w| w.path().to_path_buf()),
            self.agent.tls_dir(),
        )
    }

    /// Enrolls the agent (inside its namespace) with a fresh token, over the LAN.
    pub async fn enroll(&mut self, coord: &Coordinator, lan: &Lan) -> anyhow::Result<String> {
        let token = coord.create_token(None).await?;
        self.enroll_with_token(coord, lan, &token).await
    }

    /// Enrolls with a given (e.g. multi-use) token.
    pub async fn enroll_with_token(
        &mut self,
        coord: &Coordinator,
        lan: &Lan,
        token: &str,
    ) -> anyhow::Result<String> {
        let url = coord.url_at(IpAddr::V4(lan.gateway_v4()));
        let out = self.agent.enroll(&url, token, coord.ca_sha256()).await?;
        anyhow::ensure!(
            out.status.success(),
            "enroll {}: {}",
            self.spec.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(self.agent.id()?.to_owned())
    }

    /// Where clients reach the web server's TLS: each IP on [`HostSpec::https_port`]
    /// (through the front with [`TlsAlpn::Front`]).
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.web.https_addrs()
    }

    /// The leaf served on every address of the host right now (they must agree).
    pub async fn served_serial(&self) -> anyhow::Result<String> {
        let mut serials = Vec::new();
        for addr in self.https_addrs() {
            let leaf = tlsutil::served_leaf(addr)
                .await
                .with_context(|| format!("{}: TLS to {addr}", self.spec.name))?;
            serials.push(pki::leaf_info(&leaf)?.serial_hex);
        }
        serials.dedup();
        anyhow::ensure!(
            serials.len() == 1,
            "{}: addresses serve different certificates: {serials:?}",
            self.spec.name
        );
        Ok(serials.remove(0))
    }

    /// A second web server of the host's kind inside its namespace, on `port` of its
    /// addresses, reading the files of a new agent target `target` (`<tls dir>/<target>/`,
    /// the same preset, config test and reload of that server, verified on its
    /// addresses) — for a second certificate on the host (a target holds one). The caller
    /// keeps the returned server as long as the host. Before the agent starts.
    pub async fn add_second_target(
        &mut self,
        target: &str,
        port: u16,
    ) -> anyhow::Result<WebServer> {
        let dir = self.agent.tls_dir().join(target);
        std::fs::create_dir_all(&dir)?;
        let mut web = WebServer::new(
            &self.ns,
            WebServerOptions::new(self.spec.server, self.ns.ips(), CertPaths::in_dir(&dir))
                .https_port(port),
        )?;
        web.start().await.with_context(|| {
            format!(
                "starting a second {:?} on {}:{port}",
                self.spec.server, self.spec.name
            )
        })?;
        let preset = match self.spec.server {
            ServerKind::Nginx => "nginx",
            ServerKind::Apache => "apache",
        };
        let verify: Vec<String> = web.https_addrs().iter().map(ToString::to_string).collect();
        self.agent.append_config(&format!(
            "\n[targets.{target}]\npreset = \"{preset}\"\ndir = {dir}\nkey = {key}\ncheck = {check}\n\
             reload = {reload}\nverify = {verify}\nverify_grace_secs = {grace}\n",
            dir = toml_path(&dir),
            key = toml_path(&dir.join("key.pem")),
            check = argv_toml(&web.check_argv()),
            reload = argv_toml(&web.reload_argv()),
            verify = argv_toml(&verify),
            grace = self.spec.verify_grace_secs,
        ))?;
        Ok(web)
    }

    /// Every address of the host serves `row`'s certificate, whose chain verifies against
    /// `root` for that address, and whose SANs are exactly the host's IPs.
    pub async fn check_serves(
        &self,
        row: &CertRow,
        root: &CertificateDer<'static>,
    ) -> anyhow::Result<()> {
        let want = pki::normalize_serial(row.serial.as_deref().context("no serial")?);
        for addr in self.https_addrs() {
            let chain = tlsutil::served_chain(addr)
                .await
                .with_context(|| format!("{}: TLS to {addr}", self.spec.name))?;
            let leaf = pki::leaf_info(chain.first().context("empty chain")?)?;
            anyhow::ensure!(
                leaf.serial_hex == want,
                "{}: {addr} serves {} instead of {want}",
                self.spec.name,
                leaf.serial_hex
            );
            let ips: std::collections::BTreeSet<IpAddr> = self.ns.ips().into_iter().collect();
            anyhow::ensure!(
                leaf.ip_sans == ips && leaf.dns_sans.is_empty(),
                "{}: SANs {:?} are not exactly {ips:?}",
                self.spec.name,
                leaf.ip_sans
            );
            pki::verify_chain_for_ip(&chain, root, addr.ip())
                .with_context(|| format!("{}: chain served on {addr}", self.spec.name))?;
        }
        Ok(())
    }
}

fn argv_toml(argv: &[String]) -> String {
    format!(
        "[{}]",
        argv.iter().map(toml_str).collect::<Vec<_>>().join(", ")
    )
}

fn agent_config_body(
    spec: &HostSpec,
    web: &WebServer,
    webroot: Option<PathBuf>,
    tls_dir: &std::path::Path,
) -> String {
    let http01 = match (spec.challenge, webroot) {
        (Challenge::Standalone, _) => "mode = \"standalone\"\nport = 80\n".to_owned(),
        (Challenge::Webroot, Some(dir)) => {
            format!(
                "mode = \"webroot\"\nport = 80\nwebroot = {}\n",
                toml_path(&dir)
            )
        }
        (Challenge::Webroot, None) => "mode = \"webroot\"\n".to_owned(),
        (Challenge::Proxy, _) => {
            format!("mode = \"proxy\"\nport = 80\nlisten = \"{PROXY_LISTEN}\"\n")
        }
    };
    // Presets with the harness's file names and the per-namespace server's commands.
    let preset = match spec.server {
        ServerKind::Nginx => "nginx",
        ServerKind::Apache => "apache",
    };
    let reload = if spec.reload_ignored {
        vec!["/bin/true".to_owned()]
    } else {
        web.reload_argv()
    };
    let tls_alpn = match spec.tls_alpn {
        TlsAlpn::Off => String::new(),
        TlsAlpn::Standalone(port) => {
            format!("[tls_alpn01]\nmode = \"standalone\"\nport = {port}\n\n")
        }
        TlsAlpn::Front => {
            format!("[tls_alpn01]\nmode = \"loopback\"\nlisten = \"{ALPN_AGENT_LISTEN}\"\n\n")
        }
    };
    // The agent checks each IP:443 unless told otherwise.
    let verify = if spec.https_port == 443 {
        String::new()
    } else {
        let addrs: Vec<String> = web.https_addrs().iter().map(|a| a.to_string()).collect();
        format!("verify = {}\n", argv_toml(&addrs))
    };
    // Top-level keys come before the first table.
    let key_groups = if spec.key_groups.is_empty() {
        String::new()
    } else {
        format!("key_groups = {}\n\n", argv_toml(&spec.key_groups))
    };
    format!(
        "{key_groups}[http01]\n{http01}\n{tls_alpn}[targets.default]\npreset = \"{preset}\"\ndir = {dir}\nkey = {key}\n\
         check = {check}\nreload = {reload}\n{verify}verify_grace_secs = {grace}\n",
        dir = toml_path(tls_dir),
        key = toml_path(&tls_dir.join("key.pem")),
        check = argv_toml(&web.check_argv()),
        reload = argv_toml(&reload),
        grace = spec.verify_grace_secs,
    )
}

/// Polls until every host's certificate is `served` (and, with `distinct_from`, not one
/// of those serials). Fails early if an agent died; the error shows the last rows.
pub async fn wait_all_served(
    coord: &Coordinator,
    hosts: &mut [&mut FleetHost],
    timeout: Duration,
) -> anyhow::Result<Vec<CertRow>> {
    wait_all_served_n(coord, hosts, 1, timeout).await
}

/// Polls until every host has `per_host` certificates `served` (hosts with several
/// certificates); returns those rows, `per_host` per host in host order. Fails early if
/// an agent died; the error shows the rows not served yet.
pub async fn wait_all_served_n(
    coord: &Coordinator,
    hosts: &mut [&mut FleetHost],
    per_host: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<CertRow>> {
    let start = std::time::Instant::now();
    loop {
        for h in hosts.iter_mut() {
            if let Some(child) = h.agent.child() {
                if let Some(st) = child.try_wait()? {
                    anyhow::bail!("agent {} exited: {st}\n{}", h.spec.name, h.agent.logs());
                }
            }
        }
        let rows = coord.certs().await.unwrap_or_default();
        let mut out = Vec::new();
        let mut done = 0;
        for h in hosts.iter() {
            let id = h.agent.host_id().unwrap_or_default();
            let served: Vec<&CertRow> = rows
                .iter()
                .filter(|r| r.host_id == id && r.state == "served")
                .take(per_host)
                .collect();
            if served.len() == per_host {
                done += 1;
            }
            out.extend(served.into_iter().cloned());
        }
        if done == hosts.len() {
            return Ok(out);
        }
        if start.elapsed() > timeout {
            let mine: Vec<&CertRow> = rows.iter().filter(|r| r.state != "served").collect();
            anyhow::bail!(
                "{done} of {} hosts with {per_host} certificate(s) served after {timeout:?}; \
                 the others: {mine:#?}",
                hosts.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
