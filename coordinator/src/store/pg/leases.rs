//! Leases on certificates, measured by the database's clock (`now()`), with fencing
//! tokens: whichever coordinator holds a certificate's lease works on it, and a write of
//! that work commits only while the lease is still its own (the lease row is locked and
//! checked in the write's transaction). The `now` the engine passes is not used here.

use super::records::CERT_UPSERT;
use super::{db_error, PgStore};
use crate::model::CertRecord;
use crate::store::{Lease, StoreError};
use certfleet_shared::ids::CertId;

/// Free, expired, or the holder's own (extended under the same token); otherwise no row.
const TAKE: &str = "INSERT INTO leases (cert_id, holder, token, until)
     VALUES ($1, $2, 1, now() + make_interval(secs => $3))
     ON CONFLICT (cert_id) DO UPDATE SET
         token = CASE WHEN leases.holder = EXCLUDED.holder AND leases.until > now()
                      THEN leases.token ELSE leases.token + 1 END,
         holder = EXCLUDED.holder,
         until = EXCLUDED.until
     WHERE leases.holder = EXCLUDED.holder OR leases.until <= now()
     RETURNING token, floor(extract(epoch FROM until))::bigint";

impl PgStore {
    pub async fn take_lease(
        &self,
        cert: &CertId,
        holder: &str,
        secs: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let rows = self
            .rows(
                "taking a certificate's lease",
                TAKE,
                &[&cert.as_str(), &holder, &(secs as f64)],
            )
            .await?;
        Ok(rows.first().map(|r| Lease {
            cert: cert.clone(),
            holder: holder.to_owned(),
            token: r.get::<_, i64>(0) as u64,
            until: r.get(1),
        }))
    }

    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.exec(
            "giving a certificate's lease back",
            "UPDATE leases SET until = '-infinity'
             WHERE cert_id = $1 AND holder = $2 AND token = $3",
            &[&lease.cert.as_str(), &lease.holder, &(lease.token as i64)],
        )
        .await
        .map(drop)
    }

    pub async fn put_cert_fenced(&self, rec: &CertRecord, lease: &Lease) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)?;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("starting a fenced write", e))?;
        let held = tx
            .query_opt(
                "SELECT 1 FROM leases WHERE cert_id = $1 AND holder = $2 AND token = $3
                 AND until > now() FOR UPDATE",
                &[&rec.id.as_str(), &lease.holder, &(lease.token as i64)],
            )
            .await
            .map_err(|e| db_error("checking a certificate's lease", e))?;
        if held.is_none() {
            return Err(StoreError::LeaseLost {
                cert: rec.id.to_string(),
                holder: lease.holder.clone(),
            });
        }
        tx.execute(
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
        .map_err(|e| db_error("writing a certificate", e))?;
        tx.commit()
            .await
            .map_err(|e| db_error("committing a fenced write", e))
    }
}
