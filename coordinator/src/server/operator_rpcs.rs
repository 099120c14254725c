//! The admin API's operator calls, and the per-call authorization every admin call starts
//! with ([`Api::operator`]).

use super::{internal, Api};
use crate::audit::{Entry, Kind};
use crate::model::{OperatorRecord, Role};
use crate::operators::{self, AdminRpc, Operator, Refusal};
use certfleet_proto::v1 as pb;
use certfleet_shared::timefmt::rfc3339;
use tonic::{Request, Status};

fn view(r: &OperatorRecord) -> pb::OperatorView {
    pb::OperatorView {
        name: r.name.clone(),
        role: r.role.as_str().into(),
        serial: r.serial.clone(),
        issued_unix: r.issued,
        not_after_unix: r.not_after,
        revoked: r.revoked_at.is_some(),
        revoked_unix: r.revoked_at.unwrap_or(0),
        added_by: r.added_by.clone(),
        lifetime_seconds: u64::try_from(r.lifetime_secs).unwrap_or(0),
    }
}

fn raced(name: &str) -> Status {
    Status::aborted(format!(
        "operator {name} was changed by another call meanwhile (renewed, revoked or added); look at `operators list` and try again"
    ))
}

impl Api {
    /// The caller of `rpc`: its client certificate must be the current credential of a
    /// stored, unrevoked, unexpired operator whose role allows `rpc`.
    pub(super) fn operator<T>(&self, req: &Request<T>, rpc: AdminRpc) -> Result<Operator, Status> {
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let verdict = operators::authorize(leaf, self.store.as_ref(), self.clock.now_unix(), rpc)
            .map_err(internal)?;
        verdict.map_err(|refusal| {
            tracing::warn!(rpc = rpc.name(), reason = %refusal, "admin call refused");
            match refusal {
                Refusal::NoCertificate => Status::unauthenticated(refusal.to_string()),
                _ => Status::permission_denied(refusal.to_string()),
            }
        })
    }

    fn credential(&self, rec: &OperatorRecord, cert_pem: String) -> pb::OperatorCredential {
        pb::OperatorCredential {
            name: rec.name.clone(),
            role: rec.role.as_str().into(),
            cert_pem,
            ca_cert_pem: self.ca.ca_pem.clone(),
            serial: rec.serial.clone(),
            not_after_unix: rec.not_after,
        }
    }

