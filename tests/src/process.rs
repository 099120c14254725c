//! [`ChildGuard`]: a real child process owned by a test.
//!
//! Invariant: a guard that is dropped leaves no process behind — it sends SIGKILL to its
//! PID and reaps it. stdout/stderr go to files in the owner's work dir, so logs survive
//! the process and can be searched (e.g. for key material) or dumped when a test fails;
//! on drop during a panic the tail of both logs is printed automatically.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How much of each log the panic dump prints.
const DUMP_TAIL_BYTES: usize = 16 * 1024;

#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    pid: u32,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout/stderr redirected to `<log_dir>/<name>.stdout.log` and
    /// `<name>.stderr.log`. `name` must be unique within `log_dir`.
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> anyhow::Result<Self> {
        let stdout_path = log_dir.join(format!("{name}.stdout.log"));
        let stderr_path = log_dir.join(format!("{name}.stderr.log"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let pid = child.id();
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            pid,
            stdout_path,
            stderr_path,
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// stdout followed by stderr.
    pub fn logs(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// Prints both logs (tail) to stderr, headed by the process name.
    pub fn dump_logs(&self) {
        for (which, path) in [("stdout", &self.stdout_path), ("stderr", &self.stderr_path)] {
            let text = read_lossy(path);
            let tail = tail(&text, DUMP_TAIL_BYTES);
            eprintln!(
                "----- {} (pid {}) {} [{}] -----\n{}",
                self.name,
                self.pid,
                which,
                path.display(),
                tail
            );
        }
    }

    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("kill({pid}, {sig}) failed: {e}")),
        }
    }

    /// Sends SIGTERM (does not wait).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Sends SIGHUP (does not wait): a daemon's reload request.
    pub fn sighup(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGHUP)
    }

    /// Sends SIGKILL (does not wait).
    pub fn sigkill(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// `Some(status)` once the process has exited (reaping it).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(st) = self.exit {
            return Ok(Some(st));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(self.exit);
        };
        let st = child.try_wait()?;
        if st.is_some() {
            self.exit = st;
        }
        Ok(st)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.sigkill()?;
        self.wait_timeout(Duration::from_secs(10))
            .await?
            .with_context(|| format!("{} (pid {}) did not die after SIGKILL", self.name, self.pid))
    }

    /// SIGTERM, wait up to `grace`; SIGKILL if it is still running. Returns the exit status
    /// and whether it stopped by itself within the grace period.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<(ExitStatus, bool)> {
        self.sigterm()?;
        if let Some(st) = self.wait_timeout(grace).await? {
            return Ok((st, true));
        }
        Ok((self.kill().await?, false))
    }

    fn kill_blocking(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let _ = self.sigkill();
        if let Some(mut child) = self.child.take() {
            self.exit = child.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let was_running = self.exit.is_none() && matches!(self.try_wait(), Ok(None));
        self.kill_blocking();
        if std::thread::panicking() {
            eprintln!(
                "[harness] {} (pid {}) {} at test failure",
                self.name,
                self.pid,
                if was_running {
                    "was running"
                } else {
                    "had exited"
                }
            );
            self.dump_logs();
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs a short command to completion with a timeout; returns its output. Used for the
/// operator CLI and `enroll`, whose output the tests inspect.
pub async fn run_output(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let desc = format!("{cmd:?}");
    let child = cmd.spawn().with_context(|| format!("spawning {desc}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => Ok(out?),
        Err(_) => anyhow::bail!("{desc} did not finish within {timeout:?}"),
    }
}

/// A one-line summary of an `Output` for error messages.
pub fn describe_output(out: &std::process::Output) -> String {
    format!(
        "exit={} stdout={:?} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
