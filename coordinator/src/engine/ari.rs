//! The CA's renewal window (ARI, RFC 9773): fetched when it is time to (at least twice a
//! day), kept while the CA's answer is the same, a random moment drawn inside it.

use super::Engine;
use crate::model::{AriState, CertRecord};
use certfleet_shared::renewal;

impl Engine {
    /// The CA may have an ARI window for the current certificate that we have not fetched.
    pub(super) fn ari_pending(&self, rec: &CertRecord) -> bool {
        rec.observed.ari.is_none()
            && rec
                .observed
                .current
                .as_ref()
                .is_some_and(|c| c.ari_id.is_some() && self.issuer_has_ari(&c.issuer))
    }

    pub(super) fn issuer_has_ari(&self, name: &str) -> bool {
        self.live().issuers.get(name).is_some_and(|i| i.has_ari())
    }

    /// Fetches the ARI window when it is time to (at least twice a day).
    pub(super) async fn refresh_ari(&self, rec: &mut CertRecord, now: i64) {
        let Some(cur) = &rec.observed.current else {
            return;
        };
        let Some(ari_id) = cur.ari_id.clone() else {
            return;
        };
        if rec
            .observed
            .ari
            .as_ref()
            .is_some_and(|a| a.next_check > now)
            || rec.schedule.ari_retry_at.is_some_and(|t| t > now)
        {
            return;
        }
        let Some(issuer) = self.live().issuers.get(&cur.issuer).cloned() else {
            return;
        };
        if !issuer.has_ari() {
            return;
        }
        match issuer.renewal_window(&ari_id).await {
            Ok(Some(w)) => {
                // Keep the last tenth of the lifetime for retries, even when the CA's window
                // runs up to expiry.
                let (nb, na) = (cur.not_before, cur.not_after);
                let end = w.end.min(na - (na - nb) / 10).max(w.start + 1);
                let renew_at = match &rec.observed.ari {
                    Some(old) if old.start == w.start && old.end == w.end => old.renew_at,
                    _ => renewal::ari_renew_at(
                        &renewal::AriWindow {
                            start: w.start,
                            end,
                        },
                        now,
                        rand::random(),
                    ),
                };
                rec.schedule.ari_retry_at = None;
                tracing::info!(cert = %rec.id, start = w.start, end = w.end, renew_at, "ARI window");
                rec.observed.ari = Some(AriState {
                    start: w.start,
                    end: w.end,
                    renew_at,
                    next_check: renewal::next_ari_check(now, Some(w.retry_after_secs)),
                    explanation_url: w.explanation_url,
                });
            }
            Ok(None) => {
                rec.observed.ari = None;
                rec.schedule.ari_retry_at = None;
            }
            Err(e) => {
                tracing::warn!(cert = %rec.id, error = %e, "ARI fetch failed; keeping the previous plan");
                match &mut rec.observed.ari {
                    Some(a) => a.next_check = now + 3600,
                    None => rec.schedule.ari_retry_at = Some(now + 3600),
                }
            }
        }
    }
}
