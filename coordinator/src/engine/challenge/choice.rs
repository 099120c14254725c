//! Which challenge type an order answers, and what happens when one fails. Pure.
//!
//! A certificate's spec lists challenge types in the order they are tried
//! (`CertSpec::challenge_order`); the host says in its Hello which it can serve
//! (`HostRecord::challenge_modes`, `"<type>/<mode>"`). `Schedule::challenge_index` is
//! where in the spec's list the next order starts: it points at the type of the order in
//! flight (or of the last order), moves on when that type fails, and goes back to 0 when
//! every type has failed (the normal backoff then applies). After a success it stays on
//! the type that worked, so renewals start with it: a host whose preferred type cannot
//! work (port 80 closed) does not fail a validation at every renewal — which would count
//! against the CA's failed-validation limits and leave a `challenge_failed` in the audit
//! trail each time. A failure of that type later starts the round again from the top.

use super::super::IssueError;
use crate::acme::AcmeError;
use crate::config::ChallengeKind;
use crate::model::CertRecord;
use crate::sessions::SessionError;
use certfleet_proto::v1::FailureCode;

/// Whether a host with these modes (from its Hello) serves `kind`. A host that reported
/// none (an agent from before `challenge_modes`) serves HTTP-01 only. DNS-01 needs
/// nothing of the host.
pub(crate) fn offers(modes: &[String], kind: ChallengeKind) -> bool {
    if kind == ChallengeKind::Dns01 {
        // The coordinator's own: every host "offers" it.
        return true;
    }
    if modes.is_empty() {
        return kind == ChallengeKind::Http01;
    }
    let prefix = format!("{}/", kind.as_str());
    modes.iter().any(|m| m.starts_with(&prefix))
}

/// The type the next order answers and its position in `order`: the first the host offers
/// at `start` or after it, else (a stale index, or modes that changed) the first it offers
/// at all. None offered: an error for the operator naming both lists and the fixes.
pub(crate) fn choose(
    order: &[ChallengeKind],
    start: usize,
    modes: &[String],
) -> Result<(usize, ChallengeKind), String> {
    let from = |at: usize| {
        order
            .iter()
            .enumerate()
            .skip(at)
            .find(|(_, k)| offers(modes, **k))
            .map(|(i, k)| (i, *k))
    };
    if let Some(found) = from(start).or_else(|| from(0)) {
        return Ok(found);
    }
    let wanted: Vec<&str> = order.iter().map(|k| k.as_str()).collect();
    let has = if modes.is_empty() {
        "none reported (an older agent: http-01 only)".to_owned()
    } else {
        modes.join(", ")
    };
    let mut fixes = Vec::new();
    if order.contains(&ChallengeKind::TlsAlpn01) {
        fixes.push("add [tls_alpn01] to the agent's config");
    }
    if !order.contains(&ChallengeKind::Http01) {
        fixes.push("list http-01 in the policy's challenges");
    }
    Err(format!(
        "the host serves none of the challenge types this certificate may use ({}); the \
         host offers: {has}; {}",
        wanted.join(", "),
        fixes.join(", or ")
    ))
}

/// A failure that says nothing about the CA or the host as a whole, only that this
/// challenge type did not work: the CA could not validate it (or offers no such
/// challenge), or the agent cannot serve it (not configured, or its port is held).
pub(crate) fn is_challenge_failure(e: &IssueError) -> bool {
    match e {
        IssueError::Acme(AcmeError::Validation(_) | AcmeError::NoChallenge { .. }) => true,
        // DNS-01's records could not be written or did not propagate.
        IssueError::Dns(_) => true,
        IssueError::Agent(SessionError::Failed { kind, .. }) => matches!(
            kind,
            FailureCode::ChallengeModeUnavailable | FailureCode::BindFailed
        ),
        _ => false,
    }
}

