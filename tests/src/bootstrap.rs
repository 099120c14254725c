//! Runs `deploy/cloud-init/certfleet-bootstrap.sh` — the shipped file itself — on a
//! namespace [`FleetHost`], as cloud-init runs it on a new VM. Only the four commands the
//! script names as replaceable are replaced, because a namespace host has neither apt nor
//! systemd:
//! - `CERTFLEET_INSTALL_AGENT`: the built `certfleet-agent` copied into a `bin/` on PATH
//!   (what the package install puts in `/usr/bin`);
//! - `CERTFLEET_START_WEB`: the host's nginx reloaded (the harness started it already);
//! - `CERTFLEET_START_AGENT`: `certfleet-agent run` started in the background unless it
//!   runs already (what `systemctl enable --now` does), its pid in a file; [`Bootstrap`]
//!   stops it on drop;
//! - `CERTFLEET_START_SERVICE`: the "service" records, at the moment it is started, the
//!   serial of the certificate the host serves on its IPv4 address (`openssl s_client`) —
//!   so a test sees what was served when the service came up.
//!
//! Used by the e2e test (`tests/tests/e2e/bootstrap.rs`) and the boot-to-certificate
//! benchmark (`tests/benches/bootstrap.rs`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fleet::FleetHost;
use crate::workdir::WorkDir;
use crate::Coordinator;

/// The shipped script.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cloud-init/certfleet-bootstrap.sh")
}

/// What one run of the script is given.
#[derive(Debug, Clone, Default)]
pub struct BootstrapInput {
    /// The join token, written to the token file (none: no file, as after a first run).
    pub token: Option<String>,
    /// `CERTFLEET_LABELS`.
    pub labels: Vec<String>,
    /// `CERTFLEET_WAIT_TIMEOUT` (default 60s).
    pub timeout: Option<String>,
}

/// The script's working files for one host, and the agent daemon it started.
pub struct Bootstrap {
    dir: WorkDir,
    config: PathBuf,
    ns: String,
    url: String,
    ca_sha256: String,
    name: String,
    web_cert: PathBuf,
    web_key: PathBuf,
    reload: Vec<String>,
    probe: String,
}

/// One run: its output and how long it took.
pub struct Run {
    pub output: Output,
    pub elapsed: Duration,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn success(&self) -> bool {
        self.output.status.success()
    }
}

impl Bootstrap {
    /// For `host` (its agent config and web server as the harness made them), enrolling
    /// with `coord` over the LAN's gateway address `coord_url`.
    pub fn new(host: &FleetHost, coord: &Coordinator, coord_url: &str) -> anyhow::Result<Self> {
        let dir = WorkDir::new(&format!("bootstrap-{}", host.spec.name))?;
        std::fs::create_dir_all(dir.join("bin"))?;
        let ipv4 = host
            .ns
            .ipv4()
            .context("the namespace host has no IPv4 address")?;
        let tls = host.agent.tls_dir();
        Ok(Self {
            config: host.agent.config_path().to_path_buf(),
            ns: host.ns.ns_name().to_owned(),
            url: coord_url.to_owned(),
            ca_sha256: coord.ca_sha256().to_owned(),
            name: host.spec.name.clone(),
            web_cert: tls.join("fullchain.pem"),
            web_key: tls.join("key.pem"),
            reload: host.web.reload_argv(),
            probe: format!("{ipv4}:443"),
            dir,
        })
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("agent.pid")
    }

    /// The agent daemon's log (stdout and stderr of every run the script started).
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The serial the host served when the script started the service (`None`: the
    /// service was not started).
    pub fn served_when_service_started(&self) -> Option<String> {
        let s = std::fs::read_to_string(self.dir.join("service-started")).ok()?;
        s.trim()
            .strip_prefix("serial=")
            .map(crate::pki::normalize_serial)
    }

    /// Runs the script in the host's namespace, with a clean environment: only PATH and
    /// the script's settings.
    pub async fn run(&self, input: &BootstrapInput) -> anyhow::Result<Run> {
        let token_file = self.dir.join("join-token");
        match &input.token {
            Some(t) => certfleet_shared::fsutil::write_atomic(&token_file, t.as_bytes(), 0o600)?,
            None => {
                let _ = std::fs::remove_file(&token_file);
            }
        }
        let _ = std::fs::remove_file(self.dir.join("service-started"));
        let bin = self.dir.join("bin");
        let agent = crate::bins::agent()?;
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let install = format!("install -m 0755 {} {}/certfleet-agent", q(&agent), q(&bin));
        let start_web = self
            .reload
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        let pid = q(&self.pid_file());
        let start_agent = format!(
            "if [ -s {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then :; else \
             certfleet-agent --config \"$CERTFLEET_AGENT_CONFIG\" run >>{log} 2>&1 </dev/null & \
             echo $! >{pid}; fi",
            log = q(&self.dir.join("agent.log")),
        );
        let start_service = format!(
            "openssl s_client -connect {probe} </dev/null 2>/dev/null | openssl x509 -noout -serial >{out}",
            probe = self.probe,
            out = q(&self.dir.join("service-started")),
        );
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "sh"])
            .arg(script_path())
            .env_clear()
            .env("PATH", path)
            .env("RUST_LOG", "info,h2=warn,hyper=warn,tower=warn")
            .env("NO_COLOR", "1")
            .env("CERTFLEET_BOOTSTRAP_ENV", self.dir.join("no-env-file"))
            .env("CERTFLEET_COORDINATOR", &self.url)
            .env("CERTFLEET_CA_SHA256", &self.ca_sha256)
            .env("CERTFLEET_TOKEN_FILE", &token_file)
            .env("CERTFLEET_LABELS", input.labels.join(" "))
            .env("CERTFLEET_NAME", &self.name)
            .env(
                "CERTFLEET_WAIT_TIMEOUT",
                input.timeout.as_deref().unwrap_or("60s"),
            )
            .env("CERTFLEET_AGENT_CONFIG", &self.config)
            .env("CERTFLEET_WEB_CERT", &self.web_cert)
            .env("CERTFLEET_WEB_KEY", &self.web_key)
            .env("CERTFLEET_INSTALL_AGENT", install)
            .env("CERTFLEET_START_WEB", start_web)
            .env("CERTFLEET_START_AGENT", start_agent)
            .env("CERTFLEET_START_SERVICE", start_service)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let started = Instant::now();
        let output = tokio::time::timeout(Duration::from_secs(180), cmd.output())
            .await
            .context("the bootstrap script ran for 180 s")??;
        Ok(Run {
            output,
            elapsed: started.elapsed(),
        })
    }

    /// The agent daemon the script started, if it runs.
    pub fn agent_pid(&self) -> Option<Pid> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let pid = Pid::from_raw(pid);
        kill(pid, None).is_ok().then_some(pid)
    }

    /// Stops the agent daemon: SIGTERM, up to 15 s, then SIGKILL.
    pub fn stop_agent(&self) {
        let Some(pid) = self.agent_pid() else {
            return;
        };
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && kill(pid, None).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if kill(pid, None).is_ok() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(self.pid_file());
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- bootstrap agent log ({}):\n{}",
                self.name,
                self.agent_log()
            );
        }
        self.stop_agent();
    }
}

/// `s` as one word for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
