//! `audit` (the trail as a table or JSON Lines) and `audit verify`.

use super::{opt_str, rfc3339, status_err, table, Printed};
use certfleet_proto::v1::{self as pb, admin_client::AdminClient};
use serde_json::{json, Value};
use tonic::transport::Channel;

/// Audit filters from the command line.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub host: Option<String>,
    pub network: Option<String>,
    pub name: Option<String>,
    pub serial: Option<String>,
    pub kinds: Vec<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: u32,
}

/// Parses "2026-11-22T10:00:00Z" or a duration back from now ("24h", "7d").
pub fn parse_time(s: &str, now: i64) -> anyhow::Result<i64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let secs = certfleet_shared::timefmt::parse_duration_secs(s).map_err(|_| {
        anyhow::anyhow!("{s:?} is neither an RFC 3339 time nor a duration like 24h")
    })?;
    Ok(now - secs as i64)
}

pub async fn audit(
    client: &mut AdminClient<Channel>,
    f: AuditFilter,
    as_json: bool,
) -> anyhow::Result<String> {
    let q = pb::QueryAuditRequest {
        host_id: f.host.unwrap_or_default(),
        network: f.network.unwrap_or_default(),
        name: f.name.unwrap_or_default(),
        serial: f.serial.unwrap_or_default(),
        kinds: f.kinds,
        since_unix: f.since.unwrap_or(0),
        until_unix: f.until.unwrap_or(0),
        ..Default::default()
    };
    let (records_json, truncated) = super::paging::audit(client, q, f.limit as usize).await?;
    let resp = pb::QueryAuditResponse {
        records_json,
        truncated,
        next_page_token: String::new(),
    };
    let mut out = String::new();
    if as_json {
        for r in &resp.records_json {
            out.push_str(r);
            out.push('\n');
        }
    } else {
        let rows: Vec<Vec<String>> = resp
            .records_json
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(r).ok())
            .map(|v| {
                let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
                let ids = v
                    .get("identifiers")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|x| !x.is_empty())
                    .unwrap_or_else(|| "-".into());
                let details = v.get("details").map(|d| d.to_string()).unwrap_or_default();
                vec![
                    v.get("seq").map(|x| x.to_string()).unwrap_or_default(),
                    v.get("time")
                        .and_then(Value::as_i64)
                        .map(rfc3339)
                        .unwrap_or_default(),
                    s("kind"),
                    s("actor"),
                    s("host_id"),
                    ids,
                    s("serial"),
                    details.chars().take(120).collect(),
                ]
            })
            .collect();
        out = table(
            &[
                "SEQ",
                "TIME",
                "KIND",
                "ACTOR",
                "HOST",
                "IDENTIFIERS",
                "SERIAL",
                "DETAILS",
            ],
            &rows,
        );
    }
    if resp.truncated {
        eprintln!("(more records matched; narrow the filter or raise --limit)");
    }
    Ok(out)
}

/// `audit verify`: whether the chain is intact, and the report.
pub async fn audit_verify(client: &mut AdminClient<Channel>) -> anyhow::Result<(bool, Printed)> {
    let v = client
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    let text = if v.intact {
        format!("audit chain intact: {} records", v.records)
    } else {
        format!(
            "audit chain BROKEN at record {}: {} ({} records)",
            v.broken_seq, v.reason, v.records
        )
    };
    let json = json!({"intact": v.intact, "records": v.records,
        "broken_seq": if v.intact { Value::Null } else { json!(v.broken_seq) },
        "reason": opt_str(&v.reason)});
    Ok((v.intact, Printed::new(text, json)))
}
