//! The `exec` provider: lego's exec interface. `command... present FQDN VALUE` writes one
//! TXT value, `command... cleanup FQDN VALUE` removes it; FQDN is absolute (trailing dot,
//! as lego passes it). argv only, no shell; stdin is empty; each run is bounded by the
//! provider's `timeout` and killed when it overruns. A non-zero exit is an error naming
//! the program, its status and the end of its stderr.

use super::error::CallError;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;

/// How much of the program's stderr goes into an error (its end).
const STDERR_SHOWN: usize = 2048;
/// Output read from the program at most (per stream); the rest is drained and dropped.
const OUTPUT_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct Exec {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

impl Exec {
    pub fn new(command: &[String], timeout: Duration) -> Result<Self, String> {
        let (program, args) = command
            .split_first()
            .ok_or("command is empty; give the program's absolute path")?;
        Ok(Self {
            program: PathBuf::from(program),
            args: args.to_vec(),
            timeout,
        })
    }

    /// Runs `present FQDN. VALUE` once per value, in order.
    pub async fn present(&self, fqdn: &str, values: &[String]) -> Result<(), CallError> {
        for v in values {
            self.run("present", fqdn, v).await?;
        }
        Ok(())
    }

    /// Runs `cleanup FQDN. VALUE` once per value; every value is tried, the first failure
    /// is returned.
    pub async fn cleanup(&self, fqdn: &str, values: &[String]) -> Result<(), CallError> {
        let mut first = None;
        for v in values {
            if let Err(e) = self.run("cleanup", fqdn, v).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn run(&self, action: &str, fqdn: &str, value: &str) -> Result<(), CallError> {
        let shown = format!("{} {action} {fqdn}.", self.program.display());
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .arg(action)
            .arg(format!("{fqdn}."))
            .arg(value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                CallError::config(format!(
                    "cannot run {} ({e}); check command[0] is an executable file",
                    self.program.display()
                ))
            })?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let outcome = tokio::time::timeout(self.timeout, async {
            let (_out, err, status) = tokio::join!(
                read_limited(stdout.as_mut()),
                read_limited(stderr.as_mut()),
                child.wait()
            );
            (err, status)
        })
        .await;
        let (err, status) = match outcome {
            Ok(done) => done,
            Err(_) => {
                // Killed now (and reaped), not left to run on.
                let _ = child.kill().await;
                return Err(CallError::timeout(format!(
                    "{shown} did not finish within {:?} and was killed",
                    self.timeout
                )));
            }
        };
        let status =
            status.map_err(|e| CallError::transient(format!("waiting for {shown}: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let stderr = tail(&err);
        Err(CallError::transient(format!(
            "{shown} failed ({status}){}",
            if stderr.is_empty() {
                " with no output on stderr".to_owned()
            } else {
                format!("; its stderr: {stderr}")
            }
        )))
    }
}

/// Reads a stream to its end, keeping at most [`OUTPUT_LIMIT`] bytes.
async fn read_limited<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>) -> Vec<u8> {
    let Some(r) = r else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The last [`STDERR_SHOWN`] bytes of the output as one trimmed line of text.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_SHOWN);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    let cut = &text[start..];
    let joined = cut
        .split('\n')
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" | ");
    if start > 0 {
        format!("…{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_shown_by_its_end_on_one_line() {
        assert_eq!(tail(b"  first\nsecond\n"), "first | second");
        let long = "x".repeat(5000) + "END";
        let t = tail(long.as_bytes());
        assert!(t.starts_with('…') && t.ends_with("END"), "{t}");
        assert!(t.len() <= STDERR_SHOWN + 4);
    }
}
