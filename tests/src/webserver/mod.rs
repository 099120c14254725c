//! [`WebServer`]: a real nginx or apache running on one [`NsHost`], for tests of the
//! agent's web-server integration (install, config check, reload, "is it served?").
//!
//! This module owns the web server's processes and its work dir: config, pid file, logs,
//! temp and runtime dirs all live in one [`WorkDir`], so any number of instances run side
//! by side in different namespaces. The server runs in the foreground as the leader of its
//! own process group (`nginx` with `daemon off;`, `apache2 -k start -DFOREGROUND`); the
//! guard kills the whole group on drop, also when a test panics (and the namespace's own
//! guard kills anything else left in the namespace).
//!
//! The generated config listens on each of the host's IPs on port 443 (TLS, the configured
//! certificate files; another port with [`WebServerOptions::https_port`]) and, depending on
//! [`Port80`] and [`Redirect`], on port 80: HTTP-01 challenges served from a webroot,
//! proxied to the agent, or not at all (the agent runs standalone), optionally behind a
//! 301 to https. With [`WebServerOptions::alpn_front`] (nginx only) the shipped
//! TLS-ALPN-01 front (`deploy/nginx/acme-tls-alpn.conf`) holds that port instead, sending
//! `acme-tls/1` to the agent's loopback listener and the rest to nginx's TLS server on a
//! loopback address. Before the first real certificate
//! the server needs something to load: [`WebServer::new`] writes a bootstrap certificate
//! (its own throw-away CA, the host's IPs as SANs) into the configured paths when they are
//! absent.
//!
//! Workers run as `www-data` (as on a real Debian host), so a webroot's directories are
//! made world-traversable here, and challenge files must be world-readable — as they must
//! be in production.
//!
//! [`WebServer::check_argv`] and [`WebServer::reload_argv`] are the commands to put in the
//! agent's target config: absolute paths, full flags, not wrapped in `ip netns exec`
//! (the agent runs inside the namespace already).
//!
//! Files: `mod.rs` the server's life (start, reload, stop, probes), `options.rs` what it
//! is configured with, `nginx.rs` / `apache.rs` their configs, `testpki.rs` the bootstrap
//! certificate, `http.rs` plain-HTTP requests.
//!
//! ## Quirks (checked on Debian bookworm: nginx 1.22, apache 2.4)
//! - `apache2 -t` does not load certificates: a certificate/key mismatch passes it
//!   ("Syntax OK", exit 0), `apache2 -k graceful` exits 0 too, and then the running apache
//!   **exits** ("AH02565 ... do not match", "Configuration Failed"): nothing serves 443.
//!   `nginx -t` catches the mismatch (exit 1), and `nginx -s reload` refuses (exit 1), old
//!   config still served — as does `nginx -s stop`, so the guard stops nginx by signal.
//! - `apache2 -k graceful` when apache is not running *starts* a daemonized apache (its own
//!   session, not this guard's process group); the namespace's guard still kills it.
//! - An IP-based apache `<VirtualHost>` without `ServerName` costs a reverse DNS lookup of
//!   its address at every start and reload (10 s each without DNS); a bracketed IPv6
//!   literal is rejected as `ServerName`. mod_alias `Redirect`/`RedirectMatch` percent-encode
//!   the brackets of an IPv6 target (`https://%5b..%5d/`), so redirects use mod_rewrite `NE`.
//! - A reload is asynchronous in both: until the old workers have exited, a new
//!   connection may still get the old certificate ([`WebServer::reload`] waits for them;
//!   [`WebServer::wait_serving`] wants three rounds in a row).
//! - Debian's mod_ssl logs `AH01882 ... compiled against a newer library` on this machine;
//!   harmless.

mod apache;
mod http;
mod nginx;
mod options;
mod testpki;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rustls::pki_types::CertificateDer;

use crate::netns::{ns_std_command, NsHost};
use crate::process::{describe_output, run_output, ChildGuard};
use crate::tlsutil;
use crate::workdir::WorkDir;

pub use http::{http_get, HttpReply};
pub use options::{AlpnFrontOptions, CertPaths, Port80, Redirect, ServerKind, WebServerOptions};
pub use testpki::TestPki;

