//! [`Agent`]: one simulated host running a real `certfleet-agent`.
//!
//! Each agent owns a "host directory" (temp dir) holding its config, its `state/` dir and
//! its install target `tls/`, plus its own addresses ([`HostAddrs`]: a `127.X.Y.Z` and an
//! IPv6 address on `lo`). The target's reload command appends a line to
//! `<hostdir>/reload.log`, so tests can count reloads.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::Context as _;

use crate::coordinator::{scrub_env, scrub_env_tokio, toml_path, toml_str, CertRow, Coordinator};
use crate::net::HostAddrs;
use crate::process::{describe_output, run_output, ChildGuard};
use crate::workdir::WorkDir;

/// Files an enrolled agent has in its state dir; a refused enrollment leaves none.
pub const ENROLLMENT_FILES: &[&str] = &["enrollment.json", "identity.pem", "identity.key"];

/// Runs `certfleet-agent --config CONFIG ARGS…` with a scrubbed environment until it
/// exits, for a config a test wrote itself (e.g. one the agent must refuse). Fails when it
/// is still running after `timeout`.
pub async fn run_with_config(
    config: &Path,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(crate::bins::agent()?);
    cmd.arg("--config").arg(config).args(args);
    scrub_env_tokio(&mut cmd);
    run_output(&mut cmd, timeout).await
}

/// A whole, matching certificate/key pair in an agent's target ([`Agent::installed_pair`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPair {
    /// The leaf's serial, normalized lowercase hex.
    pub serial: String,
    /// The key's SubjectPublicKeyInfo (DER), equal to the leaf's.
    pub key_spki: Vec<u8>,
}

#[derive(Debug)]
pub struct Agent {
    child: Option<ChildGuard>,
    past_runs: Vec<ChildGuard>,
    runs: u32,
    name: String,
    host_id: Option<String>,
    bin: PathBuf,
    config_path: PathBuf,
    state_dir: PathBuf,
    tls_dir: PathBuf,
    http01_port: u16,
    /// Loopback addresses allocated for this host, removed on drop (none for a namespace
    /// host).
    _addrs: Option<HostAddrs>,
    ips: Vec<IpAddr>,
    /// Network namespace the agent runs in (`ip netns exec NS …`), if any.
    netns: Option<String>,
    dir: WorkDir,
}

impl Agent {
    /// A new host `name` with fresh addresses, serving HTTP-01 on `http01_port`
    /// (pebble's `httpPort`). Nothing runs yet.
    pub fn new(name: &str, http01_port: u16) -> anyhow::Result<Self> {
        Self::new_with_port(name, http01_port, http01_port)
    }

    /// A new host `name` whose addresses are allocated for `ca_port` (pebble's
    /// `httpPort`: free on them, so nothing answers the CA there) but whose agent serves
    /// HTTP-01 on `http01_port` (also free on them). With `http01_port != ca_port` the
    /// CA's validation connections are refused: a misconfigured host.
    pub fn new_with_port(name: &str, ca_port: u16, http01_port: u16) -> anyhow::Result<Self> {
        Self::new_with_free_ports(name, http01_port, &[ca_port])
    }

