//! Reading certificate records in either stored shape: nested (`observed`, `schedule`), or
//! one flat object as written before the intent / observed / schedule split. The next write
//! stores the nested shape. Plain derived fields, no `flatten` or `untagged`: decoding stays
//! a single streaming pass.

use super::{
    AriState, Blocked, CertRecord, CertSpec, CertState, DeferredClear, IssuedCert, Observed,
    OrderInFlight, Schedule,
};
use certfleet_shared::ids::{CertId, HostId};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub(super) struct StoredCertRecord {
    id: CertId,
    host_id: HostId,
    spec: CertSpec,
    state: CertState,
    updated: i64,
    /// The nested shape.
    #[serde(default)]
    observed: Option<Observed>,
    #[serde(default)]
    schedule: Option<Schedule>,
    // The flat shape.
    #[serde(default)]
    current: Option<IssuedCert>,
    #[serde(default)]
    order: Option<OrderInFlight>,
    #[serde(default)]
    last_order_url: Option<String>,
    #[serde(default)]
    installed_serial: Option<String>,
    #[serde(default)]
    served_serial: Option<String>,
    #[serde(default)]
    served_on: Vec<String>,
    #[serde(default)]
    served_at: Option<i64>,
    #[serde(default)]
    verify_disabled: bool,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    quick_retries: u32,
    #[serde(default)]
    issuer_index: usize,
    #[serde(default)]
    next_action: Option<i64>,
    #[serde(default)]
    next_reason: Option<String>,
    #[serde(default)]
    ari: Option<AriState>,
    #[serde(default)]
    ari_retry_at: Option<i64>,
    #[serde(default)]
    at_risk: bool,
    #[serde(default)]
    forced_by: Option<String>,
    #[serde(default)]
    renewals: u32,
    #[serde(default)]
    last_renewal_reason: Option<String>,
    #[serde(default)]
    revoked_serial: Option<String>,
    #[serde(default)]
    key_history: Vec<String>,
    #[serde(default)]
    blocked: Option<Blocked>,
    #[serde(default)]
    deferred_clear: Option<DeferredClear>,
}

