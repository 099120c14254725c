//! SIGHUP (`systemctl reload`): the configuration file is read again and, when it is good,
//! put in force without a restart — agent sessions stay open and orders in flight finish
//! on the configuration they started with (see [`crate::engine::live`]).
//!
//! - A file that does not parse or validate, a DNS provider whose credentials cannot be
//!   read, or a changed setting that is read only at start ([`diff::restart_only`]) refuses
//!   the whole reload: logged at error level and audited `config_reload_failed` with the
//!   message, the previous configuration keeps running. Refused rather than half applied,
//!   so the configuration in force is always one whole file.
//! - A good file is swapped in at once and audited `config_reloaded` with a summary;
//!   then every host's desired certificates are derived again, so a new or changed policy
//!   takes effect now. A certificate whose task was running during that pass is derived
//!   once more when the task has ended (the task wrote the record it started with).

use crate::audit::{Entry, Kind};
use crate::config::{diff, Config};
use crate::engine::Engine;
use certfleet_shared::daemon::{notify_systemd, Notify};
use certfleet_shared::ids::HostId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Why the certificates are looked at again after a reload (the next action's reason).
const REASON: &str = "configuration reloaded";
/// How long the pass after a reload waits for certificate tasks that were running.
const RUNNING_WAIT: Duration = Duration::from_secs(600);

/// Reload requests for [`crate::serve_with_reload`]: the file to read and a channel a
/// message on which asks for one reload (the binary sends one per SIGHUP).
pub struct Reloads {
    pub path: PathBuf,
    pub requests: mpsc::Receiver<()>,
}

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    Applied(Box<diff::Summary>),
    Refused(String),
}

/// Reads the file again and applies it, or refuses it (see the module's doc). Tells
/// systemd RELOADING=1 … READY=1 around it.
pub async fn reload(engine: &Arc<Engine>, path: &std::path::Path) -> Outcome {
    notify_systemd(Notify::Reloading("reloading the configuration"));
    let outcome = match check(engine, path) {
        Err(why) => {
            tracing::error!(config = %path.display(), error = %why, "configuration reload refused; the previous configuration keeps running");
            let entry = Entry::by("coordinator")
                .detail("file", path.display().to_string())
                .detail("error", &why);
            if let Err(e) =
                engine
                    .audit
                    .append(Kind::ConfigReloadFailed, engine.clock.now_unix(), entry)
            {
                tracing::error!(error = %e, "audit append failed");
            }
            Outcome::Refused(why)
        }
        Ok((config, dns)) => {
            for w in config.warnings() {
                tracing::warn!("{w}");
            }
            let old = engine.live().config.clone();
            let summary = diff::Summary::of(&old, &config);
            engine.swap_config(config, dns);
            let text = summary.text();
            tracing::info!(config = %path.display(), changes = %text, "configuration reloaded");
            let entry = Entry::by("coordinator")
                .detail("file", path.display().to_string())
                .detail("summary", &text)
                .detail("changes", summary.json());
            if let Err(e) =
                engine
                    .audit
                    .append(Kind::ConfigReloaded, engine.clock.now_unix(), entry)
            {
                tracing::error!(error = %e, "audit append failed");
            }
            if !summary.is_empty() {
                rederive_all(engine).await;
            }
            Outcome::Applied(Box::new(summary))
        }
    };
    let status = match &outcome {
        Outcome::Applied(s) => format!("serving; configuration reloaded ({})", s.text()),
        Outcome::Refused(_) => {
            "serving; the last reload was refused (see the log), the previous configuration runs"
                .to_owned()
        }
    };
    notify_systemd(Notify::Ready(&status));
    outcome
}

/// The new configuration and its DNS providers, or why it cannot be put in force.
fn check(
    engine: &Engine,
    path: &std::path::Path,
) -> Result<(Config, Arc<crate::dns::DnsProviders>), String> {
    // No source excerpt: the log and the audit trail never get a value from the file.
    let message = |e: &(dyn std::error::Error + 'static)| {
        certfleet_shared::configenv::without_source_excerpt(
            &certfleet_shared::daemon::error_message(std::iter::successors(Some(e), |e| {
                e.source()
            })),
        )
    };
    let config = Config::load(path).map_err(|e| message(&e))?;
    config.check_files(path).map_err(|e| message(&e))?;
    let old = engine.live().config.clone();
    let fixed = diff::restart_only(&old, &config);
    if !fixed.is_empty() {
        return Err(format!(
            "{}: {} changed; {} read only when the coordinator starts, so nothing of the new \
             file was applied: restart the coordinator (systemctl restart \
             certfleet-coordinator) to apply it, or put {} back to reload the rest",
            path.display(),
            fixed.join(", "),
            if fixed.len() == 1 {
                "it is"
            } else {
                "they are"
            },
            if fixed.len() == 1 { "it" } else { "them" },
        ));
    }
    let dns = crate::dns::DnsProviders::from_config(&config.dns_providers)
        .map_err(|e| format!("{}: {}", path.display(), message(&e)))?;
    Ok((config, Arc::new(dns)))
}

/// Derives every host's desired certificates again from the configuration now in force;
/// then, in the background, those of hosts whose certificate tasks were running.
async fn rederive_all(engine: &Arc<Engine>) {
    let hosts = match engine.store.hosts() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the hosts after the reload; their certificates follow the new configuration at their next Hello");
            return;
        }
    };
    let running = engine.running_certs();
    let mut again = BTreeSet::new();
    for host in &hosts {
        if let Err(e) = engine.rederive(&host.id, REASON) {
            tracing::error!(host = %host.id, error = %e, "cannot apply the reloaded configuration to the host's certificates; its next Hello does");
        }
        // Yield between hosts: a large fleet does not hold a runtime thread.
        tokio::task::yield_now().await;
    }
    for cert in &running {
        if let Ok(Some(rec)) = engine.store.cert(cert) {
            again.insert((rec.host_id.clone(), cert.clone()));
        }
    }
    if again.is_empty() {
        return;
    }
    let engine2 = engine.clone();
    engine.spawn_tracked(async move {
        let deadline = tokio::time::Instant::now() + RUNNING_WAIT;
        let mut hosts: BTreeSet<HostId> = BTreeSet::new();
        for (host, cert) in again {
            while engine2.is_running(&cert) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            hosts.insert(host);
        }
        for host in hosts {
            if let Err(e) = engine2.rederive(&host, REASON) {
                tracing::error!(host = %host, error = %e, "cannot apply the reloaded configuration to the host's certificates; its next Hello does");
            }
        }
    });
}

/// Serves reload requests until `shutdown` (a task of [`crate::serve_with_reload`]).
pub(crate) async fn serve_requests(
    engine: Arc<Engine>,
    mut reloads: Reloads,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            r = reloads.requests.recv() => match r {
                Some(()) => { reload(&engine, &reloads.path).await; }
                None => return,
            },
            _ = shutdown.cancelled() => return,
        }
    }
}