    /// A new host `name` serving HTTP-01 on `http01_port`, whose addresses also have every
    /// one of `also_free` free (e.g. pebble's `tlsPort`, for a `[tls_alpn01]` standalone
    /// section added with [`Self::append_config`]).
    pub fn new_with_free_ports(
        name: &str,
        http01_port: u16,
        also_free: &[u16],
    ) -> anyhow::Result<Self> {
        let bin = crate::bins::agent()?;
        let dir = WorkDir::new(&format!("agent-{name}"))?;
        let mut ports = vec![http01_port];
        for p in also_free {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        let addrs = HostAddrs::allocate_ports(&ports)?;
        let state_dir = dir.join("state");
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        let config_path = dir.join("agent.toml");
        let agent = Self {
            child: None,
            past_runs: Vec::new(),
            runs: 0,
            name: name.to_owned(),
            host_id: None,
            bin,
            config_path,
            state_dir,
            tls_dir,
            http01_port,
            ips: addrs.ips(),
            _addrs: Some(addrs),
            netns: None,
            dir,
        };
        std::fs::write(&agent.config_path, agent.render_config(http01_port))?;
        Ok(agent)
    }

    /// The port this agent's config tells it to serve HTTP-01 on.
    pub fn http01_port(&self) -> u16 {
        self.http01_port
    }

    fn render_config(&self, port: u16) -> String {
        let ips = self
            .ips()
            .iter()
            .map(|ip| toml_str(ip.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let reload = format!("echo reloaded >> {}", self.reload_log_path().display());
        format!(
            "version = 1\n\
             state_dir = {state}\n\
             ips = [{ips}]\n\
             \n\
             [http01]\n\
             mode = \"standalone\"\n\
             port = {port}\n\
             \n\
             [targets.default]\n\
             cert = {cert}\n\
             chain = {chain}\n\
             fullchain = {fullchain}\n\
             key = {key}\n\
             reload = [\"/bin/sh\", \"-c\", {reload}]\n\
             # No web server on these loopback hosts: nothing to check it is served.\n\
             verify = []\n",
            state = toml_path(&self.state_dir),
            cert = toml_path(&self.cert_path()),
            chain = toml_path(&self.chain_path()),
            fullchain = toml_path(&self.fullchain_path()),
            key = toml_path(&self.key_path()),
            reload = toml_str(reload),
        )
    }

    /// Appends TOML to the agent's config (before `start`), e.g. a `[metrics]` section.
    pub fn append_config(&self, toml: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config_path)?;
        f.write_all(toml.as_bytes())?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// IPv4 first, then IPv6.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ips.clone()
    }

    /// Adds addresses to this host's config (before `start`): e.g. an address another
    /// host holds, as when a cloud hands a released IP to a new VM.
    pub fn claim_ips(&mut self, extra: &[IpAddr]) -> anyhow::Result<()> {
        self.ips.extend_from_slice(extra);
        std::fs::write(&self.config_path, self.render_config(self.http01_port))?;
        Ok(())
    }

    pub fn host_id(&self) -> Option<&str> {
        self.host_id.as_deref()
    }

    /// The host id, failing if this agent has not enrolled.
    pub fn id(&self) -> anyhow::Result<&str> {
        self.host_id
            .as_deref()
            .with_context(|| format!("agent {} is not enrolled", self.name))
    }

    pub fn host_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn cert_path(&self) -> PathBuf {
        self.tls_dir.join("cert.pem")
    }

    pub fn chain_path(&self) -> PathBuf {
        self.tls_dir.join("chain.pem")
    }

    pub fn fullchain_path(&self) -> PathBuf {
        self.tls_dir.join("fullchain.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.tls_dir.join("key.pem")
    }

    pub fn reload_log_path(&self) -> PathBuf {
        self.dir.join("reload.log")
    }

    pub fn identity_cert_path(&self) -> PathBuf {
        self.state_dir.join("identity.pem")
    }

    pub fn identity_key_path(&self) -> PathBuf {
        self.state_dir.join("identity.key")
    }

    /// Lines in reload.log (0 when absent).
    pub fn reload_count(&self) -> usize {
        std::fs::read_to_string(self.reload_log_path())
            .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count())
            .unwrap_or(0)
    }

    /// Which of [`ENROLLMENT_FILES`] exist in the state dir.
    pub fn enrollment_files_present(&self) -> Vec<&'static str> {
        ENROLLMENT_FILES
            .iter()
            .copied()
            .filter(|f| self.state_dir.join(f).exists())
            .collect()
    }

    /// A host that is the network namespace `netns` with addresses `ips`; its config is
    /// `config_body` (everything after `version`, `state_dir` and `ips`: `[http01]`,
    /// `[targets.*]` …). `Agent::tls_dir()` is a scratch directory for its files.
    pub fn in_netns(
        name: &str,
        netns: &str,
        ips: Vec<IpAddr>,
        config_body: impl FnOnce(&Path) -> String,
    ) -> anyhow::Result<Self> {
        let bin = crate::bins::agent()?;
        let dir = WorkDir::new(&format!("agent-{name}"))?;
        let state_dir = dir.join("state");
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        let config_path = dir.join("agent.toml");
        let agent = Self {
            child: None,
            past_runs: Vec::new(),
            runs: 0,
            name: name.to_owned(),
            host_id: None,
            bin,
            config_path,
            state_dir,
            tls_dir,
            http01_port: 80,
            _addrs: None,
            ips,
            netns: Some(netns.to_owned()),
            dir,
        };
        agent.write_netns_config(&config_body(&agent.tls_dir))?;
        Ok(agent)
    }

    /// Rewrites a namespace host's config with new addresses (the host's IPs changed).
    pub fn set_netns_ips(&mut self, ips: Vec<IpAddr>, config_body: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.netns.is_some(), "only for namespace hosts");
        self.ips = ips;
        self.write_netns_config(config_body)
    }

