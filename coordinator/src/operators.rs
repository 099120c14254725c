//! Named operators: which admin call needs which role (one table, [`AdminRpc`]), credential
//! lifetimes, the check every admin call makes ([`authorize`]), and the adoption of the
//! credential `init` / `node join` write into the state directory.
//!
//! An operator's credential is a fleet-CA client certificate whose URI SAN is
//! `certfleet://admin/NAME`. The store's [`OperatorRecord`] is the authority: a call is
//! accepted only when the presented certificate's serial is the record's current one, the
//! record is not revoked and not past its `not_after`, and the record's role allows the
//! call. Revocation therefore needs no CRL and takes effect at the next call on every
//! coordinator reading the store.

use crate::audit::{AuditLog, Entry, Kind};
use crate::fleet_ca::StateDir;
use crate::model::{OperatorRecord, Role};
use crate::store::{Store, StoreError};
use certfleet_shared::timefmt::rfc3339;
use certfleet_shared::x509::{parse_pem_chain, CertInfo};
use certfleet_shared::ADMIN_URI_PREFIX;

/// Default lifetime of an operator credential (`operators add --lifetime`).
pub const DEFAULT_LIFETIME_SECS: i64 = 30 * 24 * 3600;
/// Shortest lifetime accepted (short ones are for tests and one-off tasks).
pub const MIN_LIFETIME_SECS: i64 = 10;
/// Longest lifetime accepted: credentials are short-lived and renewed.
pub const MAX_LIFETIME_SECS: i64 = 90 * 24 * 3600;
/// The operator whose credential `init` writes into the state directory (`admin.pem`).
pub const STATE_DIR_OPERATOR: &str = "operator";
/// The audit actor of what the coordinator does with the state directory's credential.
pub const STATE_DIR_ACTOR: &str = "coordinator:state-dir";

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: viewers and admins.
    Read,
    /// Changes something: admins.
    Write,
    /// Acts on the caller's own credential only (renewal): any operator.
    Own,
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Read | Access::Own => true,
            Access::Write => role == Role::Admin,
        }
    }
}

/// Every RPC of the `Admin` service. [`AdminRpc::access`] is the one place that says which
/// are read-only; a test fails when the proto has an RPC this list lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRpc {
    CreateToken,
    ListHosts,
    ListCerts,
    RenewCerts,
    QueryAudit,
    VerifyAudit,
    ListTokens,
    RevokeCert,
    RemoveHost,
    RevokeToken,
    ReleaseIp,
    AddOperator,
    RenewOperator,
    ListOperators,
    RevokeOperator,
    GetCredentials,
    ClusterStatus,
    BackupStore,
}

impl AdminRpc {
    pub const ALL: &'static [AdminRpc] = &[
        AdminRpc::CreateToken,
        AdminRpc::ListHosts,
        AdminRpc::ListCerts,
        AdminRpc::RenewCerts,
        AdminRpc::QueryAudit,
        AdminRpc::VerifyAudit,
        AdminRpc::ListTokens,
        AdminRpc::RevokeCert,
        AdminRpc::RemoveHost,
        AdminRpc::RevokeToken,
        AdminRpc::ReleaseIp,
        AdminRpc::AddOperator,
        AdminRpc::RenewOperator,
        AdminRpc::ListOperators,
        AdminRpc::RevokeOperator,
        AdminRpc::GetCredentials,
        AdminRpc::ClusterStatus,
        AdminRpc::BackupStore,
    ];

    /// The RPC's name in the proto's `service Admin`.
    pub fn name(self) -> &'static str {
        match self {
            AdminRpc::CreateToken => "CreateToken",
            AdminRpc::ListHosts => "ListHosts",
            AdminRpc::ListCerts => "ListCerts",
            AdminRpc::RenewCerts => "RenewCerts",
            AdminRpc::QueryAudit => "QueryAudit",
            AdminRpc::VerifyAudit => "VerifyAudit",
            AdminRpc::ListTokens => "ListTokens",
            AdminRpc::RevokeCert => "RevokeCert",
            AdminRpc::RemoveHost => "RemoveHost",
            AdminRpc::RevokeToken => "RevokeToken",
            AdminRpc::ReleaseIp => "ReleaseIp",
            AdminRpc::AddOperator => "AddOperator",
            AdminRpc::RenewOperator => "RenewOperator",
            AdminRpc::ListOperators => "ListOperators",
            AdminRpc::RevokeOperator => "RevokeOperator",
            AdminRpc::GetCredentials => "GetCredentials",
            AdminRpc::ClusterStatus => "ClusterStatus",
            AdminRpc::BackupStore => "BackupStore",
        }
    }

    /// Which role the call needs.
    pub fn access(self) -> Access {
        match self {
            AdminRpc::ListHosts
            | AdminRpc::ListCerts
            | AdminRpc::QueryAudit
            | AdminRpc::VerifyAudit
            | AdminRpc::ListTokens
            | AdminRpc::ListOperators
            | AdminRpc::GetCredentials
            | AdminRpc::ClusterStatus => Access::Read,
            AdminRpc::CreateToken
            | AdminRpc::RenewCerts
            | AdminRpc::RevokeCert
            | AdminRpc::RemoveHost
            | AdminRpc::RevokeToken
            | AdminRpc::ReleaseIp
            | AdminRpc::AddOperator
            | AdminRpc::RevokeOperator
            // The snapshot holds ACME account keys and the fleet CA key.
            | AdminRpc::BackupStore => Access::Write,
            AdminRpc::RenewOperator => Access::Own,
        }
    }
}

