//! What `status` counts as needing attention, and so its exit code (for cron jobs and
//! monitoring scripts):
//!
//! - [`EXIT_OK`] (0): nothing below.
//! - 1: `status` could not tell — the coordinator unreachable, the call refused, a bad
//!   config or credential (every command's error exit).
//! - 2: a usage error (clap's, as for every command).
//! - [`EXIT_ATTENTION`] (3): at least one [`Problem`]: a certificate at risk, expired,
//!   failing (state `failed`, or a last error), or held back (`conflict`, `refused`); a
//!   coordinator node dead (no heartbeat for 15 s, not stopped cleanly); the store
//!   unreachable. 3, not 2, because clap already exits 2 on a usage error, and it is the
//!   code `audit verify` uses for a broken chain: the command worked and found trouble.

use certfleet_proto::v1 as pb;
use certfleet_shared::timefmt::relative;
use serde_json::{json, Value};

pub const EXIT_OK: u8 = 0;
pub const EXIT_ATTENTION: u8 = 3;

/// One thing `status` reports as wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `certificate_at_risk`, `certificate_expired`, `certificate_failing`,
    /// `certificate_blocked`, `node_dead`, `store_unreachable`.
    pub kind: &'static str,
    /// The certificate, node or store it is about.
    pub subject: String,
    /// The host (certificates only).
    pub host_id: Option<String>,
    pub detail: String,
}

impl Problem {
    pub fn to_json(&self) -> Value {
        json!({"kind": self.kind, "subject": self.subject, "host_id": self.host_id,
               "detail": self.detail})
    }

    /// One line for the text output.
    pub fn line(&self) -> String {
        match &self.host_id {
            Some(h) => format!("{} {} on {}: {}", self.kind, self.subject, h, self.detail),
            None => format!("{} {}: {}", self.kind, self.subject, self.detail),
        }
    }
}

/// Every problem in what `status` read, certificates first (in the order given), then
/// nodes, then the store. A certificate has at most one: expired, else at risk, else
/// blocked, else failing.
pub fn problems(
    certs: &[pb::CertView],
    cluster: Option<&pb::ClusterStatusResponse>,
    now: i64,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for c in certs {
        let err = if c.last_error.is_empty() {
            String::new()
        } else {
            format!(": {}", c.last_error)
        };
        let (kind, detail) = if c.not_after_unix > 0 && c.not_after_unix <= now {
            (
                "certificate_expired",
                format!("expired {}{err}", relative(c.not_after_unix, now)),
            )
        } else if c.at_risk {
            (
                "certificate_at_risk",
                format!(
                    "below the safety margin, expires {}{err}",
                    relative(c.not_after_unix, now)
                ),
            )
        } else if c.state == "conflict" || c.state == "refused" {
            ("certificate_blocked", format!("{}{err}", c.state))
        } else if c.state == "failed" || !c.last_error.is_empty() {
            ("certificate_failing", format!("{}{err}", c.state))
        } else {
            continue;
        };
        out.push(Problem {
            kind,
            subject: format!("{} ({})", c.cert_id, c.identifiers.join(",")),
            host_id: Some(c.host_id.clone()),
            detail,
        });
    }
    if let Some(cl) = cluster {
        for n in cl.nodes.iter().filter(|n| !n.alive) {
            out.push(Problem {
                kind: "node_dead",
                subject: format!("{} {}", n.name, n.node),
                host_id: None,
                detail: format!("last heartbeat {}", relative(n.beat_unix, now)),
            });
        }
        if !cl.store_ok {
            out.push(Problem {
                kind: "store_unreachable",
                subject: cl.backend.clone(),
                host_id: None,
                detail: cl.store_error.clone(),
            });
        }
    }
    out
}

/// The exit code for `problems`.
pub fn exit_code(problems: &[Problem]) -> u8 {
    if problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_ATTENTION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(id: &str, state: &str) -> pb::CertView {
        pb::CertView {
            cert_id: id.into(),
            host_id: "h-1".into(),
            identifiers: vec!["192.0.2.1".into()],
            state: state.into(),
            not_after_unix: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_fleet_exits_zero() {
        let certs = [cert("c-1", "installed"), cert("c-2", "pending")];
        let cluster = pb::ClusterStatusResponse {
            store_ok: true,
            nodes: vec![pb::NodeView {
                alive: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = problems(&certs, Some(&cluster), 1_000);
        assert_eq!(p, vec![]);
        assert_eq!(exit_code(&p), 0);
        assert_eq!(exit_code(&problems(&[], None, 1_000)), 0);
    }

    #[test]
    fn each_kind_of_trouble_is_one_problem_and_exit_three() {
        let mut at_risk = cert("c-risk", "installed");
        at_risk.at_risk = true;
        let mut expired = cert("c-old", "installed");
        expired.not_after_unix = 500;
        expired.at_risk = true;
        let mut failing = cert("c-err", "installed");
        failing.last_error = "served check: wrong serial".into();
        let certs = [
            at_risk,
            expired,
            failing,
            cert("c-failed", "failed"),
            cert("c-conflict", "conflict"),
            cert("c-refused", "refused"),
            cert("c-fine", "served"),
        ];
        let cluster = pb::ClusterStatusResponse {
            backend: "postgres".into(),
            store_ok: false,
            store_error: "connection refused".into(),
            nodes: vec![
                pb::NodeView {
                    name: "n-2".into(),
                    alive: false,
                    beat_unix: 900,
                    ..Default::default()
                },
                pb::NodeView {
                    alive: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let p = problems(&certs, Some(&cluster), 1_000);
        let kinds: Vec<&str> = p.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                "certificate_at_risk",
                "certificate_expired",
                "certificate_failing",
                "certificate_failing",
                "certificate_blocked",
                "certificate_blocked",
                "node_dead",
                "store_unreachable"
            ]
        );
        assert!(p[2].detail.contains("wrong serial"), "{:?}", p[2]);
        assert!(
            p[0].line().contains("c-risk (192.0.2.1) on h-1"),
            "{}",
            p[0].line()
        );
        assert_eq!(exit_code(&p), EXIT_ATTENTION);
        assert_eq!(p[7].to_json()["detail"], "connection refused");
    }
}
