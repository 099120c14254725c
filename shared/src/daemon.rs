//! What both daemons' thin `main`s share: logging set-up, waiting for a stop signal,
//! reload requests (SIGHUP), systemd notifications (readiness, reloading, status,
//! stopping), and the one line a failed command prints.

use std::io::IsTerminal;

/// Starts tracing on stderr: `text` (colours only on a terminal, and never with NO_COLOR)
/// or `json` lines for journald and collectors. `RUST_LOG` overrides `default_filter`.
pub fn init_tracing(format: &str, default_filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => return Err(format!("--log-format {other:?}: use text or json")),
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGHUP, the reload request (`systemctl reload`: `ExecReload=/bin/kill -HUP $MAINPID`).
/// Make it early: from then on a SIGHUP no longer ends the process (its default action)
/// but is queued here until [`Hangups::recv`] takes it; several queued are one.
pub struct Hangups(Option<tokio::signal::unix::Signal>);

impl Hangups {
    /// Must run inside a tokio runtime.
    pub fn new() -> Self {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading the configuration needs a restart");
                Self(None)
            }
        }
    }

    /// The next SIGHUP (never, when it could not be listened for).
    pub async fn recv(&mut self) {
        if let Some(s) = &mut self.0 {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Self::new()
    }
}

/// What a daemon tells systemd (`Type=notify`) over `$NOTIFY_SOCKET`; nothing without it.
/// A failure to tell is logged, never fatal: the daemon works the same without systemd.
#[derive(Clone, Copy, Debug)]
pub enum Notify<'a> {
    /// READY=1 with a STATUS= line: the daemon really serves now.
    Ready(&'a str),
    /// RELOADING=1 with MONOTONIC_USEC= (systemd ≥ 253 wants both in one message) and a
    /// STATUS= line: a reload began; [`Notify::Ready`] ends it, whatever its outcome.
    Reloading(&'a str),
    /// STATUS= only: what the daemon is doing, shown by `systemctl status`.
    Status(&'a str),
    /// STOPPING=1: shutdown has begun.
    Stopping,
}

pub fn notify_systemd(what: Notify<'_>) {
    use sd_notify::NotifyState;
    let states = match what {
        Notify::Ready(status) => vec![NotifyState::Ready, NotifyState::Status(status)],
        Notify::Reloading(status) => {
            let mut states = vec![NotifyState::Reloading];
            // CLOCK_MONOTONIC, not the wall clock: systemd matches it to the reload job.
            match NotifyState::monotonic_usec_now() {
                Ok(now) => states.push(now),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for MONOTONIC_USEC=")
                }
            }
            states.push(NotifyState::Status(status));
            states
        }
        Notify::Status(status) => vec![NotifyState::Status(status)],
        Notify::Stopping => vec![NotifyState::Stopping],
    };
    // The variable stays set: unsetting the environment is unsound while other threads run.
    if let Err(e) = sd_notify::notify(false, &states) {
        tracing::warn!(error = %e, socket = ?std::env::var_os("NOTIFY_SOCKET"), "cannot notify systemd ({what:?})");
    }
}

/// The message a failed command prints: the error and its causes joined with `": "`, each
/// said once. Error types that show their cause in their own message (`"{path}:
/// {source}"`) would otherwise repeat it when the chain is printed in full.
pub fn error_message<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut out = String::new();
    for err in chain {
        let text = err.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configenv::ConfigError;

    fn chain(err: &(dyn std::error::Error + 'static)) -> String {
        error_message(std::iter::successors(Some(err), |e| e.source()))
    }

    #[test]
    fn each_cause_is_said_once() {
        let err = ConfigError::Read {
            path: "/etc/certfleet/x.toml".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(
            chain(&err),
            "cannot read config /etc/certfleet/x.toml: no such file"
        );

        #[derive(Debug, thiserror::Error)]
        #[error("starting the agent")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("disk full"));
        assert_eq!(chain(&err), "starting the agent: disk full");
    }
}
