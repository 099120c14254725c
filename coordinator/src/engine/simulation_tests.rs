//! A deterministic discrete-event simulation of the scheduler on a controlled clock: 1,000
//! certificates of 160 hours over 60 days, with a stub CA at the engine's boundary. A unit
//! test of the scheduling logic (it does not replace the pebble tests): every step goes
//! through the engine's own pure functions — [`decide`], [`planned_at`] (the next action
//! after a success, as `finish` computes it), [`retry_at`] (the backoff after a failure),
//! [`state_of`] and the record's `renew_time` / `at_risk_at` — and the stub CA fills the
//! record the way the order driver does (`renew_unit` drawn at issuance).

use super::reconcile::{decide, new_record, planned_at, retry_at, state_of, Decision};
use super::testutil;
use crate::config::IssuanceConfig;
use crate::model::{CertRecord, CertState, IssuedCert};
use certfleet_shared::renewal::{self, lifetime_threshold, RenewReason, Validity, JITTER_FRACTION};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const H: i64 = 3600;
const D: i64 = 86_400;
const CERTS: usize = 1_000;
const LIFETIME: i64 = 160 * H;
const HORIZON: i64 = 60 * D;
/// The fleet enrolls at random moments over the first day.
const BOOT: i64 = D;
/// Share of the stub CA's orders that fail (and go through the engine's backoff).
const FAILURE_RATE: f64 = 0.02;
const SEED: u64 = 0x5eed_cafe_f00d_0001;

/// SplitMix64: a small seeded generator, so the run is the same every time.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), like `rand::random::<f64>()`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The stub CA: a 160-hour certificate valid from `now`, or a failure.
fn stub_ca(rec: &CertRecord, now: i64, serial: u64, rng: &mut Rng) -> Option<IssuedCert> {
    if rng.unit() < FAILURE_RATE {
        return None;
    }
    Some(IssuedCert {
        validated_by: Default::default(),
        identifiers: rec.spec.identifiers.clone(),
        issuer: rec.spec.issuer.clone(),
        profile: Some("shortlived".into()),
        serial: format!("{serial:016x}"),
        not_before: now,
        not_after: now + LIFETIME,
        chain_pem: String::new(),
        // No ARI: the lifetime-fraction rule decides (the stub CA offers no renewalInfo).
        ari_id: None,
        // As the order driver: a fresh draw at each issuance.
        renew_unit: rng.unit(),
        issued_at: now,
    })
}

struct Renewal {
    at: i64,
    /// How long after the planned renewal moment it happened (failures and backoff).
    late_by: i64,
}

