//! When to renew a certificate: the ARI window (RFC 9773) where the CA offers one,
//! otherwise a fraction of the lifetime (one third left for long certificates, one half
//! for those of 10 days or less), always in seconds, never rounded to whole days.
//!
//! This module owns the renewal-time maths only. It does no I/O and reads no clock: `now`
//! and random draws (`unit`, a number in [0, 1)) are parameters, so the scheduler and the
//! tests decide both.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Certificates of this lifetime or less are "short-lived" (Let's Encrypt `shortlived` is
/// 160 hours) and renew when half their lifetime is left.
pub const SHORT_LIVED_MAX_SECS: i64 = 10 * 86_400;

/// The largest share of the lifetime by which lifetime-based renewal is moved earlier, so a
/// fleet enrolled at once does not renew at once.
pub const JITTER_FRACTION: f64 = 0.05;

/// Bounds for re-fetching renewalInfo: at least twice a day, never hammering the CA.
pub const ARI_CHECK_MIN_SECS: i64 = 60;
pub const ARI_CHECK_MAX_SECS: i64 = 12 * 3600;
pub const ARI_CHECK_DEFAULT_SECS: i64 = 6 * 3600;

/// A certificate's validity period, in unix seconds (as read from notBefore/notAfter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Lifetime in seconds; 0 for a malformed period (not_after before not_before).
    pub fn lifetime_secs(&self) -> i64 {
        (self.not_after - self.not_before).max(0)
    }
}

/// The share of the lifetime left at which to renew, as `(numerator, denominator)`:
/// `(1, 3)` for certificates longer than 10 days, `(1, 2)` for 10 days or less.
pub fn renewal_fraction(v: &Validity) -> (i64, i64) {
    if v.lifetime_secs() > SHORT_LIVED_MAX_SECS {
        (1, 3)
    } else {
        (1, 2)
    }
}

/// `ceil(lifetime * num / den)` for non-negative lifetimes: rounding up keeps thresholds
/// from ever landing later than the exact fraction.
fn share_of_lifetime(v: &Validity, num: i64, den: i64) -> i64 {
    let scaled = v.lifetime_secs().saturating_mul(num);
    scaled / den + i64::from(scaled % den != 0)
}

fn clamp_unit(unit: f64) -> f64 {
    if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    }
}

/// The exact lifetime-fraction threshold, without jitter.
pub fn lifetime_threshold(v: &Validity) -> i64 {
    let (num, den) = renewal_fraction(v);
    v.not_after - share_of_lifetime(v, num, den)
}

/// When to renew without ARI: the lifetime-fraction threshold moved earlier by
/// `unit * JITTER_FRACTION * lifetime`. Never later than the threshold, never before
/// not_before.
pub fn lifetime_renew_at(v: &Validity, unit: f64) -> i64 {
    let jitter = (clamp_unit(unit) * JITTER_FRACTION * v.lifetime_secs() as f64) as i64;
    (lifetime_threshold(v) - jitter).max(v.not_before)
}

/// A renewalInfo `suggestedWindow`, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriWindow {
    pub start: i64,
    pub end: i64,
}

/// When to renew under ARI: a uniformly random time in `[start, end)` drawn from `unit`;
/// `now` if the window has begun. A malformed window (end <= start) means `start`.
pub fn ari_renew_at(w: &AriWindow, now: i64, unit: f64) -> i64 {
    if now >= w.start {
        return now;
    }
    if w.end <= w.start {
        return w.start;
    }
    let span = w.end - w.start;
    let offset = (clamp_unit(unit) * span as f64) as i64;
    w.start + offset.min(span - 1)
}

/// When to fetch renewalInfo again. `retry_after` is the server's Retry-After as a delay in
/// seconds (the caller converts an HTTP date); it is clamped to [60 s, 12 h], and 6 h is
/// used when absent.
pub fn next_ari_check(now: i64, retry_after: Option<i64>) -> i64 {
    let delay = retry_after
        .map(|s| s.clamp(ARI_CHECK_MIN_SECS, ARI_CHECK_MAX_SECS))
        .unwrap_or(ARI_CHECK_DEFAULT_SECS);
    now.saturating_add(delay)
}

