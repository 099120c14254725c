//! DNS-01 (RFC 8555 §8.4): the coordinator alone proves control of a name, through the
//! `[[dns_provider]]` serving its zone; the host takes no part (it only makes the key and
//! CSR, and installs). Every TXT value of an order is written at once — a wildcard and
//! its apex share `_acme-challenge.<base>`, so both values go into one RRset — and the CA
//! is asked to validate only once every authoritative nameserver serves them: a record
//! that never propagates fails the attempt before any validation is spent. The records
//! are stored in the order before they are written, and removed on every path (after a
//! crash too); a removal that fails is kept and retried.

use super::super::{Engine, IssueError};
use crate::acme::PendingChallenge;
use crate::audit::{Entry, Kind};
use crate::dns::PresentedSet;
use crate::model::CertRecord;
use certfleet_shared::identifier::{DnsName, Identifier};

/// The (name validated, TXT value) pairs of `challenges`: a wildcard's authorization is
/// for its base name (RFC 8555 §7.1.3), so `*.example.net` and `example.net` both give
/// `example.net`.
pub(crate) fn txt_values(
    challenges: &[PendingChallenge],
) -> Result<Vec<(DnsName, String)>, IssueError> {
    challenges
        .iter()
        .map(|c| {
            let id = Identifier::parse(&c.identifier).map_err(|e| {
                IssueError::Policy(format!("the CA's identifier {:?}: {e}", c.identifier))
            })?;
            let name = id.dns_name().cloned().ok_or_else(|| {
                IssueError::Policy(format!(
                    "{} is an IP address, which is never validated by DNS-01; give addresses a certificate with http-01 or tls-alpn-01",
                    c.identifier
                ))
            })?;
            Ok((name, c.dns_value.clone()))
        })
        .collect()
}

impl Engine {
    /// Writes the order's TXT records (stored in the order first) and waits until every
    /// authoritative nameserver serves them. On failure the records are removed and the
    /// error is returned; the CA has not been asked.
    pub(super) async fn present_dns(
        &self,
        rec: &mut CertRecord,
        challenges: &[PendingChallenge],
    ) -> Result<(), IssueError> {
        let values = txt_values(challenges)?;
        let set = self.live().dns.plan(&values).await?;
        if let Some(o) = rec.observed.order.as_mut() {
            o.dns_records = Some(set.clone());
        }
        // Durable before anything is written, so a crash cannot leave records behind.
        self.save(rec)?;
        let written = async {
            self.live().dns.present_set(&set).await?;
            self.live().dns.wait_propagated(&set).await
        }
        .await;
        if let Err(e) = written {
            self.remove_dns(rec).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes the order's TXT records, if any were written. A removal that fails is
    /// audited and kept in `Observed::dns_cleanup`, retried at the certificate's next run.
    pub(crate) async fn remove_dns(&self, rec: &mut CertRecord) {
        let Some(set) = rec
            .observed
            .order
            .as_mut()
            .and_then(|o| o.dns_records.take())
        else {
            return;
        };
        self.cleanup_dns_set(rec, set).await;
    }

    /// Removes `set`'s records now or keeps them for a later try (audited).
    pub(crate) async fn cleanup_dns_set(&self, rec: &mut CertRecord, set: PresentedSet) {
        match self.live().dns.cleanup(&set).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(cert = %rec.id, error = %e, "could not remove DNS-01 records; will try again");
                if let Err(audit) = self.record(
                    Kind::DnsCleanupFailed,
                    rec,
                    Entry::by("coordinator")
                        .detail("records", &set)
                        .detail("problem", e.to_string()),
                ) {
                    // The records are still kept for the retry below; only the trail
                    // misses this entry, which the log says.
                    tracing::error!(cert = %rec.id, error = %audit, "could not audit the failed DNS-01 cleanup");
                }
                if !rec.observed.dns_cleanup.contains(&set) {
                    rec.observed.dns_cleanup.push(set);
                }
            }
        }
    }

    /// Tries again the removals that failed before.
    pub(crate) async fn retry_dns_cleanup(&self, rec: &mut CertRecord) {
        for set in std::mem::take(&mut rec.observed.dns_cleanup) {
            self.cleanup_dns_set(rec, set).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChallengeKind;

    fn ch(identifier: &str, value: &str) -> PendingChallenge {
        PendingChallenge {
            kind: ChallengeKind::Dns01,
            identifier: identifier.into(),
            token: format!("tok-{value}"),
            key_authorization: format!("tok-{value}.thumb"),
            dns_value: value.into(),
        }
    }

    /// A wildcard and its apex both go to the apex's name (one RRset, two values); an
    /// address is refused, naming the fix.
    #[test]
    fn txt_values_use_the_base_name_and_refuse_addresses() {
        let v = txt_values(&[ch("*.example.net", "w"), ch("example.net", "a")]).unwrap();
        let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["example.net", "example.net"]);
        assert_eq!(v[0].1, "w");
        assert_eq!(v[1].1, "a");
        let err = txt_values(&[ch("192.0.2.1", "x")]).unwrap_err().to_string();
        assert!(err.contains("never validated by DNS-01"), "{err}");
    }

    #[test]
    fn every_host_offers_dns01() {
        assert!(super::super::choice::offers(&[], ChallengeKind::Dns01));
        assert!(super::super::choice::offers(
            &["http-01/webroot".into()],
            ChallengeKind::Dns01
        ));
    }
}
