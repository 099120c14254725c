//! Operator commands: talk to a running coordinator over the admin API with an operator
//! credential (`--credential DIR`, or the state directory's), and print tables or JSON.

use crate::config::Config;
use anyhow::Context;
use certfleet_proto::v1::{self as pb, admin_client::AdminClient};
use certfleet_proto::MAX_MESSAGE_BYTES;
use certfleet_shared::renewal::human_duration;
use certfleet_shared::timefmt::{relative, rfc3339};
use serde_json::{json, Value};
use tonic::transport::Channel;

mod audit;
pub mod backup;
mod cluster;
pub mod credential;
pub mod health;
mod output;
mod tables;
pub use audit::{audit, audit_verify, parse_time, AuditFilter};
pub use output::Printed;
pub use tables::table;
pub mod operators;
pub mod paging;

/// Connects to the admin API with the operator credential in `credential` (a directory
/// from `operators add --out`), or else the state directory's.
pub async fn connect(
    config: &Config,
    url: Option<&str>,
    credential: Option<&std::path::Path>,
) -> anyhow::Result<AdminClient<Channel>> {
    use certfleet_shared::clock::Clock;
    let files = credential::CredentialFiles::locate(config, credential);
    let cred = files.load(certfleet_shared::clock::SystemClock.now_unix())?;
    let tls =
        certfleet_shared::tls::fleet_client_config(&cred.ca_pem, &cred.cert_pem, &cred.key_pem)?;
    let url = url.map(str::to_owned).unwrap_or_else(|| config.local_url());
    let channel = certfleet_shared::transport::connect(&url, tls)
        .await
        .with_context(|| "is `certfleet-coordinator serve` running? (or pass --coordinator URL)")?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 * MAX_MESSAGE_BYTES))
}

pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator refused: {} ({:?})", s.message(), s.code())
}

pub async fn token_create(
    client: &mut AdminClient<Channel>,
    req: pb::CreateTokenRequest,
) -> anyhow::Result<pb::CreateTokenResponse> {
    Ok(client
        .create_token(req)
        .await
        .map_err(status_err)?
        .into_inner())
}

pub fn opt_time(unix: i64) -> Value {
    if unix == 0 {
        Value::Null
    } else {
        Value::String(rfc3339(unix))
    }
}

fn opt_str(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

pub async fn hosts(
    client: &mut AdminClient<Channel>,
    as_json: bool,
    now: i64,
) -> anyhow::Result<String> {
    let mut hosts = paging::hosts(client).await?;
    hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.host_id.cmp(&b.host_id)));
    if as_json {
        let v: Vec<Value> = hosts
            .iter()
            .map(|h| {
                json!({
                    "host_id": h.host_id, "hostname": h.hostname, "ips": h.ips, "targets": h.targets,
                    "connected": h.connected, "node": opt_str(&h.node),
                    "enrolled": rfc3339(h.enrolled_unix),
                    "last_seen": opt_time(h.last_seen_unix), "labels": h.labels,
                    "identity_serial": opt_str(&h.identity_serial),
                    "identity_not_after": opt_time(h.identity_not_after_unix),
                    "identity_rotated": opt_time(h.identity_rotated_unix),
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)?);
    }
    // Which node holds a session is worth a column only when there are several.
    let nodes: std::collections::HashSet<&str> = hosts
        .iter()
        .filter(|h| h.connected)
        .map(|h| h.node.as_str())
        .collect();
    let several_nodes = nodes.len() > 1;
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.host_id.clone(),
                h.hostname.clone(),
                if h.connected && !h.node.is_empty() && several_nodes {
                    format!("connected ({})", h.node)
                } else if h.connected {
                    "connected".into()
                } else {
                    "offline".into()
                },
                h.ips.join(","),
                h.targets.join(","),
                if h.last_seen_unix == 0 {
                    "never".into()
                } else {
                    relative(h.last_seen_unix, now)
                },
            ]
        })
        .collect();
    Ok(table(
        &["HOST", "NAME", "STATUS", "IPS", "TARGETS", "LAST SEEN"],
        &rows,
    ))
}

