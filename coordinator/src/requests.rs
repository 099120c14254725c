//! The checks of incoming requests that need neither the store nor the caller's identity:
//! shapes, sizes, ids, reasons, CIDR blocks. `server.rs` runs them first and then acts;
//! the fuzz targets (`fuzz/`) run them on arbitrary decoded messages.
//!
//! Every function returns `Status::invalid_argument` with a message for the operator (or
//! the agent's log) on bad input and never panics.

use crate::audit::{Kind, Query};
use certfleet_proto::v1 as pb;
use certfleet_shared::identifier::NamePattern;
use certfleet_shared::ids::{CertId, HostId};
use std::collections::BTreeMap;
use tonic::Status;

pub const MAX_LABELS: usize = 32;
pub const DEFAULT_TOKEN_TTL: u64 = 3600;
pub const MAX_TOKEN_TTL: u64 = 30 * 86_400;
/// Most audit records one query returns.
pub const AUDIT_QUERY_CAP: usize = 10_000;

/// Letters, digits, `-`, `_`, `.`; 1..=`max` bytes (host names, label keys, targets).
pub fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn bad(e: impl ToString) -> Status {
    Status::invalid_argument(e.to_string())
}

/// `Enroll`: the token's shape, the host name (default "unnamed") and the labels.
/// Returns the host name to record.
pub fn enroll(r: &pb::EnrollRequest) -> Result<String, Status> {
    if r.token.is_empty() || r.token.len() > 256 {
        return Err(bad("join token missing or malformed"));
    }
    let hostname = if r.hostname.is_empty() {
        "unnamed".to_owned()
    } else {
        r.hostname.clone()
    };
    if !valid_name(&hostname, 253) {
        return Err(bad(format!(
            "hostname {:?} must be letters, digits, '-', '_' or '.'",
            hostname.chars().take(80).collect::<String>()
        )));
    }
    if r.labels.len() > MAX_LABELS
        || r.labels
            .iter()
            .any(|(k, v)| !valid_name(k, 63) || v.len() > 253)
    {
        return Err(bad(
            "labels: at most 32, keys letters/digits/-_. up to 63, values up to 253 bytes",
        ));
    }
    Ok(hostname)
}

/// A join token's settings from `CreateToken`, with the defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub ttl: u64,
    pub uses: u32,
    pub cidrs: Vec<ipnet::IpNet>,
    /// `Some`: the labels fixed by the token (possibly none at all).
    pub labels: Option<BTreeMap<String, String>>,
}

