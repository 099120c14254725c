//! The reconciler's decisions: [`decide`] (desired against observed, pure), the state shown
//! to operators, and `finish` — the outcome of an attempt written back with **always** a next
//! action (renewal, ARI re-check, at-risk moment, backoff, budget refusal's free time).

use super::challenge::choice::{self, Fallback};
use super::{Engine, IssueError};
use crate::acme::AcmeError;
use crate::audit::{Entry, Kind};
use crate::model::CertSpec;
use crate::model::{BlockedState, CertRecord, CertState, HostRecord};
use certfleet_shared::backoff::Backoff;
use certfleet_shared::ids::CertId;
use certfleet_shared::renewal::RenewReason;

/// Safety net while waiting for a disconnected host (its Hello also wakes us).
const WAIT_FOR_AGENT_SECS: i64 = 10 * 60;
/// How often a certificate in a configuration error state is looked at again.
pub(super) const RECHECK_SECS: i64 = 6 * 3600;
/// Immediate retries for badNonce (beyond the ACME library's own) and for a CA that forgot
/// our account (the retry makes a new one).
const QUICK_RETRIES: u32 = 30;

/// What to do for a certificate now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Idle,
    Resume,
    Issue(RenewReason),
    Install,
}

/// Why a new certificate is needed now, if it is.
fn issue_reason(rec: &CertRecord, now: i64) -> Option<RenewReason> {
    let Some(cur) = &rec.observed.current else {
        return Some(RenewReason::Missing);
    };
    if cur.identifiers != rec.spec.identifiers {
        return Some(RenewReason::IdentifiersChanged);
    }
    if !rec.spec.issuers().any(|i| i == cur.issuer)
        || (rec.spec.required_profile.is_some() && cur.profile != rec.spec.required_profile)
    {
        return Some(RenewReason::SpecChanged);
    }
    if rec.schedule.forced_by.is_some() {
        return Some(RenewReason::Forced);
    }
    match rec.renew_time(now) {
        Some((at, reason)) if now >= at => Some(reason),
        _ => None,
    }
}

/// Desired against observed. Pure.
pub fn decide(rec: &CertRecord, now: i64) -> Decision {
    if rec.observed.order.is_some() {
        return Decision::Resume;
    }
    if let Some(reason) = issue_reason(rec, now) {
        // An address conflict or refusal holds any new order back; what is issued may
        // still be installed.
        if rec.observed.blocked.is_none() {
            return Decision::Issue(reason);
        }
    }
    let Some(cur) = &rec.observed.current else {
        return Decision::Idle;
    };
    if rec.observed.installed_serial.as_ref() != Some(&cur.serial)
        || (!rec.observed.verify_disabled
            && rec.observed.served_serial.as_ref() != Some(&cur.serial))
    {
        return Decision::Install;
    }
    Decision::Idle
}

/// How soon DNS-01 records whose removal failed are tried again.
const DNS_CLEANUP_RETRY_SECS: i64 = 60;

