//! HTTP-01 challenges for this host's own addresses and for DNS names (which the CA
//! resolves; the responder is keyed by token, so a name needs nothing more of it), in the
//! mode `[http01]` configures:
//!
//! - **standalone** — the agent listens on `port` of each configured address while at
//!   least one challenge is live ([`listener`]).
//! - **proxy** — the same HTTP handler, listening on the loopback `listen` address while a
//!   challenge is live; the local web server forwards `/.well-known/acme-challenge/` to it.
//! - **webroot** — the web server owns the port; the agent writes one file per token under
//!   `<webroot>/.well-known/acme-challenge/` and removes it again ([`webroot`]).
//!
//! For webroot and proxy the web server sits between the CA and the agent, so after
//! presenting, a [`selfcheck`] fetches every challenge the way the CA will and returns
//! warnings (a redirect in front of the challenge path, a wrong answer, no answer). Warnings
//! never fail the command.
//!
//! Before a challenge for a name is answered, the name is resolved ([`crate::resolve`]) and
//! a warning names the addresses when it does not point at this host (in every mode;
//! off with `self_check = false`).
//!
//! This module owns the validation of challenges (this host's IPs, names in canonical
//! form and no wildcard, token syntax, key authorization shape) and the table of live challenges with its TTL. It must not write
//! anywhere but the challenge directory, and it never touches the web server's config.

mod listener;
mod selfcheck;
mod webroot;

pub(crate) use webroot::check_webroot;

use crate::config::{Http01Config, Http01Mode};
use crate::error::AgentFailure;
use crate::resolve::{self, Resolver};
use certfleet_shared::clock::{SharedClock, SystemClock};
use certfleet_shared::identifier::{DnsName, Identifier};
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "/.well-known/acme-challenge/";
/// A challenge the coordinator never cleared is dropped after this.
pub(crate) const CHALLENGE_TTL: Duration = Duration::from_secs(15 * 60);

/// One challenge to present, as the coordinator sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The identifier being validated: one of this host's IP addresses, or a DNS name
    /// (canonical text, no wildcard).
    pub identifier: String,
    pub token: String,
    pub key_authorization: String,
}

#[derive(Clone)]
struct Entry {
    key_authorization: String,
    expires: Instant,
}

type Table = Arc<Mutex<HashMap<String, Entry>>>;

enum Backend {
    /// standalone and proxy: our own HTTP listeners.
    Listen(listener::Listeners),
    Webroot(webroot::Webroot),
}