/// The path prefix HTTP-01 validation requests use.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The user the workers run as (the master stays root to bind ports and read keys).
const WORKER_USER: &str = "www-data";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// nginx or apache on one namespace host. Killed (the whole process group) on drop.
#[derive(Debug)]
pub struct WebServer {
    // Field order matters for drop: processes die before their directory goes.
    child: Option<ChildGuard>,
    past_runs: Vec<ChildGuard>,
    runs: u32,
    host_name: String,
    ns: String,
    binary: PathBuf,
    opts: WebServerOptions,
    config_path: PathBuf,
    broken: bool,
    bootstrap: Option<TestPki>,
    dir: WorkDir,
}

impl WebServer {
    /// Prepares (does not start) a web server on `host`: work dir, config, and the
    /// bootstrap certificate when none of the files `opts.kind` reads exist yet.
    pub fn new(host: &NsHost, opts: WebServerOptions) -> anyhow::Result<Self> {
        let program = opts.kind.program();
        let binary = find_binary(program)?;
        opts.check()?;
        let dir = WorkDir::new(&format!("{program}-{}", host.name()))?;
        // Workers (www-data) read htdocs and write temp files below the work dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        for sub in ["htdocs", "tmp", "run", "logs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("htdocs/index.html"), "certfleet test server\n")?;
        std::fs::set_permissions(
            dir.join("htdocs/index.html"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        let config_path = dir.join(match opts.kind {
            ServerKind::Nginx => "nginx.conf",
            ServerKind::Apache => "apache2.conf",
        });
        let mut server = Self {
            child: None,
            past_runs: Vec::new(),
            runs: 0,
            host_name: host.name().to_owned(),
            ns: host.ns_name().to_owned(),
            binary,
            opts,
            config_path,
            broken: false,
            bootstrap: None,
            dir,
        };
        server.bootstrap = server.ensure_cert_files()?;
        server.prepare_port80()?;
        server.write_config()?;
        Ok(server)
    }

    /// Writes the bootstrap certificate if none of the used files exist; fails if only
    /// some do (a half-installed certificate is a test bug).
    fn ensure_cert_files(&self) -> anyhow::Result<Option<TestPki>> {
        let used = self.opts.certs.used_by(self.opts.kind);
        let present: Vec<&&Path> = used.iter().filter(|p| p.exists()).collect();
        if present.len() == used.len() {
            return Ok(None);
        }
        anyhow::ensure!(
            present.is_empty(),
            "some certificate files exist ({present:?}) and some do not ({used:?})"
        );
        let pki = TestPki::generate(&format!("bootstrap {}", self.host_name), &self.opts.ips)?;
        pki.write_to(&self.opts.certs)?;
        Ok(Some(pki))
    }

    fn prepare_port80(&self) -> anyhow::Result<()> {
        if let Port80::Webroot(root) = &self.opts.port80 {
            anyhow::ensure!(
                root.is_absolute(),
                "webroot {} is not absolute",
                root.display()
            );
            let challenge = root.join(".well-known/acme-challenge");
            std::fs::create_dir_all(&challenge)
                .with_context(|| format!("creating {}", challenge.display()))?;
            make_world_readable_dir(&challenge)?;
        }
        Ok(())
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let text = match self.opts.kind {
            ServerKind::Nginx => nginx::render(&self.opts, self.dir.path())?,
            ServerKind::Apache => apache::render(&self.opts, self.dir.path()),
        };
        std::fs::write(&self.config_path, text)
            .with_context(|| format!("writing {}", self.config_path.display()))
    }

    /// The flags every nginx invocation needs to find this instance.
    fn nginx_base_args(&self) -> Vec<String> {
        let d = self.dir.path().display().to_string();
        vec![
            "-p".to_owned(),
            format!("{d}/"),
            "-e".to_owned(),
            format!("{d}/logs/error.log"),
            "-c".to_owned(),
            self.config_path.display().to_string(),
        ]
    }

    /// The agent's `check` command: `nginx -t -p DIR/ -e DIR/logs/error.log -c CONF` or
    /// `apache2 -t -f CONF`. Absolute paths; not wrapped in `ip netns exec`.
    pub fn check_argv(&self) -> Vec<String> {
        let mut argv = vec![self.binary.display().to_string()];
        match self.opts.kind {
            ServerKind::Nginx => {
                argv.push("-t".to_owned());
                argv.extend(self.nginx_base_args());
            }
            ServerKind::Apache => {
                argv.extend(["-t", "-f"].map(str::to_owned));
                argv.push(self.config_path.display().to_string());
            }
        }
        argv
    }

    /// The agent's `reload` command: `nginx -p .. -e .. -c CONF -s reload` or
    /// `apache2 -f CONF -k graceful`. Absolute paths; not wrapped in `ip netns exec`.
    pub fn reload_argv(&self) -> Vec<String> {
        let mut argv = vec![self.binary.display().to_string()];
        match self.opts.kind {
            ServerKind::Nginx => {
                argv.extend(self.nginx_base_args());
                argv.extend(["-s", "reload"].map(str::to_owned));
            }
            ServerKind::Apache => {
                argv.push("-f".to_owned());
                argv.push(self.config_path.display().to_string());
                argv.extend(["-k", "graceful"].map(str::to_owned));
            }
        }
        argv
    }

    /// Starts the server in its namespace and waits until every listening address accepts
    /// TCP from the root namespace.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "{} on {} already running",
            self.kind().program(),
            self.host_name
        );
        self.runs += 1;
        let mut cmd = ns_std_command(&self.ns, &self.binary);
        match self.opts.kind {
            ServerKind::Nginx => {
                cmd.args(self.nginx_base_args());
            }
            ServerKind::Apache => {
                cmd.arg("-f")
                    .arg(&self.config_path)
                    .args(["-k", "start", "-DFOREGROUND"]);
            }
        }
        // Leader of its own group: the drop kills master and workers together.
        cmd.current_dir(self.dir.path()).process_group(0);
        let name = format!("{}-run-{}", self.kind().program(), self.runs);
        let child = ChildGuard::spawn(&name, &mut cmd, self.dir.path())?;
        self.child = Some(child);
        self.wait_listening(START_TIMEOUT).await
    }

