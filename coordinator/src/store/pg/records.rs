//! The [`Store`](crate::store::Store) half of [`PgStore`], async; same semantics as
//! `SledStore` method by method (orders included: identifiers sort by bytes).

use super::{db_error, PgStore};
use crate::model::{CertRecord, HostRecord};
use crate::store::{AccountRecord, EnrollError, EnrollRefusal, Enrolled, StoreError, TokenRecord};
use crate::tokens::{resolve_repeat, Admission};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::ratelimit::Budget;
use serde::{de::DeserializeOwned, Serialize};
use std::net::IpAddr;
use tokio_postgres::Row;

fn decode<T: DeserializeOwned>(key: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

fn holder(ip: &str, id: &str) -> Result<HostId, StoreError> {
    HostId::parse(id).map_err(|e| StoreError::Corrupt {
        key: format!("ip_holders/{ip}"),
        detail: e.to_string(),
    })
}

/// `(key, payload)` rows → records.
fn decode_rows<T: DeserializeOwned>(table: &str, rows: &[Row]) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|r| decode(&format!("{table}/{}", r.get::<_, &str>(0)), r.get(1)))
        .collect()
}

/// Tables holding `(key, payload json)` only.
#[derive(Clone, Copy)]
enum Kv {
    Accounts,
    Tokens,
    Hosts,
    Budgets,
}

impl Kv {
    fn get_sql(self) -> &'static str {
        match self {
            Kv::Accounts => "SELECT issuer, payload::text FROM accounts WHERE issuer = $1",
            Kv::Tokens => "SELECT hash, payload::text FROM tokens WHERE hash = $1",
            Kv::Hosts => "SELECT id, payload::text FROM hosts WHERE id = $1",
            Kv::Budgets => "SELECT issuer, payload::text FROM budgets WHERE issuer = $1",
        }
    }
    fn put_sql(self) -> &'static str {
        match self {
            Kv::Accounts => {
                "INSERT INTO accounts (issuer, payload) VALUES ($1, $2::text::json)
                 ON CONFLICT (issuer) DO UPDATE SET payload = EXCLUDED.payload"
            }
            Kv::Tokens => {
                "INSERT INTO tokens (hash, payload) VALUES ($1, $2::text::json)
                 ON CONFLICT (hash) DO UPDATE SET payload = EXCLUDED.payload"
            }
            Kv::Hosts => {
                "INSERT INTO hosts (id, payload) VALUES ($1, $2::text::json)
                 ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload"
            }
            Kv::Budgets => {
                "INSERT INTO budgets (issuer, payload) VALUES ($1, $2::text::json)
                 ON CONFLICT (issuer) DO UPDATE SET payload = EXCLUDED.payload"
            }
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kv::Accounts => "accounts",
            Kv::Tokens => "tokens",
            Kv::Hosts => "hosts",
            Kv::Budgets => "budgets",
        }
    }
}

pub(super) const CERT_UPSERT: &str =
    "INSERT INTO certs (id, host_id, key_group, next_action, payload)
     VALUES ($1, $2, $3, $4, $5::text::json)
     ON CONFLICT (id) DO UPDATE SET host_id = EXCLUDED.host_id,
         key_group = EXCLUDED.key_group, next_action = EXCLUDED.next_action,
         payload = EXCLUDED.payload";

impl PgStore {
    async fn kv_get<T: DeserializeOwned>(
        &self,
        kv: Kv,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(kv.get_sql(), &[&key])
            .await
            .map_err(|e| db_error(&format!("reading {}", kv.name()), e))?;
        row.map(|r| decode(&format!("{}/{key}", kv.name()), r.get(1)))
            .transpose()
    }

