//! [`PgStore`]: the [`Store`](super::Store) and [`AuditStore`](super::AuditStore)
//! primitives on PostgreSQL, which several coordinators can share.
//!
//! `PgStore`'s inherent methods are `async` and do the real work, one per trait method and
//! of the same name (the iterator-returning audit reads and `scan_certs` become paged
//! reads: `*_page`). They run on `tokio-postgres` connections from a `deadpool-postgres`
//! pool; every write commits before it returns (durable before acknowledged; the
//! `*_unflushed` variants are the same commits, and `flush_audit` has nothing left to do).
//!
//! **The bridge.** The traits are synchronous today and the engine calls them from inside
//! tokio tasks, where `block_on` on the caller's runtime panics. [`PgSyncStore`]
//! (`bridge.rs`) therefore owns a dedicated thread running its own single-threaded tokio
//! runtime, on which the pool and all its connections live; each trait call is sent there
//! as a job and the caller's thread waits on a std channel for the answer. The trade-off:
//! the calling worker thread is blocked for the round trip to the database (as it already
//! is for sled's disk flushes), and every call costs a cross-thread hand-off. When the
//! traits become async the bridge is deleted and these async methods are called directly.
//!
//! Files: `schema.rs` (migrations, the audit chain's constraints), `records.rs` (the
//! [`Store`](super::Store) half), `audit.rs` (the audit half), `operators.rs` (operator
//! records), `tls.rs` (rustls for the database connection), `bridge.rs`.

mod audit;
mod bridge;
mod cluster;
mod leases;
mod operators;
mod records;
mod requests;
mod schema;
mod tls;

pub use bridge::PgSyncStore;
pub use schema::SCHEMA_VERSION;

use super::StoreError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls_pki_types::CertificateDer;
use std::time::Duration;

/// TLS to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTls {
    /// Plain TCP (a database on this host or a trusted network; Unix sockets).
    Disable,
    /// TLS, but any server certificate is accepted (encrypts, does not authenticate).
    Require,
    /// TLS; the server's certificate must chain to `ca_file` (or the system's roots) and
    /// name the host of the URL.
    #[default]
    VerifyFull,
}

impl PgTls {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// How to reach the database. `Debug` never shows the URL's password.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database[?…]` or the key=value form.
    pub url: String,
    pub pool_size: usize,
    /// Every statement is cancelled by the server after this long.
    pub statement_timeout: Duration,
    pub tls: PgTls,
    /// Roots for `verify-full` (PEM certificates); empty: the system's roots.
    pub ca_certs: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls", &self.tls)
            .field("ca_certs", &self.ca_certs.len())
            .finish()
    }
}

/// Where a URL points, without its user and password: `host:port/db` for logs.
pub fn redact_url(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => describe(&c),
        Err(_) => "<unparsable PostgreSQL URL>".into(),
    }
}

fn describe(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        c.get_dbname().unwrap_or("(user's database)")
    )
}

/// A database error with what we were doing; the server's own message (severity, SQLSTATE,
/// text) when it sent one, else the client's chain of causes.
pub(super) fn db_error(doing: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Io(describe_error(doing, &e).into())
}

fn describe_error(doing: &str, e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "PostgreSQL: {doing}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    let mut msg = format!("PostgreSQL: {doing}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// The SQLSTATE of a server error.
fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// The PostgreSQL store: a connection pool and the async operations on it.
/// Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// `host:port/db`, for errors and logs.
    target: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish()
    }
}

impl PgStore {
    /// Connects (one connection, to fail early with a clear error), then brings the schema
    /// up to date or refuses a newer one. Connections are made on the runtime this runs
    /// on and live there.
    pub async fn open(opts: &PgOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = opts.url.parse().map_err(|e| {
            StoreError::Io(
                format!(
                    "[store] url is not a PostgreSQL URL ({e}); write it like \
                     postgres://certfleet@db.example:5432/certfleet"
                )
                .into(),
            )
        })?;
        if opts.pool_size == 0 {
            return Err(StoreError::Io(
                "[store] pool_size must be at least 1".into(),
            ));
        }
        let target = describe(&config);
        let timeout_ms = opts.statement_timeout.as_millis().max(1);
        config.options(format!("-c statement_timeout={timeout_ms}"));
        config.application_name("certfleet-coordinator");
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.statement_timeout.min(Duration::from_secs(10)));
        }
        let manager_config = ManagerConfig {
            // A connection the server closed (restart, failover) is noticed by its task
            // and replaced on the next checkout.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match opts.tls {
            PgTls::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(config, tokio_postgres::NoTls, manager_config)
            }
            mode => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tls::connector(mode, &opts.ca_certs)?;
                Manager::from_config(config, tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(opts.statement_timeout))
            .create_timeout(Some(opts.statement_timeout))
            .recycle_timeout(Some(opts.statement_timeout))
            .build()
            .map_err(|e| StoreError::Io(format!("PostgreSQL pool for {target}: {e}").into()))?;
        let store = Self { pool, target };
        store.migrate().await?;
        Ok(store)
    }

    /// `host:port/database` of the store (no user, no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| {
            let detail = match &e {
                deadpool_postgres::PoolError::Backend(pe) => describe_error("connecting", pe),
                other => format!("PostgreSQL: {other}"),
            };
            StoreError::Io(
                format!(
                    "{detail} (database {}; check that it is up and that [store] url, tls \
                     and ca_file are right)",
                    self.target
                )
                .into(),
            )
        })
    }
}
