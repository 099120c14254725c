//! [`Resolver`]: a real recursive resolver (Debian `unbound`) in front of the test's
//! authoritative servers, for ACME servers that must follow a CNAME from one zone into
//! another. knotd answers `_acme-challenge.NAME CNAME target` but, being authoritative
//! only, does not chase the target into its other zone; pebble's and acme2certifier's stub
//! resolvers do not ask again for the target either. A recursive resolver does, as the
//! resolvers of real CAs do.
//!
//! Each instance runs its own `unbound -d` in a temp dir on a random `127.X.Y.Z` and a free
//! port, with a `stub-zone` per zone pointing at its authoritative server, no cache (every
//! question reaches the authoritative server, so a record removed is gone at once), no
//! DNSSEC validation, and `test.` not answered locally (unbound serves RFC 6761 names
//! itself by default). Killed by PID on drop.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::process::ChildGuard;
use crate::workdir::WorkDir;

const START_TIMEOUT: Duration = Duration::from_secs(15);
const INSTALL_HINT: &str = "install it with `apt-get install -y unbound`";

/// A running `unbound`, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct Resolver {
    // Field order is drop order: the process dies before its directory goes.
    child: ChildGuard,
    addr: SocketAddr,
    dir: WorkDir,
}

impl Resolver {
    /// Starts a resolver that answers for each `(zone, authoritative server)` by asking
    /// that server; names outside the zones are not resolved.
    pub async fn start(stubs: &[(&str, SocketAddr)]) -> anyhow::Result<Self> {
        anyhow::ensure!(!stubs.is_empty(), "Resolver: no zones");
        let dir = WorkDir::new("unbound")?;
        let addr = crate::dns::pick_address(None)?;
        let mut conf = format!(
            "server:\n    interface: {ip}@{port}\n    port: {port}\n    do-daemonize: no\n    \
             username: \"\"\n    chroot: \"\"\n    directory: \"{d}\"\n    pidfile: \"\"\n    \
             use-syslog: no\n    logfile: \"\"\n    verbosity: 1\n    do-ip6: no\n    \
             do-not-query-localhost: no\n    access-control: 127.0.0.0/8 allow\n    \
             module-config: \"iterator\"\n    cache-max-ttl: 0\n    \
             cache-max-negative-ttl: 0\n    local-zone: \"test.\" nodefault\n    \
             domain-insecure: \"test.\"\n",
            ip = addr.ip(),
            port = addr.port(),
            d = dir.path().display(),
        );
        for (zone, server) in stubs {
            anyhow::ensure!(
                !zone.is_empty()
                    && zone
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                "Resolver: not a zone name: {zone:?}"
            );
            conf.push_str(&format!(
                "stub-zone:\n    name: \"{zone}\"\n    stub-addr: {}@{}\n",
                server.ip(),
                server.port()
            ));
        }
        conf.push_str("remote-control:\n    control-enable: no\n");
        let conf_path = dir.join("unbound.conf");
        std::fs::write(&conf_path, &conf)?;
        // Debian installs it in /usr/sbin, not on every PATH.
        let binary = if std::path::Path::new("/usr/sbin/unbound").exists() {
            "/usr/sbin/unbound"
        } else {
            "unbound"
        };
        let mut cmd = Command::new(binary);
        cmd.arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .current_dir(dir.path());
        let child = ChildGuard::spawn("unbound", &mut cmd, dir.path())
            .with_context(|| format!("starting {binary} ({INSTALL_HINT})"))?;
        let mut resolver = Self { child, addr, dir };
        resolver.wait_ready(stubs[0].0).await?;
        Ok(resolver)
    }

    /// Waits until the first zone's SOA is answered through the resolver.
    async fn wait_ready(&mut self, zone: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                anyhow::bail!(
                    "unbound exited during startup ({st}); its log:\n{}",
                    self.child.logs()
                );
            }
            if let Ok(out) = self.ask(zone, "SOA").await {
                if out.contains("status: NOERROR") && out.contains("ANSWER SECTION") {
                    return Ok(());
                }
            }
            if start.elapsed() > START_TIMEOUT {
                anyhow::bail!(
                    "unbound on {} did not resolve {zone} SOA within {START_TIMEOUT:?}; its log:\n{}",
                    self.addr,
                    self.child.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kdig` (recursion desired) through the resolver; its full output.
    pub async fn ask(&self, name: &str, rtype: &str) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new("kdig");
        cmd.arg(format!("@{}", self.addr.ip()))
            .arg("-p")
            .arg(self.addr.port().to_string())
            .args(["+timeout=2", "+retry=1", "-t", rtype, name]);
        let out = crate::process::run_output(&mut cmd, Duration::from_secs(10)).await?;
        anyhow::ensure!(
            out.status.success(),
            "kdig {name} {rtype} @{}: {}",
            self.addr,
            crate::process::describe_output(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where it answers (UDP and TCP): give this to `pebble -dnsserver`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
