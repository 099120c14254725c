//! [`A2c`]: a real acme2certifier ACME server for one test — the second CA, with what
//! pebble 2.4.0 lacks: ARI (`renewalInfo`) and profiles (`meta.profiles`).
//!
//! acme2certifier is a Python WSGI app (PyPI `acme2certifier`, pinned in [`VENV`]). The
//! harness installs it once per machine into that venv (`/var/cache/certfleet-tests/a2c-venv`,
//! override with env `A2C_VENV`; see [`crate::venv`]).
//!
//! Each instance owns a temp dir with:
//! - a local issuing CA (rcgen: a CA:TRUE root with a subject key identifier, ECDSA P-256)
//!   used by two openssl CA handlers, `classic` and `shortlived`, that differ only in
//!   `cert_validity_days` — the profiles map onto them;
//! - its HTTPS listener CA and certificate (SANs localhost, 127.0.0.1, ::1);
//! - `acme_srv.cfg` (see [`A2c::config_text`]) and the SQLite database;
//! - the process: `tests/acme2certifier/a2c_serve.py`, our launcher serving the WSGI
//!   `application` over TLS on `127.0.0.1:<free port>`, killed on drop.
//!
//! Quirks the tests must live with (checked against 0.46.3): HTTP-01 is always validated
//! on port 80 of the identifier (agents must serve HTTP-01 on 80 —
//! `Agent::new(name, A2c::HTTP01_PORT)`); `replaces` in a new order is ignored and not
//! echoed; an unreachable HTTP-01 responder leaves the order pending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::CertificateDer;

use crate::process::ChildGuard;
use crate::tlsutil;
use crate::venv::VenvSpec;
use crate::workdir::WorkDir;

/// The venv acme2certifier runs from (shared by every test run on the machine).
pub const VENV: VenvSpec = VenvSpec {
    name: "a2c",
    dir_env: "A2C_VENV",
    requirements: &["acme2certifier==0.46.3"],
    imports: &["acme2certifier.cahandlers.openssl_ca_handler"],
    files: &[],
};

/// Knobs for one acme2certifier instance.
#[derive(Debug, Clone)]
pub struct A2cOptions {
    /// `cert_validity_days` of the `classic` CA handler (profile "classic"). Default 90.
    pub classic_validity_days: u32,
    /// `cert_validity_days` of the `shortlived` CA handler (profile "shortlived"). Default 6.
    pub shortlived_validity_days: u32,
    /// `[Renewalinfo] renewalthreshold_pctg`: the ARI window starts at this share of the
    /// lifetime. Default 85.
    pub renewal_threshold_pctg: u32,
    /// `[Renewalinfo] retry_after_timeout` (the Retry-After of renewalInfo answers).
    /// Default 3600.
    pub retry_after_secs: u64,
    /// `[DEFAULT] debug`: acme2certifier's verbose logging. Default false.
    pub debug: bool,
    /// `[DEFAULT] dns_server_list`: the nameservers its DNS-01 validation (and its name
    /// lookups) ask, port 53 always (dnspython takes no port here). Default: none, the
    /// system resolver.
    pub dns_servers: Vec<IpAddr>,
}

