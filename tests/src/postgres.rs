//! [`PostgresServer`]: a private PostgreSQL server (Debian `postgresql`) for one test.
//!
//! Each instance runs `initdb` into its own temp dir (trust authentication, superuser
//! `certfleet`), then `pg_ctl start` on a free port of 127.0.0.1 with its Unix socket in
//! that dir, so a packaged cluster on 5432 is never touched. initdb refuses to run as
//! root: as root the tools run as the `postgres` user (`runuser`), which owns the dir.
//! [`PostgresServer::create_database`] gives each test (or each store) its own database.
//!
//! Dropping the server stops it (`pg_ctl stop -m fast`, SIGKILL to the postmaster if that
//! fails) and prints its log when the test panicked. Where PostgreSQL is not installed,
//! [`PostgresServer::start_or_skip`] prints a `SKIPPED:` line — unless
//! `CERTFLEET_REQUIRE_POSTGRES=1` (set by `tests/run.sh`), which makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::process::describe_output;
use crate::workdir::WorkDir;

/// Set to `1` to fail, not skip, where PostgreSQL is missing.
pub const REQUIRE_ENV: &str = "CERTFLEET_REQUIRE_POSTGRES";
/// The superuser `initdb` creates (trust authentication on 127.0.0.1 only).
pub const SUPERUSER: &str = "certfleet";
const INSTALL_HINT: &str = "install it with `apt-get install -y postgresql` (tests/run.sh does)";

/// Whether `CERTFLEET_REQUIRE_POSTGRES=1` is set.
pub fn postgres_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1")
}

/// The directory with `initdb`, `pg_ctl` and `psql`: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` that has them.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e}; {INSTALL_HINT}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| format!("no /usr/lib/postgresql/*/bin/initdb; {INSTALL_HINT}"))
}

/// A running private PostgreSQL server, stopped when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    running: bool,
    // Last: the directory goes after the server has stopped.
    dir: WorkDir,
}

impl PostgresServer {
    /// A fresh server, or `None` after printing `SKIPPED: <test_name>: …` where
    /// PostgreSQL is not installed.
    ///
    /// # Panics
    /// Where it is missing and `CERTFLEET_REQUIRE_POSTGRES=1`, and when starting an
    /// installed PostgreSQL fails (a broken machine, not a reason to skip).
    pub fn start_or_skip(test_name: &str) -> Option<Self> {
        if let Err(reason) = bin_dir() {
            if postgres_required() {
                panic!("{test_name}: PostgreSQL unavailable ({reason}) and {REQUIRE_ENV}=1 forbids skipping");
            }
            eprintln!("SKIPPED: {test_name}: PostgreSQL unavailable: {reason}");
            return None;
        }
        match Self::start() {
            Ok(s) => Some(s),
            Err(e) => panic!("{test_name}: starting PostgreSQL failed: {e:#}"),
        }
    }

    /// initdb + start on a free port; blocks until the server accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let bin = bin_dir().map_err(anyhow::Error::msg)?;
        let dir = WorkDir::new("pg")?;
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .context("no `postgres` user to run initdb as (the postgresql package makes it)")?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown postgres {}", dir.path().display()))?;
        }
        let port = crate::net::free_port()?;
        let server = Self {
            bin,
            port,
            running: false,
            dir,
        };
        server.tool(
            "initdb",
            &[
                "-D",
                &server.data().display().to_string(),
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "--no-sync",
            ],
        )?;
        let mut server = server;
        server.start_again()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs one of PostgreSQL's tools (as `postgres` when we are root).
    fn tool(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let program = self.bin.join(name);
        let mut cmd = if nix::unistd::Uid::effective().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {} ({INSTALL_HINT})", program.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{name} {args:?} failed: {}\nserver log:\n{}",
            describe_output(&out),
            self.logs()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.tool(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.log().display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (`-m fast`: sessions are cut, as in a restart or failover).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.tool(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-w",
                "-t",
                "60",
                "-m",
                "fast",
                "stop",
            ],
        )?;
        self.running = false;
        Ok(())
    }

    /// Turns TLS on (without a restart): the server presents `cert_pem` (its chain) with
    /// `key_pem`. Plain connections stay allowed, so a client's TLS mode decides.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let (cert, key) = (
            self.data().join("server.crt"),
            self.data().join("server.key"),
        );
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")?.context("no `postgres` user")?;
            for f in [&cert, &key] {
                nix::unistd::chown(f, Some(user.uid), Some(user.gid))?;
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        // The reload is asynchronous: wait until new sessions see it.
        for _ in 0..50 {
            if self.psql("postgres", "SHOW ssl")?.trim() == "on" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("ssl did not turn on; server log:\n{}", self.logs())
    }

    /// Runs SQL as the superuser in `db` (psql, stops at the first error).
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        self.tool(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
        )
    }

    /// A new empty database; returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database name {name:?}: lower-case letters, digits and _ only"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// `postgres://certfleet@127.0.0.1:PORT/DB` (no password: trust on 127.0.0.1).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn kill_postmaster(&self) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.logs();
            let tail = &log[log.len().saturating_sub(16 * 1024)..];
            eprintln!(
                "---- PostgreSQL log ({}) ----\n{tail}",
                self.log().display()
            );
        }
        if self.running && self.stop().is_err() {
            self.kill_postmaster();
        }
    }
}