/// The lifetime to sign: 0 means [`DEFAULT_LIFETIME_SECS`]; otherwise within
/// [`MIN_LIFETIME_SECS`]..=[`MAX_LIFETIME_SECS`].
pub fn lifetime(requested_secs: u64) -> Result<i64, String> {
    if requested_secs == 0 {
        return Ok(DEFAULT_LIFETIME_SECS);
    }
    let secs = i64::try_from(requested_secs).unwrap_or(i64::MAX);
    if !(MIN_LIFETIME_SECS..=MAX_LIFETIME_SECS).contains(&secs) {
        return Err(format!(
            "an operator credential lasts {MIN_LIFETIME_SECS} s to 90 days (asked: {requested_secs} s); renew it with `operators renew` instead of asking for longer"
        ));
    }
    Ok(secs)
}

/// When a certificate valid `not_before..not_after` is renewed: at two thirds of its
/// lifetime.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before).max(0) / 3 * 2
}

/// Operator names: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit (they
/// appear in certificates, audit records and metric labels).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "operator name {:?} is not allowed: 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
            name.chars().take(64).collect::<String>()
        ))
    }
}

/// The caller of an admin call, once [`authorize`]d.
#[derive(Debug, Clone)]
pub struct Operator {
    pub record: OperatorRecord,
}

impl Operator {
    pub fn name(&self) -> &str {
        &self.record.name
    }
    /// The audit actor: `operator:NAME`.
    pub fn by(&self) -> String {
        format!("operator:{}", self.record.name)
    }
}

/// Why a call was refused; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this call needs an operator's client certificate from the fleet CA (mutual TLS)")]
    NoCertificate,
    #[error("this call is for operators; the client certificate is not an operator credential")]
    NotOperator,
    #[error("operator {0:?} is not known to this coordinator's store; an admin adds it with `certfleet-coordinator operators add {0} --role viewer|admin --out DIR`")]
    Unknown(String),
    #[error("operator {name:?} was revoked at {at} by {by}; an admin can add it again with `operators add`")]
    Revoked {
        name: String,
        at: String,
        by: String,
    },
    #[error("this credential of operator {name:?} (serial {presented}) was replaced by a renewal (current serial {current}); use the renewed credential")]
    Replaced {
        name: String,
        presented: String,
        current: String,
    },
    #[error("the credential of operator {name:?} expired at {at}; an admin issues a new one with `operators add {name} --role {role} --out DIR` (renewal needs a valid credential)")]
    Expired {
        name: String,
        at: String,
        role: Role,
    },
    #[error("operator {name:?} has role {role}; {rpc} needs role admin (ask an admin, or use an admin credential)")]
    Role {
        name: String,
        role: Role,
        rpc: &'static str,
    },
}

/// Checks the caller of `rpc`: `peer_leaf` is the verified client certificate (DER) the
/// TLS handshake accepted, if any.
pub fn authorize(
    peer_leaf: Option<&[u8]>,
    store: &dyn Store,
    now: i64,
    rpc: AdminRpc,
) -> Result<Result<Operator, Refusal>, StoreError> {
    let Some(der) = peer_leaf else {
        return Ok(Err(Refusal::NoCertificate));
    };
    let Ok(leaf) = CertInfo::from_der(der) else {
        return Ok(Err(Refusal::NotOperator));
    };
    let Some(name) = leaf
        .uris
        .iter()
        .find_map(|u| u.strip_prefix(ADMIN_URI_PREFIX))
    else {
        return Ok(Err(Refusal::NotOperator));
    };
    let Some(record) = store.operator(name)? else {
        return Ok(Err(Refusal::Unknown(name.to_owned())));
    };
    Ok(check(record, &leaf.serial_hex, now, rpc).map(|record| Operator { record }))
}

