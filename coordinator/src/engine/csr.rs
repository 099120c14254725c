//! The agent's CSR for an order: what it must be (exactly the order's identifiers, the key
//! type asked for, a public key never seen before for this certificate), and asking for it
//! until one is acceptable.

use super::{IssueError, AGENT_QUICK};
use crate::config::KeyTypeName;
use crate::model::{CertRecord, OrderInFlight};
use crate::sessions::{AgentHandle, SessionError};
use certfleet_proto::v1::{self as pb, coordinator_message::Cmd, reply};
use certfleet_shared::identifier::{check_sans, Identifier};
use certfleet_shared::ids::CertId;
use certfleet_shared::x509::{parse_pem_chain, CertInfo, CsrInfo};
use std::collections::HashSet;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

fn key_type_pb(k: KeyTypeName) -> pb::KeyType {
    match k {
        KeyTypeName::EcdsaP256 => pb::KeyType::EcdsaP256,
        KeyTypeName::EcdsaP384 => pb::KeyType::EcdsaP384,
        KeyTypeName::Rsa2048 => pb::KeyType::Rsa2048,
        KeyTypeName::Rsa3072 => pb::KeyType::Rsa3072,
        KeyTypeName::Rsa4096 => pb::KeyType::Rsa4096,
    }
}

/// The public-key algorithm a CSR for `k` carries.
fn key_algorithm(k: KeyTypeName) -> &'static str {
    match k {
        KeyTypeName::EcdsaP256 | KeyTypeName::EcdsaP384 => OID_EC_PUBLIC_KEY,
        KeyTypeName::Rsa2048 | KeyTypeName::Rsa3072 | KeyTypeName::Rsa4096 => OID_RSA_ENCRYPTION,
    }
}

/// What the agent's CSR for an order must be, gathered before asking (owned, so the request
/// runs alongside validation).
pub(crate) struct CsrWant {
    cmd: pb::CreateCsr,
    identifiers: Vec<Identifier>,
    key_type: KeyTypeName,
    /// SHA-256 (hex) of every public key seen before for this certificate.
    seen: HashSet<String>,
    cert: CertId,
}

/// A CSR that passed every check.
pub(crate) struct AcceptedCsr {
    pub(crate) der: Vec<u8>,
    pub(crate) spki_der: Vec<u8>,
    pub(crate) spki_sha256: String,
}

/// How often a CSR that fails a check is asked for again before the attempt fails.
const CSR_ATTEMPTS: u32 = 3;

impl CsrWant {
    pub(crate) fn new(rec: &CertRecord, order: &OrderInFlight) -> Self {
        let mut seen: HashSet<String> = rec.observed.key_history.iter().cloned().collect();
        if let Some(leaf) = rec
            .observed
            .current
            .as_ref()
            .and_then(|c| parse_pem_chain(&c.chain_pem).ok())
            .and_then(|chain| CertInfo::from_der(&chain[0]).ok())
        {
            seen.insert(key_digest(&leaf.spki_der));
        }
        Self {
            cmd: pb::CreateCsr {
                identifiers: order.identifiers.iter().map(|ip| ip.to_string()).collect(),
                key_type: key_type_pb(rec.spec.key_type) as i32,
                // The key is made once for the certificate, whichever target it goes to.
                target: rec.spec.targets.first().cloned().unwrap_or_default(),
                cert_id: rec.id.to_string(),
                key_group: rec.spec.key_group.clone().unwrap_or_default(),
            },
            identifiers: order.identifiers.clone(),
            key_type: rec.spec.key_type,
            seen,
            cert: rec.id.clone(),
        }
    }

    /// Asks the agent for a CSR until one is acceptable: exactly the order's identifiers, the
    /// key type asked for, and a public key never seen before for this certificate. A CSR
    /// that fails is discarded and asked for again (no ACME call is spent on it).
    pub(crate) async fn fetch(self, agent: &AgentHandle) -> Result<AcceptedCsr, IssueError> {
        let mut last = String::new();
        for attempt in 1..=CSR_ATTEMPTS {
            let reply = agent
                .request(Cmd::CreateCsr(self.cmd.clone()), "create CSR", AGENT_QUICK)
                .await?;
            let reply::Result::Csr(c) = reply else {
                return Err(SessionError::Unexpected {
                    host: agent.host.clone(),
                    what: "create CSR",
                }
                .into());
            };
            let problem = match check_csr(&c.csr_der, &self.identifiers, self.key_type) {
                Ok(info) => {
                    let digest = key_digest(&info.spki_der);
                    if !self.seen.contains(&digest) {
                        return Ok(AcceptedCsr {
                            der: c.csr_der,
                            spki_der: info.spki_der,
                            spki_sha256: digest,
                        });
                    }
                    "its public key was seen before for this certificate (a stale or replayed CSR)"
                        .to_owned()
                }
                Err(e) => e.to_string(),
            };
            tracing::warn!(host = %agent.host, cert = %self.cert, attempt, problem = %problem,
                "CSR from the agent discarded; asking for a new one");
            last = problem;
        }
        Err(IssueError::BadCsr(format!(
            "{CSR_ATTEMPTS} CSRs in a row were unacceptable; the last: {last}"
        )))
    }
}

