//! `Enrollment/Enroll`: a join token (checked against its constraints in the store's
//! transaction, [`crate::store::TokenRecord::admit`]) buys a host identity. The same
//! token with the same identity key again (the agent retries when a reply is lost) is the
//! same host again: its identity certificate issued anew, no use taken. Every outcome is
//! audited: `token_used` + `host_enrolled`, `enrollment_repeated`, or
//! `enrollment_refused` with the constraint.

use super::{internal, Api};
use crate::audit::{Entry, Kind};
use crate::model::HostRecord;
use crate::requests;
use crate::store::{EnrollError, EnrollRefusal, Enrolled};
use certfleet_proto::v1::{self as pb, enrollment_server::Enrollment};
use certfleet_shared::ids::HostId;
use certfleet_shared::x509::sha256_hex;
use std::collections::BTreeMap;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl Enrollment for Api {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = req.remote_addr();
        let source = peer.map(|a| a.ip().to_canonical());
        let from = peer.map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        let hostname = requests::enroll(&r)?;
        let host_id = HostId::generate();
        let now = self.clock.now_unix();
        let (cert_pem, info) = self
            .ca
            .sign_agent(&r.csr_der, &host_id, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let asked: BTreeMap<String, String> = r.labels.into_iter().collect();
        let host = HostRecord {
            requested_names: Default::default(),
            challenge_modes: Default::default(),
            key_groups: Default::default(),
            id: host_id.clone(),
            hostname,
            labels: asked.clone(),
            enrolled: now,
            enrolled_from: from.clone(),
            identity_not_after: Some(info.not_after),
            identity_rotated: None,
            identity_spki: Some(hex::encode(&info.spki_der)),
            identity_serial: info.serial_hex,
            ips: vec![],
            targets: vec![],
            last_seen: None,
            inventory: vec![],
        };
        let token_hash = sha256_hex(r.token.as_bytes());
        let token_ref = token_hash[..16].to_owned();
        let store = self.store.clone();
        let result =
            tokio::task::spawn_blocking(move || store.enroll(&token_hash, now, source, &host))
                .await
                .map_err(internal)?;
        let refusal = match result {
            Ok(Enrolled::New(host)) => {
                let by = format!("host:{host_id}");
                self.audit
                    .append(
                        Kind::TokenUsed,
                        now,
                        Entry::by(&by)
                            .host(&host_id)
                            .detail("token_sha256_prefix", &token_ref),
                    )
                    .and_then(|_| {
                        self.audit.append(
                            Kind::HostEnrolled,
                            now,
                            Entry::by(&by)
                                .host(&host_id)
                                .detail("from", &from)
                                .detail("hostname", &host.hostname)
                                .detail("labels", &host.labels)
                                .detail("identity_serial", &host.identity_serial)
                                .detail("token_sha256_prefix", &token_ref),
                        )
                    })
                    .map_err(internal)?;
                tracing::info!(host = %host_id, from = %from, "agent enrolled");
                return Ok(Response::new(pb::EnrollResponse {
                    host_id: host_id.to_string(),
                    client_cert_pem: cert_pem,
                    ca_cert_pem: self.ca.ca_pem.clone(),
                }));
            }
            Ok(Enrolled::Repeat(earlier)) => {
                match self.repeat(&r.csr_der, earlier, now, &from, &token_ref)? {
                    Ok(resp) => return Ok(Response::new(resp)),
                    Err(refusal) => refusal,
                }
            }
            Err(EnrollError::Refused(refusal)) => refusal,
            Err(EnrollError::Store(e)) => return Err(internal(e)),
        };
        let used_by = match &refusal {
            EnrollRefusal::AlreadyUsed(h) | EnrollRefusal::HostRemoved(h) => h.as_str(),
            _ => "",
        };
        tracing::warn!(from = %from, reason = %refusal, constraint = refusal.constraint(), used_by, "enrollment refused");
        let _ = self.audit.append(
            Kind::EnrollmentRefused,
            now,
            Entry::by("unauthenticated")
                .detail("from", &from)
                .detail("constraint", refusal.constraint())
                .detail("reason", refusal.to_string())
                .detail("labels_asked", &asked)
                .detail("token_sha256_prefix", &token_ref)
                .detail("used_by", used_by),
        );
        Err(Status::permission_denied(refusal.to_string()))
    }
}

impl Api {
    /// A repeated enrollment (the store found `earlier` enrolled with this token and this
    /// key): the identity certificate issued anew for `earlier` — the agent never got the
    /// first one — recorded on the host like a rotation, and audited. A refusal when the
    /// host went away meanwhile.
    fn repeat(
        &self,
        csr_der: &[u8],
        earlier: crate::model::HostRecord,
        now: i64,
        from: &str,
        token_ref: &str,
    ) -> Result<Result<pb::EnrollResponse, EnrollRefusal>, Status> {
        let (cert_pem, info) = self
            .ca
            .sign_agent(csr_der, &earlier.id, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Re-read: the session or a removal may have written the host since the store's
        // transaction looked.
        let Some(mut rec) = self.store.host(&earlier.id).map_err(internal)? else {
            return Ok(Err(EnrollRefusal::HostRemoved(earlier.id.to_string())));
        };
        let previous = std::mem::replace(&mut rec.identity_serial, info.serial_hex.clone());
        rec.identity_spki = Some(hex::encode(&info.spki_der));
        rec.identity_not_after = Some(info.not_after);
        self.audit
            .append(
                Kind::EnrollmentRepeated,
                now,
                Entry::by(format!("host:{}", rec.id))
                    .host(&rec.id)
                    .detail("from", from)
                    .detail("hostname", &rec.hostname)
                    .detail("previous_identity_serial", &previous)
                    .detail("identity_serial", &info.serial_hex)
                    .detail("token_sha256_prefix", token_ref),
            )
            .map_err(internal)?;
        self.store.put_host(&rec).map_err(internal)?;
        tracing::info!(host = %rec.id, from = %from, serial = %info.serial_hex, "repeated enrollment: same host, identity issued anew");
        Ok(Ok(pb::EnrollResponse {
            host_id: rec.id.to_string(),
            client_cert_pem: cert_pem,
            ca_cert_pem: self.ca.ca_pem.clone(),
        }))
    }
}