    async fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let addrs: Vec<SocketAddr> = self
            .https_addrs()
            .into_iter()
            .chain(self.http_addrs())
            .collect();
        let start = Instant::now();
        let mut pending = addrs.clone();
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?.map(|st| (st, child.stderr())),
                None => None,
            };
            if let Some((st, stderr)) = exited {
                // Config errors go to stderr, runtime errors to the error log.
                anyhow::bail!(
                    "{} on {} exited during startup ({st}); stderr:\n{stderr}\nerror log:\n{}",
                    self.kind().program(),
                    self.host_name,
                    self.error_log()
                );
            }
            let mut still = Vec::new();
            for addr in pending {
                let ok = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                if !ok {
                    still.push(addr);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "{} on {}: {pending:?} not accepting after {timeout:?}; error log:\n{}",
                    self.kind().program(),
                    self.host_name,
                    self.error_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (SIGTERM to its process group, SIGKILL after 10 s). Idempotent.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pgid = pgid_of(&child)?;
        signal_group(pgid, Signal::SIGTERM)?;
        if child.wait_timeout(Duration::from_secs(10)).await?.is_none() {
            signal_group(pgid, Signal::SIGKILL)?;
            child.kill().await?;
        }
        // Workers that outlive their master (they should not) go too.
        signal_group(pgid, Signal::SIGKILL)?;
        self.past_runs.push(child);
        Ok(())
    }

    /// Whether the master process is running.
    pub fn is_running(&self) -> bool {
        self.pid()
            .and_then(|p| i32::try_from(p).ok())
            .is_some_and(pid_running)
    }

    /// Runs [`Self::check_argv`] in the namespace; returns its output (pass or fail).
    pub async fn config_test(&self) -> anyhow::Result<Output> {
        self.run_in_ns(&self.check_argv()).await
    }

    /// Runs [`Self::reload_argv`] in the namespace; returns its output (pass or fail).
    /// The reload itself is asynchronous: see [`Self::wait_serving`].
    pub async fn reload_output(&self) -> anyhow::Result<Output> {
        self.run_in_ns(&self.reload_argv()).await
    }

    /// Runs the reload command and waits until it took effect: the command succeeded, the
    /// workers of the previous generation have exited (until then a new connection may
    /// still get the old certificate) and the master is still running.
    pub async fn reload(&mut self) -> anyhow::Result<()> {
        let program = self.kind().program();
        let old_workers = self.worker_pids();
        let out = self.reload_output().await?;
        anyhow::ensure!(
            out.status.success(),
            "{program} reload on {} failed: {}",
            self.host_name,
            describe_output(&out)
        );
        let waited = crate::wait_for(
            &format!(
                "{program} on {}: old workers {old_workers:?} to exit",
                self.host_name
            ),
            RELOAD_TIMEOUT,
            Duration::from_millis(20),
            || {
                let old = &old_workers;
                async move { Ok(old.iter().all(|p| !pid_running(*p)).then_some(())) }
            },
        )
        .await;
        if let Err(e) = waited {
            anyhow::bail!("{e:#}; error log:\n{}", self.error_log());
        }
        anyhow::ensure!(
            self.is_running(),
            "{program} on {} died on reload; error log:\n{}",
            self.host_name,
            self.error_log()
        );
        Ok(())
    }

    /// The master's child processes (nginx workers, apache children).
    pub fn worker_pids(&self) -> Vec<i32> {
        let Some(master) = self.pid() else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                proc_stat(*pid).is_some_and(|(state, ppid)| state != 'Z' && ppid == master)
            })
            .collect()
    }

    async fn run_in_ns(&self, argv: &[String]) -> anyhow::Result<Output> {
        let (program, args) = argv.split_first().context("empty argv")?;
        let mut cmd = tokio::process::Command::from(ns_std_command(&self.ns, program));
        cmd.args(args).current_dir(self.dir.path());
        run_output(&mut cmd, CMD_TIMEOUT).await
    }

    /// Appends a syntax error to the config so that [`Self::config_test`] fails.
    pub fn break_config(&mut self) -> anyhow::Result<()> {
        let junk = match self.opts.kind {
            ServerKind::Nginx => "certfleet_broken_directive on;\n",
            ServerKind::Apache => "CertfleetBrokenDirective on\n",
        };
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.config_path)
            .with_context(|| format!("opening {}", self.config_path.display()))?;
        f.write_all(junk.as_bytes())?;
        self.broken = true;
        Ok(())
    }

    /// Rewrites the generated config (undoes [`Self::break_config`]).
    pub fn restore_config(&mut self) -> anyhow::Result<()> {
        self.write_config()?;
        self.broken = false;
        Ok(())
    }

    /// Whether [`Self::break_config`] is in effect.
    pub fn is_config_broken(&self) -> bool {
        self.broken
    }

    /// Changes the options and rewrites the config (no reload). The certificate paths may
    /// change too; no bootstrap certificate is written for them.
    pub fn reconfigure(&mut self, f: impl FnOnce(&mut WebServerOptions)) -> anyhow::Result<()> {
        let mut opts = self.opts.clone();
        f(&mut opts);
        opts.check()?;
        anyhow::ensure!(opts.kind == self.opts.kind, "cannot change the server kind");
        self.opts = opts;
        self.prepare_port80()?;
        self.write_config()?;
        self.broken = false;
        Ok(())
    }

    /// Listen on `ips` from now on (rewrites the config; reload to apply).
    pub fn set_ips(&mut self, ips: Vec<IpAddr>) -> anyhow::Result<()> {
        self.reconfigure(|o| o.ips = ips)
    }

    /// The leaf the configured files hold (fullchain's first for nginx, cert for apache).
    pub fn configured_leaf(&self) -> anyhow::Result<CertificateDer<'static>> {
        let path = match self.opts.kind {
            ServerKind::Nginx => &self.opts.certs.fullchain,
            ServerKind::Apache => &self.opts.certs.cert,
        };
        tlsutil::certs_from_file(path)?
            .into_iter()
            .next()
            .with_context(|| format!("no certificate in {}", path.display()))
    }

    /// Waits until every HTTPS address serves `leaf`, three rounds in a row (e.g. after
    /// the agent's reload: until the old workers are gone, a new connection may still get
    /// the old certificate).
    pub async fn wait_serving(
        &self,
        leaf: &CertificateDer<'static>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        const ROUNDS: u32 = 3;
        let addrs = self.https_addrs();
        let start = Instant::now();
        let mut streak = 0;
        loop {
            let mut last_problem = None;
            for addr in &addrs {
                match tlsutil::served_leaf(*addr).await {
                    Ok(served) if served == *leaf => {}
                    Ok(_) => last_problem = Some(format!("{addr} serves another leaf")),
                    Err(e) => last_problem = Some(format!("{e:#}")),
                }
            }
            match last_problem {
                None => streak += 1,
                Some(problem) => {
                    streak = 0;
                    anyhow::ensure!(
                        start.elapsed() < timeout,
                        "{} on {}: expected leaf not served after {timeout:?}: {problem}",
                        self.kind().program(),
                        self.host_name
                    );
                }
            }
            if streak >= ROUNDS {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kind(&self) -> ServerKind {
        self.opts.kind
    }

    pub fn options(&self) -> &WebServerOptions {
        &self.opts
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.opts.ips
    }

    /// `ip:https_port` (443 by default) for every IP.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.opts
            .ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.opts.https_port))
            .collect()
    }

    /// `ip:80` for every IP when the server listens on port 80, else empty.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        if !self.opts.serves_port80() {
            return Vec::new();
        }
        self.opts
            .ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, 80))
            .collect()
    }

    /// The bootstrap CA and leaf, when [`Self::new`] wrote them.
    pub fn bootstrap(&self) -> Option<&TestPki> {
        self.bootstrap.as_ref()
    }

    /// The webroot's challenge dir (`DIR/.well-known/acme-challenge`) in Webroot mode.
    pub fn challenge_dir(&self) -> Option<PathBuf> {
        match &self.opts.port80 {
            Port80::Webroot(root) => Some(root.join(".well-known/acme-challenge")),
            _ => None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The server's binary (absolute).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.dir.join("logs/error.log")
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.join("logs/access.log")
    }

    /// The server's error log so far.
    pub fn error_log(&self) -> String {
        read_lossy(&self.error_log_path())
    }

    /// The access log so far.
    pub fn access_log(&self) -> String {
        read_lossy(&self.access_log_path())
    }

    /// PID of the running master process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    fn dump_logs(&self) {
        let (program, host) = (self.kind().program(), &self.host_name);
        eprintln!(
            "----- {program} on {host}: {} -----\n{}",
            self.error_log_path().display(),
            self.error_log()
        );
        eprintln!(
            "----- {program} on {host}: config {} -----\n{}",
            self.config_path.display(),
            read_lossy(&self.config_path)
        );
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if let Some(child) = self.child.take() {
            let pgid = pgid_of(&child);
            // The guard reports whether the master was still running, kills and reaps it;
            // then the rest of its group (the workers) goes. A group outlives its leader.
            drop(child);
            if let Ok(pgid) = pgid {
                let _ = signal_group(pgid, Signal::SIGKILL);
            }
        }
    }
}