    async fn kv_put<T: Serialize>(&self, kv: Kv, key: &str, rec: &T) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)?;
        let client = self.client().await?;
        client
            .execute(kv.put_sql(), &[&key, &json])
            .await
            .map_err(|e| db_error(&format!("writing {}", kv.name()), e))?;
        Ok(())
    }

    /// Runs a statement that returns nothing.
    pub(super) async fn exec(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(sql, params)
            .await
            .map_err(|e| db_error(doing, e))
    }

    pub(super) async fn rows(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        client
            .query(sql, params)
            .await
            .map_err(|e| db_error(doing, e))
    }

    pub async fn account(&self, issuer: &str) -> Result<Option<AccountRecord>, StoreError> {
        self.kv_get(Kv::Accounts, issuer).await
    }

    pub async fn put_account(&self, issuer: &str, rec: &AccountRecord) -> Result<(), StoreError> {
        self.kv_put(Kv::Accounts, issuer, rec).await
    }

    pub async fn delete_account(&self, issuer: &str) -> Result<(), StoreError> {
        self.exec(
            "deleting an account",
            "DELETE FROM accounts WHERE issuer = $1",
            &[&issuer],
        )
        .await
        .map(drop)
    }

    pub async fn put_token(&self, token_hash: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        self.kv_put(Kv::Tokens, token_hash, rec).await
    }

    pub async fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        let rows = self
            .rows(
                "reading tokens",
                "SELECT hash, payload::text FROM tokens ORDER BY hash",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let key: &str = r.get(0);
                Ok((key.to_owned(), decode(key, r.get(1))?))
            })
            .collect()
    }

    /// Checks the token, consumes one use and records the host, in one transaction (the
    /// token's row locked, so two enrollments with the last use cannot both succeed).
    /// Up to `limit` tokens after hash `after`: keyset pagination on the primary key.
    pub async fn tokens_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        let rows = self
            .rows(
                "reading tokens",
                "SELECT hash, payload::text FROM tokens WHERE $1::text IS NULL OR hash > $1
                 ORDER BY hash LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let key: &str = r.get(0);
                Ok((key.to_owned(), decode(key, r.get(1))?))
            })
            .collect()
    }

    pub async fn enroll(
        &self,
        token_hash: &str,
        now: i64,
        source: Option<IpAddr>,
        host: &HostRecord,
    ) -> Result<Enrolled, EnrollError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("starting an enrollment", e))?;
        let row = tx
            .query_opt(
                "SELECT payload::text FROM tokens WHERE hash = $1 FOR UPDATE",
                &[&token_hash],
            )
            .await
            .map_err(|e| db_error("reading a join token", e))?;
        let row = row.ok_or(EnrollRefusal::UnknownToken)?;
        let mut tok: TokenRecord =
            serde_json::from_str(row.get(0)).map_err(|_| EnrollRefusal::UnknownToken)?;
        // Refused: the transaction is dropped (rolled back), the row lock released.
        let admitted = match tok.admit(now, source, host)? {
            Admission::New(admitted) => *admitted,
            Admission::Repeat(id) => {
                // Nothing written: the transaction is dropped with the token untouched.
                let row = tx
                    .query_opt(
                        "SELECT payload::text FROM hosts WHERE id = $1",
                        &[&id.as_str()],
                    )
                    .await
                    .map_err(|e| db_error("reading the host of a repeated enrollment", e))?;
                let stored = match row {
                    Some(r) => Some(decode::<HostRecord>(id.as_str(), r.get(0))?),
                    None => None,
                };
                return Ok(Enrolled::Repeat(resolve_repeat(&id, stored, host)?));
            }
        };
        let tok_json = serde_json::to_string(&tok).map_err(StoreError::from)?;
        let host_json = serde_json::to_string(&admitted).map_err(StoreError::from)?;
        tx.execute(Kv::Tokens.put_sql(), &[&token_hash, &tok_json])
            .await
            .map_err(|e| db_error("consuming a join token", e))?;
        tx.execute(Kv::Hosts.put_sql(), &[&admitted.id.as_str(), &host_json])
            .await
            .map_err(|e| db_error("recording an enrolled host", e))?;
        tx.commit()
            .await
            .map_err(|e| db_error("committing an enrollment", e))?;
        Ok(Enrolled::New(admitted))
    }

    pub async fn host(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        self.kv_get(Kv::Hosts, id.as_str()).await
    }

    pub async fn put_host(&self, rec: &HostRecord) -> Result<(), StoreError> {
        self.kv_put(Kv::Hosts, rec.id.as_str(), rec).await
    }

    pub async fn delete_host(&self, id: &HostId) -> Result<(), StoreError> {
        self.exec(
            "deleting a host",
            "DELETE FROM hosts WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .map(drop)
    }

    /// The record goes with its index entries (they are columns of its row).
    pub async fn delete_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        self.exec(
            "deleting a certificate",
            "WITH gone AS (DELETE FROM leases WHERE cert_id = $1)
             DELETE FROM certs WHERE id = $1",
            &[&rec.id.as_str()],
        )
        .await
        .map(drop)
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = self
            .rows(
                "reading hosts",
                "SELECT id, payload::text FROM hosts ORDER BY id",
                &[],
            )
            .await?;
        decode_rows("hosts", &rows)
    }

    /// Up to `limit` hosts after id `after`: keyset pagination on the primary key.
    pub async fn hosts_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<HostRecord>, StoreError> {
        let rows = self
            .rows(
                "reading hosts",
                "SELECT id, payload::text FROM hosts WHERE $1::text IS NULL OR id > $1
                 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        decode_rows("hosts", &rows)
    }

    pub async fn cert(&self, id: &CertId) -> Result<Option<CertRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, payload::text FROM certs WHERE id = $1",
                &[&id.as_str()],
            )
            .await
            .map_err(|e| db_error("reading a certificate", e))?;
        row.map(|r| decode(id.as_str(), r.get(1))).transpose()
    }

    /// The record and its index columns in one statement.
    pub async fn put_cert(&self, rec: &CertRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)?;
        self.exec(
            "writing a certificate",
            CERT_UPSERT,
            &[
                &rec.id.as_str(),
                &rec.host_id.as_str(),
                &rec.spec.key_group.as_deref(),
                &rec.schedule.next_action,
                &json,
            ],
        )
        .await
        .map(drop)
    }

    /// The same commit as [`PgStore::put_cert`]: PostgreSQL has no cheaper unflushed write
    /// worth a second path.
    pub async fn put_cert_unflushed(&self, rec: &CertRecord) -> Result<(), StoreError> {
        self.put_cert(rec).await
    }

    pub async fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        let rows = self
            .rows(
                "reading certificates",
                "SELECT id, payload::text FROM certs ORDER BY id",
                &[],
            )
            .await?;
        decode_rows("certs", &rows)
    }

    /// Up to `limit` certificates after `after` in id order: `scan_certs` in pages.
    pub async fn certs_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CertRecord>, StoreError> {
        let rows = self
            .rows(
                "reading certificates",
                "SELECT id, payload::text FROM certs WHERE $1::text IS NULL OR id > $1
                 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        decode_rows("certs", &rows)
    }

    /// Visits every certificate, a page at a time.
    pub async fn scan_certs(
        &self,
        f: &mut (dyn FnMut(CertRecord) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        let mut after: Option<String> = None;
        loop {
            let page = self.certs_page(after.as_deref(), SCAN_PAGE).await?;
            let full = page.len() as i64 == SCAN_PAGE;
            for rec in page {
                after = Some(rec.id.to_string());
                f(rec)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    pub async fn certs_for_host(&self, host: &HostId) -> Result<Vec<CertRecord>, StoreError> {
        let rows = self
            .rows(
                "reading a host's certificates",
                "SELECT id, payload::text FROM certs WHERE host_id = $1 ORDER BY id",
                &[&host.as_str()],
            )
            .await?;
        decode_rows("certs", &rows)
    }

    pub async fn certs_in_group(&self, group: &str) -> Result<Vec<CertRecord>, StoreError> {
        let rows = self
            .rows(
                "reading a key group's certificates",
                "SELECT id, payload::text FROM certs WHERE key_group = $1 ORDER BY id",
                &[&group],
            )
            .await?;
        decode_rows("certs", &rows)
    }

    pub async fn due(&self, now: i64, limit: usize) -> Result<Vec<CertId>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "reading the schedule",
                "SELECT id FROM certs WHERE next_action <= $1
                 ORDER BY next_action, id LIMIT $2",
                &[&now, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                CertId::parse(r.get(0)).map_err(|e| StoreError::Corrupt {
                    key: "schedule".into(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let rows = self
            .rows(
                "reading the schedule",
                "SELECT min(next_action) FROM certs",
                &[],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    pub async fn ip_holder(&self, ip: IpAddr) -> Result<Option<HostId>, StoreError> {
        let key = ip.to_string();
        let rows = self
            .rows(
                "reading an address's holder",
                "SELECT host_id FROM ip_holders WHERE ip = $1",
                &[&key],
            )
            .await?;
        rows.first().map(|r| holder(&key, r.get(0))).transpose()
    }

    /// Compare-and-swap: takes `ip` when nobody holds it, or when `expected` still does.
    pub async fn claim_ip(
        &self,
        ip: IpAddr,
        host: &HostId,
        expected: Option<&HostId>,
    ) -> Result<HostId, StoreError> {
        let key = ip.to_string();
        let mut expected = expected.map(HostId::as_str);
        // At most: a swap that lost to a release, then a claim from nobody.
        for _ in 0..3 {
            let taken = match expected {
                None => {
                    self.exec(
                        "claiming an address",
                        "INSERT INTO ip_holders (ip, host_id) VALUES ($1, $2)
                         ON CONFLICT (ip) DO NOTHING",
                        &[&key, &host.as_str()],
                    )
                    .await?
                }
                Some(old) => {
                    self.exec(
                        "claiming an address",
                        "UPDATE ip_holders SET host_id = $2 WHERE ip = $1 AND host_id = $3",
                        &[&key, &host.as_str(), &old],
                    )
                    .await?
                }
            };
            if taken == 1 {
                return Ok(host.clone());
            }
            match self.ip_holder(ip).await? {
                Some(current) => return Ok(current),
                // Freed meanwhile: try once more from nobody.
                None => expected = None,
            }
        }
        Err(StoreError::Io(
            format!("claiming {key}: its holder kept changing; try again").into(),
        ))
    }

    pub async fn release_ip(&self, ip: IpAddr, host: &HostId) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "releasing an address",
                "DELETE FROM ip_holders WHERE ip = $1 AND host_id = $2",
                &[&ip.to_string(), &host.as_str()],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn ips_held_by(&self, host: &HostId) -> Result<Vec<IpAddr>, StoreError> {
        let rows = self
            .rows(
                "reading a host's addresses",
                "SELECT ip FROM ip_holders WHERE host_id = $1 ORDER BY ip",
                &[&host.as_str()],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, &str>(0).parse().ok())
            .collect())
    }

    /// A stored budget of another shape starts afresh (it only delays, never allows more).
    pub async fn budget(&self, issuer: &str) -> Result<Option<Budget>, StoreError> {
        Ok(self
            .kv_get::<serde_json::Value>(Kv::Budgets, issuer)
            .await?
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    pub async fn put_budget(&self, issuer: &str, budget: &Budget) -> Result<(), StoreError> {
        self.kv_put(Kv::Budgets, issuer, budget).await
    }
}

/// Certificates per page of `scan_certs`.
pub(super) const SCAN_PAGE: i64 = 500;
