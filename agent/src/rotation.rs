//! Identity rotation while the agent runs: when a third of the identity certificate's
//! lifetime is left, a new key and CSR go to `AgentSession/RotateIdentity` (any of the
//! coordinators, the session's first), and the session reconnects with the new identity.

use crate::identity::Files;
use certfleet_shared::backoff::Backoff;
use certfleet_shared::clock::SharedClock;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// When the identity certificate cannot be read, it is read again after this long.
const IDENTITY_UNREADABLE_RECHECK: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What identity rotation needs: the files, the coordinators, the session's endpoint.
pub(crate) struct Rotation {
    pub(crate) files: Files,
    pub(crate) urls: Vec<String>,
    pub(crate) current: crate::coordinators::Current,
}

/// Rotates the agent's identity certificate when a third of its lifetime is left, and
/// tells the session to reconnect with the new one. Failures are retried with
/// [`Backoff::IDENTITY_ROTATION`] (2 s doubling to 5 min); the old identity stays in use
/// until a new one is in place.
pub(crate) async fn rotation_loop(
    rotation: Rotation,
    clock: SharedClock,
    shutdown: CancellationToken,
    rotated: Arc<tokio::sync::Notify>,
) {
    let files = &rotation.files;
    let mut failures = 0u32;
    loop {
        let wait = match files.identity_info() {
            Ok(info) => {
                let due = crate::identity::rotation_due(&info);
                let now = clock.now_unix();
                (now < due)
                    .then(|| Duration::from_secs((due - now) as u64).min(Duration::from_secs(3600)))
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the identity certificate");
                Some(IDENTITY_UNREADABLE_RECHECK)
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        let current = lock(&rotation.current).clone();
        let delay = match crate::identity::rotate(files, &rotation.urls, current).await {
            Ok(info) => {
                tracing::info!(serial = %info.serial_hex, not_after = info.not_after, "identity certificate rotated");
                failures = 0;
                rotated.notify_one();
                continue;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                // Without jitter, as before this used `shared::backoff`.
                let delay = Backoff::IDENTITY_ROTATION.ceiling(failures);
                tracing::warn!(error = %format!("{e:#}"), retry_in_s = delay.as_secs(), "identity rotation failed; the current identity stays in use");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