impl Engine {
    /// Writes the outcome and the next action.
    pub(super) fn finish(
        &self,
        mut rec: CertRecord,
        outcome: Result<(), IssueError>,
    ) -> Result<(), IssueError> {
        let now = self.clock.now_unix();
        // A Hello or an operator may have changed the record while this task ran: their
        // fields win, and the certificate is looked at again right away.
        let mut changed_meanwhile = false;
        let Some(fresh) = self.store.cert(&rec.id)? else {
            // Removed (host removal) while this task ran: it stays removed.
            return Ok(());
        };
        {
            if fresh.spec != rec.spec {
                rec.spec = fresh.spec;
                changed_meanwhile = true;
            }
            if fresh.observed.blocked != rec.observed.blocked {
                rec.observed.blocked = fresh.observed.blocked;
                changed_meanwhile = true;
            }
            if fresh.schedule.forced_by.is_some() && rec.schedule.forced_by.is_none() {
                rec.schedule.forced_by = fresh.schedule.forced_by;
                changed_meanwhile = true;
            }
            // Revoked by an operator meanwhile: do not bring the revoked certificate back.
            if fresh.observed.current.is_none()
                && rec.observed.current.is_some()
                && fresh.observed.revoked_serial.is_some()
            {
                rec.observed.current = None;
                rec.observed.ari = None;
                rec.schedule.last_renewal_reason = fresh.schedule.last_renewal_reason;
                rec.observed.revoked_serial = fresh.observed.revoked_serial;
                changed_meanwhile = true;
            }
        }
        let mut next = if changed_meanwhile {
            now
        } else {
            self.planned(&rec, now)
        };
        // A challenge type that failed: the next one the host offers, right away.
        let fallback = match &outcome {
            Err(e) => {
                let modes = self
                    .store
                    .host(&rec.host_id)
                    .ok()
                    .flatten()
                    .map(|h| h.challenge_modes)
                    .unwrap_or_default();
                choice::after_failure(&mut rec, &modes, e)
            }
            Ok(()) => Fallback::NotChallenge,
        };
        match &outcome {
            Ok(()) => {
                rec.schedule.attempts = 0;
                rec.schedule.quick_retries = 0;
                rec.schedule.issuer_index = 0;
                // `challenge_index` stays on the type that worked (see `choice`).
                rec.schedule.last_error = None;
            }
            Err(IssueError::Store(_)) => {}
            Err(IssueError::WaitingForAgent) => {
                rec.schedule.last_error = Some("waiting for the host to connect".into());
                next = next.min(now + WAIT_FOR_AGENT_SECS);
            }
            Err(IssueError::KeyGroup(why)) => {
                rec.schedule.last_error = Some(why.clone());
                next = now + super::keygroup::GROUP_WAIT_SECS;
            }
            Err(IssueError::Budget(refusal)) => {
                let _ = self.record(
                    Kind::RateLimitRefused,
                    &rec,
                    Entry::by("coordinator")
                        .ids(&rec.spec.identifiers)
                        .issuer(rec.spec.issuer.clone())
                        .detail("limit", refusal.limit)
                        .detail("key", &refusal.key)
                        .detail("frees_at", refusal.frees_at),
                );
                rec.schedule.last_error = Some(format!("{refusal} ({})", refusal.frees_in(now)));
                next = refusal.frees_at;
            }
            Err(IssueError::Acme(e))
                if (e.is_bad_nonce() || e.is_account_gone())
                    && rec.schedule.quick_retries < QUICK_RETRIES =>
            {
                rec.schedule.quick_retries += 1;
                rec.schedule.last_error = Some(e.to_string());
                next = now + 1;
            }
            Err(e) if matches!(fallback, Fallback::Next { .. }) => {
                if let Fallback::Next { failed, next: then } = fallback {
                    let _ = self.record(
                        Kind::ChallengeFallback,
                        &rec,
                        Entry::by("coordinator")
                            .ids(&rec.spec.identifiers)
                            .detail("type", failed.as_str())
                            .detail("next_type", then.as_str())
                            .detail("error", e.to_string()),
                    );
                    tracing::warn!(cert = %rec.id, host = %rec.host_id, error = %e, failed = failed.as_str(),
                        next = then.as_str(), "challenge type failed; trying the next one");
                    rec.schedule.last_error = Some(format!(
                        "{e}; {} failed, trying {} next",
                        failed.as_str(),
                        then.as_str()
                    ));
                }
                next = now + 1;
            }
            Err(IssueError::Policy(_))
            | Err(IssueError::Acme(AcmeError::ProfileUnavailable { .. })) => {
                rec.schedule.last_error = outcome.as_ref().err().map(|e| e.to_string());
                next = now + RECHECK_SECS;
            }
            Err(IssueError::Acme(e))
                if !e.is_permanent()
                    && !matches!(e, AcmeError::Validation(_))
                    && rec.observed.order.is_none()
                    && rec.schedule.issuer_index + 1 < rec.spec.issuers().count() =>
            {
                rec.schedule.issuer_index += 1;
                // The next issuer starts with the preferred challenge type again.
                rec.schedule.challenge_index = 0;
                let next_issuer = rec
                    .spec
                    .issuers()
                    .nth(rec.schedule.issuer_index)
                    .unwrap_or_default()
                    .to_owned();
                tracing::warn!(cert = %rec.id, error = %e, next_issuer = %next_issuer, "issuer failed; falling back to the next one");
                rec.schedule.last_error = Some(format!("{e}; trying issuer {next_issuer} next"));
                next = now + 1;
            }
            Err(e) => {
                rec.schedule.issuer_index = 0;
                let ca_says = match e {
                    IssueError::Acme(a) => a.retry_after().map(|at| at.max(now + 1)),
                    _ => None,
                };
                next = retry_at(
                    &self.live().config.issuance.retry_backoff(),
                    rec.schedule.attempts,
                    rand::random::<f64>(),
                    ca_says,
                    now,
                );
                rec.schedule.attempts += 1;
                rec.schedule.last_error = Some(e.to_string());
            }
        }
        if let Err(e) = &outcome {
            if !matches!(
                e,
                IssueError::WaitingForAgent | IssueError::Store(_) | IssueError::KeyGroup(_)
            ) {
                self.metrics
                    .failures
                    .get_or_create(&crate::metrics::IssuerReason {
                        issuer: rec.spec.issuer.clone(),
                        reason: failure_reason(e).into(),
                    })
                    .inc();
            }
            if !matches!(e, IssueError::WaitingForAgent | IssueError::KeyGroup(_)) {
                tracing::warn!(cert = %rec.id, host = %rec.host_id, error = %e, next_action = next, "certificate not reconciled");
            }
        }
        if let Some(b) = &rec.observed.blocked {
            if outcome.is_ok() {
                rec.schedule.last_error = Some(b.reason.clone());
            }
        }
        rec.state = state_of(&rec, now);
        let was = rec.schedule.at_risk;
        rec.schedule.at_risk =
            rec.observed.current.is_some() && rec.at_risk_at().is_some_and(|at| now >= at);
        if rec.schedule.at_risk && !was {
            let _ = self.record(
                Kind::AtRisk,
                &rec,
                Entry::by("coordinator")
                    .ids(&rec.spec.identifiers)
                    .serial(
                        rec.observed
                            .current
                            .as_ref()
                            .map(|c| c.serial.clone())
                            .unwrap_or_default(),
                    )
                    .detail("last_error", &rec.schedule.last_error),
            );
            tracing::error!(cert = %rec.id, host = %rec.host_id, not_after = rec.observed.current.as_ref().map(|c| c.not_after),
                last_error = ?rec.schedule.last_error, "certificate AT RISK: its remaining lifetime is below the safety margin");
        }
        rec.schedule.next_reason = Some(next_reason(&rec, next, now, outcome.as_ref().err()));
        if let Some(d) = &rec.observed.deferred_clear {
            next = next.min(d.at);
        }
        if !rec.observed.dns_cleanup.is_empty() {
            // DNS-01 records whose removal failed: tried again soon.
            next = next.min(now + DNS_CLEANUP_RETRY_SECS);
        }
        rec.schedule.next_action = Some(next.max(now));
        rec.updated = now;
        self.save(&rec)?;
        match outcome {
            Err(IssueError::Store(e)) => Err(IssueError::Store(e)),
            _ => Ok(()),
        }
    }