/// How a public key is remembered: the SHA-256 of its SubjectPublicKeyInfo, hex.
pub(crate) fn key_digest(spki_der: &[u8]) -> String {
    certfleet_shared::x509::sha256_hex(spki_der)
}

/// The CSR must be signed by its key, name exactly `ids` as IP SANs, have no CN and no DNS
/// names, and use an EC key as asked.
pub fn check_csr(
    der: &[u8],
    ids: &[Identifier],
    key_type: KeyTypeName,
) -> Result<CsrInfo, IssueError> {
    let csr = CsrInfo::from_der(der).map_err(|e| IssueError::BadCsr(e.to_string()))?;
    check_sans(&csr.ips, &csr.dns_names, ids).map_err(IssueError::BadCsr)?;
    if csr.subject_cn.is_some() {
        return Err(IssueError::BadCsr(
            "it carries a CN; our certificates name their identifiers only as SANs".into(),
        ));
    }
    if csr.key_algorithm != key_algorithm(key_type) {
        return Err(IssueError::BadCsr(format!(
            "key algorithm {} is not the {key_type:?} asked for",
            csr.key_algorithm
        )));
    }
    Ok(csr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{lock, testutil::rec};
    use crate::sessions::Sessions;
    use certfleet_shared::ids::HostId;
    use std::sync::{Arc, Mutex};

    /// A CSR for `ips` from `key` (as an agent makes it).
    fn csr_for(key: &rcgen::KeyPair, ips: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = ips
            .iter()
            .map(|ip| rcgen::SanType::IpAddress(ip.parse().unwrap()))
            .collect();
        p.serialize_request(key).unwrap().der().to_vec()
    }

    #[tokio::test]
    async fn stale_or_foreign_csrs_are_discarded_and_asked_again() {
        use rcgen::PublicKeyData;
        let old_key = rcgen::KeyPair::generate().unwrap();
        let mut r = rec(0, 100);
        r.remember_key(&key_digest(&old_key.subject_public_key_info()));
        let order = OrderInFlight {
            validated_by: Default::default(),
            challenge: None,
            url: "https://ca/order/1".into(),
            issuer: "le".into(),
            identifiers: r.spec.identifiers.clone(),
            profile: None,
            replaces: None,
            reason: "forced".into(),
            started: 0,
            challenges_announced: false,
            presented: Vec::new(),
            dns_records: None,
            recorded: true,
        };
        let want = CsrWant::new(&r, &order);
        assert_eq!(
            want.cmd.cert_id,
            r.id.to_string(),
            "the key is filed under the cert"
        );

        // The agent answers: an old CSR (a key seen before), then one for other
        // identifiers, then a good one.
        let new_key = rcgen::KeyPair::generate().unwrap();
        let answers = [
            csr_for(&old_key, &["8.8.8.8"]),
            csr_for(&new_key, &["8.8.4.4"]),
            csr_for(&new_key, &["8.8.8.8"]),
        ];
        let sessions = Sessions::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let agent = sessions.open(HostId::generate(), tx);
        let deliver = agent.clone();
        let asked = Arc::new(Mutex::new(0usize));
        let counter = asked.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.recv().await {
                let n = {
                    let mut c = lock(&counter);
                    *c += 1;
                    *c - 1
                };
                deliver.deliver(pb::Reply {
                    request_id: msg.request_id,
                    result: Some(reply::Result::Csr(pb::Csr {
                        csr_der: answers[n.min(2)].clone(),
                    })),
                });
            }
        });
        let got = want.fetch(&agent).await.expect("the third CSR is accepted");
        assert_eq!(*lock(&asked), 3);
        assert_eq!(got.spki_der, new_key.subject_public_key_info());

        // Three bad ones in a row: the attempt fails (before any ACME call).
        let want = CsrWant::new(&r, &order);
        let sessions = Sessions::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let agent = sessions.open(HostId::generate(), tx);
        let deliver = agent.clone();
        let stale = csr_for(&old_key, &["8.8.8.8"]);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.recv().await {
                deliver.deliver(pb::Reply {
                    request_id: msg.request_id,
                    result: Some(reply::Result::Csr(pb::Csr {
                        csr_der: stale.clone(),
                    })),
                });
            }
        });
        match want.fetch(&agent).await {
            Err(IssueError::BadCsr(m)) => assert!(m.contains("seen before"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a stale CSR was accepted"),
        }
    }
}