/// Why a certificate is (re)issued; recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewReason {
    Missing,
    IdentifiersChanged,
    SpecChanged,
    AriWindow,
    LifetimeFraction,
    Expired,
    Forced,
}

impl fmt::Display for RenewReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RenewReason::Missing => "no certificate installed yet",
            RenewReason::IdentifiersChanged => "the host's identifiers changed",
            RenewReason::SpecChanged => "the certificate spec changed",
            RenewReason::AriWindow => "the CA's renewal window (ARI) is open",
            RenewReason::LifetimeFraction => "the renewal share of its lifetime is reached",
            RenewReason::Expired => "the certificate has expired",
            RenewReason::Forced => "an operator forced renewal",
        })
    }
}

/// When to renew an existing certificate and why: at expiry if it has expired, at the moment
/// drawn inside the CA's ARI window when there is one (`ari_renew_at`, drawn once per window
/// with [`ari_renew_at`]), otherwise the jittered lifetime fraction (`unit` is the draw fixed
/// at issuance).
pub fn renew_at(
    v: &Validity,
    ari_renew_at: Option<i64>,
    now: i64,
    unit: f64,
) -> (i64, RenewReason) {
    if now >= v.not_after {
        return (v.not_after, RenewReason::Expired);
    }
    match ari_renew_at {
        Some(at) => (at, RenewReason::AriWindow),
        None => (lifetime_renew_at(v, unit), RenewReason::LifetimeFraction),
    }
}

/// From when a certificate counts as *at risk*: half of its renewal margin left (1/6 of the
/// lifetime for long certificates, 1/4 for short-lived ones), or — when the CA's ARI window
/// (starting at `ari_start`) asks for a later renewal — half of the time between the
/// window's start and expiry.
pub fn at_risk_at(v: &Validity, ari_start: Option<i64>) -> i64 {
    let (num, den) = renewal_fraction(v);
    let by_fraction = v.not_after - v.lifetime_secs() * num / den / 2;
    match ari_start {
        Some(start) if start < v.not_after => by_fraction.max(start + (v.not_after - start) / 2),
        _ => by_fraction,
    }
}

/// The share of the lifetime still left at `now`, in [0, 1].
pub fn remaining_fraction(v: &Validity, now: i64) -> f64 {
    let lifetime = v.lifetime_secs();
    if lifetime == 0 {
        return 0.0;
    }
    ((v.not_after - now) as f64 / lifetime as f64).clamp(0.0, 1.0)
}