/// `(state, ppid)` from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ..."; comm may contain spaces and parentheses.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` exists and is not a zombie.
fn pid_running(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

fn pgid_of(child: &ChildGuard) -> anyhow::Result<Pid> {
    Ok(Pid::from_raw(
        i32::try_from(child.pid()).context("pid out of range")?,
    ))
}

fn signal_group(pgid: Pid, sig: Signal) -> anyhow::Result<()> {
    match killpg(pgid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("killpg({pgid}, {sig}): {e}")),
    }
}

/// `1.2.3.4` or `[fd99::1]`: an IP as it appears in a URL or a listen directive.
pub fn url_host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// `/usr/sbin/<program>` if it exists, else the first match on PATH.
fn find_binary(program: &str) -> anyhow::Result<PathBuf> {
    let sbin = Path::new("/usr/sbin").join(program);
    if sbin.is_file() {
        return Ok(sbin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found (apt-get install -y {program})"))
}

/// Grants o+x on every ancestor of `dir` and o+rx on `dir` and its parents up to the
/// webroot, so the workers (www-data) reach files below it.
fn make_world_readable_dir(dir: &Path) -> anyhow::Result<()> {
    for (i, p) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
        let mode = meta.permissions().mode();
        // The challenge dir and `.well-known` get r+x, everything above x only.
        let want = if i < 2 { 0o005 } else { 0o001 };
        if mode & want != want {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode((mode & 0o7777) | want))
                .with_context(|| format!("chmod o+x {}", p.display()))?;
        }
    }
    Ok(())
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
