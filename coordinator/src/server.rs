//! The gRPC server: three services on one TLS port.
//!
//! - `Enrollment` needs no client certificate: the join token authenticates.
//! - `AgentSession` needs a fleet-CA client certificate naming an enrolled host.
//! - `Admin` needs a fleet-CA client certificate naming an operator whose stored record
//!   accepts it and whose role allows the call (`crate::operators`, `server/operator_rpcs.rs`).
//!
//! TLS verifies any presented client certificate against the fleet CA (a certificate from
//! another CA fails the handshake); each RPC then checks *which* identity it carries.

use crate::audit::{Entry, Kind};
use crate::engine::Engine;
use crate::fleet_ca::FleetCa;
use crate::model::HostRecord;
use crate::operators::AdminRpc;
use crate::requests;
use crate::sessions::Sessions;
use crate::store::{Store, TokenRecord};
use certfleet_proto::v1::{
    self as pb, admin_server::Admin, agent_message::Msg, agent_session_server::AgentSession,
    AgentMessage, CoordinatorMessage,
};
use certfleet_shared::clock::SharedClock;
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::x509::{sha256_hex, CertInfo};
use certfleet_shared::HOST_URI_PREFIX;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_IPS: usize = 64;
const MAX_TARGETS: usize = 32;

mod backup;
mod enroll;
mod hello;
pub mod lists;
mod operator_rpcs;

pub struct Services {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    pub engine: Arc<Engine>,
    pub ca: Arc<FleetCa>,
    pub audit: Arc<crate::audit::AuditLog>,
    pub clock: SharedClock,
    pub shutdown: CancellationToken,
    /// Every task the services spawn (one reader per agent session); drained by `serve`.
    pub tracker: TaskTracker,
    /// The server certificate in use (swapped when it is renewed).
    pub server_cert: Arc<crate::server_cert::ServerCertResolver>,
}

/// The gRPC face of [`Services`] (a local type, so it can implement the generated traits).
#[derive(Clone)]
pub struct Api(pub Arc<Services>);

impl std::ops::Deref for Api {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "internal error");
    Status::internal(format!("coordinator error: {e}"))
}

/// Names carried by the verified client certificate, if any.
fn peer_uris<T>(req: &Request<T>) -> Result<Vec<String>, Status> {
    let certs = req.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
        Status::unauthenticated(
            "this call needs a client certificate from the fleet CA (mutual TLS)",
        )
    })?;
    let leaf = CertInfo::from_der(&certs[0])
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    Ok(leaf.uris)
}

