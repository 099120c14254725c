//! Test only: a web view over a sled store in a temporary directory, with hosts,
//! certificates, operators and audit records made here.

use super::auth::WebSessions;
use super::fleet::FleetCache;
use super::Web;
use crate::audit::{AuditLog, Entry, Kind};
use crate::fleet_ca::StateDir;
use crate::model::{CertRecord, CertSpec, CertState, HostRecord, IssuedCert, OperatorRecord, Role};
use crate::sessions::Sessions;
use crate::store::{SledStore, Store};
use certfleet_shared::clock::ManualClock;
use certfleet_shared::ids::{CertId, HostId};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

pub const NOW: i64 = 1_800_000_000;

pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub web: Arc<Web>,
    pub store: Arc<SledStore>,
    pub clock: ManualClock,
}

pub fn host(name: &str, ip: &str) -> HostRecord {
    HostRecord {
        requested_names: vec![],
        challenge_modes: vec!["http-01".into()],
        key_groups: vec![],
        id: HostId::generate(),
        hostname: name.into(),
        labels: BTreeMap::from([("role".to_owned(), name.to_owned())]),
        enrolled: NOW - 86_400,
        enrolled_from: "192.0.2.1:5000".into(),
        identity_serial: "01".into(),
        identity_spki: None,
        identity_not_after: Some(NOW + 86_400),
        identity_rotated: None,
        ips: vec![ip.parse().unwrap()],
        targets: vec!["nginx".into()],
        last_seen: Some(NOW - 60),
        inventory: vec![],
    }
}

/// A certificate for `h` in `state`, expiring `expires_in` seconds from [`NOW`].
pub fn cert(h: &HostRecord, state: CertState, expires_in: i64) -> CertRecord {
    let spec = CertSpec {
        name: "default".into(),
        challenges: Default::default(),
        policy: Some("web".into()),
        identifiers: h
            .ips
            .iter()
            .map(|i| i.to_string().parse().unwrap())
            .collect(),
        issuer: "pebble".into(),
        fallback_issuers: vec![],
        required_profile: None,
        key_type: Default::default(),
        targets: vec!["nginx".into()],
        key_group: None,
    };
    let mut c = CertRecord::new(CertId::generate(), h.id.clone(), spec.clone(), NOW - 3600);
    c.state = state;
    c.observed.current = Some(IssuedCert {
        identifiers: spec.identifiers,
        issuer: "pebble".into(),
        profile: Some("shortlived".into()),
        serial: format!("{:x}", expires_in.unsigned_abs() + 0x1000),
        not_before: NOW - 3600,
        not_after: NOW + expires_in,
        chain_pem: String::new(),
        ari_id: None,
        renew_unit: 0.5,
        issued_at: NOW - 3600,
        validated_by: BTreeMap::new(),
    });
    c.schedule.next_action = Some(NOW + expires_in / 2);
    if state == CertState::Failed {
        c.schedule.last_error = Some("the CA said <b>no</b>".into());
    }
    c
}

pub fn operator(name: &str, role: Role) -> OperatorRecord {
    OperatorRecord {
        name: name.into(),
        role,
        serial: "0a".into(),
        issued: NOW - 10,
        not_after: NOW + 86_400,
        lifetime_secs: 86_400,
        added_by: "coordinator:state-dir".into(),
        added: NOW - 10,
        revoked_at: None,
        revoked_by: None,
        generation: 0,
    }
}

pub fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&tmp.path().join("store")).unwrap());
    let audit = Arc::new(AuditLog::open(store.clone()).unwrap());
    let clock = ManualClock::new(NOW);
    let shared: certfleet_shared::clock::SharedClock = Arc::new(clock.clone());
    let sessions = Arc::new(Sessions::new(
        store.clone(),
        "node-test".into(),
        shared.clone(),
    ));
    let tasks = TaskTracker::new();
    let fleet = FleetCache::new(
        store.clone(),
        sessions.clone(),
        shared.clone(),
        tasks.clone(),
    );
    let web = Arc::new(Web {
        store: store.clone(),
        audit,
        sessions,
        clock: shared,
        dir: StateDir::new(tmp.path()),
        logins: WebSessions::new(3600),
        tasks,
        fleet,
    });
    Fixture {
        _tmp: tmp,
        web,
        store,
        clock,
    }
}

impl Fixture {
    pub fn add_host(&self, h: &HostRecord, certs: &[CertRecord]) {
        self.store.put_host(h).unwrap();
        for c in certs {
            self.store.put_cert(c).unwrap();
        }
        self.web
            .audit
            .append(
                Kind::HostEnrolled,
                NOW - 100,
                Entry::by(format!("host:{}", h.id)).host(&h.id).ips(&h.ips),
            )
            .unwrap();
    }
}
