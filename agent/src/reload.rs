//! SIGHUP (`systemctl reload`): the agent's config file read again.
//!
//! A file that does not load (parse, validation, targets that do not resolve, a
//! `[tls_alpn01]` that cannot be set up) or that moves `state_dir` (the host's identity
//! lives there: a restart) is refused: logged at error level, the running agent goes on
//! with the config it has. An unchanged file changes nothing. A changed one is applied by
//! restarting the agent inside the process: the session is closed (the coordinator learns
//! the new targets, addresses, names, key groups and challenge modes from the Hello of the
//! next session), the commands running finish with the config they started with — an
//! install in progress (deploy hook included) is waited for — and the agent runs again on
//! the new config. The process, its pid and systemd's view of it stay.

use crate::config::AgentConfig;
use crate::session::Agent;
use certfleet_shared::clock::SharedClock;
use certfleet_shared::daemon::{notify_systemd, Hangups, Notify};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a reload waits for an install in progress (its deploy hook's longest timeout,
/// 120 s, and the install around it) before the new config is put in force anyway.
const INSTALL_WAIT: Duration = Duration::from_secs(300);

/// What a reload of the file at `path` does, given the config in force.
#[derive(Debug)]
pub enum Decision {
    /// The new file is the config in force.
    Unchanged,
    /// Why the new file cannot be put in force (the old one keeps running).
    Refused(String),
    /// Put this in force; the settings that changed, for the log.
    Apply(Box<AgentConfig>, Vec<String>),
}

/// Reads and checks the file at `path` against the config in force.
pub fn decide(old: &AgentConfig, path: &Path) -> Decision {
    let new = match AgentConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            let chain =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                });
            return Decision::Refused(certfleet_shared::configenv::without_source_excerpt(
                &certfleet_shared::daemon::error_message(chain),
            ));
        }
    };
    if new.state_dir != old.state_dir {
        return Decision::Refused(format!(
            "{}: state_dir changed ({} → {}); the host's identity lives there, so it is read \
             only at start: restart the agent (systemctl restart certfleet-agent), or put it \
             back to reload the rest",
            path.display(),
            old.state_dir.display(),
            new.state_dir.display()
        ));
    }
    if let Err(why) = Agent::check_config(&new) {
        return Decision::Refused(format!("{}: {why}", path.display()));
    }
    let changed = changes(old, &new);
    if changed.is_empty() {
        Decision::Unchanged
    } else {
        Decision::Apply(Box::new(new), changed)
    }
}

/// The settings that differ, named (`targets +b -c ~a`, `ips`, …).
pub fn changes(old: &AgentConfig, new: &AgentConfig) -> Vec<String> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut out = Vec::new();
    let mut targets = Vec::new();
    for (name, t) in &new.targets {
        match old.targets.get(name) {
            None => targets.push(format!("+{name}")),
            Some(o) if differs(o, t) => targets.push(format!("~{name}")),
            Some(_) => {}
        }
    }
    for name in old.targets.keys() {
        if !new.targets.contains_key(name) {
            targets.push(format!("-{name}"));
        }
    }
    if !targets.is_empty() {
        out.push(format!("targets {}", targets.join(" ")));
    }
    let fields: [(&str, bool); 7] = [
        ("ips", differs(&old.ips, &new.ips)),
        ("names", differs(&old.names, &new.names)),
        ("key_groups", differs(&old.key_groups, &new.key_groups)),
        (
            "coordinators",
            differs(&old.coordinators, &new.coordinators),
        ),
        ("[http01]", differs(&old.http01, &new.http01)),
        ("[tls_alpn01]", differs(&old.tls_alpn01, &new.tls_alpn01)),
        ("[metrics]", differs(&old.metrics, &new.metrics)),
    ];
    out.extend(
        fields
            .into_iter()
            .filter(|(_, d)| *d)
            .map(|(n, _)| n.to_owned()),
    );
    // Anything else (a setting added later): still a change, named generally.
    if out.is_empty() && differs(old, new) {
        out.push("other settings".into());
    }
    out
}

