//! [`Coordinator`]: a real `certfleet-coordinator` for one test.
//!
//! Writes a config (pebble as the only issuer) into its own temp dir, runs `init` (or
//! `node join` for a second node of a fleet, [`Coordinator::join_with`]), starts
//! `serve` as a [`ChildGuard`] and waits for its port. Operator subcommands run through
//! [`Coordinator::cli`]. [`Coordinator::restart`] stops the server (SIGKILL or SIGTERM)
//! and serves again on the same port and state dir; every run keeps its own log file.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::pebble::Pebble;
use crate::process::{describe_output, run_output, ChildGuard};
use crate::workdir::WorkDir;

/// Default `RUST_LOG` for coordinator and agent processes (overridden by the test's own
/// `RUST_LOG`). Debug for our crates: more output is also more surface for the key-leak scan.
pub const DEFAULT_RUST_LOG: &str =
    "info,certfleet_coordinator=debug,certfleet_agent=debug,certfleet_shared=debug";

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// One row of `certfleet-coordinator hosts --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct HostRow {
    pub host_id: String,
    pub hostname: String,
    pub ips: Vec<String>,
    pub targets: Vec<String>,
    pub connected: bool,
    /// The coordinator node holding the session (name), when connected.
    #[serde(default)]
    pub node: Option<String>,
    pub enrolled: String,
    pub last_seen: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One row of `certfleet-coordinator certs --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct CertRow {
    pub cert_id: String,
    pub host_id: String,
    pub identifiers: Vec<String>,
    pub issuer: String,
    pub profile: Option<String>,
    pub target: String,
    pub state: String,
    pub serial: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub last_error: Option<String>,
    pub order_url: Option<String>,
    pub updated: String,
    // The renewal engine's view (absent from older coordinators, hence the defaults).
    #[serde(default)]
    pub installed_serial: Option<String>,
    #[serde(default)]
    pub served_serial: Option<String>,
    #[serde(default)]
    pub served_on: Vec<String>,
    #[serde(default)]
    pub verify_disabled: bool,
    #[serde(default)]
    pub lifetime_secs: Option<i64>,
    #[serde(default)]
    pub renew_at: Option<String>,
    #[serde(default)]
    pub next_action: Option<String>,
    #[serde(default)]
    pub next_action_unix: Option<i64>,
    #[serde(default)]
    pub next_reason: Option<String>,
    #[serde(default)]
    pub at_risk: Option<bool>,
    #[serde(default)]
    pub renewals: Option<u64>,
    #[serde(default)]
    pub last_renewal_reason: Option<String>,
    /// Identifier → challenge type that proved it ("http-01", "tls-alpn-01").
    #[serde(default)]
    pub validated_by: std::collections::BTreeMap<String, String>,
}

/// How [`Coordinator::restart`] stops the running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    /// SIGKILL: a crash, no chance to clean up.
    Kill,
    /// SIGTERM and wait for a clean exit.
    Term,
}

/// Knobs for the generated config.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorOptions {
    pub validation_timeout_secs: Option<u64>,
    pub ip_profile: Option<String>,
    /// The issuer's `allow_private_ips` (`None`: true, as every loopback test needs).
    pub allow_private_ips: Option<bool>,
    /// The issuer's `eab_kid` (written only when set).
    pub eab_kid: Option<String>,
    /// The issuer's `eab_hmac_key`, base64url (written only when set).
    pub eab_hmac_key: Option<String>,
    /// Extra environment for `serve`.
    pub env: BTreeMap<String, String>,
    /// `[issuance] retry_base_secs` (written only when set).
    pub retry_base_secs: Option<u64>,
    /// The issuer's `rate_limits`, e.g. `"letsencrypt"` or `"none"` (written only when set).
    pub rate_limits: Option<String>,
    /// TOML appended verbatim after the generated config (which ends inside the
    /// `[[issuer]]` table), e.g. `[[policy]]` tables. Empty by default.
    pub extra_config: String,
    /// More addresses for the server certificate; when set the coordinator listens on all
    /// addresses (e.g. a namespace bridge's gateway, for agents in namespaces).
    pub server_ips: Vec<IpAddr>,
    /// `[server] identity_lifetime_secs` (written only when set).
    pub identity_lifetime_secs: Option<u64>,
    /// `[server] certificate_lifetime_secs`: the coordinator's own server certificate
    /// (written only when set).
    pub certificate_lifetime_secs: Option<u64>,
    /// `[store]` on PostgreSQL (several nodes share one by passing the same). `None`:
    /// sled, unless `CERTFLEET_TEST_STORE=postgres` (then a server of the coordinator's own).
    pub postgres: Option<PgChoice>,
}

/// A PostgreSQL database for a coordinator's `[store]`; the server lives while any
/// coordinator (or test) holds it.
#[derive(Debug, Clone)]
pub struct PgChoice {
    /// Locked to stop and start it again (a database restart).
    pub server: std::sync::Arc<std::sync::Mutex<crate::postgres::PostgresServer>>,
    pub url: String,
}

impl PgChoice {
    /// A new server with one database.
    pub fn start() -> anyhow::Result<Self> {
        let server = crate::postgres::PostgresServer::start()?;
        let url = server.create_database("certfleet")?;
        Ok(Self {
            server: std::sync::Arc::new(std::sync::Mutex::new(server)),
            url,
        })
    }

    /// The same database reached through `127.0.0.1:port` (e.g. a [`crate::tcp_cut::TcpCut`]).
    pub fn via_port(&self, port: u16) -> anyhow::Result<Self> {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        let direct = format!(":{}/", server.port());
        anyhow::ensure!(self.url.contains(&direct), "unexpected URL {}", self.url);
        Ok(Self {
            server: self.server.clone(),
            url: self.url.replacen(&direct, &format!(":{port}/"), 1),
        })
    }
}

/// Whether the e2e suite runs its coordinators on PostgreSQL (`CERTFLEET_TEST_STORE`).
pub fn test_store_is_postgres() -> bool {
    std::env::var("CERTFLEET_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// An ACME server a coordinator's only `[[issuer]]` points at: pebble, acme2certifier.
pub trait AcmeServer {
    /// The ACME directory URL.
    fn directory_url(&self) -> String;
    /// The trust root (PEM file) for the server's HTTPS listener.
    fn ca_pem_path(&self) -> &Path;
    /// The `[[issuer]]` name in the generated config.
    fn issuer_name(&self) -> &str {
        "pebble"
    }
}

impl AcmeServer for Pebble {
    fn directory_url(&self) -> String {
        Pebble::directory_url(self)
    }
    fn ca_pem_path(&self) -> &Path {
        Pebble::ca_pem_path(self)
    }
}

#[derive(Debug)]
pub struct Coordinator {
    child: Option<ChildGuard>,
    past_runs: Vec<ChildGuard>,
    runs: u32,
    port: u16,
    ca_sha256: String,
    init_output: Output,
    bin: PathBuf,
    config_path: PathBuf,
    state_dir: PathBuf,
    opts: CoordinatorOptions,
    dir: WorkDir,
}

/// A TOML basic string (JSON string escaping is valid TOML for these inputs).
pub(crate) fn toml_str(s: impl AsRef<str>) -> String {
    serde_json::Value::String(s.as_ref().to_owned()).to_string()
}

pub(crate) fn toml_path(p: &Path) -> String {
    toml_str(p.to_string_lossy())
}

/// Removes every `CERTFLEET_*` variable so the test's own environment cannot override
/// the generated config.
pub(crate) fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CERTFLEET_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_owned()),
    );
    cmd.env("NO_COLOR", "1");
}

impl Coordinator {
    /// Config + `init` + `serve`, waiting until the port accepts.
    pub async fn start(pebble: &Pebble) -> anyhow::Result<Self> {
        Self::start_with(pebble, CoordinatorOptions::default()).await
    }

    pub async fn start_with(
        pebble: &impl AcmeServer,
        opts: CoordinatorOptions,
    ) -> anyhow::Result<Self> {
        Self::setup(pebble, opts, None).await
    }

    /// A second node of `bundle`'s fleet (from [`Coordinator::export_bundle`]): config +
    /// `node join --bundle` (instead of `init`) + `serve`, with its own port, state dir and
    /// sled store.
    pub async fn join_with(
        pebble: &impl AcmeServer,
        opts: CoordinatorOptions,
        bundle: &Path,
    ) -> anyhow::Result<Self> {
        Self::setup(pebble, opts, Some(bundle)).await
    }

    /// `node export --out FILE` into this coordinator's work dir: the bundle's path.
    pub async fn export_bundle(&self) -> anyhow::Result<PathBuf> {
        let out = self.dir.join("node.bundle");
        let out_s = out.to_string_lossy().into_owned();
        self.cli_ok(&["node", "export", "--out", &out_s]).await?;
        Ok(out)
    }

    async fn setup(
        pebble: &impl AcmeServer,
        mut opts: CoordinatorOptions,
        bundle: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if opts.postgres.is_none() && test_store_is_postgres() {
            opts.postgres = Some(
                tokio::task::spawn_blocking(PgChoice::start)
                    .await?
                    .context(
                        "CERTFLEET_TEST_STORE=postgres: a PostgreSQL server for the coordinator",
                    )?,
            );
        }
        let bin = crate::bins::coordinator()?;
        let dir = WorkDir::new("coordinator")?;
        let state_dir = dir.join("state");
        let port = crate::net::free_port()?;
        let config_path = dir.join("coordinator.toml");
        std::fs::write(&config_path, render_config(&state_dir, port, pebble, &opts))?;

        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("--config").arg(&config_path);
        match bundle {
            None => cmd.arg("init"),
            Some(b) => cmd.args(["node", "join", "--bundle"]).arg(b),
        };
        scrub_env_tokio(&mut cmd);
        let init_output = run_output(&mut cmd, CLI_TIMEOUT).await?;
        anyhow::ensure!(
            init_output.status.success(),
            "coordinator {} failed: {}",
            if bundle.is_some() {
                "node join"
            } else {
                "init"
            },
            describe_output(&init_output)
        );
        let stdout = String::from_utf8_lossy(&init_output.stdout);
        let ca_sha256 = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("ca-sha256:"))
            .map(|s| s.trim().to_owned())
            .with_context(|| format!("no `ca-sha256: HEX` line in the output: {stdout:?}"))?;
        anyhow::ensure!(
            ca_sha256.len() == 64
                && ca_sha256
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "init printed a malformed fingerprint {ca_sha256:?}"
        );

        let mut c = Self {
            child: None,
            past_runs: Vec::new(),
            runs: 0,
            port,
            ca_sha256,
            init_output,
            bin,
            config_path,
            state_dir,
            opts,
            dir,
        };
        c.serve().await?;
        Ok(c)
    }

    /// Starts `serve` (a new run) and waits until the port accepts.
    async fn serve(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config_path).arg("serve");
        scrub_env(&mut cmd);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let name = format!("coordinator-serve-{}", self.runs);
        let mut child = ChildGuard::spawn(&name, &mut cmd, self.dir.path())?;
        let addr = self.addr();
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                child.dump_logs();
                anyhow::bail!("coordinator serve exited during startup: {st}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                child.dump_logs();
                anyhow::bail!("coordinator did not listen on {addr} within 30s");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (SIGKILL or SIGTERM) and serves again on the same port and state.
    pub async fn restart(&mut self, mode: RestartMode) -> anyhow::Result<()> {
        self.stop_current(mode).await?;
        self.serve().await
    }

    /// Starts `serve` again after [`Coordinator::stop_current`] (e.g. once a test has edited
    /// the stopped coordinator's store).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the coordinator is still running");
        self.serve().await
    }

    /// Stops the running server. With [`RestartMode::Term`] returns whether it exited by
    /// itself within 15 s (and its status).
    pub async fn stop_current(
        &mut self,
        mode: RestartMode,
    ) -> anyhow::Result<Option<(std::process::ExitStatus, bool)>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let res = match mode {
            RestartMode::Kill => (child.kill().await?, false),
            RestartMode::Term => child.stop(Duration::from_secs(15)).await?,
        };
        self.past_runs.push(child);
        Ok(Some(res))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The coordinator's URL at `ip` (one of `server_ips`).
    pub fn url_at(&self, ip: IpAddr) -> String {
        format!("https://{}", SocketAddr::new(ip, self.port))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// The URL agents and operators use: `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The fleet CA fingerprint printed by `init` (or `node join`).
    pub fn ca_sha256(&self) -> &str {
        &self.ca_sha256
    }

    /// The output of `init` (or `node join`).
    pub fn init_output(&self) -> &Output {
        &self.init_output
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn fleet_ca_pem_path(&self) -> PathBuf {
        self.state_dir.join("fleet-ca.pem")
    }

    pub fn admin_cert_path(&self) -> PathBuf {
        self.state_dir.join("admin.pem")
    }

    pub fn admin_key_path(&self) -> PathBuf {
        self.state_dir.join("admin.key")
    }

    /// The running `serve` process.
    pub fn child(&mut self) -> Option<&mut ChildGuard> {
        self.child.as_mut()
    }

    /// Number of `serve` runs so far (1 after start, 2 after one restart, ...).
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// stdout+stderr of run `n` (1-based).
    pub fn run_log(&self, n: u32) -> String {
        self.all_runs()
            .find(|c| c.name() == format!("coordinator-serve-{n}"))
            .map(ChildGuard::logs)
            .unwrap_or_default()
    }

    /// stdout+stderr of every `serve` run, in order.
    pub fn logs(&self) -> String {
        (1..=self.runs).map(|n| self.run_log(n)).collect()
    }

    fn all_runs(&self) -> impl Iterator<Item = &ChildGuard> {
        self.past_runs.iter().chain(self.child.iter())
    }

    /// Prints every run's logs.
    pub fn dump_logs(&self) {
        for c in self.all_runs() {
            c.dump_logs();
        }
    }

    /// Appends TOML to the config file (the running server reads it at its next start or
    /// [`Coordinator::sighup`]).
    pub fn append_config(&self, toml: &str) -> anyhow::Result<()> {
        let mut text = std::fs::read_to_string(&self.config_path)?;
        text.push_str(toml);
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    /// SIGHUP to the running server (a reload of its config), without waiting.
    pub fn sighup(&self) -> anyhow::Result<()> {
        self.child
            .as_ref()
            .context("the coordinator is not running")?
            .sighup()
    }

    /// Runs `certfleet-coordinator --config CFG ARGS...` and returns its output.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config_path).args(args);
        scrub_env_tokio(&mut cmd);
        run_output(&mut cmd, CLI_TIMEOUT).await
    }

    /// Like [`Self::cli`], failing unless the command succeeds; returns stdout.
    pub async fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args).await?;
        anyhow::ensure!(
            out.status.success(),
            "certfleet-coordinator {} failed: {}",
            args.join(" "),
            describe_output(&out)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `status --json`: its exit code (0 all well, 3 something needs attention; anything
    /// else is an error here) and its JSON.
    pub async fn status_json(&self) -> anyhow::Result<(i32, serde_json::Value)> {
        let out = self.cli(&["status", "--json"]).await?;
        let code = out.status.code().unwrap_or(-1);
        anyhow::ensure!(
            code == 0 || code == 3,
            "certfleet-coordinator status --json failed: {}",
            describe_output(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("status --json printed {}", describe_output(&out)))?;
        anyhow::ensure!(
            v["exit_code"] == code && v["healthy"] == (code == 0),
            "status exited {code} but says {v}"
        );
        Ok((code, v))
    }

    pub async fn hosts_json(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cli_ok(&["hosts", "--json"]).await?;
        serde_json::from_str(&out).with_context(|| format!("hosts --json printed {out:?}"))
    }

    pub async fn certs_json(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cli_ok(&["certs", "--json"]).await?;
        serde_json::from_str(&out).with_context(|| format!("certs --json printed {out:?}"))
    }

    pub async fn hosts(&self) -> anyhow::Result<Vec<HostRow>> {
        let v = self.hosts_json().await?;
        serde_json::from_value(v.clone())
            .with_context(|| format!("hosts --json does not match the contract: {v}"))
    }

    pub async fn certs(&self) -> anyhow::Result<Vec<CertRow>> {
        let v = self.certs_json().await?;
        serde_json::from_value(v.clone())
            .with_context(|| format!("certs --json does not match the contract: {v}"))
    }

    /// The row of certificate `cert_id` in `certs --json`.
    pub async fn cert(&self, cert_id: &str) -> anyhow::Result<CertRow> {
        self.certs()
            .await?
            .into_iter()
            .find(|c| c.cert_id == cert_id)
            .with_context(|| format!("certificate {cert_id} not in certs --json"))
    }

    /// `certs renew ARGS...` (cert ids and/or `--host ID`): the raw output.
    pub async fn renew(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["certs", "renew"];
        all.extend_from_slice(args);
        self.cli(&all).await
    }

    /// Every audit record (`audit --json`), oldest first.
    pub async fn audit_records(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.cli_ok(&["audit", "--json"]).await?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("audit --json line {l:?}")))
            .collect()
    }

    /// `audit verify`: its output (fails when the command fails).
    pub async fn audit_verify(&self) -> anyhow::Result<String> {
        self.cli_ok(&["audit", "verify"]).await
    }

    /// Lines containing `needle` in the logs of every `serve` run.
    pub fn log_lines_containing(&self, needle: &str) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// `token create [--ttl TTL]`: the token alone.
    pub async fn create_token(&self, ttl: Option<&str>) -> anyhow::Result<String> {
        let mut args = vec!["token", "create"];
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        let out = self.cli_ok(&args).await?;
        let token = out.trim();
        anyhow::ensure!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "token create should print the token alone, printed {out:?}"
        );
        Ok(token.to_owned())
    }

    /// `ca-fingerprint` output (trimmed).
    pub async fn ca_fingerprint_cli(&self) -> anyhow::Result<String> {
        Ok(self.cli_ok(&["ca-fingerprint"]).await?.trim().to_owned())
    }

    /// Waits until `hosts --json` shows `host_id` with `connected == want`.
    pub async fn wait_connected(
        &self,
        host_id: &str,
        want: bool,
        timeout: Duration,
    ) -> anyhow::Result<HostRow> {
        crate::wait_for(
            &format!("host {host_id} connected={want}"),
            timeout,
            Duration::from_millis(200),
            || async move {
                let hosts = self.hosts().await?;
                Ok(hosts
                    .into_iter()
                    .find(|h| h.host_id == host_id && h.connected == want))
            },
        )
        .await
    }
}