pub async fn certs(
    client: &mut AdminClient<Channel>,
    as_json: bool,
    now: i64,
) -> anyhow::Result<String> {
    let mut certs = paging::certs(client).await?;
    certs.sort_by(|a, b| a.host_id.cmp(&b.host_id).then(a.cert_id.cmp(&b.cert_id)));
    if as_json {
        let v: Vec<Value> = certs
            .iter()
            .map(|c| {
                json!({
                    "cert_id": c.cert_id, "host_id": c.host_id, "identifiers": c.identifiers,
                    "issuer": c.issuer, "profile": opt_str(&c.profile), "required_profile": opt_str(&c.required_profile),
                    "policy": opt_str(&c.policy), "name": c.name, "key_group": opt_str(&c.key_group), "target": c.target,
                    "targets": c.targets, "state": c.state,
                    "serial": opt_str(&c.serial), "installed_serial": opt_str(&c.installed_serial),
                    "served_serial": opt_str(&c.served_serial), "served_on": c.served_on,
                    "served_at": opt_time(c.served_unix), "verify_disabled": c.verify_disabled,
                    "validated_by": c.validated_by,
                    "not_before": opt_time(c.not_before_unix), "not_after": opt_time(c.not_after_unix),
                    "lifetime_secs": if c.not_after_unix > 0 { json!(c.not_after_unix - c.not_before_unix) } else { Value::Null },
                    "renew_at": opt_time(c.renew_at_unix),
                    "next_action": opt_time(c.next_action_unix), "next_action_unix": c.next_action_unix,
                    "next_reason": opt_str(&c.next_reason), "at_risk": c.at_risk, "renewals": c.renewals,
                    "last_renewal_reason": opt_str(&c.last_renewal_reason),
                    "ari_window": if c.ari_start_unix > 0 {
                        json!({"start": rfc3339(c.ari_start_unix), "end": rfc3339(c.ari_end_unix),
                               "start_unix": c.ari_start_unix, "end_unix": c.ari_end_unix})
                    } else { Value::Null },
                    "last_error": opt_str(&c.last_error),
                    "order_url": opt_str(&c.order_url), "updated": rfc3339(c.updated_unix),
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)?);
    }
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            let lifetime = c.not_after_unix - c.not_before_unix;
            let when = |t: i64| -> String {
                if t == 0 {
                    "-".into()
                } else if lifetime > 0 && (t - now).abs() >= 3600 {
                    // Hours for short-lived certificates, days for long ones.
                    let d = human_duration(t - now, lifetime);
                    if t >= now {
                        format!("in {d}")
                    } else {
                        format!("{} ago", d.trim_start_matches('-'))
                    }
                } else {
                    relative(t, now)
                }
            };
            vec![
                c.cert_id.clone(),
                c.host_id.clone(),
                c.identifiers.join(","),
                validated_by(&c.identifiers, &c.validated_by),
                match (c.name.is_empty(), c.key_group.is_empty()) {
                    (true, _) => "-".into(),
                    (false, true) => c.name.clone(),
                    (false, false) => format!("{} (key group {})", c.name, c.key_group),
                },
                c.targets.join(","),
                if c.at_risk {
                    format!("{} AT RISK", c.state)
                } else {
                    c.state.clone()
                },
                if c.serial.is_empty() {
                    "-".into()
                } else {
                    c.serial.clone()
                },
                on_host(&c.installed_serial, &c.serial, false),
                on_host(&c.served_serial, &c.serial, c.verify_disabled),
                if c.not_after_unix == 0 {
                    "-".into()
                } else {
                    format!("{} ({})", rfc3339(c.not_after_unix), when(c.not_after_unix))
                },
                if c.next_action_unix == 0 {
                    "-".into()
                } else {
                    format!("{} ({})", when(c.next_action_unix), c.next_reason)
                },
                if c.last_error.is_empty() {
                    "-".into()
                } else {
                    c.last_error.clone()
                },
            ]
        })
        .collect();
    Ok(table(
        &[
            "CERT",
            "HOST",
            "IDENTIFIERS",
            "VALIDATED BY",
            "CERT NAME",
            "TARGETS",
            "STATE",
            "SERIAL (ISSUED)",
            "INSTALLED",
            "SERVED",
            "NOT AFTER",
            "NEXT ACTION",
            "LAST ERROR",
        ],
        &rows,
    ))
}

