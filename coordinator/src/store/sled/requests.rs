//! The `renewal_requests` tree: cert id → [`RenewalRequest`] JSON; cleared by
//! compare-and-swap on the bytes read, so a request made since is kept.

use super::SledStore;
use crate::store::{RenewalRequest, StoreError};
use certfleet_shared::ids::CertId;

pub(super) const TREE: &str = "renewal_requests";

impl SledStore {
    pub(super) fn put_renewal_request(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        let _w = self.writing();
        self.db
            .open_tree(TREE)?
            .insert(req.cert.as_str().as_bytes(), serde_json::to_vec(req)?)?;
        self.flush()
    }

    pub(super) fn renewal_request_of(
        &self,
        cert: &CertId,
    ) -> Result<Option<RenewalRequest>, StoreError> {
        Self::get(&self.db.open_tree(TREE)?, cert.as_str())
    }

    pub(super) fn all_renewal_requests(&self) -> Result<Vec<RenewalRequest>, StoreError> {
        let mut all: Vec<RenewalRequest> = Self::all(&self.db.open_tree(TREE)?)?;
        all.sort_by(|a, b| (a.at, &a.cert).cmp(&(b.at, &b.cert)));
        Ok(all)
    }

    pub(super) fn remove_renewal_request(&self, req: &RenewalRequest) -> Result<(), StoreError> {
        let _w = self.writing();
        let tree = self.db.open_tree(TREE)?;
        let key = req.cert.as_str().as_bytes();
        let Some(current) = tree.get(key)? else {
            return Ok(());
        };
        let stored: RenewalRequest = super::decode(&format!("{TREE}/{}", req.cert), &current)?;
        if stored.nonce != req.nonce {
            return Ok(());
        }
        // Replaced between the read and here: the newer request stays.
        let _ = tree.compare_and_swap(key, Some(current), None::<Vec<u8>>)?;
        self.flush()
    }
}