    /// Rewrites a namespace host's config with `ips = "auto"`: the agent takes the
    /// namespace's addresses in `include` (CIDRs; the LAN's are private) from its
    /// interfaces, looked at every `rescan` (humantime).
    pub fn set_netns_auto_ips(
        &mut self,
        include: &[&str],
        rescan: &str,
        config_body: &str,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.netns.is_some(), "only for namespace hosts");
        let include = include.iter().map(toml_str).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &self.config_path,
            format!(
                "version = 1\nstate_dir = {}\nips = \"auto\"\nips_include = [{include}]\nips_rescan = {}\n\n{config_body}",
                toml_path(&self.state_dir),
                toml_str(rescan),
            ),
        )?;
        Ok(())
    }

    fn write_netns_config(&self, body: &str) -> anyhow::Result<()> {
        let ips = self
            .ips
            .iter()
            .map(|ip| toml_str(ip.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &self.config_path,
            format!(
                "version = 1
state_dir = {}
ips = [{ips}]

{body}",
                toml_path(&self.state_dir)
            ),
        )?;
        Ok(())
    }

    /// Scratch directory of this host (certificate files of its targets live here).
    pub fn tls_dir(&self) -> &Path {
        &self.tls_dir
    }

    fn program(&self) -> (PathBuf, Vec<std::ffi::OsString>) {
        match &self.netns {
            None => (self.bin.clone(), Vec::new()),
            Some(ns) => (
                PathBuf::from("ip"),
                vec![
                    "netns".into(),
                    "exec".into(),
                    ns.into(),
                    self.bin.clone().into(),
                ],
            ),
        }
    }

    /// `certfleet-agent --config CFG ARGS...` (inside the host's namespace, if any).
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let (program, prefix) = self.program();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(prefix);
        cmd.arg("--config").arg(&self.config_path).args(args);
        scrub_env_tokio(&mut cmd);
        run_output(&mut cmd, Duration::from_secs(60)).await
    }

    /// `enroll --coordinator URL --token T --ca-sha256 FP --name NAME`. Returns the raw
    /// output; on success also records the host id from `enrolled as host <id>`.
    pub async fn enroll(&mut self, url: &str, token: &str, fp: &str) -> anyhow::Result<Output> {
        self.enroll_many(&[url], token, fp).await
    }

    /// [`Self::enroll`] with one `--coordinator URL` for each of `urls`.
    pub async fn enroll_many(
        &mut self,
        urls: &[&str],
        token: &str,
        fp: &str,
    ) -> anyhow::Result<Output> {
        let name = self.name.clone();
        let mut args = vec!["enroll"];
        for url in urls {
            args.extend(["--coordinator", url]);
        }
        args.extend(["--token", token, "--ca-sha256", fp, "--name", &name]);
        let out = self.cli(&args).await?;
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let id = stdout
                .lines()
                .find_map(|l| l.split_once("enrolled as host ").map(|(_, id)| id.trim()))
                .filter(|id| !id.is_empty())
                .with_context(|| {
                    format!(
                        "enroll succeeded without `enrolled as host <id>`: {}",
                        describe_output(&out)
                    )
                })?;
            self.host_id = Some(id.to_owned());
        }
        Ok(out)
    }

    /// Creates a token on `coord` and enrolls with it; fails unless enrollment succeeds.
    /// Returns the host id.
    pub async fn enroll_with(&mut self, coord: &Coordinator) -> anyhow::Result<String> {
        let token = coord.create_token(None).await?;
        let out = self.enroll(&coord.url(), &token, coord.ca_sha256()).await?;
        anyhow::ensure!(
            out.status.success(),
            "agent {} enroll failed: {}",
            self.name,
            describe_output(&out)
        );
        Ok(self.id()?.to_owned())
    }

    /// Like [`Self::enroll_with`], passing `--label KEY=VALUE` for each of `labels` (what
    /// `[[policy]] match_labels` select on). Returns the host id.
    pub async fn enroll_with_labels(
        &mut self,
        coord: &Coordinator,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let token = coord.create_token(None).await?;
        let name = self.name.clone();
        let url = coord.url();
        let mut args: Vec<String> = [
            "enroll",
            "--coordinator",
            &url,
            "--token",
            &token,
            "--ca-sha256",
            coord.ca_sha256(),
            "--name",
            &name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for (k, v) in labels {
            args.push("--label".to_owned());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cli(&args).await?;
        anyhow::ensure!(
            out.status.success(),
            "agent {} enroll with labels {labels:?} failed: {}",
            self.name,
            describe_output(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout
            .lines()
            .find_map(|l| l.split_once("enrolled as host ").map(|(_, id)| id.trim()))
            .filter(|id| !id.is_empty())
            .with_context(|| {
                format!(
                    "enroll succeeded without `enrolled as host <id>`: {}",
                    describe_output(&out)
                )
            })?
            .to_owned();
        self.host_id = Some(id.clone());
        Ok(id)
    }

    /// Starts `certfleet-agent run`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with_env(&[])
    }

    /// Starts `certfleet-agent run` with extra environment (e.g. the install pause hook).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "agent {} already running", self.name);
        self.runs += 1;
        let (program, prefix) = self.program();
        let mut cmd = Command::new(program);
        cmd.args(prefix);
        cmd.arg("--config").arg(&self.config_path).arg("run");
        scrub_env(&mut cmd);
        cmd.envs(env.iter().copied());
        let child = ChildGuard::spawn(
            &format!("agent-{}-run-{}", self.name, self.runs),
            &mut cmd,
            self.dir.path(),
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM and wait up to `grace` (SIGKILL after). Returns the status and whether it
    /// exited by itself.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<Option<(ExitStatus, bool)>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let res = child.stop(grace).await?;
        self.past_runs.push(child);
        Ok(Some(res))
    }

    /// SIGKILL the running agent.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
            self.past_runs.push(child);
        }
        Ok(())
    }

    pub fn child(&mut self) -> Option<&mut ChildGuard> {
        self.child.as_mut()
    }

    /// SIGHUP to the running agent (a reload of its config), without waiting.
    pub fn sighup(&self) -> anyhow::Result<()> {
        self.child
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("agent {} is not running", self.name))?
            .sighup()
    }

    /// stdout+stderr of every `run`, in order.
    pub fn logs(&self) -> String {
        self.past_runs
            .iter()
            .chain(self.child.iter())
            .map(ChildGuard::logs)
            .collect()
    }

    /// Number of `run`s started so far (1 after the first start).
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// stdout+stderr of run `n` (1-based), empty when there is no such run.
    pub fn run_log(&self, n: u32) -> String {
        let name = format!("agent-{}-run-{n}", self.name);
        self.past_runs
            .iter()
            .chain(self.child.iter())
            .find(|c| c.name() == name)
            .map(ChildGuard::logs)
            .unwrap_or_default()
    }

    /// What the default target holds now, read from the files alone: every file must be
    /// whole (cert, chain and fullchain parse, the key parses) and the key must be the
    /// leaf's. `Err` says which part is not.
    pub fn installed_pair(&self) -> Result<InstalledPair, String> {
        use crate::{pki, tlsutil};
        let leaf = |path: &Path| -> Result<pki::LeafInfo, String> {
            let pem =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs =
                tlsutil::certs_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
            let first = certs
                .first()
                .ok_or_else(|| format!("{}: no certificate", path.display()))?;
            pki::leaf_info(first).map_err(|e| format!("{}: {e}", path.display()))
        };
        let cert = leaf(&self.cert_path())?;
        let fullchain = leaf(&self.fullchain_path())?;
        if fullchain.serial_hex != cert.serial_hex {
            return Err(format!(
                "cert.pem holds serial {} but fullchain.pem {}",
                cert.serial_hex, fullchain.serial_hex
            ));
        }
        leaf(&self.chain_path())?;
        let key_path = self.key_path();
        let key = std::fs::read_to_string(&key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let key_spki =
            pki::key_spki_from_pem(&key).map_err(|e| format!("{}: {e}", key_path.display()))?;
        if key_spki != cert.spki_der {
            return Err(format!(
                "key.pem does not match the certificate (serial {})",
                cert.serial_hex
            ));
        }
        Ok(InstalledPair {
            serial: cert.serial_hex,
            key_spki,
        })
    }

    pub fn dump_logs(&self) {
        for c in self.past_runs.iter().chain(self.child.iter()) {
            c.dump_logs();
        }
    }

    /// Polls the coordinator until this host's certificate is `installed` and the
    /// fullchain file exists. Fails early if the agent process died.
    pub async fn wait_installed(
        &mut self,
        coord: &Coordinator,
        timeout: Duration,
    ) -> anyhow::Result<CertRow> {
        let fullchain = self.fullchain_path();
        self.wait_row(
            coord,
            "an installed certificate (and its fullchain file)",
            timeout,
            |row| row.state == "installed" && fullchain.is_file(),
        )
        .await
    }

    /// Polls the coordinator until this host's certificate row is in `state` (e.g.
    /// `failed`) and returns it. Fails early if the agent process died.
    pub async fn wait_cert_state(
        &mut self,
        coord: &Coordinator,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<CertRow> {
        self.wait_row(
            coord,
            &format!("a certificate in state {state:?}"),
            timeout,
            |row| row.state == state,
        )
        .await
    }

    /// Polls `certs --json` until one of this host's rows satisfies `done`. A failing CLI
    /// call (e.g. the coordinator restarting) is retried until the deadline; the error
    /// shows the last row and the last CLI error.
    async fn wait_row(
        &mut self,
        coord: &Coordinator,
        what: &str,
        timeout: Duration,
        done: impl Fn(&CertRow) -> bool,
    ) -> anyhow::Result<CertRow> {
        let host_id = self.id()?.to_owned();
        let start = std::time::Instant::now();
        let mut last: Option<CertRow> = None;
        let mut last_err: Option<anyhow::Error> = None;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    anyhow::bail!("agent {} exited while waiting for {what}: {st}", self.name);
                }
            }
            match coord.certs().await {
                Ok(certs) => {
                    let mine: Vec<CertRow> =
                        certs.into_iter().filter(|c| c.host_id == host_id).collect();
                    if let Some(row) = mine.iter().find(|c| done(c)) {
                        return Ok(row.clone());
                    }
                    last = mine.into_iter().last().or(last);
                }
                Err(e) => last_err = Some(e),
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "agent {} ({host_id}): no {what} after {timeout:?}; last cert row: {last:?}; \
                     last CLI error: {last_err:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the fullchain file holds a parseable certificate (no coordinator call:
    /// cheap enough for timing loops).
    pub async fn wait_fullchain(
        &mut self,
        timeout: Duration,
        every: Duration,
    ) -> anyhow::Result<()> {
        let path = self.fullchain_path();
        let start = std::time::Instant::now();
        loop {
            if let Ok(pem) = std::fs::read_to_string(&path) {
                if crate::tlsutil::certs_from_pem(&pem).is_ok() {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    anyhow::bail!(
                        "agent {} exited while waiting for fullchain: {st}",
                        self.name
                    );
                }
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "agent {}: no fullchain at {} after {timeout:?}",
                    self.name,
                    path.display()
                );
            }
            tokio::time::sleep(every).await;
        }
    }
}