    pub(super) fn add_operator_as(
        &self,
        by: &Operator,
        r: pb::AddOperatorRequest,
    ) -> Result<pb::OperatorCredential, Status> {
        let (name, role, secs) = crate::requests::add_operator(&r)?;
        let now = self.clock.now_unix();
        let existing = self.store.operator(&name).map_err(internal)?;
        if let Some(e) = existing
            .as_ref()
            .filter(|e| e.revoked_at.is_none() && e.not_after > now)
        {
            return Err(Status::already_exists(format!(
                "operator {} exists (role {}, credential valid until {}); it renews its own credential with `operators renew`, or revoke it first (`operators revoke {}`)",
                e.name,
                e.role,
                rfc3339(e.not_after),
                e.name
            )));
        }
        let (cert_pem, info) = self
            .ca
            .sign_operator(&r.csr_der, &name, secs, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let rec = OperatorRecord {
            name,
            role,
            serial: info.serial_hex.clone(),
            issued: now,
            not_after: info.not_after,
            lifetime_secs: secs,
            added_by: by.by(),
            added: now,
            revoked_at: None,
            revoked_by: None,
            generation: existing.as_ref().map(|e| e.generation + 1).unwrap_or(0),
        };
        let expected = existing.as_ref().map(|e| e.generation);
        if !self.store.put_operator(&rec, expected).map_err(internal)? {
            return Err(raced(&rec.name));
        }
        self.audit
            .append(
                Kind::OperatorAdded,
                now,
                Entry::by(by.by())
                    .serial(&rec.serial)
                    .detail("operator", &rec.name)
                    .detail("role", role.as_str())
                    .detail("not_after", rec.not_after)
                    .detail("lifetime_secs", secs),
            )
            .map_err(internal)?;
        tracing::info!(operator = %by.name(), added = %rec.name, role = %role, serial = %rec.serial, "operator added");
        Ok(self.credential(&rec, cert_pem))
    }

    pub(super) fn renew_operator_as(
        &self,
        op: Operator,
        r: pb::RenewOperatorRequest,
    ) -> Result<pb::OperatorCredential, Status> {
        let now = self.clock.now_unix();
        let old = op.record;
        let (cert_pem, info) = self
            .ca
            .sign_operator(&r.csr_der, &old.name, old.lifetime_secs, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let rec = OperatorRecord {
            serial: info.serial_hex.clone(),
            issued: now,
            not_after: info.not_after,
            generation: old.generation + 1,
            ..old.clone()
        };
        if !self
            .store
            .put_operator(&rec, Some(old.generation))
            .map_err(internal)?
        {
            return Err(raced(&rec.name));
        }
        let by = format!("operator:{}", rec.name);
        self.audit
            .append(
                Kind::OperatorRenewed,
                now,
                Entry::by(by)
                    .serial(&rec.serial)
                    .detail("operator", &rec.name)
                    .detail("previous_serial", &old.serial)
                    .detail("not_after", rec.not_after),
            )
            .map_err(internal)?;
        tracing::info!(operator = %rec.name, serial = %rec.serial, previous = %old.serial, "operator credential renewed");
        Ok(self.credential(&rec, cert_pem))
    }

    pub(super) fn list_operators_now(&self) -> Result<pb::ListOperatorsResponse, Status> {
        let operators = self
            .store
            .operators()
            .map_err(internal)?
            .iter()
            .map(view)
            .collect();
        Ok(pb::ListOperatorsResponse { operators })
    }

    pub(super) fn revoke_operator_as(
        &self,
        by: &Operator,
        r: &pb::RevokeOperatorRequest,
    ) -> Result<pb::RevokeOperatorResponse, Status> {
        let name = crate::requests::revoke_operator(r)?;
        let name = name.as_str();
        let now = self.clock.now_unix();
        let all = self.store.operators().map_err(internal)?;
        let Some(old) = all.iter().find(|o| o.name == name).cloned() else {
            return Err(Status::not_found(format!(
                "no operator {name}; `operators list` shows them"
            )));
        };
        if let Some(at) = old.revoked_at {
            return Err(Status::failed_precondition(format!(
                "operator {name} was already revoked at {}",
                rfc3339(at)
            )));
        }
        let other_admins = all
            .iter()
            .filter(|o| o.name != name && o.role == Role::Admin)
            .filter(|o| o.revoked_at.is_none() && o.not_after > now)
            .count();
        if old.role == Role::Admin && other_admins == 0 {
            return Err(Status::failed_precondition(format!(
                "operator {name} is the last admin with a valid credential; add another admin first (`operators add NAME --role admin --out DIR`)"
            )));
        }
        let rec = OperatorRecord {
            revoked_at: Some(now),
            revoked_by: Some(by.by()),
            generation: old.generation + 1,
            ..old.clone()
        };
        if !self
            .store
            .put_operator(&rec, Some(old.generation))
            .map_err(internal)?
        {
            return Err(raced(name));
        }
        self.audit
            .append(
                Kind::OperatorRevoked,
                now,
                Entry::by(by.by())
                    .serial(&old.serial)
                    .detail("operator", name)
                    .detail("role", old.role.as_str()),
            )
            .map_err(internal)?;
        tracing::warn!(operator = %by.name(), revoked = %name, serial = %old.serial, "operator revoked");
        Ok(pb::RevokeOperatorResponse { serial: old.serial })
    }

    pub(super) fn credentials_of(&self, op: &Operator) -> pb::GetCredentialsResponse {
        let server = self.server_cert.info();
        pb::GetCredentialsResponse {
            caller: Some(view(&op.record)),
            server_serial: server.serial,
            server_not_before_unix: server.not_before,
            server_not_after_unix: server.not_after,
            fleet_ca_not_after_unix: self.ca.not_after,
        }
    }
}