    /// The next planned action when nothing failed ([`planned_at`], with this engine's
    /// issuers deciding whether an ARI window is still to be fetched).
    pub(super) fn planned(&self, rec: &CertRecord, now: i64) -> i64 {
        planned_at(rec, now, self.ari_pending(rec))
    }
}

/// The next planned action when nothing failed: renewal, ARI re-check, the at-risk
/// moment, whichever is first. `ari_pending`: the certificate's issuer offers ARI and no
/// window has been fetched yet. Pure.
pub(crate) fn planned_at(rec: &CertRecord, now: i64, ari_pending: bool) -> i64 {
    if rec.observed.blocked.is_some()
        && rec.observed.order.is_none()
        && decide(rec, now) == Decision::Idle
    {
        // Released addresses and policy changes wake it; this is the safety net.
        return now + RECHECK_SECS;
    }
    if rec.observed.order.is_some()
        || rec.observed.current.is_none()
        || decide(rec, now) != Decision::Idle
    {
        return now;
    }
    let mut next = rec.renew_time(now).map(|(at, _)| at).unwrap_or(now);
    if let Some(a) = &rec.observed.ari {
        next = next.min(a.next_check);
    } else if ari_pending {
        next = next.min(rec.schedule.ari_retry_at.unwrap_or(now));
    }
    if let Some(at) = rec.at_risk_at().filter(|_| !rec.schedule.at_risk) {
        next = next.min(at);
    }
    next.max(now + 1)
}

/// When to retry after a failure that no more specific rule covers: the CA's own
/// Retry-After (`ca_says`) if it gave one, else the jittered backoff for this attempt
/// (`unit` is the random draw in [0, 1)); never sooner than a second from now. Pure.
pub(crate) fn retry_at(
    backoff: &Backoff,
    attempts: u32,
    unit: f64,
    ca_says: Option<i64>,
    now: i64,
) -> i64 {
    let backoff = backoff.delay(attempts, unit).as_secs() as i64;
    ca_says.unwrap_or(now + backoff).max(now + 1)
}

