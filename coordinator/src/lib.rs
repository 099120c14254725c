//! # certfleet-coordinator
//!
//! Owns the ACME accounts, the fleet CA, the store and the issuance engine; serves agents
//! and operators over one mutual-TLS gRPC port.
//!
//! ## Layout
//! - [`config`] — strict TOML config, env overrides, `validate()`.
//! - [`fleet_ca`] — state directory, fleet CA, server/operator certificates, agent identities.
//! - [`store`] — the `Store` and `AuditStore` traits and their engines (sled, PostgreSQL):
//!   accounts, tokens, hosts, certificates, the audit trail's records and indexes.
//! - [`tokens`] — join token generation (stored only as hashes).
//! - [`audit`] — the hash-chained, append-only audit trail and its indexed queries.
//! - [`acme`] — ACME issuers (the only code that talks to a CA).
//! - [`dns`] — DNS providers (rfc2136, route53, exec) writing the DNS-01 TXT records, CNAME
//!   delegation, propagation checks.
//! - [`metrics`] — Prometheus exposition, computed from the store at scrape time.
//! - [`sessions`] — live agent streams and request/reply correlation.
//! - [`spec`] — desired state: which certificate a host should have (policies by label).
//! - [`requests`] — the checks of incoming requests that need no store (shapes, ids, reasons).
//! - [`engine`] — the reconciler: scheduler (next-action index, leases) → decide → order /
//!   challenge / CSR / install, the rate-limit budget, IP ownership.
//! - [`admin`] — operator actions outside the engine: revoke, remove host, force renewal,
//!   release an address.
//! - [`lifecycle`] — addresses a host lost (revocation), decommissioning silent hosts,
//!   a host leaving.
//! - [`operators`] — named operators: roles, which admin call needs which, credential
//!   lifetimes, the per-call check against the stored operator.
//! - [`server`] — gRPC services and the per-call identity checks.
//! - [`server_cert`] — the coordinator's own TLS: a server certificate renewed and swapped
//!   in without a restart.
//! - [`cli`] — operator commands that talk to a running coordinator.
//! - [`web`] — the read-only web view (`[web] listen`): pages for operators, by client
//!   certificate or login link.
//! - [`reload`] — SIGHUP: the configuration read again, refused whole or swapped in,
//!   audited, every host's certificates derived again.
//!
//! The binary (`src/main.rs`) only parses arguments, loads config, starts tracing, opens
//! the daemon's [`Deps`] and calls [`serve`], or calls a [`cli`] function.
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod engine;
pub mod fleet_ca;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod node;
pub mod operators;
pub mod reload;
pub mod requests;
pub mod server;
pub mod server_cert;
pub mod sessions;
pub mod spec;
pub mod store;
pub mod tokens;
pub mod web;

use anyhow::Context;
use certfleet_proto::v1::{
    admin_server::AdminServer, agent_session_server::AgentSessionServer,
    enrollment_server::EnrollmentServer,
};
use certfleet_proto::MAX_MESSAGE_BYTES;
use certfleet_shared::clock::{SharedClock, SystemClock};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

/// How long a stopping coordinator waits for in-flight work before it exits anyway.
pub const DRAIN: Duration = Duration::from_secs(10);

/// What the daemon runs on, made by the caller: the production set comes from
/// [`Deps::open`]; a test hands in a `ManualClock`, a store of its own and listeners on
/// port 0.
pub struct Deps {
    /// The only source of wall-clock time for everything [`serve`] runs.
    pub clock: SharedClock,
    pub store: Arc<dyn store::Store>,
    pub audit: Arc<audit::AuditLog>,
    /// The gRPC port (`[server] listen`): agents, enrollment and operators.
    pub listener: TcpListener,
    /// `/metrics` (`[metrics] listen`), when configured.
    pub metrics_listener: Option<TcpListener>,
    /// The web view (`[web] listen`), when configured.
    pub web_listener: Option<TcpListener>,
    /// Every task the daemon spawns is spawned here; [`serve`] closes it and waits (at most
    /// [`DRAIN`]) before it returns.
    pub tasks: TaskTracker,
}