/// Runs `certfleet-coordinator --config CONFIG ARGS…` with a scrubbed environment until it
/// exits, for a config a test wrote itself (e.g. one `serve` must refuse). Fails when it
/// is still running after `timeout`.
pub async fn run_with_config(
    config: &Path,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(crate::bins::coordinator()?);
    cmd.arg("--config").arg(config).args(args);
    scrub_env_tokio(&mut cmd);
    run_output(&mut cmd, timeout).await
}

pub(crate) fn scrub_env_tokio(cmd: &mut tokio::process::Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CERTFLEET_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_owned()),
    );
    cmd.env("NO_COLOR", "1");
}

fn render_config(
    state_dir: &Path,
    port: u16,
    pebble: &impl AcmeServer,
    opts: &CoordinatorOptions,
) -> String {
    let mut s = String::new();
    s.push_str("version = 1\n");
    s.push_str(&format!("state_dir = {}\n\n", toml_path(state_dir)));
    s.push_str("[server]\n");
    let listen = if opts.server_ips.is_empty() {
        format!("127.0.0.1:{port}")
    } else {
        format!("0.0.0.0:{port}")
    };
    s.push_str(&format!("listen = {}\n", toml_str(listen)));
    s.push_str("names = [\"localhost\"]\n");
    let mut ips = vec!["\"127.0.0.1\"".to_owned(), "\"::1\"".to_owned()];
    ips.extend(opts.server_ips.iter().map(|ip| toml_str(ip.to_string())));
    s.push_str(&format!("ips = [{}]\n", ips.join(", ")));
    if let Some(secs) = opts.identity_lifetime_secs {
        s.push_str(&format!("identity_lifetime_secs = {secs}\n"));
    }
    if let Some(secs) = opts.certificate_lifetime_secs {
        s.push_str(&format!("certificate_lifetime_secs = {secs}\n"));
    }
    s.push('\n');
    if let Some(pg) = &opts.postgres {
        s.push_str("[store]\nbackend = \"postgres\"\n");
        s.push_str(&format!("url = {}\n", toml_str(&pg.url)));
        s.push_str("tls = \"disable\"\n\n");
    }
    s.push_str("[issuance]\n");
    s.push_str(&format!("issuer = {}\n", toml_str(pebble.issuer_name())));
    s.push_str("target = \"default\"\n");
    s.push_str(&format!(
        "validation_timeout_secs = {}\n",
        opts.validation_timeout_secs.unwrap_or(30)
    ));
    if let Some(secs) = opts.retry_base_secs {
        s.push_str(&format!("retry_base_secs = {secs}\n"));
    }
    s.push('\n');
    s.push_str("[[issuer]]\n");
    s.push_str(&format!("name = {}\n", toml_str(pebble.issuer_name())));
    s.push_str(&format!(
        "directory = {}\n",
        toml_str(pebble.directory_url())
    ));
    s.push_str("contact = []\n");
    s.push_str(&format!(
        "trust_root = {}\n",
        toml_path(pebble.ca_pem_path())
    ));
    s.push_str(&format!(
        "allow_private_ips = {}\n",
        opts.allow_private_ips.unwrap_or(true)
    ));
    if let Some(kid) = &opts.eab_kid {
        s.push_str(&format!("eab_kid = {}\n", toml_str(kid)));
    }
    if let Some(key) = &opts.eab_hmac_key {
        s.push_str(&format!("eab_hmac_key = {}\n", toml_str(key)));
    }
    if let Some(limits) = &opts.rate_limits {
        s.push_str(&format!("rate_limits = {}\n", toml_str(limits)));
    }
    if let Some(p) = &opts.ip_profile {
        s.push_str(&format!("ip_profile = {}\n", toml_str(p)));
    }
    if !opts.extra_config.is_empty() {
        s.push('\n');
        s.push_str(&opts.extra_config);
        s.push('\n');
    }
    s
}
