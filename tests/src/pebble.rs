//! [`Pebble`]: a real pebble ACME server for one test.
//!
//! The Debian package ships no certificates, so each instance makes its own listener CA
//! and certificate (rcgen; SANs localhost, 127.0.0.1, ::1), writes its config into its
//! own temp dir with freshly picked ports, and starts `pebble -config FILE`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::CertificateDer;

use crate::process::ChildGuard;
use crate::tlsutil;
use crate::workdir::WorkDir;

/// Knobs for one pebble instance.
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// Environment for the pebble process. Defaults: `PEBBLE_VA_NOSLEEP=1`,
    /// `PEBBLE_WFE_NONCEREJECT=0`, `PEBBLE_AUTHZREUSE=0`. Entries here override/add.
    pub env: BTreeMap<String, String>,
    /// `certificateValidityPeriod` in seconds (pebble's default when `None`).
    pub certificate_validity_secs: Option<u64>,
    /// Path of the pebble binary (default: `pebble` on PATH, or env `PEBBLE_BIN`).
    pub binary: Option<PathBuf>,
    /// `externalAccountBindingRequired` (default false).
    pub eab_required: bool,
    /// `externalAccountMACKeys`: kid → base64url HMAC key (default none).
    pub eab_keys: BTreeMap<String, String>,
    /// `httpPort`/`tlsPort` the validator connects to (default: free high ports, for
    /// loopback hosts). Namespace hosts use the real 80/443.
    pub validation_ports: Option<(u16, u16)>,
    /// `-dnsserver ADDR`: pebble resolves DNS identifiers (A/AAAA for HTTP-01 and
    /// TLS-ALPN-01, TXT for DNS-01) through this server, e.g. a
    /// [`crate::dns::KnotServer`]. `None`: the system resolver (pebble's default).
    pub dns_server: Option<SocketAddr>,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        let env = [
            ("PEBBLE_VA_NOSLEEP", "1"),
            ("PEBBLE_WFE_NONCEREJECT", "0"),
            ("PEBBLE_AUTHZREUSE", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            env,
            certificate_validity_secs: None,
            binary: None,
            eab_required: false,
            eab_keys: BTreeMap::new(),
            validation_ports: None,
            dns_server: None,
        }
    }
}

impl PebbleOptions {
    /// `PEBBLE_AUTHZREUSE=pct`: the percentage of new orders for which pebble reuses a
    /// valid authorization of the same account instead of asking for a new validation
    /// (Let's Encrypt reuses them for 30 days; 100 = always, 0 = never).
    pub fn with_authz_reuse(mut self, pct: u8) -> Self {
        self.env
            .insert("PEBBLE_AUTHZREUSE".to_owned(), pct.min(100).to_string());
        self
    }
}

#[derive(Debug)]
pub struct Pebble {
    // Field order matters for drop: the processes die before their directory goes.
    /// The current (or last, when stopped) pebble process.
    child: ChildGuard,
    /// Earlier processes (before [`Pebble::restart`]), kept for their logs.
    past_runs: Vec<ChildGuard>,
    runs: u32,
    stopped: bool,
    binary: PathBuf,
    config_path: PathBuf,
    env: BTreeMap<String, String>,
    dns_server: Option<SocketAddr>,
    listen_port: u16,
    mgmt_port: u16,
    http_port: u16,
    tls_port: u16,
    ca_pem_path: PathBuf,
    ca_der: CertificateDer<'static>,
    dir: WorkDir,
}