impl Default for A2cOptions {
    fn default() -> Self {
        Self {
            classic_validity_days: 90,
            shortlived_validity_days: 6,
            renewal_threshold_pctg: 85,
            retry_after_secs: 3600,
            debug: false,
            dns_servers: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct A2c {
    // Field order matters for drop: the processes die before their directory goes.
    /// The current (or last, when stopped) acme2certifier process.
    child: ChildGuard,
    /// Earlier processes (before [`A2c::restart`]), kept for their logs.
    past_runs: Vec<ChildGuard>,
    runs: u32,
    stopped: bool,
    port: u16,
    listener_ca_path: PathBuf,
    listener_ca_der: CertificateDer<'static>,
    issuing_ca_path: PathBuf,
    issuing_ca_der: CertificateDer<'static>,
    config_path: PathBuf,
    config_text: String,
    python: PathBuf,
    venv_created_in: Option<Duration>,
    startup: Duration,
    opts: A2cOptions,
    dir: WorkDir,
}

impl A2c {
    /// The port acme2certifier's HTTP-01 validator connects to, for every identifier.
    pub const HTTP01_PORT: u16 = 80;

    /// Starts acme2certifier with the default options.
    pub async fn start_default() -> anyhow::Result<Self> {
        Self::start(A2cOptions::default()).await
    }

    /// Makes sure the venv exists, writes CA, listener certificate and config into a new
    /// temp dir, starts the launcher on a free port and waits until the directory answers.
    pub async fn start(opts: A2cOptions) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let (venv, venv_created_in) = tokio::task::spawn_blocking(|| VENV.ensure())
            .await
            .context("venv task panicked")??;
        let python = venv.join("bin/python");

        let dir = WorkDir::new("a2c")?;
        let pki = make_pki()?;
        let listener_ca_path = dir.join("listener-ca.pem");
        std::fs::write(&listener_ca_path, &pki.listener_ca_pem)?;
        std::fs::write(dir.join("listener-cert.pem"), &pki.listener_cert_pem)?;
        std::fs::write(dir.join("listener-key.pem"), &pki.listener_key_pem)?;
        let issuing_ca_path = dir.join("issuing-ca.pem");
        std::fs::write(&issuing_ca_path, &pki.issuing_ca_pem)?;
        let issuing_key_path = dir.join("issuing-ca.key");
        std::fs::write(&issuing_key_path, &pki.issuing_key_pem)?;
        std::fs::create_dir_all(dir.join("issued"))?;

        let config_text = render_config(dir.path(), &opts);
        let config_path = dir.join("acme_srv.cfg");
        std::fs::write(&config_path, &config_text)?;

        let port = crate::net::free_port()?;
        let started = Instant::now();
        let child = spawn_launcher("acme2certifier", &python, port, &config_path, dir.path())?;
        let mut a2c = Self {
            child,
            past_runs: Vec::new(),
            runs: 1,
            stopped: false,
            port,
            listener_ca_path,
            listener_ca_der: pki.listener_ca_der,
            issuing_ca_path,
            issuing_ca_der: pki.issuing_ca_der,
            config_path,
            config_text,
            python,
            venv_created_in,
            startup: Duration::ZERO,
            opts,
            dir,
        };
        a2c.wait_ready(Duration::from_secs(60)).await?;
        a2c.startup = started.elapsed();
        Ok(a2c)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port);
        let roots = vec![self.listener_ca_der.clone()];
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.child.dump_logs();
                anyhow::bail!("acme2certifier exited during startup: {st}");
            }
            if let Ok((200, body)) = tlsutil::https_get(addr, "/directory", &roots).await {
                let dir: serde_json::Value = serde_json::from_slice(&body)
                    .context("acme2certifier's directory is not JSON")?;
                anyhow::ensure!(
                    dir.get("renewalInfo").is_some() && dir["meta"].get("profiles").is_some(),
                    "acme2certifier's directory lacks renewalInfo or meta.profiles: {dir}"
                );
                return Ok(());
            }
            if start.elapsed() > timeout {
                self.child.dump_logs();
                anyhow::bail!(
                    "acme2certifier did not answer https://{addr}/directory within {timeout:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the acme2certifier process (SIGKILL: a CA outage), keeping its directory —
    /// config, issuing CA, listener certificate, SQLite database (accounts, orders,
    /// certificates) — and its port for [`A2c::restart`]. Idempotent.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.stopped {
            self.child.kill().await?;
            self.stopped = true;
        }
        Ok(())
    }

    /// Starts a new acme2certifier process (stopping the running one first) on the same
    /// port with the same directory: unlike pebble it remembers everything (accounts,
    /// orders, its issuing CA) across the restart.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.runs += 1;
        let name = format!("acme2certifier-run-{}", self.runs);
        let child = spawn_launcher(
            &name,
            &self.python,
            self.port,
            &self.config_path,
            self.dir.path(),
        )?;
        let old = std::mem::replace(&mut self.child, child);
        self.past_runs.push(old);
        self.stopped = false;
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// Whether [`A2c::stop`] was called without an [`A2c::restart`] since.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// `https://127.0.0.1:PORT/directory`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/directory", self.port)
    }

    /// The listener CA (PEM file): the trust root for acme2certifier's HTTPS API.
    pub fn listener_ca_path(&self) -> &Path {
        &self.listener_ca_path
    }