/// The challenge type that validated the current certificate's identifiers: one type
/// when every identifier went the same way, else `identifier=type` for each (in the
/// identifiers' order), "-" before the first certificate (or for one issued before the
/// type was recorded).
fn validated_by(identifiers: &[String], by: &std::collections::HashMap<String, String>) -> String {
    let types: Vec<&str> = identifiers
        .iter()
        .map(|id| by.get(id).map_or("?", String::as_str))
        .collect();
    if by.is_empty() || types.is_empty() {
        return "-".into();
    }
    if types.iter().all(|t| *t == types[0]) {
        return types[0].to_owned();
    }
    identifiers
        .iter()
        .zip(&types)
        .map(|(id, t)| format!("{id}={t}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A host-side serial against the issued one: "yes" when they match, the other serial
/// (e.g. the previous certificate after a rollback) when not, "-" when none.
fn on_host(seen: &str, issued: &str, unchecked: bool) -> String {
    if unchecked {
        "not checked".into()
    } else if seen.is_empty() {
        "-".into()
    } else if seen == issued {
        "yes".into()
    } else {
        format!("no ({seen})")
    }
}

pub async fn renew(
    client: &mut AdminClient<Channel>,
    cert_ids: Vec<String>,
    host: Option<String>,
) -> anyhow::Result<Vec<String>> {
    Ok(client
        .renew_certs(pb::RenewCertsRequest {
            cert_ids,
            host_id: host.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .cert_ids)
}

pub async fn tokens(
    client: &mut AdminClient<Channel>,
    as_json: bool,
    now: i64,
) -> anyhow::Result<String> {
    let tokens = paging::tokens(client).await?;
    let state = |t: &pb::TokenView| -> &'static str {
        if t.revoked {
            "revoked"
        } else if t.uses_left == 0 {
            "used"
        } else if t.expires_unix <= now {
            "expired"
        } else {
            "usable"
        }
    };
    let from = |t: &pb::TokenView| -> String {
        if t.cidrs.is_empty() {
            "any".into()
        } else {
            t.cidrs.join(",")
        }
    };
    let labels = |t: &pb::TokenView| -> String {
        if !t.labels_fixed {
            "agent's".into()
        } else if t.labels.is_empty() {
            "none".into()
        } else {
            let mut l: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            l.sort();
            l.join(",")
        }
    };
    if as_json {
        let v: Vec<Value> = tokens
            .iter()
            .map(|t| {
                json!({"id": t.id, "state": state(t), "created": rfc3339(t.created_unix), "expires": rfc3339(t.expires_unix),
                       "uses_left": t.uses_left, "used_by": t.used_by, "revoked": t.revoked,
                       "cidrs": t.cidrs, "labels": t.labels_fixed.then(|| t.labels.iter().collect::<std::collections::BTreeMap<_, _>>())})
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                state(t).into(),
                relative(t.created_unix, now),
                format!(
                    "{} ({})",
                    rfc3339(t.expires_unix),
                    relative(t.expires_unix, now)
                ),
                t.uses_left.to_string(),
                from(t),
                labels(t),
                if t.used_by.is_empty() {
                    "-".into()
                } else {
                    t.used_by.join(",")
                },
            ]
        })
        .collect();
    Ok(table(
        &[
            "TOKEN ID",
            "STATE",
            "CREATED",
            "EXPIRES",
            "USES LEFT",
            "FROM",
            "LABELS",
            "USED BY",
        ],
        &rows,
    ))
}

pub async fn cert_revoke(
    client: &mut AdminClient<Channel>,
    cert_id: String,
    reason: String,
) -> anyhow::Result<String> {
    Ok(client
        .revoke_cert(pb::RevokeCertRequest { cert_id, reason })
        .await
        .map_err(status_err)?
        .into_inner()
        .serial)
}

pub async fn host_remove(
    client: &mut AdminClient<Channel>,
    host_id: String,
    keep: bool,
) -> anyhow::Result<Vec<String>> {
    Ok(client
        .remove_host(pb::RemoveHostRequest {
            host_id,
            keep_certificates: keep,
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .revoked_serials)
}

pub async fn host_release_ip(
    client: &mut AdminClient<Channel>,
    host_id: String,
    ip: String,
) -> anyhow::Result<Vec<String>> {
    Ok(client
        .release_ip(pb::ReleaseIpRequest { host_id, ip })
        .await
        .map_err(status_err)?
        .into_inner()
        .rechecked_hosts)
}

pub async fn token_revoke(client: &mut AdminClient<Channel>, id: String) -> anyhow::Result<String> {
    Ok(client
        .revoke_token(pb::RevokeTokenRequest { id })
        .await
        .map_err(status_err)?
        .into_inner()
        .id)
}

/// One screen: hosts, certificates by state, the soonest expiry and action, what is wrong;
/// and the exit code for it ([`health`]).
pub async fn status(
    client: &mut AdminClient<Channel>,
    as_json: bool,
    now: i64,
) -> anyhow::Result<(String, u8)> {
    let hosts = paging::hosts(client).await?;
    let certs = paging::certs(client).await?;
    // A coordinator older than the call has no cluster view: left out, not an error.
    let cluster = match client.cluster_status(pb::ClusterStatusRequest {}).await {
        Ok(r) => Some(r.into_inner()),
        Err(s) if s.code() == tonic::Code::Unimplemented => None,
        Err(s) => return Err(status_err(s)),
    };
    // Absent from coordinators before operators: then not shown.
    let creds = client
        .get_credentials(pb::GetCredentialsRequest {})
        .await
        .ok()
        .map(|r| r.into_inner());
    let connected = hosts.iter().filter(|h| h.connected).count();
    let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &certs {
        *by_state.entry(c.state.as_str()).or_default() += 1;
    }
    let at_risk: Vec<&pb::CertView> = certs.iter().filter(|c| c.at_risk).collect();
    let failing: Vec<&pb::CertView> = certs.iter().filter(|c| !c.last_error.is_empty()).collect();
    let problems = health::problems(&certs, cluster.as_ref(), now);
    let code = health::exit_code(&problems);
    let soonest_expiry = certs
        .iter()
        .filter(|c| c.not_after_unix > 0)
        .min_by_key(|c| c.not_after_unix);
    let soonest_action = certs
        .iter()
        .filter(|c| c.next_action_unix > 0)
        .min_by_key(|c| c.next_action_unix);
    if as_json {
        let brief = |c: &pb::CertView| {
            json!({"cert_id": c.cert_id, "host_id": c.host_id, "state": c.state,
            "not_after": opt_time(c.not_after_unix), "next_action": opt_time(c.next_action_unix),
            "next_reason": opt_str(&c.next_reason), "last_error": opt_str(&c.last_error)})
        };
        let v = json!({
            "hosts": {"total": hosts.len(), "connected": connected},
            "certificates": {"total": certs.len(), "by_state": by_state, "at_risk": at_risk.len()},
            "soonest_expiry": soonest_expiry.map(brief),
            "soonest_action": soonest_action.map(brief),
            "at_risk": at_risk.iter().map(|c| brief(c)).collect::<Vec<_>>(),
            "failing": failing.iter().map(|c| brief(c)).collect::<Vec<_>>(),
            "store": cluster.as_ref().map(|c| json!({"backend": c.backend, "ok": c.store_ok,
                "latency_ms": c.store_latency_ms, "error": opt_str(&c.store_error)})),
            "nodes": cluster.as_ref().map(|c| c.nodes.iter().map(|n| json!({"node": n.node,
                "name": n.name, "alive": n.alive, "this_node": n.this_node,
                "last_beat": opt_time(n.beat_unix), "started": opt_time(n.started_unix),
                "sessions": n.sessions, "leases": n.leases})).collect::<Vec<_>>()),
            "leases": cluster.as_ref().map(|c| c.leases.iter().map(|l| json!({"cert_id": l.cert_id,
                "holder": l.holder, "until": opt_time(l.until_unix)})).collect::<Vec<_>>()),
            "server_certificate": creds.as_ref().map(|c| json!({"serial": c.server_serial,
                "not_before": opt_time(c.server_not_before_unix), "not_after": opt_time(c.server_not_after_unix)})),
            "fleet_ca_not_after": creds.as_ref().map(|c| opt_time(c.fleet_ca_not_after_unix)),
            "operator": creds.as_ref().and_then(|c| c.caller.as_ref()).map(|o| json!({"name": o.name,
                "role": o.role, "serial": o.serial, "not_after": opt_time(o.not_after_unix)})),
            "healthy": problems.is_empty(),
            "exit_code": code,
            "problems": problems.iter().map(health::Problem::to_json).collect::<Vec<_>>(),
        });
        return Ok((serde_json::to_string_pretty(&v)? + "\n", code));
    }
    let mut out = String::new();
    if let Some(c) = &cluster {
        out.push_str(&cluster::lines(c, now));
    }
    if let Some(c) = &creds {
        out.push_str(&format!(
            "server cert   serial {} until {} (renews itself at two thirds)\n",
            c.server_serial,
            rfc3339(c.server_not_after_unix)
        ));
        if let Some(o) = &c.caller {
            out.push_str(&format!(
                "you           operator {} ({}), credential until {} ({})\n",
                o.name,
                o.role,
                rfc3339(o.not_after_unix),
                relative(o.not_after_unix, now)
            ));
        }
    }
    out.push_str(&format!(
        "hosts         {} ({} connected, {} offline)\n",
        hosts.len(),
        connected,
        hosts.len() - connected
    ));
    let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!(
        "certificates  {} ({})\n",
        certs.len(),
        if states.is_empty() {
            "none".into()
        } else {
            states.join(", ")
        }
    ));
    match soonest_expiry {
        Some(c) => out.push_str(&format!(
            "soonest expiry {} on {} at {} ({})\n",
            c.cert_id,
            c.host_id,
            rfc3339(c.not_after_unix),
            relative(c.not_after_unix, now)
        )),
        None => out.push_str("soonest expiry -\n"),
    }
    if let Some(c) = soonest_action {
        out.push_str(&format!(
            "next action   {} {} ({})\n",
            c.cert_id,
            relative(c.next_action_unix, now),
            c.next_reason
        ));
    }
    out.push_str(&format!(
        "at risk       {}\n",
        if at_risk.is_empty() {
            "none".into()
        } else {
            at_risk.len().to_string()
        }
    ));
    for c in &at_risk {
        out.push_str(&format!(
            "  AT RISK {} on {} expires {}: {}\n",
            c.cert_id,
            c.host_id,
            relative(c.not_after_unix, now),
            c.last_error
        ));
    }
    if !failing.is_empty() {
        out.push_str(&format!("failing       {}\n", failing.len()));
        for c in &failing {
            out.push_str(&format!(
                "  {} on {}: {}\n",
                c.cert_id, c.host_id, c.last_error
            ));
        }
    }
    if problems.is_empty() {
        out.push_str("health        ok\n");
    } else {
        out.push_str(&format!(
            "health        {} problem(s) (exit {code})\n",
            problems.len()
        ));
        for p in &problems {
            out.push_str(&format!("  {}\n", p.line()));
        }
    }
    Ok((out, code))
}

#[cfg(test)]
mod tests {
    #[test]
    fn validated_by_is_one_type_or_one_per_identifier() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let by = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let two = ids(&["a.example.test", "192.0.2.1"]);
        assert_eq!(super::validated_by(&two, &by(&[])), "-");
        assert_eq!(
            super::validated_by(
                &two,
                &by(&[("a.example.test", "http-01"), ("192.0.2.1", "http-01")])
            ),
            "http-01"
        );
        assert_eq!(
            super::validated_by(
                &two,
                &by(&[("a.example.test", "tls-alpn-01"), ("192.0.2.1", "http-01")])
            ),
            "a.example.test=tls-alpn-01,192.0.2.1=http-01"
        );
        assert_eq!(
            super::validated_by(&two, &by(&[("a.example.test", "dns-01")])),
            "a.example.test=dns-01,192.0.2.1=?"
        );
    }
}
