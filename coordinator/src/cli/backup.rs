//! `store backup --out FILE`: the running coordinator's snapshot (`Admin/BackupStore`),
//! written 0600 and checked whole before the command says it is done.

use super::status_err;
use crate::store::backup;
use crate::store::migrate::MigrateReport;
use anyhow::Context;
use certfleet_proto::v1::{self as pb, admin_client::AdminClient};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tonic::transport::Channel;

/// Streams the backup into `out` (created 0600; an existing file is refused), syncs it and
/// reads it back: a file this returns for is whole and restorable.
pub async fn backup(
    client: &mut AdminClient<Channel>,
    out: &Path,
) -> anyhow::Result<MigrateReport> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "creating {} (an existing file is never overwritten: choose another --out)",
                out.display()
            )
        })?;
    let written = async {
        let mut stream = client
            .backup_store(pb::BackupStoreRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        while let Some(chunk) = stream.message().await.map_err(status_err)? {
            file.write_all(&chunk.data)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        file.sync_all()
            .with_context(|| format!("syncing {}", out.display()))?;
        let path = out.to_owned();
        let (_, counts) = tokio::task::spawn_blocking(move || backup::check(&path)).await??;
        anyhow::Ok(counts)
    }
    .await;
    if written.is_err() {
        // Never leave a partial backup that looks like one.
        let _ = std::fs::remove_file(out);
    }
    written
}