impl Deps {
    /// The production set: the system clock, the configured store (`[store]`: sled in the
    /// state directory, or PostgreSQL) with its audit log, and the configured listeners,
    /// bound now.
    pub async fn open(config: &config::Config) -> anyhow::Result<Self> {
        let dir = fleet_ca::StateDir::new(&config.state_dir);
        // Not before `init`: opening the store would create the directory `init` makes.
        if !dir.ca_key().exists() {
            return Err(fleet_ca::CaError::NotInitialised(dir.root.clone()).into());
        }
        let (store, audit_store): (Arc<dyn store::Store>, Arc<dyn store::AuditStore>) =
            match config.store.backend {
                config::StoreBackend::Sled => {
                    let store_path = dir.store();
                    let sled_store =
                        Arc::new(store::SledStore::open(&store_path).with_context(|| {
                            format!(
                                "opening the store at {} (is another coordinator running?)",
                                store_path.display()
                            )
                        })?);
                    tracing::info!(backend = "sled", path = %store_path.display(), "store opened");
                    (sled_store.clone(), sled_store)
                }
                config::StoreBackend::Postgres => {
                    let opts = config.store.pg_options().map_err(anyhow::Error::msg)?;
                    // Connecting and migrating block: not on this runtime's worker.
                    let pg = tokio::task::spawn_blocking(move || store::PgSyncStore::open(opts))
                        .await
                        .context("opening the PostgreSQL store")?
                        .context("opening the PostgreSQL store ([store] in the config)")?;
                    tracing::info!(
                        backend = "postgres",
                        database = pg.target(),
                        schema = store::pg::SCHEMA_VERSION,
                        "store opened"
                    );
                    let pg = Arc::new(pg);
                    (pg.clone(), pg)
                }
            };
        let audit = Arc::new(audit::AuditLog::open(audit_store).context("opening the audit log")?);
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics ([metrics] listen)")
            })?),
            None => None,
        };
        let web_listener = match config.web.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for the web view ([web] listen)")
            })?),
            None => None,
        };
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        Ok(Self {
            clock: Arc::new(SystemClock),
            store,
            audit,
            listener,
            metrics_listener,
            web_listener,
            tasks: TaskTracker::new(),
        })
    }
}

/// `/readyz`: the store answers a read (the next-action index) and the gRPC server runs.
fn readiness(
    store: Arc<dyn store::Store>,
    serving: Arc<std::sync::atomic::AtomicBool>,
    sessions: Arc<sessions::Sessions>,
) -> impl Fn() -> certfleet_shared::metrics_http::Readiness + Send + Sync + 'static {
    move || {
        if !serving.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the gRPC server is not serving (starting or stopping)".into());
        }
        if !sessions.accepting() {
            return Err("cut off from the shared database: agent sessions are refused".into());
        }
        match store.next_due() {
            Ok(_) => Ok("serving; store readable".into()),
            Err(e) => Err(format!("store unreadable: {e}")),
        }
    }
}

/// Runs the coordinator on `deps` until `shutdown` is cancelled, then drains: connections
/// and every task on `deps.tasks` get [`DRAIN`] each.
pub async fn serve(
    config: config::Config,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_reload(config, deps, shutdown, None).await
}