/// `certfleet-agent run`: [`Agent::run`] on `config` until `shutdown`, and on every
/// SIGHUP the file at `path` read again (see the module's doc).
pub async fn run(
    mut config: AgentConfig,
    path: PathBuf,
    clock: SharedClock,
    mut hangups: Hangups,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The config that ran before the one being started, to go back to if it cannot start.
    let mut previous: Option<AgentConfig> = None;
    loop {
        // `ips = "auto"`: the address follower runs (and restarts) the agent itself.
        let agent = match config.auto_ips() {
            Some(_) => None,
            None => match Agent::with_clock(config.clone(), clock.clone()) {
                Ok(a) => Some(a),
                Err(e) => match previous.take() {
                    Some(prev) => {
                        tracing::error!(config = %path.display(), error = %format!("{e:#}"), "the reloaded config cannot start; going back to the previous one");
                        config = prev;
                        continue;
                    }
                    None => return Err(e),
                },
            },
        };
        let stop = shutdown.child_token();
        let running: std::pin::Pin<
            Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + '_>,
        > = match &agent {
            Some(a) => Box::pin(a.run(stop.clone())),
            None => Box::pin(crate::addresses::run_agent(
                config.clone(),
                clock.clone(),
                stop.clone(),
            )),
        };
        tokio::pin!(running);
        let (next, changed) = loop {
            tokio::select! {
                r = &mut running => return r,
                _ = hangups.recv() => {
                    notify_systemd(Notify::Reloading("reloading the configuration"));
                    match decide(&config, &path) {
                        Decision::Refused(why) => {
                            tracing::error!(config = %path.display(), error = %why, "configuration reload refused; the agent goes on with the config it has");
                            notify_systemd(Notify::Ready("running; the last reload was refused (see the log)"));
                        }
                        Decision::Unchanged => {
                            tracing::info!(config = %path.display(), "configuration reload: nothing changed");
                            notify_systemd(Notify::Ready("running; configuration unchanged"));
                        }
                        Decision::Apply(next, changed) => break (next, changed),
                    }
                }
            }
        };
        tracing::info!(config = %path.display(), changed = %changed.join(", "), "configuration reload: applying (the session starts again with a new Hello)");
        // An install in progress finishes first, its deploy hook included (hooks do not
        // start once the agent stops); none starts until the session is closed.
        // (With `ips = "auto"` the follower's agent drains its install when stopped.)
        let idle = match &agent {
            Some(a) => a.wait_idle(INSTALL_WAIT).await,
            None => None,
        };
        if agent.is_some() && idle.is_none() {
            tracing::warn!(
                wait_s = INSTALL_WAIT.as_secs(),
                "an install was still running after the reload's wait; applying the new config anyway"
            );
        }
        stop.cancel();
        running.await?;
        drop(idle);
        // One queued behind it ends on the old config before the new agent starts.
        if let Some(a) = &agent {
            let _ = a.wait_idle(INSTALL_WAIT).await;
        }
        previous = Some(std::mem::replace(&mut config, *next));
        // The new agent's run sends READY=1 once it runs, which ends the reload for systemd.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
version = 1
state_dir = "/var/lib/certfleet-agent"
ips = ["203.0.113.7"]
[targets.web]
preset = "nginx"
dir = "/etc/nginx/tls"
"#;

    fn cfg(text: &str) -> AgentConfig {
        AgentConfig::from_toml(text, Path::new("agent.toml"), std::iter::empty()).expect("config")
    }

    #[test]
    fn nothing_changed_is_no_change() {
        assert!(changes(&cfg(BASE), &cfg(BASE)).is_empty());
    }

    #[test]
    fn targets_and_hello_fields_are_named() {
        let old = cfg(BASE);
        let new = cfg(&format!(
            "{}\n[targets.second]\npreset = \"nginx\"\ndir = \"/etc/nginx/tls2\"\n",
            BASE.replace("203.0.113.7", "203.0.113.8")
        ));
        assert_eq!(changes(&old, &new), vec!["targets +second", "ips"]);
        assert_eq!(changes(&new, &old), vec!["targets -second", "ips"]);
        let moved = cfg(&BASE.replace("/etc/nginx/tls", "/srv/tls"));
        assert_eq!(changes(&old, &moved), vec!["targets ~web"]);
    }

    #[test]
    fn a_bad_file_or_a_moved_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let old = cfg(BASE);
        std::fs::write(&path, format!("{BASE}bogus = 1\n")).unwrap();
        match decide(&old, &path) {
            Decision::Refused(why) => assert!(why.contains("bogus"), "{why}"),
            d => panic!("{d:?}"),
        }
        std::fs::write(
            &path,
            BASE.replace("/var/lib/certfleet-agent", "/srv/agent"),
        )
        .unwrap();
        match decide(&old, &path) {
            Decision::Refused(why) => {
                assert!(why.contains("state_dir changed"), "{why}");
                assert!(why.contains("restart"), "{why}");
            }
            d => panic!("{d:?}"),
        }
        std::fs::write(&path, BASE).unwrap();
        assert!(matches!(decide(&old, &path), Decision::Unchanged));
        std::fs::write(&path, BASE.replace("203.0.113.7", "203.0.113.9")).unwrap();
        match decide(&old, &path) {
            Decision::Apply(new, changed) => {
                assert_eq!(changed, vec!["ips"]);
                assert_eq!(new.ips, vec!["203.0.113.9"]);
            }
            d => panic!("{d:?}"),
        }
    }
}
