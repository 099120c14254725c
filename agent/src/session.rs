//! The agent's session with the coordinator: one mutual-TLS bidirectional stream, Hello
//! first, then commands answered by request id; reconnect with jittered backoff.
//!
//! Every task the agent spawns (rotation loop, challenge sweeper, metrics server, one
//! task per command) is tracked; on shutdown no further command is taken and running
//! ones get [`SHUTDOWN_DRAIN`] to finish (an install is crash-safe if cut, but better not),
//! or longer while a deploy hook runs: up to that hook's own timeout (at most
//! `install::hook::MAX_TIMEOUT` plus the time to kill it), so a hook is never cut halfway;
//! no new hook starts once shutdown is asked for (see `install::hook`). The systemd unit's
//! `TimeoutStopSec` allows for that.

use crate::config::AgentConfig;
use crate::coordinators::{Endpoint, Failover, SessionStatus};
use crate::error::AgentFailure;
use crate::http01::{Challenge, Responder};
use crate::identity::Files;
use crate::install::{self, Installer};
use crate::keygroup::KeyGroups;
use crate::keys::PendingKeys;
use crate::target::Target;
use crate::tlsalpn01;
use certfleet_proto::v1::{
    self as pb, agent_message::Msg, agent_session_client::AgentSessionClient,
    coordinator_message::Cmd, reply, AgentMessage, CoordinatorMessage,
};
use certfleet_proto::MAX_MESSAGE_BYTES;
use certfleet_shared::clock::{SharedClock, SystemClock};
use certfleet_shared::identifier::Identifier;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
const REPLAY_CACHE: usize = 64;
/// How often challenges the coordinator never cleared are looked at for expiry.
const CHALLENGE_SWEEP: Duration = Duration::from_secs(30);
/// How long running commands may take to finish once shutdown is asked for (longer while
/// a deploy hook runs, see [`Agent::drain`]).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

pub struct Agent {
    pub config: AgentConfig,
    /// The config's targets, resolved (layouts, commands, verify addresses).
    pub targets: BTreeMap<String, Target>,
    installer: Installer,
    pub metrics: Arc<crate::metrics::AgentMetrics>,
    ips: Vec<IpAddr>,
    responder: Responder,
    /// `Some` when `[tls_alpn01]` is configured.
    tls_alpn01: Option<tlsalpn01::Responder>,
    pub(crate) pending: PendingKeys,
    /// The key groups the config lists, and the markers of their keys.
    pub(crate) key_groups: KeyGroups,
    install_lock: tokio::sync::Mutex<()>,
    /// Wall-clock time (identity rotation, age limits).
    clock: SharedClock,
    /// Recent replies by request id and the digest of the command's content: a replayed
    /// command (same id, same content) gets the same answer; nothing else does.
    replies: Mutex<VecDeque<CachedReply>>,
    /// The coordinator endpoint of the session now open (identity rotation asks it first).
    current: crate::coordinators::Current,
}

struct CachedReply {
    request_id: String,
    digest: [u8; 32],
    result: reply::Result,
}

/// SHA-256 of the command's encoding (prost encodes a message without maps the same way
/// every time): two commands are the same command only when id *and* digest agree.
fn command_digest(cmd: &Option<Cmd>) -> [u8; 32] {
    use prost::Message;
    use sha2::Digest;
    let bytes = CoordinatorMessage {
        request_id: String::new(),
        cmd: cmd.clone(),
    }
    .encode_to_vec();
    sha2::Sha256::digest(bytes).into()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the session down when the session function returns, however it returns.
struct Connected(Arc<crate::metrics::AgentMetrics>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.session_connected.set(0);
    }
}

