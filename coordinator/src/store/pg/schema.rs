//! The PostgreSQL schema: versioned migrations applied at start, in one transaction, under
//! an advisory lock (several coordinators may start at once: one migrates, the others wait
//! and then find the schema current). `certfleet_schema` records every version applied; a
//! database at a version newer than [`MIGRATIONS`] knows is refused
//! ([`StoreError::SchemaTooNew`]).
//!
//! Identifier columns are `text COLLATE "C"` so that `ORDER BY` is byte order, as sled's
//! keys are. Records are `json` (kept as written, readable with `psql`; `jsonb` would
//! refuse a `\u0000` that sled stores). The indexed fields of a certificate (`host_id`,
//! `key_group`, `next_action`) are columns of its row, so one `INSERT … ON CONFLICT` keeps
//! record and indexes in step.
//!
//! The audit trail cannot fork: `seq` is the primary key, `prev` is unique, and a trigger
//! refuses a row unless it is record 0 with `prev = ''` or record `seq - 1` exists with
//! `hash = prev` — so each record has exactly one successor, and of two coordinators
//! appending after the same head one fails (unique violation or the trigger's `CFA01`)
//! and seals its record again onto the new head.

use super::{db_error, PgStore};
use crate::store::StoreError;

/// Key of the advisory lock held while migrating ("certflee" in ASCII).
const MIGRATION_LOCK: i64 = 0x6365_7274_666c_6565;

/// SQLSTATE the audit trigger raises for a row that does not extend the head.
pub(super) const AUDIT_NOT_HEAD: &str = "CFA01";

/// Migration `i` brings the schema to version `i + 1`. Append only: never edit one that
/// has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    issuer  text COLLATE "C" PRIMARY KEY,
    payload json NOT NULL
);
CREATE TABLE tokens (
    hash    text COLLATE "C" PRIMARY KEY,
    payload json NOT NULL
);
CREATE TABLE hosts (
    id      text COLLATE "C" PRIMARY KEY,
    payload json NOT NULL
);
CREATE TABLE certs (
    id          text COLLATE "C" PRIMARY KEY,
    host_id     text COLLATE "C" NOT NULL,
    key_group   text COLLATE "C",
    next_action bigint,
    payload     json NOT NULL
);
CREATE INDEX certs_schedule ON certs (next_action, id) WHERE next_action IS NOT NULL;
CREATE INDEX certs_by_host ON certs (host_id, id);
CREATE INDEX certs_by_group ON certs (key_group, id) WHERE key_group IS NOT NULL;
CREATE TABLE ip_holders (
    ip      text COLLATE "C" PRIMARY KEY,
    host_id text COLLATE "C" NOT NULL
);
CREATE INDEX ip_holders_by_host ON ip_holders (host_id, ip);
CREATE TABLE budgets (
    issuer  text COLLATE "C" PRIMARY KEY,
    payload json NOT NULL
);
CREATE TABLE audit (
    seq     bigint PRIMARY KEY CHECK (seq >= 0),
    prev    text COLLATE "C" NOT NULL UNIQUE,
    hash    text COLLATE "C" NOT NULL,
    host_id text COLLATE "C",
    serial  text COLLATE "C",
    record  bytea NOT NULL
);
CREATE INDEX audit_by_host ON audit (host_id, seq) WHERE host_id IS NOT NULL;
CREATE INDEX audit_by_serial ON audit (serial, seq) WHERE serial IS NOT NULL;
CREATE TABLE audit_ips (
    ip  bytea NOT NULL CHECK (length(ip) = 16),
    seq bigint NOT NULL,
    PRIMARY KEY (ip, seq)
);
CREATE FUNCTION audit_extends_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = 0 THEN
        IF NEW.prev <> '' THEN
            RAISE EXCEPTION 'audit record 0 must not link to a predecessor'
                USING ERRCODE = 'CFA01';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM audit WHERE seq = NEW.seq - 1 AND hash = NEW.prev) THEN
        RAISE EXCEPTION 'audit record % does not extend record %', NEW.seq, NEW.seq - 1
            USING ERRCODE = 'CFA01';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_extends_head BEFORE INSERT ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_extends_head();
"#,
    r#"
CREATE TABLE leases (
    cert_id text COLLATE "C" PRIMARY KEY,
    holder  text NOT NULL,
    token   bigint NOT NULL,
    until   timestamptz NOT NULL
);
"#,
    r#"
CREATE TABLE nodes (
    node     text COLLATE "C" PRIMARY KEY,
    name     text NOT NULL,
    started  bigint NOT NULL,
    beat     timestamptz NOT NULL,
    sessions bigint NOT NULL
);
CREATE TABLE sessions (
    host_id text COLLATE "C" PRIMARY KEY,
    node    text COLLATE "C" NOT NULL,
    session bigint NOT NULL,
    since   timestamptz NOT NULL
);
CREATE INDEX sessions_by_node ON sessions (node);
CREATE TABLE relay (
    id         text COLLATE "C" PRIMARY KEY,
    host_id    text COLLATE "C" NOT NULL,
    from_node  text COLLATE "C" NOT NULL,
    to_node    text COLLATE "C" NOT NULL,
    message    bytea NOT NULL,
    timeout_ms bigint NOT NULL,
    posted     timestamptz NOT NULL DEFAULT now(),
    taken      boolean NOT NULL DEFAULT false,
    reply      bytea
);
CREATE INDEX relay_inbox ON relay (to_node, posted) WHERE NOT taken;
"#,
    r#"
CREATE TABLE operators (
    name       text COLLATE "C" PRIMARY KEY,
    generation bigint NOT NULL,
    payload    json NOT NULL
);
"#,
    r#"
CREATE TABLE renewal_requests (
    cert_id  text COLLATE "C" PRIMARY KEY,
    asked_by text NOT NULL,
    at       bigint NOT NULL,
    nonce    text NOT NULL
);
"#,
];

/// The schema version this coordinator writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

impl PgStore {
    /// Brings the schema to [`SCHEMA_VERSION`], or refuses a newer one.
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("starting the migration", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| db_error("taking the migration lock", e))?;
        tx.batch_execute(
            "SET LOCAL client_min_messages = warning;
            CREATE TABLE IF NOT EXISTS certfleet_schema (
                version    bigint PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| db_error("creating certfleet_schema", e))?;
        let found: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM certfleet_schema",
                &[],
            )
            .await
            .map_err(|e| db_error("reading the schema version", e))?
            .get(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            let version = i as i64 + 1;
            tx.batch_execute(sql)
                .await
                .map_err(|e| db_error(&format!("applying schema migration {version}"), e))?;
            tx.execute(
                "INSERT INTO certfleet_schema (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(|e| db_error("recording the schema version", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing the migration", e))?;
        if found < SCHEMA_VERSION {
            tracing::info!(
                from = found,
                to = SCHEMA_VERSION,
                "PostgreSQL schema migrated"
            );
        }
        Ok(())
    }
}
