//! The `operators` tree: operator name → [`OperatorRecord`] JSON, written by
//! compare-and-swap on the stored bytes after checking their generation.

use super::{decode, SledStore};
use crate::model::OperatorRecord;
use crate::store::StoreError;

pub(super) const TREE: &str = "operators";

impl SledStore {
    pub(super) fn operator_record(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        Self::get(&self.db.open_tree(TREE)?, name)
    }

    pub(super) fn swap_operator(
        &self,
        rec: &OperatorRecord,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let _w = self.writing();
        let tree = self.db.open_tree(TREE)?;
        let key = rec.name.as_bytes();
        let current = tree.get(key)?;
        let current_generation = current
            .as_ref()
            .map(|bytes| decode::<OperatorRecord>(&format!("operators/{}", rec.name), bytes))
            .transpose()?
            .map(|r| r.generation);
        if current_generation != expected {
            return Ok(false);
        }
        // The bytes read are the ones replaced: a write in between makes the swap fail.
        let swapped = tree.compare_and_swap(key, current, Some(serde_json::to_vec(rec)?))?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }
}
