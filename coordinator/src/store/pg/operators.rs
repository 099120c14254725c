//! Operator records on PostgreSQL: `operators (name, generation, payload)`, written by
//! compare-and-swap on `generation` in one statement.

use super::{db_error, PgStore};
use crate::model::OperatorRecord;
use crate::store::StoreError;

fn decode(name: &str, text: &str) -> Result<OperatorRecord, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        key: format!("operators/{name}"),
        detail: e.to_string(),
    })
}

fn generation(g: u64) -> Result<i64, StoreError> {
    i64::try_from(g).map_err(|_| StoreError::Corrupt {
        key: "operators".into(),
        detail: format!("generation {g} does not fit a bigint"),
    })
}

impl PgStore {
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT payload::text FROM operators WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| db_error("reading an operator", e))?;
        row.map(|r| decode(name, r.get(0))).transpose()
    }

    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let rows = self
            .rows(
                "reading operators",
                "SELECT name, payload::text FROM operators ORDER BY name",
                &[],
            )
            .await?;
        rows.iter().map(|r| decode(r.get(0), r.get(1))).collect()
    }

    /// One statement: the insert of a new name (`expected` `None`) does nothing when the
    /// name exists; the update of an existing one only matches the expected generation.
    pub async fn put_operator(
        &self,
        rec: &OperatorRecord,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(rec)?;
        let new_generation = generation(rec.generation)?;
        let written = match expected {
            None => {
                self.exec(
                    "adding an operator",
                    "INSERT INTO operators (name, generation, payload)
                     VALUES ($1, $2, $3::text::json) ON CONFLICT (name) DO NOTHING",
                    &[&rec.name, &new_generation, &json],
                )
                .await?
            }
            Some(old) => {
                let old = generation(old)?;
                self.exec(
                    "writing an operator",
                    "UPDATE operators SET generation = $2, payload = $3::text::json
                     WHERE name = $1 AND generation = $4",
                    &[&rec.name, &new_generation, &json, &old],
                )
                .await?
            }
        };
        Ok(written == 1)
    }
}
