//! The target's own commands: config test and reload (argv with a timeout, or a signal to
//! a pid file). Only argv from the local config is run (design invariant 3).

use crate::error::AgentFailure;
use crate::target::{Reload, Target};
use certfleet_shared::fsutil::read_limited;
use std::time::Duration;

/// Output kept from a command, in characters.
const OUTPUT_LIMIT: usize = 2048;

/// Runs an argv with a timeout; `Ok(output)` on exit 0.
async fn run(argv: &[String], timeout: Duration) -> Result<Result<String, String>, String> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(Ok(String::new()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "{program} did not finish within {} s",
                timeout.as_secs()
            ))
        }
        Ok(Err(e)) => return Err(format!("cannot run {program:?}: {e}")),
        Ok(Ok(out)) => out,
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text: String = text.trim().chars().take(OUTPUT_LIMIT).collect();
    Ok(if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{} ({}): {text}", program, out.status))
    })
}

/// The target's config test, if it has one.
pub(super) async fn run_check(target: &Target) -> Result<(), AgentFailure> {
    if target.check.is_empty() {
        return Ok(());
    }
    match run(&target.check, target.reload_timeout).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) | Err(e) => Err(AgentFailure::new(
            "config_test_failed",
            format!(
                "config test of target {} failed, not reloading: {e}",
                target.name
            ),
        )),
    }
}

/// Reloads the target's web server: its command, or its signal to the pid file.
pub(super) async fn reload(target: &Target) -> Result<String, AgentFailure> {
    let name = &target.name;
    let failed = |m: String| {
        AgentFailure::new(
            "reload_failed",
            format!("reload of target {name} failed: {m}"),
        )
    };
    match &target.reload {
        Reload::None => Ok(String::new()),
        Reload::Command(argv) => match run(argv, target.reload_timeout).await {
            Ok(Ok(out)) => {
                tracing::info!(target = %name, "reload command succeeded");
                Ok(out)
            }
            Ok(Err(e)) | Err(e) => Err(failed(e)),
        },
        Reload::Signal { signal, pid_file } => {
            let text = read_limited(pid_file, 64)
                .map_err(|e| failed(format!("cannot read {}: {e}", pid_file.display())))?;
            let pid: i32 = String::from_utf8_lossy(&text)
                .trim()
                .parse()
                .ok()
                .filter(|p| *p > 1)
                .ok_or_else(|| {
                    failed(format!("{} does not hold a process id", pid_file.display()))
                })?;
            let sig: nix::sys::signal::Signal = format!("SIG{signal}")
                .parse()
                .map_err(|_| failed(format!("unknown signal {signal}")))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| failed(format!("cannot signal pid {pid}: {e}")))?;
            tracing::info!(target = %name, pid, signal = %signal, "reload signal sent");
            Ok(String::new())
        }
    }
}