impl From<StoredCertRecord> for CertRecord {
    fn from(f: StoredCertRecord) -> Self {
        // Before targets were tracked one by one, a record with verify disabled had one
        // target, which did not check.
        let unverified = if f.verify_disabled {
            f.spec.targets.iter().cloned().collect()
        } else {
            Default::default()
        };
        CertRecord {
            id: f.id,
            host_id: f.host_id,
            spec: f.spec,
            state: f.state,
            observed: f.observed.unwrap_or(Observed {
                current: f.current,
                order: f.order,
                last_order_url: f.last_order_url,
                installed_serial: f.installed_serial,
                installed_in: BTreeMap::new(),
                served_in: BTreeMap::new(),
                unverified,
                served_serial: f.served_serial,
                served_on: f.served_on,
                served_at: f.served_at,
                verify_disabled: f.verify_disabled,
                ari: f.ari,
                revoked_serial: f.revoked_serial,
                key_history: f.key_history,
                blocked: f.blocked,
                deferred_clear: f.deferred_clear,
                dns_cleanup: Vec::new(),
                group_key: None,
                group_key_lost: None,
            }),
            schedule: f.schedule.unwrap_or(Schedule {
                next_action: f.next_action,
                next_reason: f.next_reason,
                last_error: f.last_error,
                attempts: f.attempts,
                quick_retries: f.quick_retries,
                issuer_index: f.issuer_index,
                challenge_index: 0,
                ari_retry_at: f.ari_retry_at,
                at_risk: f.at_risk,
                forced_by: f.forced_by,
                renewals: f.renewals,
                last_renewal_reason: f.last_renewal_reason,
            }),
            updated: f.updated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::config::KeyTypeName;

    fn full_record() -> CertRecord {
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let spec = CertSpec {
            name: Default::default(),
            challenges: Default::default(),
            policy: Some("web".into()),
            identifiers: vec![ip.into()],
            issuer: "le".into(),
            fallback_issuers: vec!["zerossl".into()],
            required_profile: Some("shortlived".into()),
            key_type: KeyTypeName::EcdsaP384,
            targets: vec!["nginx".into()],
            key_group: None,
        };
        let mut rec = CertRecord::new(CertId::generate(), HostId::generate(), spec, 1_000);
        rec.state = CertState::Served;
        rec.observed = Observed {
            unverified: ["nginx".to_owned()].into(),
            served_in: Default::default(),
            installed_in: Default::default(),
            current: Some(IssuedCert {
                validated_by: Default::default(),
                identifiers: vec![ip.into()],
                issuer: "le".into(),
                profile: Some("shortlived".into()),
                serial: "0a".into(),
                not_before: 900,
                not_after: 900 + 160 * 3600,
                chain_pem: "-----BEGIN CERTIFICATE-----\n".into(),
                ari_id: Some("aki.serial".into()),
                renew_unit: 0.25,
                issued_at: 950,
            }),
            order: Some(OrderInFlight {
                validated_by: Default::default(),
                challenge: None,
                url: "https://ca/order/1".into(),
                issuer: "le".into(),
                identifiers: vec![ip.into()],
                profile: None,
                replaces: Some("aki.serial".into()),
                reason: "renewal".into(),
                started: 990,
                challenges_announced: true,
                presented: vec!["tok".into()],
                dns_records: None,
                recorded: true,
            }),
            last_order_url: Some("https://ca/order/0".into()),
            installed_serial: Some("0a".into()),
            served_serial: Some("0a".into()),
            served_on: vec!["203.0.113.7:443".into()],
            served_at: Some(960),
            verify_disabled: true,
            ari: Some(AriState {
                start: 1,
                end: 2,
                renew_at: 1,
                next_check: 3,
                explanation_url: None,
            }),
            revoked_serial: Some("09".into()),
            key_history: vec!["ab".into(), "cd".into()],
            blocked: Some(Blocked {
                names: Default::default(),
                state: BlockedState::Conflict,
                ips: vec![ip],
                held_by: Some(HostId::generate()),
                reason: "held".into(),
                since: 5,
            }),
            deferred_clear: Some(DeferredClear {
                at: 7,
                tokens: vec!["t".into()],
            }),
            dns_cleanup: Vec::new(),
            group_key: None,
            group_key_lost: None,
        };
        rec.schedule = Schedule {
            challenge_index: Default::default(),
            next_action: Some(42),
            next_reason: Some("renewal".into()),
            last_error: Some("boom".into()),
            attempts: 3,
            quick_retries: 1,
            issuer_index: 1,
            ari_retry_at: Some(8),
            at_risk: true,
            forced_by: Some("operator:ops".into()),
            renewals: 4,
            last_renewal_reason: Some("ari".into()),
        };
        rec
    }

    #[test]
    fn nested_round_trip() {
        let rec = full_record();
        let json = serde_json::to_value(&rec).expect("encode");
        assert!(json.get("observed").is_some() && json.get("schedule").is_some());
        let back: CertRecord = serde_json::from_value(json.clone()).expect("decode");
        assert_eq!(serde_json::to_value(&back).expect("encode"), json);
    }

    /// A record written before the split — the same fields, all at the top level — loads
    /// with every field where it belongs.
    #[test]
    fn flat_record_from_before_the_split_loads() {
        let rec = full_record();
        let nested = serde_json::to_value(&rec).expect("encode");
        let mut flat = nested.as_object().expect("object").clone();
        for part in ["observed", "schedule"] {
            let inner = flat.remove(part).expect("part");
            for (k, v) in inner.as_object().expect("object") {
                assert!(flat.insert(k.clone(), v.clone()).is_none(), "{k} twice");
            }
        }
        let old: CertRecord =
            serde_json::from_value(serde_json::Value::Object(flat)).expect("flat decodes");
        assert_eq!(serde_json::to_value(&old).expect("encode"), nested);

        // The oldest records lack the fields added since; they default.
        let minimal = serde_json::json!({
            "id": rec.id, "host_id": rec.host_id, "spec": rec.spec, "state": "pending",
            "current": null, "order": null, "installed_serial": null, "last_error": null,
            "next_action": 5, "next_reason": null, "ari": null, "forced_by": null,
            "last_renewal_reason": null, "updated": 5,
        });
        let old: CertRecord = serde_json::from_value(minimal).expect("minimal decodes");
        assert_eq!(old.schedule.next_action, Some(5));
        assert!(old.observed.current.is_none() && old.observed.key_history.is_empty());
    }

    /// Several targets: installed when every one has the serial, served when every one
    /// that checks saw it; a target without verify addresses never holds "served" back.
    #[test]
    fn per_target_facts_summarise() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let targets = t(&["nginx", "haproxy"]);
        let mut o = Observed::default();
        o.installed_in.insert("nginx".into(), "0a".into());
        o.served_in.insert("nginx".into(), "0a".into());
        o.summarise(&targets);
        assert_eq!(
            (o.installed_serial.as_deref(), o.served_serial.as_deref()),
            (None, None)
        );
        assert!(o.done_in("nginx", "0a") && !o.done_in("haproxy", "0a"));
        o.installed_in.insert("haproxy".into(), "0a".into());
        o.unverified.insert("haproxy".into());
        o.summarise(&targets);
        assert_eq!(o.installed_serial.as_deref(), Some("0a"));
        assert_eq!(o.served_serial.as_deref(), Some("0a"));
        assert!(!o.verify_disabled && o.done_in("haproxy", "0a"));
        // A different serial in one target: neither installed nor served everywhere.
        o.installed_in.insert("nginx".into(), "0b".into());
        o.served_in.insert("nginx".into(), "0b".into());
        o.summarise(&targets);
        assert_eq!(
            (o.installed_serial.as_deref(), o.served_serial.as_deref()),
            (None, Some("0b"))
        );
        // No target checks: verify disabled, nothing served.
        o.unverified.insert("nginx".into());
        o.summarise(&targets);
        assert!(o.verify_disabled && o.served_serial.is_none());
    }
}