/// A short, bounded label for a failure (metrics).
fn failure_reason(e: &IssueError) -> &'static str {
    match e {
        IssueError::Acme(AcmeError::Validation(_)) => "validation",
        IssueError::Acme(AcmeError::Timeout { .. }) => "ca_timeout",
        IssueError::Acme(AcmeError::ProfileUnavailable { .. }) => "profile_unavailable",
        IssueError::Acme(a) if a.is_bad_nonce() => "bad_nonce",
        IssueError::Acme(a) if a.is_rate_limited() => "rate_limited",
        IssueError::Acme(a) if a.is_account_gone() => "account_gone",
        IssueError::Acme(a) if a.problem_type().is_none() => "ca_unreachable",
        IssueError::Acme(_) => "ca_error",
        IssueError::Agent(_) => "agent",
        IssueError::Budget(_) => "rate_limit_budget",
        IssueError::Policy(_) => "policy",
        IssueError::BadCsr(_) => "bad_csr",
        IssueError::BadCert(_) => "bad_certificate",
        IssueError::WaitingForAgent => "waiting_for_agent",
        IssueError::Store(_) => "store",
        IssueError::Audit(_) => "audit",
        IssueError::Dns(_) => "dns",
        IssueError::KeyGroup(_) => "key_group",
    }
}

pub(crate) fn new_record(host: &HostRecord, spec: CertSpec, now: i64) -> CertRecord {
    CertRecord::new(CertId::generate(), host.id.clone(), spec, now)
}

pub(crate) fn state_of(rec: &CertRecord, now: i64) -> CertState {
    if rec.observed.order.is_some() {
        return CertState::Ordering;
    }
    match rec.observed.blocked.as_ref().map(|b| b.state) {
        Some(BlockedState::Conflict) => return CertState::Conflict,
        Some(BlockedState::Refused) => return CertState::Refused,
        None => {}
    }
    match &rec.observed.current {
        Some(c) if c.not_after > now && rec.observed.served_serial.as_ref() == Some(&c.serial) => {
            CertState::Served
        }
        Some(c)
            if c.not_after > now && rec.observed.installed_serial.as_ref() == Some(&c.serial) =>
        {
            CertState::Installed
        }
        Some(c) if c.not_after > now => CertState::Issued,
        _ if rec.schedule.last_error.is_some() => CertState::Failed,
        _ => CertState::Pending,
    }
}