/// What [`after_failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Not a challenge failure: nothing changed.
    NotChallenge,
    /// `failed` did not work; the next attempt (right away) answers `next`.
    Next {
        failed: ChallengeKind,
        next: ChallengeKind,
    },
    /// `failed` was the last type the host offers: back to the first for the next round,
    /// after the usual backoff.
    Exhausted { failed: ChallengeKind },
}

/// The bookkeeping after an attempt failed with `e`: moves `challenge_index` on to the
/// next type in the spec's order that the host (`modes`) offers, or back to 0 when none is
/// left. An order still in flight (the agent refused to serve its challenges; the CA has
/// validated nothing, so the order stays usable) switches to the next type and is resumed
/// with it; a failed validation has already ended its order, and the next one is created
/// with the next type.
pub(crate) fn after_failure(rec: &mut CertRecord, modes: &[String], e: &IssueError) -> Fallback {
    if !is_challenge_failure(e) {
        return Fallback::NotChallenge;
    }
    let order = rec.spec.challenge_order();
    let at = rec.schedule.challenge_index;
    let failed = match &rec.observed.order {
        Some(o) => o.challenge_kind(),
        None => order.get(at).copied().unwrap_or(ChallengeKind::Http01),
    };
    // Where the failed type is in the order (the index, unless it went stale).
    let pos = if order.get(at) == Some(&failed) {
        at
    } else {
        order.iter().position(|k| *k == failed).unwrap_or(at)
    };
    let next = order
        .iter()
        .enumerate()
        .skip(pos + 1)
        .find(|(_, k)| offers(modes, **k))
        .map(|(i, k)| (i, *k));
    match next {
        Some((i, next)) => {
            rec.schedule.challenge_index = i;
            if let Some(o) = rec.observed.order.as_mut() {
                o.challenge = Some(next);
            }
            Fallback::Next { failed, next }
        }
        None => {
            rec.schedule.challenge_index = 0;
            Fallback::Exhausted { failed }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testutil::rec;
    use crate::model::OrderInFlight;
    use certfleet_shared::ids::HostId;
    use ChallengeKind::{Http01 as H, TlsAlpn01 as A};

    fn modes(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_type_the_host_offers_from_the_index_on() {
        let both = modes(&["http-01/webroot", "tls-alpn-01/loopback"]);
        let http = modes(&["http-01/standalone"]);
        let alpn = modes(&["tls-alpn-01/standalone"]);
        let old = modes(&[]);
        // Default order, every index, every kind of host.
        assert_eq!(choose(&[H, A], 0, &both), Ok((0, H)));
        assert_eq!(choose(&[H, A], 1, &both), Ok((1, A)));
        assert_eq!(choose(&[H, A], 0, &alpn), Ok((1, A)));
        assert_eq!(choose(&[H, A], 1, &http), Ok((0, H)), "wraps round");
        assert_eq!(choose(&[H, A], 5, &both), Ok((0, H)), "stale index");
        assert_eq!(choose(&[H, A], 1, &old), Ok((0, H)));
        // The spec's own order.
        assert_eq!(choose(&[A, H], 0, &both), Ok((0, A)));
        assert_eq!(choose(&[A, H], 0, &http), Ok((1, H)));
        assert_eq!(choose(&[A], 0, &alpn), Ok((0, A)));
        // A mode name is matched by its type, not by a prefix of it.
        assert!(choose(&[A], 0, &modes(&["tls-alpn-01x/standalone"])).is_err());
    }

    #[test]
    fn no_offered_type_names_both_lists_and_the_fix() {
        let e = choose(&[A], 0, &modes(&["http-01/webroot"])).unwrap_err();
        assert!(
            e.contains("tls-alpn-01") && e.contains("http-01/webroot"),
            "{e}"
        );
        assert!(e.contains("add [tls_alpn01] to the agent's config"), "{e}");
        assert!(e.contains("list http-01 in the policy's challenges"), "{e}");
        let e = choose(&[A], 0, &[]).unwrap_err();
        assert!(e.contains("older agent"), "{e}");
    }

    fn validation() -> IssueError {
        IssueError::Acme(AcmeError::Validation(vec![("1.2.3.4".into(), "x".into())]))
    }

    fn refused(kind: FailureCode) -> IssueError {
        IssueError::Agent(SessionError::Failed {
            host: HostId::generate(),
            what: "present challenges",
            code: String::new(),
            kind,
            message: "no".into(),
            rolled_back: false,
            current_serial: String::new(),
        })
    }

    fn in_flight(kind: Option<ChallengeKind>) -> OrderInFlight {
        OrderInFlight {
            validated_by: Default::default(),
            challenge: kind,
            url: "u".into(),
            issuer: "le".into(),
            identifiers: vec![],
            profile: None,
            replaces: None,
            reason: "x".into(),
            started: 0,
            challenges_announced: false,
            presented: vec!["old".into()],
            dns_records: None,
            recorded: true,
        }
    }

    #[test]
    fn a_failed_validation_moves_to_the_next_type_then_starts_over() {
        let both = modes(&["http-01/standalone", "tls-alpn-01/standalone"]);
        let mut r = rec(0, 100);
        assert_eq!(
            after_failure(&mut r, &both, &validation()),
            Fallback::Next { failed: H, next: A }
        );
        assert_eq!(r.schedule.challenge_index, 1);
        assert_eq!(
            after_failure(&mut r, &both, &validation()),
            Fallback::Exhausted { failed: A }
        );
        assert_eq!(r.schedule.challenge_index, 0, "the next round starts over");
        // A host without TLS-ALPN-01: nothing to fall back to.
        let mut r = rec(0, 100);
        assert_eq!(
            after_failure(&mut r, &modes(&["http-01/webroot"]), &validation()),
            Fallback::Exhausted { failed: H }
        );
        assert_eq!(r.schedule.challenge_index, 0);
    }

    #[test]
    fn an_agent_that_cannot_serve_the_type_switches_the_order_in_flight() {
        let both = modes(&["http-01/standalone", "tls-alpn-01/standalone"]);
        for code in [
            FailureCode::ChallengeModeUnavailable,
            FailureCode::BindFailed,
        ] {
            let mut r = rec(0, 100);
            r.observed.order = Some(in_flight(None)); // stored before types: HTTP-01
            assert_eq!(
                after_failure(&mut r, &both, &refused(code)),
                Fallback::Next { failed: H, next: A }
            );
            assert_eq!(r.schedule.challenge_index, 1);
            assert_eq!(r.observed.order.as_ref().unwrap().challenge, Some(A));
        }
        // The order in flight says which type failed, whatever the index says.
        let mut r = rec(0, 100);
        r.spec.challenges = vec![A, H];
        r.observed.order = Some(in_flight(Some(A)));
        r.schedule.challenge_index = 1;
        assert_eq!(
            after_failure(&mut r, &both, &refused(FailureCode::BindFailed)),
            Fallback::Next { failed: A, next: H }
        );
        assert_eq!(r.schedule.challenge_index, 1);
    }

    #[test]
    fn an_order_stored_before_types_resumes_as_http01() {
        let mut v = serde_json::to_value(in_flight(Some(A))).unwrap();
        assert_eq!(v["challenge"], "tls-alpn-01");
        v.as_object_mut().unwrap().remove("challenge");
        let old: OrderInFlight = serde_json::from_value(v).unwrap();
        assert_eq!((old.challenge, old.challenge_kind()), (None, H));
    }

    #[test]
    fn other_failures_leave_the_type_alone() {
        let both = modes(&["http-01/standalone", "tls-alpn-01/standalone"]);
        let mut r = rec(0, 100);
        r.schedule.challenge_index = 1;
        for e in [
            refused(FailureCode::NotMyIp),
            refused(FailureCode::Internal),
            IssueError::Policy("x".into()),
            IssueError::WaitingForAgent,
        ] {
            assert_eq!(after_failure(&mut r, &both, &e), Fallback::NotChallenge);
            assert_eq!(r.schedule.challenge_index, 1);
        }
    }
}