/// [`serve`], and a reload of the configuration for every request on `reloads`
/// ([`reload::reload`]; the binary sends one per SIGHUP).
pub async fn serve_with_reload(
    config: config::Config,
    deps: Deps,
    shutdown: CancellationToken,
    reloads: Option<reload::Reloads>,
) -> anyhow::Result<()> {
    let Deps {
        clock,
        store,
        audit,
        listener,
        metrics_listener,
        web_listener,
        tasks: tracker,
    } = deps;
    let dir = fleet_ca::StateDir::new(&config.state_dir);
    let mut ca = fleet_ca::FleetCa::load(&dir)?;
    ca.identity_lifetime_secs = config.server.identity_lifetime_secs as i64;
    let ca = Arc::new(ca);
    // The credential `init` / `node join` wrote becomes an admin the store knows.
    if let Err(e) =
        operators::adopt_state_dir_credential(&dir, store.as_ref(), &audit, clock.now_unix())
    {
        tracing::error!(error = %e, "the state directory's operator credential was not adopted");
    }
    let server_cert = server_cert::ServerCertManager::start(
        dir.clone(),
        ca.clone(),
        config.server.names.clone(),
        config.server.ips.clone(),
        config.server.certificate_lifetime_secs as i64,
        audit.clone(),
        clock.clone(),
    )?;
    tracker.spawn(server_cert.clone().run(shutdown.clone()));
    let sessions = Arc::new(sessions::Sessions::new(
        store.clone(),
        sessions::new_node_id(),
        clock.clone(),
    ));
    // For people: the first server name and the listen address.
    let node_name = format!(
        "{}@{}",
        config
            .server
            .names
            .first()
            .map(String::as_str)
            .unwrap_or("coordinator"),
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    cluster::start(sessions.clone(), node_name, shutdown.clone(), &tracker);
    let metrics = Arc::new(metrics::Metrics::default());
    // Credentials are read now: a provider that cannot work stops the start, named.
    let dns = Arc::new(dns::DnsProviders::from_config(&config.dns_providers)?);
    let engine = engine::Engine::new(
        config.clone(),
        metrics.clone(),
        store.clone(),
        audit.clone(),
        sessions.clone(),
        clock.clone(),
        shutdown.clone(),
        tracker.clone(),
        dns,
    );
    engine.start()?;
    if let Some(reloads) = reloads {
        tracker.spawn(reload::serve_requests(
            engine.clone(),
            reloads,
            shutdown.clone(),
        ));
    }
    tracker.spawn(lifecycle::sweep_loop(engine.clone(), shutdown.clone()));

    let services = Arc::new(server::Services {
        store: store.clone(),
        sessions: sessions.clone(),
        engine: engine.clone(),
        ca: ca.clone(),
        audit: audit.clone(),
        clock: clock.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        server_cert: server_cert.resolver.clone(),
    });

    // The chain includes the fleet CA so agents can pin it by fingerprint at enrollment.
    let tls = server_cert.tls_config()?;

    if let Some(listener) = web_listener {
        let addr = listener.local_addr().context("the web listener")?;
        let web = Arc::new(web::Web {
            store: store.clone(),
            audit: audit.clone(),
            sessions: sessions.clone(),
            clock: clock.clone(),
            dir: dir.clone(),
            logins: web::auth::WebSessions::new(config.web.session_lifetime().as_secs() as i64),
            tasks: tracker.clone(),
            fleet: web::fleet::FleetCache::new(
                store.clone(),
                sessions.clone(),
                clock.clone(),
                tracker.clone(),
            ),
        });
        let tls = web::tls_config(server_cert.resolver.clone(), &ca.ca_pem)?;
        web::serve(web, listener, tls, &tracker, shutdown.clone());
        tracing::info!(listen = %addr, "web view on https://{addr}/ (operators only)");
    }

    // Set once the gRPC server runs, cleared when stopping: half of `/readyz`.
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().context("the metrics listener")?;
        let ready = readiness(store.clone(), serving.clone(), sessions.clone());
        let (store, sessions, engine, metrics, resolver, ca) = (
            store.clone(),
            sessions.clone(),
            engine.clone(),
            metrics.clone(),
            server_cert.resolver.clone(),
            ca.clone(),
        );
        let render = move || {
            let credentials = metrics::Credentials {
                server: resolver.info(),
                fleet_ca_not_after: ca.not_after,
            };
            metrics
                .render(
                    store.as_ref(),
                    &sessions,
                    &engine.budget_remaining(),
                    engine.decommission_after_secs(),
                    &credentials,
                    clock.now_unix(),
                )
                .map_err(|e| e.to_string())
        };
        tracker.spawn(metrics::serve(listener, render, ready, shutdown.clone()));
        tracing::info!(listen = %addr, "metrics on /metrics, /healthz, /readyz");
    }

    let addr = listener.local_addr().context("the gRPC listener")?;
    let incoming = server_cert::incoming(listener, tls, &tracker, shutdown.clone());
    tracing::info!(listen = %addr, "coordinator listening");

    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(64)
        .add_service(
            EnrollmentServer::new(server::Api(services.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AgentSessionServer::new(server::Api(services.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServer::new(server::Api(services.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );

    let stop = shutdown.clone();
    let sessions_for_stop = sessions.clone();
    let serving_for_stop = serving.clone();
    let server = router.serve_with_incoming_shutdown(incoming, async move {
        stop.cancelled().await;
        serving_for_stop.store(false, std::sync::atomic::Ordering::SeqCst);
        sessions_for_stop.close_all();
    });
    tokio::pin!(server);
    // The listener is bound (connections queue from here on), the engine is started and
    // the server is polled from the next line on: ready for systemd and `/readyz`.
    if !shutdown.is_cancelled() {
        serving.store(true, std::sync::atomic::Ordering::SeqCst);
        certfleet_shared::daemon::notify_systemd(certfleet_shared::daemon::Notify::Ready(
            &format!("serving on {addr}"),
        ));
    }
    tokio::select! {
        r = &mut server => r.context("gRPC server failed")?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("connections did not drain within {} s; stopping anyway", DRAIN.as_secs());
        }
    }
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        tracing::warn!(
            "background tasks did not finish within {} s",
            DRAIN.as_secs()
        );
    }
    store.certs().ok(); // touch the store once more so a broken store shows up in the log
    tracing::info!("coordinator stopped");
    Ok(())
}