impl Agent {
    pub fn new(config: AgentConfig) -> anyhow::Result<Arc<Self>> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// [`Agent::new`] reading wall-clock time from `clock`.
    pub fn with_clock(config: AgentConfig, clock: SharedClock) -> anyhow::Result<Arc<Self>> {
        let ips = config.ip_addrs();
        let targets = config
            .resolve_targets()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let metrics = Arc::new(crate::metrics::AgentMetrics::default());
        let pending = PendingKeys::with_clock(&config.state_dir, clock.clone());
        let swept = pending.sweep_interrupted();
        if swept > 0 {
            tracing::info!(swept, "removed half-written pending keys a crash left");
        }
        Ok(Arc::new(Self {
            installer: Installer::new(&config.state_dir)?,
            responder: Responder::with_clock(
                ips.clone(),
                &config.http01,
                metrics.challenges_served.clone(),
                clock.clone(),
            ),
            tls_alpn01: match &config.tls_alpn01 {
                Some(t) => Some(
                    tlsalpn01::Responder::new(ips.clone(), t, metrics.challenges_served.clone())
                        .map_err(|e| anyhow::anyhow!("TLS-ALPN-01 responder: {e}"))?,
                ),
                None => None,
            },
            metrics,
            key_groups: {
                let groups = KeyGroups::new(&config);
                let swept = groups.sweep(&pending, &targets);
                if swept > 0 {
                    tracing::info!(swept, "removed key-group markers of keys no longer here");
                }
                groups
            },
            targets,
            pending,
            ips,
            config,
            install_lock: tokio::sync::Mutex::new(()),
            clock,
            replies: Mutex::new(VecDeque::new()),
            current: Default::default(),
        }))
    }

    /// What [`Agent::with_clock`] would refuse in `config` (targets that do not resolve, a
    /// `[tls_alpn01]` that cannot be set up), without touching the state directory.
    pub fn check_config(config: &AgentConfig) -> Result<(), String> {
        config
            .resolve_targets()
            .map_err(|e| format!("config: {e}"))?;
        if let Some(t) = &config.tls_alpn01 {
            tlsalpn01::Responder::new(config.ip_addrs(), t, Default::default())
                .map_err(|e| format!("TLS-ALPN-01 responder: {e}"))?;
        }
        Ok(())
    }

