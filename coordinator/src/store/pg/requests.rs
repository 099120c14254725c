//! Operators' renewal requests on PostgreSQL: `renewal_requests (cert_id, asked_by, at,
//! nonce)`; cleared only while the nonce is the one read, so a request made since stays.

use super::PgStore;
use crate::store::{RenewalRequest, StoreError};
use certfleet_shared::ids::CertId;

fn decode(row: &tokio_postgres::Row) -> Result<RenewalRequest, StoreError> {
    let cert: &str = row.get(0);
    Ok(RenewalRequest {
        cert: CertId::parse(cert).map_err(|e| StoreError::Corrupt {
            key: format!("renewal_requests/{cert}"),
            detail: e.to_string(),
        })?,
        by: row.get(1),
        at: row.get(2),
        nonce: row.get(3),
    })
}

impl PgStore {
    pub async fn request_renewal(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        self.exec(
            "recording a renewal request",
            "INSERT INTO renewal_requests (cert_id, asked_by, at, nonce) VALUES ($1, $2, $3, $4)
             ON CONFLICT (cert_id) DO UPDATE SET
                 asked_by = EXCLUDED.asked_by, at = EXCLUDED.at, nonce = EXCLUDED.nonce",
            &[&req.cert.as_str(), &req.by, &req.at, &req.nonce],
        )
        .await
        .map(drop)
    }

    pub async fn renewal_request(
        &self,
        cert: &CertId,
    ) -> Result<Option<RenewalRequest>, StoreError> {
        let rows = self
            .rows(
                "reading a renewal request",
                "SELECT cert_id, asked_by, at, nonce FROM renewal_requests WHERE cert_id = $1",
                &[&cert.as_str()],
            )
            .await?;
        rows.first().map(decode).transpose()
    }

    pub async fn renewal_requests(&self) -> Result<Vec<RenewalRequest>, StoreError> {
        let rows = self
            .rows(
                "reading renewal requests",
                "SELECT cert_id, asked_by, at, nonce FROM renewal_requests ORDER BY at, cert_id",
                &[],
            )
            .await?;
        rows.iter().map(decode).collect()
    }

    pub async fn clear_renewal_request(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        self.exec(
            "clearing a renewal request",
            "DELETE FROM renewal_requests WHERE cert_id = $1 AND nonce = $2",
            &[&req.cert.as_str(), &req.nonce],
        )
        .await
        .map(drop)
    }
}