/// The record's verdict on a credential with `serial` calling `rpc` at `now`.
pub fn check(
    record: OperatorRecord,
    serial: &str,
    now: i64,
    rpc: AdminRpc,
) -> Result<OperatorRecord, Refusal> {
    let name = record.name.clone();
    if let Some(at) = record.revoked_at {
        return Err(Refusal::Revoked {
            name,
            at: rfc3339(at),
            by: record.revoked_by.clone().unwrap_or_default(),
        });
    }
    if !record.serial.eq_ignore_ascii_case(serial) {
        return Err(Refusal::Replaced {
            name,
            presented: serial.to_owned(),
            current: record.serial,
        });
    }
    if now >= record.not_after {
        return Err(Refusal::Expired {
            name,
            at: rfc3339(record.not_after),
            role: record.role,
        });
    }
    if !rpc.access().allows(record.role) {
        return Err(Refusal::Role {
            name,
            role: record.role,
            rpc: rpc.name(),
        });
    }
    Ok(record)
}

/// At `serve` start: the operator credential in the state directory (`admin.pem`, from
/// `init`, `node join` or an older install's year-long one) becomes an admin in the store
/// when the store does not know its name — so a fresh install and an upgraded one keep a
/// working admin — or replaces the stored credential of that name when it is newer
/// (a later notAfter) and the operator is not revoked. Audited; nothing is done when the
/// file is missing, expired, or already the current credential.
pub fn adopt_state_dir_credential(
    dir: &StateDir,
    store: &dyn Store,
    audit: &AuditLog,
    now: i64,
) -> anyhow::Result<()> {
    let path = dir.admin_cert();
    if !path.exists() {
        return Ok(());
    }
    let pem = dir.read(&path)?;
    let der = parse_pem_chain(&pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate", path.display()))?;
    let info = CertInfo::from_der(&der).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let Some(name) = info
        .uris
        .iter()
        .find_map(|u| u.strip_prefix(ADMIN_URI_PREFIX))
    else {
        anyhow::bail!(
            "{} is not an operator credential (no {ADMIN_URI_PREFIX} name)",
            path.display()
        );
    };
    if info.not_after <= now {
        tracing::warn!(operator = name, file = %path.display(), not_after = %rfc3339(info.not_after),
            "the state directory's operator credential has expired; run `certfleet-coordinator operators bootstrap` and restart, or use another admin's credential");
        return Ok(());
    }
    let existing = store.operator(name)?;
    let (kind, expected, rec) = match existing {
        None => (
            Kind::OperatorAdded,
            None,
            OperatorRecord {
                name: name.to_owned(),
                role: Role::Admin,
                serial: info.serial_hex.clone(),
                issued: now,
                not_after: info.not_after,
                lifetime_secs: DEFAULT_LIFETIME_SECS,
                added_by: STATE_DIR_ACTOR.into(),
                added: now,
                revoked_at: None,
                revoked_by: None,
                generation: 0,
            },
        ),
        Some(r) if r.serial.eq_ignore_ascii_case(&info.serial_hex) => return Ok(()),
        Some(r) if r.revoked_at.is_none() && info.not_after > r.not_after => (
            Kind::OperatorRenewed,
            Some(r.generation),
            OperatorRecord {
                serial: info.serial_hex.clone(),
                issued: now,
                not_after: info.not_after,
                generation: r.generation + 1,
                ..r
            },
        ),
        Some(r) => {
            tracing::info!(operator = name, file = %path.display(), current = %r.serial,
                "the state directory's operator credential is not this operator's current one (revoked, or renewed elsewhere); not adopted");
            return Ok(());
        }
    };
    audit.append(
        kind,
        now,
        Entry::by(STATE_DIR_ACTOR)
            .serial(&info.serial_hex)
            .detail("operator", name)
            .detail("role", rec.role.as_str())
            .detail("not_after", info.not_after)
            .detail("source", path.display().to_string()),
    )?;
    if store.put_operator(&rec, expected)? {
        tracing::info!(operator = name, role = %rec.role, serial = %rec.serial, "state directory operator credential adopted");
    }
    Ok(())
}

#[cfg(test)]
#[path = "operators_tests.rs"]
mod tests;