    /// The listener CA, DER.
    pub fn listener_ca_der(&self) -> &CertificateDer<'static> {
        &self.listener_ca_der
    }

    /// The local issuing CA (a root) every profile's certificates chain to, DER.
    pub fn issuing_ca_der(&self) -> &CertificateDer<'static> {
        &self.issuing_ca_der
    }

    /// The local issuing CA, PEM file.
    pub fn issuing_ca_path(&self) -> &Path {
        &self.issuing_ca_path
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn options(&self) -> &A2cOptions {
        &self.opts
    }

    /// `acme_srv.cfg` as written.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The venv's python.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// How long creating the venv took, when this start created it.
    pub fn venv_created_in(&self) -> Option<Duration> {
        self.venv_created_in
    }

    /// From spawning the launcher until the directory answered.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// stdout+stderr of every acme2certifier process so far, in order (acme2certifier
    /// logs and one line per request).
    pub fn logs(&self) -> String {
        self.past_runs
            .iter()
            .chain(std::iter::once(&self.child))
            .map(ChildGuard::logs)
            .collect()
    }

    pub fn dump_logs(&self) {
        for c in self.past_runs.iter().chain(std::iter::once(&self.child)) {
            c.dump_logs();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl crate::coordinator::AcmeServer for A2c {
    fn directory_url(&self) -> String {
        A2c::directory_url(self)
    }
    fn ca_pem_path(&self) -> &Path {
        &self.listener_ca_path
    }
    fn issuer_name(&self) -> &str {
        "a2c"
    }
}

/// Spawns our launcher (`python a2c_serve.py`) serving acme2certifier on
/// `127.0.0.1:port` with the listener certificate in `dir` and the config at `config_path`.
fn spawn_launcher(
    name: &str,
    python: &Path,
    port: u16,
    config_path: &Path,
    dir: &Path,
) -> anyhow::Result<ChildGuard> {
    let launcher = launcher_path();
    anyhow::ensure!(
        launcher.is_file(),
        "acme2certifier launcher missing at {}",
        launcher.display()
    );
    let mut cmd = Command::new(python);
    cmd.arg(&launcher)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--cert")
        .arg(dir.join("listener-cert.pem"))
        .arg("--key")
        .arg(dir.join("listener-key.pem"))
        .env("ACME_SRV_CONFIGFILE", config_path)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir);
    ChildGuard::spawn(name, &mut cmd, dir)
        .with_context(|| format!("starting acme2certifier with {}", python.display()))
}

/// `tests/acme2certifier/a2c_serve.py` in this crate.
pub fn launcher_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("acme2certifier/a2c_serve.py")
}

/// `acme_srv.cfg` for an instance whose files live in `dir`.
fn render_config(dir: &Path, opts: &A2cOptions) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    let handler = |name: &str, days: u32| {
        format!(
            "[CAhandler:{name}]\n\
             handler_module: acme2certifier.cahandlers.openssl_ca_handler\n\
             issuing_ca_key: {key}\n\
             issuing_ca_cert: {cert}\n\
             issuing_ca_crl: {crl}\n\
             cert_save_path: {issued}\n\
             cert_validity_days: {days}\n\n",
            key = p("issuing-ca.key"),
            cert = p("issuing-ca.pem"),
            crl = p("issuing-ca.crl"),
            issued = p("issued"),
        )
    };
    let profiles = serde_json::json!({
        "classic": format!("{}-day certificates", opts.classic_validity_days),
        "shortlived": format!("{}-day certificates", opts.shortlived_validity_days),
    });
    let mut s = String::new();
    s.push_str(&format!(
        "[DEFAULT]\ndebug: {}\n",
        if opts.debug { "True" } else { "False" }
    ));
    if !opts.dns_servers.is_empty() {
        let list: Vec<String> = opts.dns_servers.iter().map(IpAddr::to_string).collect();
        s.push_str(&format!(
            "dns_server_list: {}\n",
            serde_json::Value::from(list)
        ));
    }
    s.push('\n');
    s.push_str("[Nonce]\nnonce_check_disable: False\n\n");
    s.push_str("[Account]\ncontact_check_disable: True\n\n");
    s.push_str(&format!(
        "[DBhandler]\nhandler: wsgi\ndbfile: {}\n\n",
        p("a2c.db")
    ));
    s.push_str("[CAhandler]\nmulti_handler: True\ndefault_handler: classic\n\n");
    s.push_str(&handler("classic", opts.classic_validity_days));
    s.push_str(&handler("shortlived", opts.shortlived_validity_days));
    s.push_str(&format!(
        "[Order]\nprofiles: {profiles}\nprofiles_check_disable: False\n\
         profile_cahandler: {{\"classic\": \"classic\", \"shortlived\": \"shortlived\"}}\n\n"
    ));
    s.push_str(&format!(
        "[Renewalinfo]\nrenewalthreshold_pctg: {}\nretry_after_timeout: {}\n\n",
        opts.renewal_threshold_pctg, opts.retry_after_secs
    ));
    s.push_str("[Challenge]\nchallenge_validation_disable: False\n");
    s
}

struct A2cPki {
    listener_ca_pem: String,
    listener_ca_der: CertificateDer<'static>,
    listener_cert_pem: String,
    listener_key_pem: String,
    issuing_ca_pem: String,
    issuing_ca_der: CertificateDer<'static>,
    issuing_key_pem: String,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    // rcgen writes a subject key identifier for CA certificates; acme2certifier's
    // openssl handler derives the leaves' authority key identifier (and so the ARI
    // certificate id) from it.
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn make_pki() -> anyhow::Result<A2cPki> {
    // The issuing CA: a root, used directly by both CA handlers.
    let issuing_key = KeyPair::generate()?;
    let issuing_key_pem = issuing_key.serialize_pem();
    let suffix: u32 = rand::random();
    let issuing = rcgen::CertifiedIssuer::self_signed(
        ca_params(&format!("certfleet-tests acme2certifier CA {suffix:08x}")),
        issuing_key,
    )?;

    // The HTTPS listener.
    let listener_ca = rcgen::CertifiedIssuer::self_signed(
        ca_params("certfleet-tests acme2certifier listener CA"),
        KeyPair::generate()?,
    )?;
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
    let leaf = params.signed_by(&leaf_key, &listener_ca)?;

    Ok(A2cPki {
        listener_ca_pem: listener_ca.pem(),
        listener_ca_der: listener_ca.der().clone(),
        listener_cert_pem: leaf.pem(),
        listener_key_pem: leaf_key.serialize_pem(),
        issuing_ca_pem: issuing.pem(),
        issuing_ca_der: issuing.der().clone(),
        issuing_key_pem,
    })
}