/// `CreateToken`: ttl, uses and the constraints, checked, with the defaults applied.
pub fn create_token(r: &pb::CreateTokenRequest) -> Result<NewToken, Status> {
    let ttl = if r.ttl_seconds == 0 {
        DEFAULT_TOKEN_TTL
    } else {
        r.ttl_seconds
    };
    if ttl > MAX_TOKEN_TTL {
        return Err(bad("token ttl is at most 30 days"));
    }
    let uses = if r.uses == 0 { 1 } else { r.uses };
    if r.cidrs.len() > crate::tokens::MAX_CIDRS {
        return Err(bad(format!(
            "at most {} --cidr blocks per token",
            crate::tokens::MAX_CIDRS
        )));
    }
    let cidrs = r
        .cidrs
        .iter()
        .map(|c| {
            if c.len() > 64 {
                return Err(bad("--cidr: not an address or CIDR block (too long)"));
            }
            crate::config::parse_net(c).map_err(|e| bad(format!("--cidr: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !r.fix_labels && !r.labels.is_empty() {
        return Err(bad("labels given without fix_labels"));
    }
    if r.labels.len() > MAX_LABELS
        || r.labels
            .iter()
            .any(|(k, v)| !valid_name(k, 63) || v.len() > 253)
    {
        return Err(bad(
            "--label: at most 32, keys letters/digits/-_. up to 63, values up to 253 bytes",
        ));
    }
    let labels = r.fix_labels.then(|| {
        r.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    Ok(NewToken {
        ttl,
        uses,
        cidrs,
        labels,
    })
}

/// `RevokeCert`: the certificate id, the reason's name (default "unspecified") and the reason.
pub fn revoke_cert(
    r: &pb::RevokeCertRequest,
) -> Result<(CertId, String, instant_acme::RevocationReason), Status> {
    let id = CertId::parse(&r.cert_id).map_err(bad)?;
    let name = if r.reason.is_empty() {
        "unspecified".to_owned()
    } else {
        r.reason.clone()
    };
    let reason = revocation_reason(&name).ok_or_else(|| {
        bad(format!(
            "unknown reason {name:?}; use unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn"
        ))
    })?;
    Ok((id, name, reason))
}

fn revocation_reason(name: &str) -> Option<instant_acme::RevocationReason> {
    use instant_acme::RevocationReason as R;
    Some(match name {
        "unspecified" => R::Unspecified,
        "keyCompromise" => R::KeyCompromise,
        "affiliationChanged" => R::AffiliationChanged,
        "superseded" => R::Superseded,
        "cessationOfOperation" => R::CessationOfOperation,
        "privilegeWithdrawn" => R::PrivilegeWithdrawn,
        _ => return None,
    })
}

/// `RemoveHost`: the host id.
pub fn remove_host(r: &pb::RemoveHostRequest) -> Result<HostId, Status> {
    HostId::parse(&r.host_id).map_err(bad)
}

/// `ReleaseIp`: the host and the address it is to give up.
pub fn release_ip(r: &pb::ReleaseIpRequest) -> Result<(HostId, std::net::IpAddr), Status> {
    let host = HostId::parse(&r.host_id).map_err(bad)?;
    let ip = certfleet_shared::identifier::parse_ip(&r.ip).map_err(bad)?;
    Ok((host, ip))
}

/// `RevokeToken`: the token id prefix, lower case, at least 8 hex digits.
pub fn revoke_token(r: &pb::RevokeTokenRequest) -> Result<String, Status> {
    let id = r.id.to_ascii_lowercase();
    if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            "give at least 8 hex digits of the token id (from `tokens list`)",
        ));
    }
    Ok(id)
}

/// `AddOperator`: the name, role and lifetime (seconds); the CSR is checked by the fleet
/// CA when it signs.
pub fn add_operator(
    r: &pb::AddOperatorRequest,
) -> Result<(String, crate::model::Role, i64), Status> {
    crate::operators::check_name(&r.name).map_err(Status::invalid_argument)?;
    let role = crate::model::Role::parse(&r.role).map_err(Status::invalid_argument)?;
    let secs = crate::operators::lifetime(r.lifetime_seconds).map_err(Status::invalid_argument)?;
    Ok((r.name.clone(), role, secs))
}

/// `RevokeOperator`: the name.
pub fn revoke_operator(r: &pb::RevokeOperatorRequest) -> Result<String, Status> {
    crate::operators::check_name(&r.name).map_err(Status::invalid_argument)?;
    Ok(r.name.clone())
}

/// `RenewCerts`: the certificate ids and the host (when one is named).
pub fn renew_certs(r: &pb::RenewCertsRequest) -> Result<(Vec<CertId>, Option<HostId>), Status> {
    let ids = r
        .cert_ids
        .iter()
        .map(|id| CertId::parse(id).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    let host = if r.host_id.is_empty() {
        None
    } else {
        Some(HostId::parse(&r.host_id).map_err(bad)?)
    };
    if ids.is_empty() && host.is_none() {
        return Err(bad("name certificate ids, or --host HOST"));
    }
    Ok((ids, host))
}

/// `QueryAudit`: the query (its limit one above the cap, to tell truncation) and the cap
/// (`limit`, the calls without `page_size`; `server/lists.rs` pages).
pub fn query_audit(r: &pb::QueryAuditRequest) -> Result<(Query, usize), Status> {
    let mut q = Query::default();
    if !r.host_id.is_empty() {
        q.host_id = Some(HostId::parse(&r.host_id).map_err(bad)?.to_string());
    }
    if !r.network.is_empty() {
        q.network = Some(crate::audit::parse_network(&r.network).map_err(bad)?);
    }
    if !r.serial.is_empty() {
        q.serial = Some(r.serial.to_ascii_lowercase());
    }
    for k in &r.kinds {
        q.kinds
            .push(Kind::parse(k).ok_or_else(|| bad(format!("unknown event kind {k:?}")))?);
    }
    if !r.name.is_empty() {
        q.name = Some(NamePattern::parse(&r.name).map_err(|e| bad(format!("--name: {e}")))?);
    }
    q.since = (r.since_unix != 0).then_some(r.since_unix);
    q.until = (r.until_unix != 0).then_some(r.until_unix);
    let cap = if r.limit == 0 {
        AUDIT_QUERY_CAP
    } else {
        (r.limit as usize).min(AUDIT_QUERY_CAP)
    };
    q.limit = Some(cap + 1);
    Ok((q, cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        assert_eq!(
            create_token(&pb::CreateTokenRequest::default()).unwrap(),
            NewToken {
                ttl: DEFAULT_TOKEN_TTL,
                uses: 1,
                cidrs: vec![],
                labels: None
            }
        );
        assert!(create_token(&pb::CreateTokenRequest {
            ttl_seconds: u64::MAX,
            ..Default::default()
        })
        .is_err());
        let (_, name, _) = revoke_cert(&pb::RevokeCertRequest {
            cert_id: CertId::generate().to_string(),
            reason: String::new(),
        })
        .unwrap();
        assert_eq!(name, "unspecified");
        assert!(revoke_token(&pb::RevokeTokenRequest {
            id: "ABCDEF0".into()
        })
        .is_err());
        assert!(renew_certs(&pb::RenewCertsRequest::default()).is_err());
        assert!(enroll(&pb::EnrollRequest::default()).is_err());
    }

    #[test]
    fn token_constraints_are_checked() {
        let with = |cidrs: &[&str], labels: &[(&str, &str)], fix: bool| {
            create_token(&pb::CreateTokenRequest {
                cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                fix_labels: fix,
                ..Default::default()
            })
        };
        let t = with(&["10.0.0.0/8", "2001:db8::1"], &[("role", "web")], true).unwrap();
        assert_eq!(t.cidrs[1].to_string(), "2001:db8::1/128");
        assert_eq!(
            t.labels,
            Some(BTreeMap::from([("role".to_owned(), "web".to_owned())]))
        );
        assert_eq!(with(&[], &[], true).unwrap().labels, Some(BTreeMap::new()));
        let e = with(&["10.0.0.1/8"], &[], false).unwrap_err();
        assert!(e.message().contains("did you mean 10.0.0.0/8"), "{e:?}");
        assert!(with(&["web"], &[], false).is_err());
        assert!(with(&[&"1".repeat(100)], &[], false).is_err());
        assert!(with(&[], &[("role", "web")], false).is_err());
        assert!(with(&[], &[("bad key", "x")], true).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("10.{i}.0.0/16")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(with(&many, &[], false).is_err());
    }
}
