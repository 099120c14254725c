//! Join tokens: 256 random bits, shown once, stored only as a SHA-256 hash; and the one
//! check of an enrollment against a token's constraints ([`TokenRecord::admit`]), which
//! every store backend runs inside its enrollment transaction.

use crate::model::HostRecord;
use crate::store::{EnrollRefusal, TokenRecord};
use base64::Engine;
use certfleet_shared::ids::HostId;
use certfleet_shared::x509::sha256_hex;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Prefix that makes a token recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "cfj_";
/// Most `--cidr` blocks one token carries.
pub const MAX_CIDRS: usize = 32;

/// A fresh join token.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// `k=v, k=v` (or `(none)`), as refusals and `tokens list` show fixed labels.
pub fn show_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a token decides for an enrollment ([`TokenRecord::admit`]).
#[derive(Debug, Clone)]
pub enum Admission {
    /// A new host: one use taken, the key noted; the host as it is to be recorded.
    New(Box<HostRecord>),
    /// The identity key already enrolled with this token, as this host: a retry whose
    /// reply was lost. Nothing taken; the store checks the host is still there with that
    /// key ([`resolve_repeat`]).
    Repeat(HostId),
}

/// The SHA-256 (hex) of the identity key a host record carries (`identity_spki`, hex
/// DER), as tokens note the keys enrolled with them. `None`: no key recorded.
pub fn key_sha256(host: &HostRecord) -> Option<String> {
    let der = hex::decode(host.identity_spki.as_deref()?).ok()?;
    Some(sha256_hex(&der))
}

/// The store's half of a repeat: `stored` is what the store holds now under `id` (read in
/// the enrollment transaction), `asked` the request's host. The host as stored when it
/// still has the requested identity key; refused when it was removed (a removed host does
/// not come back through an old token) or has another key since (the reply was not lost:
/// the host rotated its identity).
pub fn resolve_repeat(
    id: &HostId,
    stored: Option<HostRecord>,
    asked: &HostRecord,
) -> Result<HostRecord, EnrollRefusal> {
    match stored {
        None => Err(EnrollRefusal::HostRemoved(id.to_string())),
        Some(h) if h.identity_spki.is_some() && h.identity_spki == asked.identity_spki => Ok(h),
        Some(_) => Err(EnrollRefusal::AlreadyUsed(id.to_string())),
    }
}