    /// Waits (at most `limit`) until no install runs, and keeps the next one from starting
    /// while the guard is held; `None` when one still ran at the limit.
    pub async fn wait_idle(&self, limit: Duration) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        tokio::time::timeout(limit, self.install_lock.lock())
            .await
            .ok()
    }

    /// Keeps a session open until `shutdown`, then drains the agent's tasks (see
    /// [`Agent::drain`]).
    pub async fn run(self: &Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        // The background tasks stop on `shutdown`, and also when `run` returns an error.
        let stop = shutdown.child_token();
        let _stop_on_return = stop.clone().drop_guard();
        let result = self.run_tracked(&tasks, &stop).await;
        stop.cancel();
        self.installer.hooks.stop_starting();
        tasks.close();
        self.drain(&tasks, SHUTDOWN_DRAIN).await;
        // Challenges stay answerable while commands drain; then the listeners close.
        match &self.tls_alpn01 {
            Some(t) => {
                tokio::join!(
                    self.responder.close(SHUTDOWN_DRAIN),
                    t.close(SHUTDOWN_DRAIN)
                );
            }
            None => self.responder.close(SHUTDOWN_DRAIN).await,
        }
        if result.is_ok() {
            tracing::info!("agent stopped");
        }
        result
    }

    /// Waits for the closed `tasks` to finish: `drain` long, or longer while a deploy hook
    /// runs — until it has ended at the latest (its timeout, then killed). A hook cut
    /// halfway may have done half of what it does (copied a file, not restarted the
    /// service); one that ends records its result for the coordinator's repeat of the
    /// install. Hooks do not start once stopping (`HookRuns::stop_starting`).
    async fn drain(&self, tasks: &TaskTracker, drain: Duration) {
        let base = tokio::time::Instant::now() + drain;
        loop {
            let hooks = self.installer.hooks.running_until();
            let until = hooks.map_or(base, |h| base.max(tokio::time::Instant::from_std(h)));
            if tokio::time::timeout_at(until, tasks.wait()).await.is_ok() {
                return;
            }
            // A hook started while waiting moves the end further.
            if self
                .installer
                .hooks
                .running_until()
                .is_some_and(|h| h > Instant::now())
            {
                continue;
            }
            tracing::warn!(
                running = tasks.len(),
                drain_s = drain.as_secs(),
                "commands still running after the shutdown drain; stopping anyway (an install is finished or rolled back at the next start)"
            );
            return;
        }
    }

    /// [`Agent::run`] until `stop`, every task spawned on `tasks`.
    async fn run_tracked(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let files = Files::new(&self.config.state_dir);
        // Started before `enroll` (cloud-init: start the service, then enroll): wait.
        let Some(enrollment) = files.wait_enrolled(self.clock.now_unix(), stop).await? else {
            return Ok(());
        };
        files.recover_rotation()?;
        // Fail early on unreadable identity files; each connection reloads them, so a
        // rotated identity is used from the next connection on.
        files.session_tls()?;
        // The config's list, when it has one, overrides the enrolled one.
        let urls = if self.config.coordinators.is_empty() {
            enrollment.coordinator_urls()
        } else {
            self.config.coordinators.clone()
        };
        let rotated = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(crate::rotation::rotation_loop(
            crate::rotation::Rotation {
                files: Files::new(&self.config.state_dir),
                urls: urls.clone(),
                current: self.current.clone(),
            },
            self.clock.clone(),
            stop.clone(),
            rotated.clone(),
        ));
        tracing::info!(host = %enrollment.host_id, coordinators = %urls.join(", "), "agent starting");
        // Interrupted installs are finished or rolled back before anything else happens.
        self.installer.recover(&self.targets).await;
        {
            let agent = self.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(CHALLENGE_SWEEP) => {
                            agent.responder.expire();
                            if let Some(t) = &agent.tls_alpn01 {
                                t.expire();
                            }
                        }
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
        if let Some(addr) = self.config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} for metrics ([metrics] listen): {e}")
            })?;
            let agent = self.clone();
            let session = self.metrics.clone();
            tasks.spawn(certfleet_shared::metrics_http::serve(
                listener,
                move || agent.metrics.render(&agent.targets),
                move || match session.session_connected.get() {
                    1 => Ok("session with the coordinator established".into()),
                    _ => Err(
                        "no session with the coordinator (connecting; see the agent's log)".into(),
                    ),
                },
                stop.clone(),
            ));
            tracing::info!(listen = %addr, "metrics on /metrics, /healthz, /readyz");
        }
        // Identity loaded, interrupted installs settled, challenge responders and metrics
        // listening: the agent runs. Readiness does not wait for the coordinator (an outage
        // there must not fail the agent's start); `/readyz` and STATUS= tell the session.
        certfleet_shared::daemon::notify_systemd(certfleet_shared::daemon::Notify::Ready(
            &format!("running; connecting to {}", urls.join(", ")),
        ));
        let shutdown = stop;
        let mut failover = Failover::random();
        while !shutdown.is_cancelled() {
            let (endpoints, unresolved) = tokio::select! {
                r = crate::coordinators::resolve_all(&urls) => r,
                _ = shutdown.cancelled() => break,
            };
            for e in &unresolved {
                tracing::warn!("{e}");
            }
            let started = Instant::now();
            let tls = files.session_tls()?;
            let (endpoint, result) = if endpoints.is_empty() {
                let e = anyhow::anyhow!("no coordinator address: {}", unresolved.join("; "));
                (None, Err(e))
            } else {
                let ep = &endpoints[failover.current(endpoints.len())];
                let r = tokio::select! {
                    r = self.session(ep, tls, tasks) => r,
                    _ = rotated.notified() => {
                        tracing::info!("identity rotated; reconnecting with the new one");
                        continue;
                    }
                    _ = shutdown.cancelled() => break,
                };
                (Some(ep), r)
            };
            *lock(&self.current) = None;
            let healthy = started.elapsed() >= HEALTHY_SESSION;
            let delay = failover.ended(healthy, endpoints.len(), rand::random::<f64>());
            let shown = endpoint.map(ToString::to_string).unwrap_or_default();
            match &result {
                Ok(()) => tracing::info!(
                    coordinator = %shown,
                    retry_in_ms = delay.as_millis() as u64,
                    "session closed by the coordinator; reconnecting (next coordinator)"
                ),
                Err(e) => {
                    tracing::warn!(coordinator = %shown, error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "session failed; reconnecting (next coordinator)");
                    certfleet_shared::daemon::notify_systemd(
                        certfleet_shared::daemon::Notify::Status(
                            "no session; reconnecting (see the log)",
                        ),
                    );
                }
            }
            self.write_status(
                endpoint,
                false,
                Some(match result {
                    Ok(()) => "session closed by the coordinator".to_owned(),
                    Err(e) => format!("{e:#}"),
                }),
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        *lock(&self.current) = None;
        self.write_status(None, false, Some("the agent stopped".into()));
        Ok(())
    }

    /// Records the session's state for `certfleet-agent status` (`session.json`).
    fn write_status(&self, at: Option<&Endpoint>, connected: bool, error: Option<String>) {
        SessionStatus {
            pid: std::process::id(),
            connected,
            coordinator: at.map(|e| e.url.clone()),
            address: at.map(|e| e.addr.to_string()),
            since: self.clock.now_unix(),
            last_error: error,
        }
        .write(&self.config.state_dir);
    }

    /// What Hello says the host can answer: "http-01/<mode>" and, when configured,
    /// "tls-alpn-01/<mode>".
    fn challenge_modes(&self) -> Vec<String> {
        let mut modes = vec![format!("http-01/{}", self.responder.mode().as_str())];
        if let Some(t) = &self.tls_alpn01 {
            modes.push(format!("tls-alpn-01/{}", t.mode().as_str()));
        }
        modes
    }

    fn hello(&self) -> pb::Hello {
        let inventory = self
            .targets
            .iter()
            .filter_map(|(name, t)| {
                install::inspect(t).map(|i| pb::InstalledCert {
                    target: name.clone(),
                    identifiers: i.identifiers(),
                    serial: i.serial,
                    not_after_unix: i.not_after,
                })
            })
            .collect();
        pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            ips: self.config.ips.clone(),
            targets: self.config.targets.keys().cloned().collect(),
            challenge_modes: self.challenge_modes(),
            inventory,
            requested_names: self.config.names.clone(),
            key_groups: self.config.key_groups.clone(),
        }
    }

    async fn session(
        self: &Arc<Self>,
        at: &Endpoint,
        tls: Arc<rustls::ClientConfig>,
        tasks: &TaskTracker,
    ) -> anyhow::Result<()> {
        let channel = certfleet_shared::transport::connect_at(&at.url, at.addr, tls).await?;
        let mut client = AgentSessionClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<AgentMessage>(32);
        tx.send(AgentMessage {
            msg: Some(Msg::Hello(self.hello())),
        })
        .await?;
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "coordinator refused the session: {} ({:?})",
                    s.message(),
                    s.code()
                )
            })?
            .into_inner();
        tracing::info!(coordinator = %at, "session established");
        *lock(&self.current) = Some(at.clone());
        self.write_status(Some(at), true, None);
        certfleet_shared::daemon::notify_systemd(certfleet_shared::daemon::Notify::Status(
            &format!("session with {at} established"),
        ));
        self.metrics.session_connected.set(1);
        let _connected = Connected(self.metrics.clone());
        while let Some(msg) = inbound
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("session: {}", s.message()))?
        {
            let agent = self.clone();
            let tx = tx.clone();
            // Every log line about this command carries the coordinator's request id.
            let span = tracing::info_span!("command", request_id = %msg.request_id);
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let request_id = msg.request_id.clone();
                    let result = agent.handle(msg).await;
                    let reply = pb::Reply {
                        request_id,
                        result: Some(result),
                    };
                    let _ = tx
                        .send(AgentMessage {
                            msg: Some(Msg::Reply(reply)),
                        })
                        .await;
                },
                span,
            ));
        }
        Ok(())
    }

    /// Answers one command as the session does. `pub` for the fuzz targets (`fuzz/`),
    /// which feed it decoded messages; not an API.
    #[doc(hidden)]
    pub async fn handle(&self, msg: CoordinatorMessage) -> reply::Result {
        if msg.request_id.is_empty() || msg.request_id.len() > 128 {
            return reply::Result::Failure(
                AgentFailure::bad_request("missing or oversized request id").into(),
            );
        }
        let digest = command_digest(&msg.cmd);
        if let Some(cached) = lock(&self.replies)
            .iter()
            .find(|c| c.request_id == msg.request_id)
        {
            if cached.digest == digest {
                tracing::info!("replayed command; answering with the cached reply");
                return cached.result.clone();
            }
            // Never answer a command with the reply to another one.
            tracing::warn!(
                "request id already used for a different command; refused without running it"
            );
            return reply::Result::Failure(
                AgentFailure::new(
                    "request_id_reused",
                    "this request id was already used for a different command; the command was not run (send it again under a new id)",
                )
                .into(),
            );
        }
        let result = match msg.cmd {
            None => Err(AgentFailure::bad_request(
                "command missing (newer coordinator?)",
            )),
            Some(Cmd::PresentChallenges(p)) => self.present_challenges(p).await,
            Some(Cmd::ClearChallenges(c)) => {
                self.responder.clear(&c.tokens);
                if let Some(t) = &self.tls_alpn01 {
                    t.clear(&c.tokens);
                }
                // Done means the ports are free again (the coordinator may present
                // challenges of this or another type on them next).
                self.responder.wait_stopped().await;
                if let Some(t) = &self.tls_alpn01 {
                    t.wait_stopped().await;
                }
                Ok(reply::Result::Done(pb::Done::default()))
            }
            Some(Cmd::CreateCsr(c)) => self.create_csr(c).await,
            Some(Cmd::DiscardPendingKeys(d)) => self.discard_pending_keys(d),
            Some(Cmd::Install(i)) => self.install(i).await,
            Some(Cmd::SealKey(s)) => self
                .key_groups
                .seal(s, &self.pending, &self.targets)
                .map(reply::Result::SealedKey),
            Some(Cmd::ImportKey(i)) => self
                .key_groups
                .import(i, &self.pending, &self.targets)
                .map(|()| reply::Result::Done(pb::Done::default())),
        };
        let result = match result {
            Ok(r) => r,
            Err(f) => {
                tracing::warn!(code = f.code, error = %f.message, "command failed");
                reply::Result::Failure(f.into())
            }
        };
        let mut cache = lock(&self.replies);
        cache.push_back(CachedReply {
            request_id: msg.request_id,
            digest,
            result: result.clone(),
        });
        while cache.len() > REPLAY_CACHE {
            cache.pop_front();
        }
        result
    }

    /// Presents a message's challenges of both kinds: all of them, or (on a failure) none
    /// of those it added. TLS-ALPN-01 first, taken back if HTTP-01 then fails.
    async fn present_challenges(
        &self,
        p: pb::PresentChallenges,
    ) -> Result<reply::Result, AgentFailure> {
        let total = p.challenges.len() + p.tls_alpn01.len();
        if total == 0 || total > 64 {
            return Err(AgentFailure::bad_request(
                "between 1 and 64 challenges per request",
            ));
        }
        let http: Vec<_> = p
            .challenges
            .into_iter()
            .map(|c| Challenge {
                identifier: c.identifier,
                token: c.token,
                key_authorization: c.key_authorization,
            })
            .collect();
        let tls: Vec<_> = p
            .tls_alpn01
            .into_iter()
            .map(|c| tlsalpn01::Challenge {
                identifier: c.identifier,
                token: c.token,
                key_authorization: c.key_authorization,
            })
            .collect();
        let mut added_tls = Vec::new();
        if !tls.is_empty() {
            let Some(responder) = &self.tls_alpn01 else {
                return Err(AgentFailure::new(
                    "challenge_mode_unavailable",
                    "this host does not answer TLS-ALPN-01: its agent config has no [tls_alpn01] section (add one with mode = \"standalone\" or \"loopback\", see deploy/agent.example.toml); use another challenge type",
                ));
            };
            added_tls = responder.present(&tls).await?;
        }
        let mut warnings = Vec::new();
        if !http.is_empty() {
            match self.responder.present(&http).await {
                Ok(w) => warnings = w,
                Err(e) => {
                    if let Some(responder) = &self.tls_alpn01 {
                        responder.clear(&added_tls);
                    }
                    return Err(e);
                }
            }
        }
        // TLS-ALPN-01 names must resolve here too (the same warning as for HTTP-01, once).
        let tls_names: Vec<_> = tls
            .iter()
            .filter_map(|c| match Identifier::parse(&c.identifier) {
                Ok(Identifier::Dns(n)) => Some(n),
                _ => None,
            })
            .collect();
        for w in self.responder.name_warnings(&tls_names).await {
            if !warnings.contains(&w) {
                tracing::warn!("TLS-ALPN-01: {w}");
                warnings.push(w);
            }
        }
        Ok(reply::Result::Done(pb::Done {
            warnings,
            discarded: 0,
        }))
    }

    async fn create_csr(&self, c: pb::CreateCsr) -> Result<reply::Result, AgentFailure> {
        if !self.targets.contains_key(&c.target) {
            return Err(AgentFailure::new(
                "unknown_target",
                format!("this host has no target {:?}", c.target),
            ));
        }
        let identifiers = crate::keys::csr_identifiers(&c.identifiers, &self.ips)?;
        let cert = parse_cert_id(&c.cert_id)?;
        if !c.key_group.is_empty() {
            self.key_groups.allow(&c.key_group)?;
        }
        let key_type = pb::KeyType::try_from(c.key_type).map_err(|_| {
            AgentFailure::bad_request(format!(
                "key type {} is unknown to this agent (it makes ECDSA P-256/P-384 and RSA 2048/3072/4096 keys); update the agent",
                c.key_type
            ))
        })?;
        // RSA generation takes up to seconds: off the runtime's worker threads.
        let pending = self.pending.clone();
        let ids = identifiers.clone();
        let der =
            tokio::task::spawn_blocking(move || pending.create_csr(&ids, key_type, cert.as_ref()))
                .await
                .map_err(|e| {
                    AgentFailure::new("internal", format!("key generation stopped: {e}"))
                })??;
        if !c.key_group.is_empty() {
            self.key_groups
                .mark_new_key(&der, &c.key_group, &self.pending, &self.targets)?;
        }
        let shown: Vec<String> = identifiers.iter().map(|i| i.to_string()).collect();
        tracing::info!(target = %c.target, identifiers = ?shown, key_type = key_type.as_str_name(), cert = c.cert_id, key_group = c.key_group, "new key and CSR made");
        Ok(reply::Result::Csr(pb::Csr { csr_der: der }))
    }

    fn discard_pending_keys(
        &self,
        d: pb::DiscardPendingKeys,
    ) -> Result<reply::Result, AgentFailure> {
        let Some(cert) = parse_cert_id(&d.cert_id)? else {
            return Err(AgentFailure::bad_request(
                "DiscardPendingKeys needs a certificate id",
            ));
        };
        if d.keep_spki_sha256.len() > 16
            || d.keep_spki_sha256
                .iter()
                .any(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(AgentFailure::bad_request(
                "keep_spki_sha256: at most 16 SHA-256 digests in hex",
            ));
        }
        let discarded = self.pending.discard(&cert, &d.keep_spki_sha256);
        if discarded > 0 {
            tracing::info!(cert = %cert, discarded, "pending keys of an ended order removed");
        }
        let unmarked = self.key_groups.sweep(&self.pending, &self.targets);
        if unmarked > 0 {
            tracing::info!(unmarked, "key-group markers of keys no longer here removed");
        }
        Ok(reply::Result::Done(pb::Done {
            discarded,
            warnings: Vec::new(),
        }))
    }

    async fn install(&self, i: pb::InstallCertificate) -> Result<reply::Result, AgentFailure> {
        let target = self.targets.get(&i.target).ok_or_else(|| {
            AgentFailure::new(
                "unknown_target",
                format!("this host has no target {:?}", i.target),
            )
        })?;
        let _serial = self.install_lock.lock().await;
        let result = self
            .installer
            .install(
                target,
                &i.chain_pem,
                &self.ips,
                &self.pending,
                &self.targets,
            )
            .await;
        let label = crate::metrics::InstallLabels {
            target: i.target.clone(),
            result: match &result {
                Ok(_) => "ok".into(),
                Err(f) => f.code.into(),
            },
        };
        self.metrics.installs.get_or_create(&label).inc();
        let out = result?;
        // For `enroll --wait`: installed, and served where the target checks.
        crate::bootstrap::InstallStatus::record(
            &self.config.state_dir,
            Files::new(&self.config.state_dir)
                .load()
                .ok()
                .map(|e| e.host_id.to_string()),
            &i.target,
            crate::bootstrap::TargetInstall {
                serial: out.serial.clone(),
                not_after: out.not_after,
                served_on: out.served_on.iter().map(|a| a.to_string()).collect(),
                verify_disabled: out.verify_disabled,
                at: self.clock.now_unix(),
            },
        );
        Ok(reply::Result::Installed(pb::InstallReport {
            target: i.target,
            serial: out.serial,
            not_after_unix: out.not_after,
            reload_output: out.reload_output,
            served_on: out.served_on.iter().map(|a| a.to_string()).collect(),
            verify_disabled: out.verify_disabled,
            warnings: Vec::new(),
            deploy_hook: out.deploy_hook.map(|h| pb::DeployHookReport {
                ok: h.ok,
                status: h.status,
                exit_code: h.exit_code,
                stderr_tail: h.stderr_tail,
                duration_ms: u64::try_from(h.duration.as_millis()).unwrap_or(u64::MAX),
            }),
        }))
    }
}

/// The certificate id of a command ("" = none, from an older coordinator).
fn parse_cert_id(s: &str) -> Result<Option<certfleet_shared::ids::CertId>, AgentFailure> {
    if s.is_empty() {
        return Ok(None);
    }
    certfleet_shared::ids::CertId::parse(s)
        .map(Some)
        .map_err(|e| AgentFailure::bad_request(e.to_string()))
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