impl Pebble {
    /// Starts pebble with the default options.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(PebbleOptions::default()).await
    }

    pub async fn start_with(opts: PebbleOptions) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let dir = WorkDir::new("pebble")?;
        let (ca_pem, cert_pem, key_pem, ca_der) = make_listener_pki()?;
        let ca_pem_path = dir.join("listener-ca.pem");
        std::fs::write(&ca_pem_path, ca_pem)?;
        std::fs::write(dir.join("cert.pem"), cert_pem)?;
        std::fs::write(dir.join("key.pem"), key_pem)?;

        let ports = crate::net::free_ports(4)?;
        let (listen_port, mgmt_port, mut http_port, mut tls_port) =
            (ports[0], ports[1], ports[2], ports[3]);
        if let Some((http, tls)) = opts.validation_ports {
            (http_port, tls_port) = (http, tls);
        }
        let mut inner = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": opts.eab_required,
        });
        if !opts.eab_keys.is_empty() {
            inner["externalAccountMACKeys"] = serde_json::to_value(&opts.eab_keys)?;
        }
        if let Some(v) = opts.certificate_validity_secs {
            inner["certificateValidityPeriod"] = v.into();
        }
        let config_path = dir.join("pebble-config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&serde_json::json!({ "pebble": inner }))?,
        )?;

        let binary = opts
            .binary
            .clone()
            .or_else(|| std::env::var_os("PEBBLE_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("pebble"));
        let child = spawn_pebble(
            "pebble",
            &binary,
            &config_path,
            &opts.env,
            opts.dns_server,
            dir.path(),
        )?;
        let mut pebble = Self {
            child,
            past_runs: Vec::new(),
            runs: 1,
            stopped: false,
            binary,
            config_path,
            env: opts.env.clone(),
            dns_server: opts.dns_server,
            listen_port,
            mgmt_port,
            http_port,
            tls_port,
            ca_pem_path,
            ca_der,
            dir,
        };
        pebble.wait_ready(Duration::from_secs(20)).await?;
        Ok(pebble)
    }

    /// Kills the pebble process (SIGKILL: a CA outage), keeping its directory, ports and
    /// listener certificate for [`Pebble::restart`]. Idempotent.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.stopped {
            self.child.kill().await?;
            self.stopped = true;
        }
        Ok(())
    }

    /// Starts a new pebble process (stopping the running one first) with the same config:
    /// same ports, same listener certificate and environment. Pebble keeps nothing between
    /// runs: accounts, orders and its issuing CA are new.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.runs += 1;
        let name = format!("pebble-run-{}", self.runs);
        let child = spawn_pebble(
            &name,
            &self.binary,
            &self.config_path,
            &self.env,
            self.dns_server,
            self.dir.path(),
        )?;
        let old = std::mem::replace(&mut self.child, child);
        self.past_runs.push(old);
        self.stopped = false;
        self.wait_ready(Duration::from_secs(20)).await
    }

    /// Whether [`Pebble::stop`] was called without a [`Pebble::restart`] since.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// stdout+stderr of every pebble process so far, in order.
    pub fn logs(&self) -> String {
        self.past_runs
            .iter()
            .chain(std::iter::once(&self.child))
            .map(ChildGuard::logs)
            .collect()
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.listen_port);
        let roots = vec![self.ca_der.clone()];
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.child.dump_logs();
                anyhow::bail!("pebble exited during startup: {st}");
            }
            if let Ok((200, _)) = tlsutil::https_get(addr, "/dir", &roots).await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                self.child.dump_logs();
                anyhow::bail!("pebble did not answer https://{addr}/dir within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// The listener CA (PEM file): trust root for talking to pebble's ACME API.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// The listener CA, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The port pebble's validator connects to for HTTP-01, on every identifier.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    pub fn management_port(&self) -> u16 {
        self.mgmt_port
    }

    pub fn child(&self) -> &ChildGuard {
        &self.child
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pebble's issuing root (PEM) from the management interface — regenerated on every
    /// start, so chains must be verified against this, fetched from the running instance.
    pub async fn issuing_root_pem(&self) -> anyhow::Result<String> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.mgmt_port);
        let (status, body) =
            tlsutil::https_get(addr, "/roots/0", std::slice::from_ref(&self.ca_der)).await?;
        anyhow::ensure!(status == 200, "GET /roots/0 -> {status}");
        Ok(String::from_utf8(body.to_vec())?)
    }

    /// Pebble's view of a certificate (management API `/cert-status-by-serial/<hex>`): the
    /// JSON it returns, which has `"Status": "Valid"` or `"Revoked"`.
    pub async fn cert_status(&self, serial_hex: &str) -> anyhow::Result<serde_json::Value> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.mgmt_port);
        let path = format!("/cert-status-by-serial/{serial_hex}");
        let (status, body) =
            tlsutil::https_get(addr, &path, std::slice::from_ref(&self.ca_der)).await?;
        anyhow::ensure!(
            status == 200,
            "GET {path} -> {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(serde_json::from_slice(&body)?)
    }

    /// The issuing root, DER.
    pub async fn issuing_root_der(&self) -> anyhow::Result<CertificateDer<'static>> {
        let pem = self.issuing_root_pem().await?;
        tlsutil::certs_from_pem(&pem)?
            .into_iter()
            .next()
            .context("empty /roots/0")
    }
}

fn spawn_pebble(
    name: &str,
    binary: &Path,
    config_path: &Path,
    env: &BTreeMap<String, String>,
    dns_server: Option<SocketAddr>,
    dir: &Path,
) -> anyhow::Result<ChildGuard> {
    let mut cmd = Command::new(binary);
    cmd.arg("-config").arg(config_path).current_dir(dir);
    if let Some(addr) = dns_server {
        cmd.arg("-dnsserver").arg(addr.to_string());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard::spawn(name, &mut cmd, dir).with_context(|| {
        format!(
            "starting {} (install it with `apt-get install -y pebble`)",
            binary.display()
        )
    })
}

/// Listener CA + leaf for pebble's HTTPS. Returns (ca_pem, cert_pem, key_pem, ca_der).
fn make_listener_pki() -> anyhow::Result<(String, String, String, CertificateDer<'static>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "certfleet-tests pebble listener CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&leaf_key, &ca)?;
    Ok((
        ca.pem(),
        leaf.pem(),
        leaf_key.serialize_pem(),
        ca.der().clone(),
    ))
}