impl TokenRecord {
    /// Whether an enrollment from `source` (the connection's address; `None` when the
    /// transport did not say) for `host` may use this token at `now`: not revoked, not
    /// expired, `source` inside one of the token's CIDRs (when it has any), and every label
    /// the agent asked for fixed by the token with the same value (when it fixes labels);
    /// then either the host's identity key enrolled with this token before
    /// ([`Admission::Repeat`], nothing taken — whether or not a use is left), or a use is
    /// left: it is taken, the host and its key noted, and the host returned with the
    /// labels it gets (the token's, when it fixes them). Pure: the store runs it inside its
    /// enrollment transaction and writes both records.
    pub fn admit(
        &mut self,
        now: i64,
        source: Option<IpAddr>,
        host: &HostRecord,
    ) -> Result<Admission, EnrollRefusal> {
        if self.revoked {
            return Err(EnrollRefusal::Revoked);
        }
        if now >= self.expires {
            return Err(EnrollRefusal::Expired(certfleet_shared::timefmt::rfc3339(
                self.expires,
            )));
        }
        if !self.cidrs.is_empty() {
            // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
            let inside = source
                .map(|ip| ip.to_canonical())
                .is_some_and(|ip| self.cidrs.iter().any(|net| net.contains(&ip)));
            if !inside {
                return Err(EnrollRefusal::SourceNotAllowed {
                    from: source.map_or_else(
                        || "an unknown address".into(),
                        |ip| ip.to_canonical().to_string(),
                    ),
                    allowed: self
                        .cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let mut admitted = host.clone();
        if let Some(fixed) = &self.labels {
            if let Some((key, asked)) = host
                .labels
                .iter()
                .find(|(k, v)| fixed.get(k.as_str()) != Some(v))
            {
                return Err(EnrollRefusal::LabelNotAllowed {
                    key: key.clone(),
                    asked: asked.clone(),
                    fixed: show_labels(fixed),
                });
            }
            admitted.labels = fixed.clone();
        }
        let key = key_sha256(host);
        if let Some(earlier) = key.as_ref().and_then(|k| self.keys.get(k)) {
            return Ok(Admission::Repeat(earlier.clone()));
        }
        if self.uses_left == 0 {
            let by = self
                .used_by
                .last()
                .map(|h| h.to_string())
                .unwrap_or_default();
            return Err(EnrollRefusal::AlreadyUsed(by));
        }
        self.uses_left -= 1;
        self.used_by.push(host.id.clone());
        if let Some(k) = key {
            self.keys.insert(k, host.id.clone());
        }
        Ok(Admission::New(Box::new(admitted)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_shared::ids::HostId;

    #[test]
    fn tokens_are_unique_and_prefixed() {
        let (a, b) = (super::generate(), super::generate());
        assert_ne!(a, b);
        assert!(a.starts_with(super::TOKEN_PREFIX) && a.len() == 4 + 43);
    }

    fn token() -> TokenRecord {
        TokenRecord {
            created: 0,
            expires: 100,
            uses_left: 2,
            used_by: vec![],
            revoked: false,
            cidrs: vec![],
            labels: None,
            keys: Default::default(),
        }
    }

    fn admitted(r: Result<Admission, EnrollRefusal>) -> HostRecord {
        match r {
            Ok(Admission::New(h)) => *h,
            other => panic!("want a new host, got {other:?}"),
        }
    }

    fn with_key(mut h: HostRecord, spki_der: &[u8]) -> HostRecord {
        h.identity_spki = Some(hex::encode(spki_der));
        h
    }

    fn host(labels: &[(&str, &str)]) -> HostRecord {
        HostRecord {
            requested_names: Default::default(),
            challenge_modes: Default::default(),
            key_groups: Default::default(),
            id: HostId::generate(),
            hostname: "h".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            enrolled: 0,
            enrolled_from: String::new(),
            identity_serial: "01".into(),
            identity_spki: None,
            identity_not_after: None,
            identity_rotated: None,
            ips: vec![],
            targets: vec![],
            last_seen: None,
            inventory: vec![],
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_unconstrained_token_takes_a_use_and_keeps_the_agents_labels() {
        let mut t = token();
        let h = host(&[("role", "web")]);
        let got = admitted(t.admit(50, None, &h));
        assert_eq!(got.labels, h.labels);
        assert_eq!((t.uses_left, t.used_by.clone()), (1, vec![h.id.clone()]));
        t.admit(50, None, &host(&[])).unwrap();
        let refused = t.admit(50, None, &host(&[])).unwrap_err();
        assert_eq!(refused.constraint(), "uses");
        assert_eq!(t.uses_left, 0, "a refusal takes nothing");
    }

    #[test]
    fn expiry_and_revocation_refuse_without_taking_a_use() {
        let mut t = token();
        assert_eq!(
            t.admit(100, None, &host(&[])).unwrap_err().constraint(),
            "expiry"
        );
        t.revoked = true;
        assert_eq!(
            t.admit(50, None, &host(&[])).unwrap_err().constraint(),
            "revoked"
        );
        assert_eq!(t.uses_left, 2);
        assert!(t.used_by.is_empty());
    }

    #[test]
    fn the_source_must_be_inside_one_of_the_cidrs() {
        let mut t = token();
        t.cidrs = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        t.uses_left = 10;
        for inside in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8::1"] {
            t.admit(50, ip(inside), &host(&[]))
                .unwrap_or_else(|e| panic!("{inside}: {e}"));
        }
        for outside in ["192.0.2.1", "11.0.0.1", "::ffff:192.0.2.7", "2001:db9::1"] {
            let e = t.admit(50, ip(outside), &host(&[])).unwrap_err();
            assert_eq!(e.constraint(), "cidr", "{outside}");
            let msg = e.to_string();
            assert!(
                msg.contains("10.0.0.0/8, 2001:db8::/32") && msg.contains("--cidr"),
                "{msg}"
            );
        }
        // A v4-mapped address is shown as the IPv4 address it is.
        let e = t.admit(50, ip("::ffff:192.0.2.7"), &host(&[])).unwrap_err();
        assert!(e.to_string().contains("came from 192.0.2.7"), "{e}");
        let e = t.admit(50, None, &host(&[])).unwrap_err();
        assert_eq!(e.constraint(), "cidr");
        assert_eq!(t.uses_left, 7, "three admitted, every refusal free");
    }

    #[test]
    fn fixed_labels_are_the_hosts_labels_and_no_other_label_is_accepted() {
        let mut t = token();
        t.uses_left = 10;
        t.labels = Some(BTreeMap::from([
            ("role".to_owned(), "web".to_owned()),
            ("env".to_owned(), "prod".to_owned()),
        ]));
        // Nothing asked, or a subset with the same values: the token's labels, all of them.
        for asked in [
            &[][..],
            &[("role", "web")][..],
            &[("env", "prod"), ("role", "web")],
        ] {
            let got = admitted(t.admit(50, None, &host(asked)));
            assert_eq!(got.labels, t.labels.clone().unwrap());
        }
        // Another label, or another value: refused, naming the label and the fix.
        let e = t
            .admit(50, None, &host(&[("role", "web"), ("tier", "edge")]))
            .unwrap_err();
        assert_eq!(e.constraint(), "labels");
        let msg = e.to_string();
        assert!(
            msg.contains("env=prod, role=web")
                && msg.contains("tier=edge")
                && msg.contains("--label tier=edge"),
            "{msg}"
        );
        let e = t.admit(50, None, &host(&[("role", "db")])).unwrap_err();
        assert!(e.to_string().contains("role=db"), "{e}");
        // Fixed to none: any label is refused.
        t.labels = Some(BTreeMap::new());
        let e = t.admit(50, None, &host(&[("role", "web")])).unwrap_err();
        assert!(e.to_string().contains("(none)"), "{e}");
        assert!(admitted(t.admit(50, None, &host(&[]))).labels.is_empty());
    }

    #[test]
    fn the_same_key_again_is_a_repeat_and_takes_nothing() {
        let mut t = token();
        t.uses_left = 1;
        let first = with_key(host(&[]), b"key-one");
        let got = admitted(t.admit(50, None, &first));
        assert_eq!(t.keys.len(), 1);
        // The same key under another (fresh) host id, as a retried Enroll carries: the
        // first host, the used-up token untouched.
        let retry = with_key(host(&[]), b"key-one");
        assert!(
            matches!(t.admit(60, None, &retry), Ok(Admission::Repeat(id)) if id == got.id),
            "a repeat"
        );
        assert_eq!((t.uses_left, t.used_by.len()), (0, 1));
        // Another key: the token is used up.
        let other = with_key(host(&[]), b"key-two");
        assert_eq!(t.admit(60, None, &other).unwrap_err().constraint(), "uses");
        // A host without a recorded key is never a repeat.
        assert_eq!(
            t.admit(60, None, &host(&[])).unwrap_err().constraint(),
            "uses"
        );
        // A repeat still meets every other constraint.
        assert_eq!(
            t.admit(100, None, &retry).unwrap_err().constraint(),
            "expiry"
        );
        t.cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        let e = t.admit(60, ip("192.0.2.1"), &retry).unwrap_err();
        assert_eq!(e.constraint(), "cidr");
        t.revoked = true;
        assert_eq!(
            t.admit(60, ip("10.0.0.1"), &retry)
                .unwrap_err()
                .constraint(),
            "revoked"
        );
    }

    #[test]
    fn a_repeat_needs_the_host_still_there_with_that_key() {
        let asked = with_key(host(&[]), b"key-one");
        let id = HostId::generate();
        let e = resolve_repeat(&id, None, &asked).unwrap_err();
        assert_eq!(e.constraint(), "removed");
        assert!(e.to_string().contains("token create"), "{e}");
        let mut stored = with_key(host(&[]), b"key-one");
        stored.id = id.clone();
        let got = resolve_repeat(&id, Some(stored.clone()), &asked).unwrap();
        assert_eq!(
            (got.id, got.identity_spki),
            (id.clone(), stored.identity_spki.clone())
        );
        let rotated = with_key(stored, b"key-rotated");
        let e = resolve_repeat(&id, Some(rotated), &asked).unwrap_err();
        assert_eq!(e.constraint(), "uses");
    }

    #[test]
    fn a_record_from_before_constraints_still_loads() {
        let old = r#"{"created":1,"expires":2,"uses_left":1,"used_by":[],"revoked":false}"#;
        let t: TokenRecord = serde_json::from_str(old).unwrap();
        assert!(t.cidrs.is_empty() && t.labels.is_none());
        // And an unconstrained record is written in the old shape.
        assert_eq!(serde_json::to_string(&t).unwrap(), old);
        let mut c = t.clone();
        c.cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        c.labels = Some(BTreeMap::new());
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""cidrs":["10.0.0.0/8"]"#) && json.contains(r#""labels":{}"#));
        let back: TokenRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.cidrs, c.cidrs);
        assert_eq!(back.labels, c.labels);
        // The keys enrolled with a token survive the round trip.
        let mut k = t.clone();
        k.keys.insert("ab".repeat(32), HostId::generate());
        let back: TokenRecord = serde_json::from_str(&serde_json::to_string(&k).unwrap()).unwrap();
        assert_eq!(back.keys, k.keys);
    }
}