#[test]
fn a_thousand_shortlived_certificates_over_sixty_days() {
    let started = std::time::Instant::now();
    let mut rng = Rng(SEED);
    let backoff = IssuanceConfig::default().retry_backoff();
    let mut recs: Vec<CertRecord> = Vec::with_capacity(CERTS);
    // Validity periods each certificate had, in order.
    let mut history: Vec<Vec<(i64, i64)>> = vec![Vec::new(); CERTS];
    // When the pending renewal of each certificate was first due (for lateness).
    let mut due_since: Vec<Option<i64>> = vec![None; CERTS];
    let mut renewals: Vec<Renewal> = Vec::new();
    let mut heap = BinaryHeap::new();
    let mut enrolled_per_hour = [0u32; (BOOT / H) as usize];
    for i in 0..CERTS {
        let enrolled = (rng.unit() * BOOT as f64) as i64;
        enrolled_per_hour[(enrolled / H) as usize] += 1;
        let rec = new_record(&testutil::host(), testutil::spec(), enrolled);
        heap.push(Reverse((enrolled, i)));
        recs.push(rec);
    }
    let (mut serial, mut failures, mut idle, mut events) = (0u64, 0u32, 0u32, 0u32);
    let mut first_issue_failures = 0u32;

    while let Some(Reverse((now, i))) = heap.pop() {
        if now >= HORIZON {
            break;
        }
        events += 1;
        let rec = &mut recs[i];
        assert_eq!(
            rec.schedule.next_action,
            Some(now),
            "one schedule entry per certificate"
        );
        if let Some(cur) = &rec.observed.current {
            assert!(now < cur.not_after, "certificate {i} acted on after expiry");
        }
        let outcome = match decide(rec, now) {
            Decision::Idle => {
                idle += 1;
                Ok(())
            }
            Decision::Issue(reason) => {
                let planned = rec.renew_time(now);
                if rec.observed.current.is_some() {
                    let (at, why) = planned.unwrap();
                    assert_eq!(reason, RenewReason::LifetimeFraction, "certificate {i}");
                    assert_eq!(why, reason);
                    due_since[i].get_or_insert(at);
                }
                serial += 1;
                match stub_ca(rec, now, serial, &mut rng) {
                    None => {
                        failures += 1;
                        if rec.observed.current.is_none() {
                            first_issue_failures += 1;
                        }
                        Err(())
                    }
                    Some(new) => {
                        if let Some(old) = rec.observed.current.take() {
                            // The window: from the planned moment — half of the lifetime
                            // left, moved earlier by the draw (up to 5 % of it: 72-80 h of
                            // age) — to the at-risk moment (a quarter of it left: 120 h).
                            let (at, _) = planned.unwrap();
                            let age = at - old.not_before;
                            assert!((72 * H..=80 * H).contains(&age), "planned at {age}s");
                            let at_risk = renewal::at_risk_at(&old.validity(), None);
                            assert_eq!(at_risk - old.not_before, 120 * H);
                            assert!(now >= at, "certificate {i} renewed before its time");
                            assert!(
                                now < at_risk,
                                "certificate {i} renewed only when at risk ({}h left)",
                                (old.not_after - now) / H
                            );
                            let late_by = now - due_since[i].take().unwrap_or(at);
                            assert!(
                                late_by == 0 || rec.schedule.attempts > 0,
                                "late without a failure"
                            );
                            renewals.push(Renewal { at: now, late_by });
                            rec.schedule.renewals += 1;
                        }
                        // What the order driver stores, then the agent installs and serves it.
                        history[i].push((new.not_before, new.not_after));
                        rec.observed.installed_serial = Some(new.serial.clone());
                        rec.observed.served_serial = Some(new.serial.clone());
                        rec.schedule.last_renewal_reason = Some(reason.to_string());
                        rec.observed.current = Some(new);
                        rec.observed.order = None;
                        rec.observed.ari = None;
                        rec.schedule.ari_retry_at = None;
                        rec.schedule.forced_by = None;
                        rec.observed.revoked_serial = None;
                        Ok(())
                    }
                }
            }
            other => panic!("certificate {i}: unexpected decision {other:?}"),
        };
        // As `finish`: a success plans the next action, a failure backs off.
        let next = match outcome {
            Ok(()) => {
                rec.schedule.attempts = 0;
                rec.schedule.quick_retries = 0;
                rec.schedule.issuer_index = 0;
                rec.schedule.last_error = None;
                planned_at(rec, now, false)
            }
            Err(()) => {
                rec.schedule.issuer_index = 0;
                let next = retry_at(&backoff, rec.schedule.attempts, rng.unit(), None, now);
                rec.schedule.attempts += 1;
                rec.schedule.last_error = Some("stub CA failure".into());
                next
            }
        };
        rec.state = state_of(rec, now);
        if rec.schedule.last_error.is_none() {
            assert_eq!(rec.state, CertState::Served, "certificate {i}");
        }
        rec.schedule.at_risk =
            rec.observed.current.is_some() && rec.at_risk_at().is_some_and(|at| now >= at);
        assert!(!rec.schedule.at_risk, "certificate {i} at risk at {now}");
        rec.schedule.next_action = Some(next.max(now));
        rec.updated = now;
        heap.push(Reverse((next.max(now), i)));
    }

    // No lapse: from its first issuance to the end, every certificate is covered by a valid
    // one — each renewal starts before its predecessor expires, and the last outlives the run.
    let min_renewals = ((HORIZON - BOOT) / (LIFETIME / 2)) as usize;
    for (i, periods) in history.iter().enumerate() {
        assert!(!periods.is_empty(), "certificate {i} never issued");
        assert!(periods[0].0 < BOOT + H, "certificate {i} first issued late");
        for w in periods.windows(2) {
            assert!(w[1].0 < w[0].1, "certificate {i} lapsed at {}", w[0].1);
            let age = w[1].0 - w[0].0;
            let threshold = lifetime_threshold(&Validity {
                not_before: w[0].0,
                not_after: w[0].1,
            }) - w[0].0;
            let jitter = (JITTER_FRACTION * LIFETIME as f64) as i64;
            assert!(
                age >= threshold - jitter - 1,
                "certificate {i} renewed at {}s of age",
                age
            );
        }
        assert!(
            periods.last().unwrap().1 > HORIZON,
            "certificate {i} lapses at the end"
        );
        assert!(
            periods.len() > min_renewals,
            "certificate {i} renewed only {} times",
            periods.len() - 1
        );
    }

    // Spread: renewals per hour, from the earliest possible renewal (72 h: half of 160 h
    // less the 5 % jitter) to the end.
    let from = LIFETIME / 2 - (JITTER_FRACTION * LIFETIME as f64) as i64;
    let hours = ((HORIZON - from) / H) as usize;
    let mut per_hour = vec![0u32; hours];
    for r in &renewals {
        assert!(r.at >= from);
        per_hour[((r.at - from) / H) as usize] += 1;
    }
    let total: u32 = per_hour.iter().sum();
    let mean = f64::from(total) / hours as f64;
    let max = *per_hour.iter().max().unwrap();
    let min = *per_hour.iter().min().unwrap();
    let late: Vec<i64> = renewals
        .iter()
        .map(|r| r.late_by)
        .filter(|&l| l > 0)
        .collect();
    println!(
        "simulated {CERTS} certificates of {}h over {} days: {events} events, {} renewals, \
         {failures} stub-CA failures ({first_issue_failures} on first issuance), {idle} idle wake-ups",
        LIFETIME / H,
        HORIZON / D,
        renewals.len()
    );
    println!(
        "renewals late because of a failure: {} (max {}s late); on time: {}",
        late.len(),
        late.iter().max().copied().unwrap_or(0),
        renewals.len() - late.len()
    );
    println!(
        "renewals per hour over hours {}..{}: min {min}, mean {mean:.2}, max {max} ({:.2}× the mean)",
        from / H,
        HORIZON / H,
        f64::from(max) / mean
    );
    println!("hours holding n renewals:");
    let width = 5;
    for lo in (0..=max).step_by(width as usize) {
        let n = per_hour
            .iter()
            .filter(|&&c| c >= lo && c < lo + width)
            .count();
        println!(
            "  {lo:>3}-{:<3} {n:>5} {}",
            lo + width - 1,
            "#".repeat(n.div_ceil(10))
        );
    }
    println!("per day (renewals, busiest hour):");
    let mut line = String::new();
    for (d, day) in per_hour.chunks(24).enumerate() {
        let sum: u32 = day.iter().sum();
        let busiest = day.iter().max().unwrap();
        line.push_str(&format!(
            "  d{:<2} {sum:>4} {busiest:>3}",
            from / D + d as i64
        ));
        if d % 6 == 5 {
            println!("{line}");
            line.clear();
        }
    }
    if !line.is_empty() {
        println!("{line}");
    }
    // The second half, once the boot wave has had a month to spread.
    let half = &per_hour[hours / 2..];
    let half_mean = f64::from(half.iter().sum::<u32>()) / half.len() as f64;
    let half_max = *half.iter().max().unwrap();
    let enrolled_peak = *enrolled_per_hour.iter().max().unwrap();
    println!(
        "last {} days: mean {half_mean:.2}/h, max {half_max} ({:.2}× the mean); \
         busiest enrollment hour: {enrolled_peak} (the busiest renewal hour holds {:.2}× that)",
        half.len() / 24,
        f64::from(half_max) / half_mean,
        f64::from(max) / f64::from(enrolled_peak)
    );
    let elapsed = started.elapsed();
    println!("simulation took {elapsed:?}");
    // The scheduler adds no bunching of its own: no hour renews many more certificates than
    // the busiest hour of enrollment brought in (the jitter only spreads the boot wave).
    assert!(
        f64::from(max) <= 1.5 * f64::from(enrolled_peak),
        "renewals bunch up: {max} in one hour, busiest enrollment hour {enrolled_peak}"
    );
    // A fleet that boots within one day keeps renewing in waves: the 5 % jitter (8 h of a
    // 160 h certificate) widens the wave by a few hours per ~76 h cycle, so the busiest hour
    // holds about 4-5 times the mean for weeks (see the per-day figures).
    assert!(
        f64::from(max) <= 5.0 * mean,
        "renewals bunch up: {max} in one hour, mean {mean:.2}"
    );
    assert!(
        f64::from(half_max) <= 4.0 * half_mean,
        "renewals still bunch up after a month: {half_max} in one hour, mean {half_mean:.2}"
    );
}