fn host_identity<T>(req: &Request<T>, store: &dyn Store) -> Result<HostRecord, Status> {
    let uris = peer_uris(req)?;
    let id = uris
        .iter()
        .find_map(|u| u.strip_prefix(HOST_URI_PREFIX))
        .ok_or_else(|| {
            Status::permission_denied(
                "this call is for agents; the client certificate is not a host identity",
            )
        })?;
    let id = HostId::parse(id).map_err(|e| Status::permission_denied(e.to_string()))?;
    store.host(&id).map_err(internal)?.ok_or_else(|| {
        Status::permission_denied(format!(
            "host {id} is not enrolled (was it removed?); enroll again"
        ))
    })
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentSession for Api {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let host = host_identity(&req, self.store.as_ref())?;
        // The identity key this session proves: key groups seal to it.
        let identity_spki = req
            .peer_certs()
            .and_then(|c| c.first().cloned())
            .and_then(|c| CertInfo::from_der(&c).ok())
            .map(|i| hex::encode(&i.spki_der));
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 15 s"))?;
        let hello = match first {
            Some(Ok(AgentMessage {
                msg: Some(Msg::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ))
            }
        };
        self.apply_hello(&host.id, hello).inspect_err(|e| {
            tracing::warn!(host = %host.id, error = %e.message(), "bad Hello");
        })?;
        if let Some(spki) = identity_spki {
            if let Some(mut rec) = self.store.host(&host.id).map_err(internal)? {
                if rec.identity_spki.as_deref() != Some(spki.as_str()) {
                    rec.identity_spki = Some(spki);
                    self.store.put_host(&rec).map_err(internal)?;
                }
            }
        }

        if !self.sessions.accepting() {
            return Err(Status::unavailable(
                "this coordinator cannot reach its database; connect to another coordinator",
            ));
        }
        let (tx, rx) = mpsc::channel(32);
        let handle = self.sessions.open(host.id.clone(), tx);
        tracing::info!(host = %host.id, session = handle.session_id, "agent connected");
        self.engine.host_changed(&host.id).map_err(internal)?;
        self.after_hello(&host.id, &host.ips);

        let svc = self.0.clone();
        self.tracker.spawn(async move {
            loop {
                let next = tokio::select! {
                    n = inbound.next() => n,
                    _ = svc.shutdown.cancelled() => break,
                    _ = handle.ended() => break,
                };
                match next {
                    Some(Ok(AgentMessage {
                        msg: Some(Msg::Reply(reply)),
                    })) => handle.deliver(reply),
                    Some(Ok(AgentMessage {
                        msg: Some(Msg::Hello(h)),
                    })) => {
                        let before = svc.store.host(&handle.host).ok().flatten().map(|h| h.ips).unwrap_or_default();
                        match svc.apply_hello(&handle.host, h) {
                        Ok(()) => {
                            if let Err(e) = svc.engine.host_changed(&handle.host) {
                                tracing::error!(host = %handle.host, error = %e, "cannot record host change");
                            }
                            svc.after_hello(&handle.host, &before);
                        }
                        Err(e) => {
                            tracing::warn!(host = %handle.host, error = %e.message(), "bad Hello ignored")
                        }
                    }},
                    Some(Ok(AgentMessage { msg: None })) => {
                        tracing::warn!(host = %handle.host, "empty message ignored")
                    }
                    Some(Err(e)) => {
                        // Usually an agent that went away (restart, network); the disconnect is logged below.
                        tracing::debug!(host = %handle.host, error = %e.message(), "session stream ended with an error");
                        break;
                    }
                    None => break,
                }
            }
            svc.sessions.close(&handle);
            if let Ok(Some(mut rec)) = svc.store.host(&handle.host) {
                rec.last_seen = Some(svc.clock.now_unix());
                let _ = svc.store.put_host_unflushed(&rec);
            }
            tracing::info!(host = %handle.host, session = handle.session_id, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        // Only the host itself, by its identity: removal revokes its certificates.
        let host = host_identity(&req, self.store.as_ref())?;
        match crate::lifecycle::leave(&self.engine, &host.id).await {
            Ok(revoked_serials) => {
                tracing::warn!(host = %host.id, revoked = ?revoked_serials, "host left the fleet");
                Ok(Response::new(pb::LeaveResponse { revoked_serials }))
            }
            Err(e) => Err(Status::unavailable(format!(
                "host {} not removed: {e}; run `certfleet-agent leave` again",
                host.id
            ))),
        }
    }

    async fn rotate_identity(
        &self,
        req: Request<pb::RotateIdentityRequest>,
    ) -> Result<Response<pb::RotateIdentityResponse>, Status> {
        // Only a host with a valid identity from our CA may ask, and only for itself: the
        // new certificate names the host the presented one names.
        let host = host_identity(&req, self.store.as_ref())?;
        let from = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let presented = req
            .peer_certs()
            .and_then(|c| c.first().cloned())
            .and_then(|c| CertInfo::from_der(&c).ok())
            .map(|i| i.serial_hex)
            .unwrap_or_default();
        let r = req.into_inner();
        let now = self.clock.now_unix();
        let (cert_pem, info) = self
            .ca
            .sign_agent(&r.csr_der, &host.id, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.audit
            .append(
                Kind::IdentityRotated,
                now,
                Entry::by(format!("host:{}", host.id))
                    .host(&host.id)
                    .detail("from", &from)
                    .detail("previous_identity_serial", &presented)
                    .detail("identity_serial", &info.serial_hex)
                    .detail("not_after", info.not_after),
            )
            .map_err(internal)?;
        // Re-read: the session may have written the host since we looked.
        let mut rec = self.store.host(&host.id).map_err(internal)?.unwrap_or(host);
        rec.identity_serial = info.serial_hex.clone();
        rec.identity_spki = Some(hex::encode(&info.spki_der));
        rec.identity_not_after = Some(info.not_after);
        rec.identity_rotated = Some(now);
        self.store.put_host(&rec).map_err(internal)?;
        tracing::info!(host = %rec.id, from = %from, serial = %info.serial_hex, previous = %presented, "agent identity rotated");
        Ok(Response::new(pb::RotateIdentityResponse {
            client_cert_pem: cert_pem,
            not_after_unix: info.not_after,
        }))
    }
}

#[tonic::async_trait]
impl Admin for Api {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::CreateToken)?;
        let requests::NewToken {
            ttl,
            uses,
            cidrs,
            labels,
        } = requests::create_token(&req.into_inner())?;
        let token = crate::tokens::generate();
        let now = self.clock.now_unix();
        let rec = TokenRecord {
            created: now,
            expires: now + ttl as i64,
            uses_left: uses,
            used_by: vec![],
            revoked: false,
            cidrs,
            labels,
            keys: Default::default(),
        };
        let token_hash = sha256_hex(token.as_bytes());
        // Recorded before the token is handed out; only a hash prefix ever appears.
        self.audit
            .append(
                Kind::TokenCreated,
                now,
                Entry::by(operator.by())
                    .detail("token_sha256_prefix", &token_hash[..16])
                    .detail("expires", rec.expires)
                    .detail("uses", uses)
                    .detail(
                        "cidrs",
                        rec.cidrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>(),
                    )
                    .detail("labels_fixed", &rec.labels),
            )
            .map_err(internal)?;
        self.store.put_token(&token_hash, &rec).map_err(internal)?;
        tracing::info!(operator = %operator.name(), ttl, uses, "join token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            expires_unix: rec.expires,
        }))
    }

    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.list_hosts_paged(req).await.map(Response::new)
    }

    async fn list_certs(
        &self,
        req: Request<pb::ListCertsRequest>,
    ) -> Result<Response<pb::ListCertsResponse>, Status> {
        self.list_certs_paged(req).await.map(Response::new)
    }

    async fn revoke_cert(
        &self,
        req: Request<pb::RevokeCertRequest>,
    ) -> Result<Response<pb::RevokeCertResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::RevokeCert)?;
        let (id, name, reason) = requests::revoke_cert(&req.into_inner())?;
        if self.store.cert(&id).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("no such certificate: {id}")));
        }
        match crate::admin::revoke(&self.engine, &id, reason, &name, &operator.by(), true).await {
            Ok(Some(serial)) => Ok(Response::new(pb::RevokeCertResponse { serial })),
            Ok(None) => Err(Status::failed_precondition(format!(
                "certificate {id} has nothing issued to revoke"
            ))),
            Err(e) => Err(Status::unavailable(format!("revocation failed: {e}"))),
        }
    }

    async fn remove_host(
        &self,
        req: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::RemoveHost)?;
        let r = req.into_inner();
        let host = requests::remove_host(&r)?;
        if self.store.host(&host).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("no such host: {host}")));
        }
        match crate::admin::remove_host(&self.engine, &host, &operator.by(), !r.keep_certificates)
            .await
        {
            Ok(revoked_serials) => Ok(Response::new(pb::RemoveHostResponse { revoked_serials })),
            Err(e) => Err(Status::unavailable(format!("host not removed: {e}"))),
        }
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.operator(&req, AdminRpc::ClusterStatus)?;
        let (sessions, store) = (self.sessions.clone(), self.store.clone());
        let r =
            tokio::task::spawn_blocking(move || crate::cluster::status(&sessions, store.as_ref()))
                .await
                .map_err(internal)?;
        Ok(Response::new(r))
    }

    async fn release_ip(
        &self,
        req: Request<pb::ReleaseIpRequest>,
    ) -> Result<Response<pb::ReleaseIpResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::ReleaseIp)?;
        let (host, ip) = requests::release_ip(&req.into_inner())?;
        match self.store.ip_holder(ip).map_err(internal)? {
            Some(h) if h == host => {}
            Some(other) => {
                return Err(Status::failed_precondition(format!(
                    "{ip} is held by host {other}, not {host}"
                )))
            }
            None => {
                return Err(Status::failed_precondition(format!(
                    "{ip} is not held by any host"
                )))
            }
        }
        let rechecked =
            crate::admin::release_ip(&self.engine, ip, &host, &operator.by()).map_err(internal)?;
        Ok(Response::new(pb::ReleaseIpResponse {
            rechecked_hosts: rechecked.iter().map(|h| h.to_string()).collect(),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.list_tokens_paged(req).await.map(Response::new)
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::RevokeToken)?;
        let id = requests::revoke_token(&req.into_inner())?;
        let matches: Vec<(String, TokenRecord)> = self
            .store
            .tokens()
            .map_err(internal)?
            .into_iter()
            .filter(|(h, _)| h.starts_with(&id))
            .collect();
        let (hash, mut rec) = match matches.len() {
            0 => return Err(Status::not_found(format!("no token with id {id}"))),
            1 => matches
                .into_iter()
                .next()
                .ok_or_else(|| Status::internal("token vanished"))?,
            n => {
                return Err(Status::invalid_argument(format!(
                    "{n} tokens start with {id}; give more digits"
                )))
            }
        };
        self.audit
            .append(
                Kind::TokenRevoked,
                self.clock.now_unix(),
                Entry::by(operator.by()).detail("token_sha256_prefix", &hash[..16]),
            )
            .map_err(internal)?;
        rec.revoked = true;
        self.store.put_token(&hash, &rec).map_err(internal)?;
        tracing::info!(operator = %operator.name(), token = %&hash[..16], "join token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            id: hash[..16].to_owned(),
        }))
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        self.operator(&req, AdminRpc::QueryAudit)?;
        let api = self.clone();
        let r = req.into_inner();
        let resp = tokio::task::spawn_blocking(move || api.audit_query(r))
            .await
            .map_err(internal)??;
        Ok(Response::new(resp))
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::VerifyAudit)?;
        let audit = self.audit.clone();
        let broken = tokio::task::spawn_blocking(move || audit.verify())
            .await
            .map_err(internal)?
            .map_err(internal)?;
        tracing::info!(operator = %operator.name(), intact = broken.is_none(), "audit chain verified");
        Ok(Response::new(pb::VerifyAuditResponse {
            intact: broken.is_none(),
            records: self.audit.len(),
            broken_seq: broken.as_ref().map(|b| b.seq).unwrap_or(0),
            reason: broken.map(|b| b.reason).unwrap_or_default(),
        }))
    }

    async fn renew_certs(
        &self,
        req: Request<pb::RenewCertsRequest>,
    ) -> Result<Response<pb::RenewCertsResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::RenewCerts)?;
        let (mut ids, host) = requests::renew_certs(&req.into_inner())?;
        if let Some(host) = host {
            if self.store.host(&host).map_err(internal)?.is_none() {
                return Err(Status::not_found(format!("no such host: {host}")));
            }
            let of_host: Vec<CertId> = self
                .store
                .certs_for_host(&host)
                .map_err(internal)?
                .into_iter()
                .map(|c| c.id)
                .collect();
            if of_host.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "host {host} has no certificate yet"
                )));
            }
            ids.extend(of_host);
        }
        let mut missing = Vec::new();
        for id in &ids {
            if self.store.cert(id).map_err(internal)?.is_none() {
                missing.push(id.to_string());
            }
        }
        if !missing.is_empty() {
            return Err(Status::not_found(format!(
                "no such certificate: {} (nothing was renewed)",
                missing.join(", ")
            )));
        }
        let done =
            crate::admin::force_renew(&self.engine, &ids, operator.name()).map_err(internal)?;
        tracing::info!(operator = %operator.name(), certs = ?done, "renewal forced");
        Ok(Response::new(pb::RenewCertsResponse {
            cert_ids: done.into_iter().map(|i| i.to_string()).collect(),
        }))
    }

    async fn add_operator(
        &self,
        req: Request<pb::AddOperatorRequest>,
    ) -> Result<Response<pb::OperatorCredential>, Status> {
        let operator = self.operator(&req, AdminRpc::AddOperator)?;
        self.add_operator_as(&operator, req.into_inner())
            .map(Response::new)
    }

    async fn renew_operator(
        &self,
        req: Request<pb::RenewOperatorRequest>,
    ) -> Result<Response<pb::OperatorCredential>, Status> {
        let operator = self.operator(&req, AdminRpc::RenewOperator)?;
        self.renew_operator_as(operator, req.into_inner())
            .map(Response::new)
    }

    async fn list_operators(
        &self,
        req: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.operator(&req, AdminRpc::ListOperators)?;
        self.list_operators_now().map(Response::new)
    }

    async fn revoke_operator(
        &self,
        req: Request<pb::RevokeOperatorRequest>,
    ) -> Result<Response<pb::RevokeOperatorResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::RevokeOperator)?;
        self.revoke_operator_as(&operator, &req.into_inner())
            .map(Response::new)
    }

    type BackupStoreStream = backup::BackupStream;

    async fn backup_store(
        &self,
        req: Request<pb::BackupStoreRequest>,
    ) -> Result<Response<Self::BackupStoreStream>, Status> {
        self.backup_store_stream(req).await.map(Response::new)
    }

    async fn get_credentials(
        &self,
        req: Request<pb::GetCredentialsRequest>,
    ) -> Result<Response<pb::GetCredentialsResponse>, Status> {
        let operator = self.operator(&req, AdminRpc::GetCredentials)?;
        Ok(Response::new(self.credentials_of(&operator)))
    }
}

