//! `Admin/BackupStore`: the snapshot of a serving coordinator's sled store
//! (`store::backup`), streamed to `store backup`.

use super::{internal, Api};
use crate::audit::{Entry, Kind};
use crate::fleet_ca::StateDir;
use crate::operators::AdminRpc;
use crate::store::backup;
use certfleet_proto::v1 as pb;
use std::io::{Read, Seek};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

/// What `BackupStore` answers with.
pub type BackupStream = ReceiverStream<Result<pb::BackupChunk, Status>>;

/// Bytes per message (the file is read back in these).
const CHUNK: usize = 64 * 1024;

impl Api {
    pub(super) async fn backup_store_stream(
        &self,
        req: Request<pb::BackupStoreRequest>,
    ) -> Result<BackupStream, Status> {
        let operator = self.operator(&req, AdminRpc::BackupStore)?;
        if self.store.as_sled().is_none() {
            return Err(Status::failed_precondition(
                "this coordinator's store is PostgreSQL: back it up with pg_dump (README, \
                 \"Store\"); `store backup` is for the sled store",
            ));
        }
        let state_dir = self.engine.live().config.state_dir.clone();
        let now = self.clock.now_unix();
        let bundle = crate::node::bundle(&StateDir::new(&state_dir), now).map_err(internal)?;
        // Audited before the snapshot, which therefore holds this record.
        self.audit
            .append(Kind::StoreBackedUp, now, Entry::by(operator.by()))
            .map_err(internal)?;
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(4);
        let name = operator.name().to_owned();
        self.tracker.spawn_blocking(move || {
            let sent = (|| -> Result<(), String> {
                let sled = store.as_sled().ok_or("the store is not sled")?;
                // Unlinked from the start: the snapshot (account and CA keys) never stays
                // on disk, whatever happens to this process.
                let mut file = tempfile::tempfile_in(&state_dir)
                    .map_err(|e| format!("a temporary file in {}: {e}", state_dir.display()))?;
                let started = std::time::Instant::now();
                let counts =
                    backup::write(sled, &bundle, now, &mut file).map_err(|e| e.to_string())?;
                let bytes = file.stream_position().map_err(|e| e.to_string())?;
                tracing::info!(operator = %name, %counts, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "store backup taken");
                file.rewind().map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = file.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Ok(());
                    }
                    let chunk = pb::BackupChunk {
                        data: buf[..n].to_vec(),
                    };
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return Ok(()); // the client went away
                    }
                }
            })();
            if let Err(e) = sent {
                tracing::error!(error = %e, "store backup failed");
                let _ = tx.blocking_send(Err(Status::internal(format!("backup failed: {e}"))));
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