/// A duration for humans, at the resolution that matters for the certificate: "80h00m"
/// when the lifetime is 10 days or less, "30d00h" otherwise.
pub fn human_duration(secs: i64, lifetime: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let abs = secs.unsigned_abs();
    if lifetime <= SHORT_LIVED_MAX_SECS {
        format!("{sign}{}h{:02}m", abs / 3600, abs % 3600 / 60)
    } else {
        format!("{sign}{}d{:02}h", abs / 86_400, abs % 86_400 / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;
    const T0: i64 = 1_800_000_000;

    fn cert(lifetime: i64) -> Validity {
        Validity {
            not_before: T0,
            not_after: T0 + lifetime,
        }
    }

    #[test]
    fn thresholds_are_exact_for_each_profile() {
        for (lifetime, left) in [(160 * H, 80 * H), (45 * D, 15 * D), (90 * D, 30 * D)] {
            let v = cert(lifetime);
            assert_eq!(
                lifetime_threshold(&v),
                v.not_after - left,
                "lifetime {lifetime}"
            );
            assert_eq!(lifetime_renew_at(&v, 0.0), v.not_after - left);
        }
        assert_eq!(renewal_fraction(&cert(160 * H)), (1, 2));
        assert_eq!(renewal_fraction(&cert(10 * D)), (1, 2));
        assert_eq!(renewal_fraction(&cert(10 * D + 1)), (1, 3));
    }

    #[test]
    fn no_whole_day_rounding() {
        let short = cert(160 * H - 60); // 159h59m
        assert_eq!(lifetime_threshold(&short), short.not_after - (80 * H - 30));
        assert_ne!(
            lifetime_threshold(&short) - T0,
            lifetime_threshold(&cert(160 * H)) - T0
        );
        // Odd lifetimes round the share up, so the threshold is never late.
        let odd = cert(160 * H + 1);
        assert_eq!(lifetime_threshold(&odd), odd.not_after - (80 * H + 1));
    }

    #[test]
    fn jitter_moves_earlier_within_bounds() {
        for lifetime in [160 * H, 45 * D, 90 * D] {
            let v = cert(lifetime);
            let threshold = lifetime_threshold(&v);
            let max_jitter = (JITTER_FRACTION * lifetime as f64) as i64;
            assert_eq!(lifetime_renew_at(&v, 0.0), threshold);
            let late = lifetime_renew_at(&v, 0.999_999);
            assert!(late <= threshold - max_jitter + 1 && late >= threshold - max_jitter);
            for unit in [-1.0, 0.1, 0.5, 0.9, 1.0, 7.0, f64::NAN] {
                let at = lifetime_renew_at(&v, unit);
                assert!(
                    at <= threshold && at >= threshold - max_jitter,
                    "unit {unit}"
                );
                assert!(at >= v.not_before);
            }
        }
        // 160 h: 80 h left at the latest, 88 h left at the earliest.
        let v = cert(160 * H);
        assert_eq!(lifetime_renew_at(&v, 1.0), v.not_after - 88 * H);
    }

    #[test]
    fn fresh_short_lived_certificate_is_never_due() {
        let v = cert(160 * H);
        // The classic cron rule "renew 30 days before expiry" is due at issuance.
        assert!(v.not_after - 30 * D <= v.not_before);
        for unit in [0.0, 0.5, 1.0] {
            let (at, reason) = renew_at(&v, None, v.not_before, unit);
            assert_eq!(reason, RenewReason::LifetimeFraction);
            assert!(at >= v.not_before + 72 * H, "due too early: {at}");
        }
        assert!(at_risk_at(&v, None) > v.not_before);
    }

    #[test]
    fn malformed_validity_never_renews_before_not_before() {
        let v = Validity {
            not_before: T0,
            not_after: T0 - 10,
        };
        assert_eq!(v.lifetime_secs(), 0);
        assert_eq!(lifetime_renew_at(&v, 1.0), T0);
        assert_eq!(remaining_fraction(&v, T0), 0.0);
        assert!(at_risk_at(&v, None) <= T0);
    }

    #[test]
    fn ari_before_window_draws_uniformly_inside_it() {
        let w = AriWindow {
            start: T0 + 10 * H,
            end: T0 + 20 * H,
        };
        assert_eq!(ari_renew_at(&w, T0, 0.0), w.start);
        assert_eq!(ari_renew_at(&w, T0, 0.5), T0 + 15 * H);
        assert_eq!(ari_renew_at(&w, T0, 1.0), w.end - 1);
        assert_eq!(ari_renew_at(&w, T0, 0.999_999_999), w.end - 1);
        for unit in [-3.0, 0.25, 0.75, 2.0, f64::NAN] {
            let at = ari_renew_at(&w, T0, unit);
            assert!(at >= w.start && at < w.end, "unit {unit}");
        }
    }

    #[test]
    fn ari_in_or_past_window_renews_now() {
        let w = AriWindow {
            start: T0,
            end: T0 + 10 * H,
        };
        assert_eq!(ari_renew_at(&w, T0, 0.9), T0);
        assert_eq!(ari_renew_at(&w, T0 + H, 0.9), T0 + H);
        assert_eq!(ari_renew_at(&w, T0 + 30 * H, 0.1), T0 + 30 * H);
    }

    #[test]
    fn ari_malformed_window_renews_at_start_or_now() {
        let w = AriWindow {
            start: T0 + 10 * H,
            end: T0 + 10 * H,
        };
        assert_eq!(ari_renew_at(&w, T0, 0.7), w.start);
        let inverted = AriWindow {
            start: T0 + 10 * H,
            end: T0,
        };
        assert_eq!(ari_renew_at(&inverted, T0, 0.7), inverted.start);
        assert_eq!(ari_renew_at(&inverted, T0 + 11 * H, 0.7), T0 + 11 * H);
    }

    #[test]
    fn next_ari_check_clamps_retry_after() {
        assert_eq!(next_ari_check(T0, None), T0 + 6 * H);
        assert_eq!(next_ari_check(T0, Some(0)), T0 + 60);
        assert_eq!(next_ari_check(T0, Some(-5)), T0 + 60);
        assert_eq!(next_ari_check(T0, Some(3 * H)), T0 + 3 * H);
        assert_eq!(next_ari_check(T0, Some(7 * D)), T0 + 12 * H);
    }

    #[test]
    fn renew_at_takes_the_ari_draw_and_reports_expiry() {
        let v = cert(160 * H);
        assert_eq!(
            renew_at(&v, Some(T0 + 55 * H), T0, 0.0),
            (T0 + 55 * H, RenewReason::AriWindow)
        );
        assert_eq!(
            renew_at(&v, Some(T0 + 55 * H), v.not_after, 0.0),
            (v.not_after, RenewReason::Expired)
        );
        assert_eq!(
            renew_at(&v, None, v.not_after + H, 0.0),
            (v.not_after, RenewReason::Expired),
            "an expired certificate is due since its expiry"
        );
    }

    #[test]
    fn shortlived_renews_at_half_life_long_lived_with_a_third_left() {
        let v = cert(160 * H);
        assert_eq!(
            renew_at(&v, None, T0, 0.0),
            (T0 + 80 * H, RenewReason::LifetimeFraction)
        );
        let v = cert(90 * D);
        assert_eq!(renew_at(&v, None, T0, 0.0).0, T0 + 60 * D);
        let v = cert(45 * D);
        assert_eq!(renew_at(&v, None, T0, 0.0).0, T0 + 30 * D);
    }

    #[test]
    fn at_risk_moment_follows_the_fraction_or_a_later_ari_window() {
        let v = cert(160 * H);
        // Short-lived: renew with half left, at risk with a quarter left.
        assert_eq!(at_risk_at(&v, None), T0 + 120 * H);
        // A CA window opening at 85% of the lifetime moves the alarm to halfway from there.
        assert_eq!(at_risk_at(&v, Some(T0 + 136 * H)), T0 + 148 * H);
        // An early window never makes it earlier than the fraction.
        assert_eq!(at_risk_at(&v, Some(T0 + 10 * H)), T0 + 120 * H);
        // A window starting after expiry is ignored.
        assert_eq!(at_risk_at(&v, Some(T0 + 200 * H)), T0 + 120 * H);
        assert_eq!(
            at_risk_at(&cert(90 * D), None),
            T0 + 75 * D,
            "a third left renews, a sixth left is at risk"
        );
        // The renewal threshold itself is not yet at risk.
        for lifetime in [160 * H, 45 * D, 90 * D] {
            let v = cert(lifetime);
            assert!(lifetime_threshold(&v) < at_risk_at(&v, None));
        }
    }

    #[test]
    fn remaining_fraction_is_clamped() {
        let v = cert(160 * H);
        assert_eq!(remaining_fraction(&v, T0 - H), 1.0);
        assert_eq!(remaining_fraction(&v, T0), 1.0);
        assert_eq!(remaining_fraction(&v, T0 + 80 * H), 0.5);
        assert_eq!(remaining_fraction(&v, v.not_after + H), 0.0);
    }

    #[test]
    fn human_duration_uses_hours_for_short_lived() {
        assert_eq!(human_duration(80 * H, 160 * H), "80h00m");
        assert_eq!(human_duration(79 * H + 59 * 60 + 30, 160 * H), "79h59m");
        assert_eq!(human_duration(-90 * 60, 160 * H), "-1h30m");
        assert_eq!(human_duration(30 * D, 90 * D), "30d00h");
        assert_eq!(human_duration(15 * D + 5 * H, 45 * D), "15d05h");
    }

    #[test]
    fn renew_reason_serde_and_display() {
        let text = toml::to_string(&std::collections::BTreeMap::from([(
            "r",
            RenewReason::IdentifiersChanged,
        )]))
        .unwrap();
        assert_eq!(text.trim(), r#"r = "identifiers_changed""#);
        assert_eq!(
            RenewReason::Expired.to_string(),
            "the certificate has expired"
        );
    }
}