/// Presents and clears HTTP-01 challenges; the caller does not need to know the mode.
pub struct Responder {
    mode: Http01Mode,
    ips: Vec<IpAddr>,
    port: u16,
    self_check: bool,
    /// Resolve names of challenges and warn when they do not point here.
    name_check: bool,
    resolver: Resolver,
    table: Table,
    backend: Backend,
    /// Wall-clock time for the age of token files left in a webroot.
    clock: SharedClock,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tokens are base64url (RFC 8555 §8.1: at least 128 bits of entropy).
pub fn valid_token(t: &str) -> bool {
    (16..=256).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn valid_token_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Responder {
    /// A responder for this host's `ips` in the mode `config` names (validated at load).
    /// `served` counts challenges answered by the agent's own listener (standalone, proxy).
    ///
    /// In webroot mode this removes token files a previous run left behind that are older
    /// than the challenge TTL.
    pub fn new(ips: Vec<IpAddr>, config: &Http01Config, served: Counter) -> Self {
        Self::with_clock(ips, config, served, Arc::new(SystemClock))
    }

    /// [`Responder::new`] with the age of stale token files measured on `clock`.
    pub fn with_clock(
        ips: Vec<IpAddr>,
        config: &Http01Config,
        served: Counter,
        clock: SharedClock,
    ) -> Self {
        let table = Table::default();
        let backend = match (config.mode, &config.webroot, config.listen) {
            (Http01Mode::Webroot, Some(root), _) => {
                let w = webroot::Webroot::new(root.clone());
                w.sweep_stale(&HashSet::new(), CHALLENGE_TTL, clock.now_unix());
                Backend::Webroot(w)
            }
            (Http01Mode::Proxy, _, Some(listen)) => Backend::Listen(listener::listeners(
                vec![listen],
                listener::Purpose::Proxy,
                table.clone(),
                served,
            )),
            // Standalone (and a config that skipped validation: fall back to standalone).
            _ => Backend::Listen(listener::listeners(
                ips.iter()
                    .map(|ip| SocketAddr::new(*ip, config.port))
                    .collect(),
                listener::Purpose::Standalone,
                table.clone(),
                served,
            )),
        };
        let mode = match backend {
            Backend::Webroot(_) => Http01Mode::Webroot,
            Backend::Listen(_) if config.mode == Http01Mode::Proxy => Http01Mode::Proxy,
            Backend::Listen(_) => Http01Mode::Standalone,
        };
        Self {
            mode,
            ips,
            port: config.port,
            self_check: mode != Http01Mode::Standalone && config.self_check(),
            name_check: config.self_check.unwrap_or(true),
            resolver: resolve::system(),
            table,
            backend,
            clock,
        }
    }

    /// The same responder resolving names with `resolver` (tests).
    #[cfg(test)]
    pub(crate) fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Warnings for the `names` that do not resolve to this host's addresses (see
    /// [`crate::resolve`]); none when the name check is off (`self_check = false`). Also
    /// used for the names of TLS-ALPN-01 challenges.
    pub async fn name_warnings(&self, names: &[DnsName]) -> Vec<String> {
        if !self.name_check {
            return Vec::new();
        }
        let checks = names
            .iter()
            .map(|n| resolve::check(n, &self.ips, &self.resolver));
        futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|c| c.warning)
            .collect()
    }

    /// The mode this responder serves in.
    pub fn mode(&self) -> Http01Mode {
        self.mode
    }

    /// Makes the challenges answerable. Returns warnings from the self-check (webroot and
    /// proxy with `self_check`), which the caller reports but which do not fail the
    /// command. Either every challenge is presented or, on error, none of the new ones.
    pub async fn present(&self, challenges: &[Challenge]) -> Result<Vec<String>, AgentFailure> {
        let mut checks = Vec::with_capacity(challenges.len());
        for c in challenges {
            checks.push((self.check_challenge(c)?, c));
        }
        let fresh: Vec<String> = {
            let mut table = lock(&self.table);
            let expires = Instant::now() + CHALLENGE_TTL;
            challenges
                .iter()
                .filter_map(|c| {
                    let entry = Entry {
                        key_authorization: c.key_authorization.clone(),
                        expires,
                    };
                    table
                        .insert(c.token.clone(), entry)
                        .is_none()
                        .then(|| c.token.clone())
                })
                .collect()
        };
        let activated = match &self.backend {
            Backend::Listen(l) => l.ensure().await,
            Backend::Webroot(w) => {
                let w = w.clone();
                let files: Vec<(String, String)> = challenges
                    .iter()
                    .map(|c| (c.token.clone(), c.key_authorization.clone()))
                    .collect();
                tokio::task::spawn_blocking(move || w.write(&files))
                    .await
                    .unwrap_or_else(|e| {
                        Err(AgentFailure::new(
                            "internal",
                            format!("writing HTTP-01 token files stopped: {e}"),
                        ))
                    })
            }
        };
        if let Err(e) = activated {
            self.forget(&fresh);
            return Err(e);
        }
        let mut names: Vec<DnsName> = Vec::new();
        for (id, _) in &checks {
            if let Identifier::Dns(n) = id {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        let resolved = if self.name_check {
            let found = names
                .iter()
                .map(|n| resolve::check(n, &self.ips, &self.resolver));
            futures::future::join_all(found).await
        } else {
            Vec::new()
        };
        let mut warnings: Vec<String> = resolved.iter().filter_map(|c| c.warning.clone()).collect();
        if self.self_check {
            let via: Vec<(selfcheck::Via, &Challenge)> = checks
                .iter()
                .map(|(id, c)| {
                    let via = match id {
                        Identifier::Dns(n) => selfcheck::Via {
                            // Through the host's addresses the name resolves to, else all.
                            addrs: names
                                .iter()
                                .zip(&resolved)
                                .find(|(m, _)| *m == n)
                                .map(|(_, r)| r.on_host.clone())
                                .filter(|a| !a.is_empty())
                                .unwrap_or_else(|| self.ips.clone()),
                            host: Some(n.as_str().to_owned()),
                        },
                        _ => selfcheck::Via {
                            addrs: id.as_ip().into_iter().collect(),
                            host: None,
                        },
                    };
                    (via, *c)
                })
                .collect();
            warnings.extend(selfcheck::check_all(&via, self.port, &self.hint()).await);
        }
        for w in &warnings {
            tracing::warn!(mode = self.mode.as_str(), "HTTP-01 self-check: {w}");
        }
        Ok(warnings)
    }

    /// Removes challenges (tokens this agent does not hold are ignored); stops listening
    /// when none are left.
    pub fn clear(&self, tokens: &[String]) {
        self.forget(tokens);
    }

    /// Removes every live challenge (at shutdown).
    pub fn clear_all(&self) {
        let all: Vec<String> = lock(&self.table).keys().cloned().collect();
        self.forget(&all);
    }

    /// At shutdown: removes every live challenge and closes the agent's own listeners for
    /// good, waiting (at most `within`) for their connections to end.
    pub async fn close(&self, within: Duration) {
        self.clear_all();
        if let Backend::Listen(l) = &self.backend {
            l.close(within).await;
        }
    }

    /// Drops expired challenges (called periodically). In webroot mode also removes stale
    /// token files nobody holds any more (e.g. left by a previous run of the agent).
    pub fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<String> = lock(&self.table)
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(t, _)| t.clone())
            .collect();
        self.forget(&expired);
        if let Backend::Webroot(w) = &self.backend {
            let live: HashSet<String> = lock(&self.table).keys().cloned().collect();
            w.sweep_stale(&live, CHALLENGE_TTL, self.clock.now_unix());
        }
    }

    /// Once nothing is live: waits until the agent's own listeners have closed their
    /// sockets, so the port is free for whatever comes next.
    pub async fn wait_stopped(&self) {
        if let Backend::Listen(l) = &self.backend {
            l.wait_stopped().await;
        }
    }

    /// Whether the agent's own HTTP listener is up (never in webroot mode).
    pub fn is_listening(&self) -> bool {
        match &self.backend {
            Backend::Listen(l) => l.is_listening(),
            Backend::Webroot(_) => false,
        }
    }

    fn check_challenge(&self, c: &Challenge) -> Result<Identifier, AgentFailure> {
        let id = Identifier::parse(&c.identifier)
            .map_err(|e| AgentFailure::bad_request(format!("HTTP-01 challenge identifier: {e}")))?;
        if id.to_canonical() != c.identifier {
            return Err(AgentFailure::bad_request(format!(
                "HTTP-01 challenge identifier {:?} is not in canonical form; send it as {:?}",
                c.identifier,
                id.to_canonical()
            )));
        }
        match &id {
            Identifier::Ip(ip) if !self.ips.contains(ip) => {
                return Err(AgentFailure::new(
                    "not_my_ip",
                    format!("{ip} is not one of this host's configured ips"),
                ));
            }
            Identifier::Wildcard(_) => {
                return Err(AgentFailure::bad_request(format!(
                    "HTTP-01 cannot validate the wildcard {}: a CA validates wildcards only with DNS-01",
                    c.identifier
                )));
            }
            _ => {}
        }
        if !valid_token(&c.token) {
            return Err(AgentFailure::bad_request("malformed challenge token"));
        }
        let thumb = c
            .key_authorization
            .strip_prefix(c.token.as_str())
            .and_then(|r| r.strip_prefix('.'));
        if !thumb.is_some_and(valid_token_part) {
            return Err(AgentFailure::bad_request("malformed key authorization"));
        }
        Ok(id)
    }

    /// Removes `tokens` from the table (and their files); stops listening when idle.
    fn forget(&self, tokens: &[String]) {
        let mut table = lock(&self.table);
        let removed: Vec<&String> = tokens
            .iter()
            .filter(|t| table.remove(t.as_str()).is_some())
            .collect();
        if let Backend::Webroot(w) = &self.backend {
            w.remove(removed.iter().map(|t| t.as_str()));
        }
        // Checked and stopped under the table lock, so a concurrent `present` either sees
        // the listener gone or has its entries counted here.
        if table.is_empty() {
            if let Backend::Listen(l) = &self.backend {
                l.stop();
            }
        }
    }

    /// What to look at when the self-check fails, for this mode.
    fn hint(&self) -> selfcheck::Hint {
        match &self.backend {
            Backend::Webroot(w) => selfcheck::Hint {
                mode: "webroot",
                serves: format!("serve {}", w.challenge_dir().display()),
            },
            Backend::Listen(l) => selfcheck::Hint {
                mode: "proxy",
                serves: format!(
                    "forward {PREFIX} to {}",
                    l.addrs().first().map(|a| a.to_string()).unwrap_or_default()
                ),
            },
        }
    }
}

/// Serves one HTTP/1 connection whose client sends `request` and then closes its side,
/// with `live` (token, key authorization) challenges in the table; returns the bytes the
/// responder wrote back. The entry point of the HTTP-01 fuzz target (`fuzz/`): the same
/// connection handling as the standalone and proxy listeners, over memory. Not an API.
#[doc(hidden)]
pub async fn answer_raw(live: &[(String, String)], request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let table = Table::default();
    {
        let mut t = lock(&table);
        for (token, key_authorization) in live {
            let entry = Entry {
                key_authorization: key_authorization.clone(),
                expires: Instant::now() + CHALLENGE_TTL,
            };
            t.insert(token.clone(), entry);
        }
    }
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
    let serve = listener::serve_connection(server, peer, table, Counter::default(), true);
    let talk = async {
        let mut out = Vec::new();
        // The server may stop reading (bad request) before all of it is written.
        if client.write_all(request).await.is_ok() {
            let _ = client.shutdown().await;
        }
        let _ = client.read_to_end(&mut out).await;
        out
    };
    let ((), out) = tokio::join!(serve, talk);
    out
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_names;