impl Api {
    /// Runs an audit query. `pub` for the fuzz targets (`fuzz/`); not an API.
    #[doc(hidden)]
    pub fn audit_query(&self, r: pb::QueryAuditRequest) -> Result<pb::QueryAuditResponse, Status> {
        self.audit_page(&r)
    }
}

pub(crate) fn cert_view(c: crate::model::CertRecord, now: i64) -> pb::CertView {
    let cur = c.observed.current.as_ref();
    let renew_at = c.renew_time(now).map(|(at, _)| at).unwrap_or(0);
    pb::CertView {
        name: c.spec.name.clone(),
        targets: c.spec.targets.clone(),
        cert_id: c.id.to_string(),
        host_id: c.host_id.to_string(),
        identifiers: cur
            .map(|x| &x.identifiers)
            .unwrap_or(&c.spec.identifiers)
            .iter()
            .map(|i| i.to_string())
            .collect(),
        issuer: cur
            .map(|x| x.issuer.clone())
            .unwrap_or_else(|| c.spec.issuer.clone()),
        profile: cur
            .and_then(|x| x.profile.clone())
            .or_else(|| c.observed.order.as_ref().and_then(|o| o.profile.clone()))
            .unwrap_or_default(),
        target: c.spec.targets.join(","),
        state: c.state.as_str().to_owned(),
        serial: cur.map(|x| x.serial.clone()).unwrap_or_default(),
        not_before_unix: cur.map(|x| x.not_before).unwrap_or(0),
        not_after_unix: cur.map(|x| x.not_after).unwrap_or(0),
        last_error: c.schedule.last_error.clone().unwrap_or_default(),
        updated_unix: c.updated,
        order_url: c
            .observed
            .order
            .as_ref()
            .map(|o| o.url.clone())
            .or_else(|| c.observed.last_order_url.clone())
            .unwrap_or_default(),
        next_action_unix: c.schedule.next_action.unwrap_or(0),
        next_reason: c.schedule.next_reason.clone().unwrap_or_default(),
        at_risk: c.schedule.at_risk,
        installed_serial: c.observed.installed_serial.clone().unwrap_or_default(),
        served_serial: c.observed.served_serial.clone().unwrap_or_default(),
        served_unix: c.observed.served_at.unwrap_or_default(),
        served_on: c.observed.served_on.clone(),
        verify_disabled: c.observed.verify_disabled,
        renewals: c.schedule.renewals,
        policy: c.spec.policy.clone().unwrap_or_default(),
        ari_start_unix: c.observed.ari.as_ref().map(|a| a.start).unwrap_or(0),
        ari_end_unix: c.observed.ari.as_ref().map(|a| a.end).unwrap_or(0),
        renew_at_unix: renew_at,
        last_renewal_reason: c.schedule.last_renewal_reason.clone().unwrap_or_default(),
        required_profile: c.spec.required_profile.clone().unwrap_or_default(),
        key_group: c.spec.key_group.clone().unwrap_or_default(),
        validated_by: cur
            .map(|x| {
                x.validated_by
                    .iter()
                    .map(|(id, kind)| (id.clone(), kind.as_str().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