fn next_reason(rec: &CertRecord, next: i64, now: i64, failure: Option<&IssueError>) -> String {
    if let Some(e) = failure {
        return match e {
            IssueError::Budget(_) => "rate limit frees",
            IssueError::WaitingForAgent => "host reconnects",
            IssueError::KeyGroup(_) => "key group",
            _ => "retry",
        }
        .into();
    }
    if next <= now + 1 && decide(rec, now) != Decision::Idle {
        return "act now".into();
    }
    match rec.renew_time(now) {
        Some((at, reason)) if at <= next => format!("renew ({reason})"),
        _ if rec
            .observed
            .ari
            .as_ref()
            .is_some_and(|a| a.next_check <= next) =>
        {
            "check ARI window".into()
        }
        _ if rec.observed.ari.is_none()
            && rec
                .observed
                .current
                .as_ref()
                .is_some_and(|c| c.ari_id.is_some())
            && rec.schedule.ari_retry_at.unwrap_or(now) <= next =>
        {
            "fetch ARI window".into()
        }
        _ => "check at-risk margin".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testutil::rec;
    use crate::model::{AriState, Blocked, OrderInFlight};
    use certfleet_shared::ids::HostId;

    const H: i64 = 3600;

    #[test]
    fn shortlived_renews_at_half_life_not_every_day() {
        let r = rec(0, 160 * H);
        assert_eq!(
            decide(&r, 0),
            Decision::Idle,
            "a fresh certificate is not due"
        );
        assert_eq!(
            decide(&r, 24 * H),
            Decision::Idle,
            "a day later it is still not due"
        );
        assert_eq!(decide(&r, 80 * H - 1), Decision::Idle);
        assert_eq!(
            decide(&r, 80 * H),
            Decision::Issue(RenewReason::LifetimeFraction)
        );
        assert_eq!(decide(&r, 160 * H), Decision::Issue(RenewReason::Expired));
    }

    #[test]
    fn long_lived_renews_with_a_third_left() {
        let r = rec(0, 90 * 24 * H);
        assert_eq!(decide(&r, 60 * 24 * H - 1), Decision::Idle);
        assert_eq!(
            decide(&r, 60 * 24 * H),
            Decision::Issue(RenewReason::LifetimeFraction)
        );
        let r = rec(0, 45 * 24 * H);
        assert_eq!(
            decide(&r, 30 * 24 * H),
            Decision::Issue(RenewReason::LifetimeFraction)
        );
    }

    #[test]
    fn ari_window_overrides_the_fraction() {
        let mut r = rec(0, 160 * H);
        r.observed.ari = Some(AriState {
            start: 10 * H,
            end: 20 * H,
            renew_at: 15 * H,
            next_check: 12 * H,
            explanation_url: None,
        });
        assert_eq!(decide(&r, 14 * H), Decision::Idle);
        assert_eq!(decide(&r, 15 * H), Decision::Issue(RenewReason::AriWindow));
    }

    #[test]
    fn spec_changes_orders_and_installs() {
        let mut r = rec(0, 160 * H);
        r.spec.identifiers.push("1.1.1.1".parse().unwrap());
        assert_eq!(
            decide(&r, 1),
            Decision::Issue(RenewReason::IdentifiersChanged)
        );
        let mut r = rec(0, 160 * H);
        r.spec.required_profile = Some("shortlived".into());
        assert_eq!(decide(&r, 1), Decision::Issue(RenewReason::SpecChanged));
        let mut r = rec(0, 160 * H);
        r.observed.installed_serial = None;
        assert_eq!(decide(&r, 1), Decision::Install);
        // Installed but not seen served: install again (the agent only re-checks).
        let mut r = rec(0, 160 * H);
        r.observed.served_serial = Some("00".into());
        assert_eq!(decide(&r, 1), Decision::Install);
        // …unless the host checks nothing after install.
        r.observed.verify_disabled = true;
        assert_eq!(decide(&r, 1), Decision::Idle);
        let mut r = rec(0, 160 * H);
        r.schedule.forced_by = Some("operator".into());
        assert_eq!(decide(&r, 1), Decision::Issue(RenewReason::Forced));
        let mut r = rec(0, 160 * H);
        r.observed.order = Some(OrderInFlight {
            validated_by: Default::default(),
            challenge: None,
            url: "u".into(),
            issuer: "le".into(),
            identifiers: vec![],
            profile: None,
            replaces: None,
            reason: "x".into(),
            started: 0,
            challenges_announced: false,
            presented: Vec::new(),
            dns_records: None,
            recorded: true,
        });
        assert_eq!(decide(&r, 1), Decision::Resume);
        r.observed.current = None;
        r.observed.order = None;
        assert_eq!(decide(&r, 1), Decision::Issue(RenewReason::Missing));
    }

    #[test]
    fn key_history_is_bounded_and_deduplicated() {
        let mut r = rec(0, 100);
        for i in 0..(crate::model::KEY_HISTORY + 10) {
            r.remember_key(&format!("{i:064x}"));
            r.remember_key(&format!("{i:064x}"));
        }
        assert_eq!(r.observed.key_history.len(), crate::model::KEY_HISTORY);
        assert_eq!(
            r.observed.key_history.last(),
            Some(&format!("{:064x}", crate::model::KEY_HISTORY + 9))
        );
    }

    #[test]
    fn a_blocked_certificate_orders_nothing_but_may_install_what_it_has() {
        let mut r = rec(0, 1_000_000);
        r.observed.blocked = Some(Blocked {
            names: Default::default(),
            state: BlockedState::Conflict,
            ips: r.spec.ips(),
            held_by: Some(HostId::generate()),
            reason: "held".into(),
            since: 0,
        });
        r.schedule.forced_by = Some("ops".into());
        r.observed.installed_serial = None;
        r.observed.served_serial = None;
        assert_eq!(state_of(&r, 10), CertState::Conflict);
        // Issued but not installed: installing is still fine.
        assert_eq!(decide(&r, 10), Decision::Install);
        let serial = r.observed.current.as_ref().unwrap().serial.clone();
        r.observed.installed_serial = Some(serial.clone());
        r.observed.served_serial = Some(serial);
        assert_eq!(decide(&r, 10), Decision::Idle, "forced renewal held back");
        r.observed.current = None;
        assert_eq!(decide(&r, 10), Decision::Idle, "no first order either");
        r.observed.blocked = None;
        assert_eq!(decide(&r, 10), Decision::Issue(RenewReason::Missing));
    }
}
