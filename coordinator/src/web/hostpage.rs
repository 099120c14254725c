//! The pages about one thing — a host, a certificate — and the audit search and export:
//! their data gathered into the page structs.

use super::audit::{self as audit_view, AuditParams, Search, SCAN};
use super::auth::Viewer;
use super::data::{self, when};
use super::pages::{AuditPage, CertPage, HostPage};
use super::Web;
use crate::audit::{AuditError, AuditLog, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::timefmt::rfc3339;

/// Audit records on a host page.
const TIMELINE: usize = 50;
/// Records an export reads per step of a page export (the stream is a download, not a
/// page view: a larger budget than a page's).
const EXPORT_SCAN: usize = 100_000;
/// Records per chunk of a whole export.
const EXPORT_CHUNK: usize = 1_000;

pub fn host_page(
    web: &Web,
    id: &HostId,
    before: Option<u64>,
    now: i64,
) -> anyhow::Result<Option<HostPage>> {
    let Some(h) = web.store.host(id)? else {
        return Ok(None);
    };
    let connected = crate::cluster::connected_by_name(&web.sessions, web.store.as_ref());
    let node = connected.get(id);
    let mut certs = web.store.certs_for_host(id)?;
    certs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let rows = certs
        .iter()
        .map(|c| data::cert_row(c, &h.hostname, Some(now), now))
        .collect();
    // Per target of each certificate: what the agent confirmed installed and saw served.
    let mut installed = Vec::new();
    for c in &certs {
        let current = c.observed.current.as_ref();
        for t in &c.spec.targets {
            let serial = c.observed.installed_in.get(t).cloned().unwrap_or_default();
            let expires = current
                .filter(|x| x.serial == serial)
                .map(|x| when(x.not_after, now))
                .unwrap_or_else(|| "—".into());
            let served = match c.observed.served_in.get(t) {
                Some(s) if *s == serial => "yes".to_owned(),
                Some(s) => format!("an older one ({s})"),
                None if c.observed.unverified.contains(t) => {
                    "not checked (no verify address)".into()
                }
                None => "not seen yet".into(),
            };
            installed.push((
                t.clone(),
                c.spec.name.clone(),
                if serial.is_empty() {
                    "nothing yet".into()
                } else {
                    serial
                },
                expires,
                served,
            ));
        }
    }
    let q = Query {
        host_id: Some(id.to_string()),
        ..Query::default()
    };
    let page = web.audit.page(&q, before, TIMELINE, SCAN)?;
    let join = |v: &[String]| {
        if v.is_empty() {
            "—".to_owned()
        } else {
            v.join(", ")
        }
    };
    Ok(Some(HostPage {
        title: format!("Host {}", h.hostname),
        viewer: String::new(),
        now: rfc3339(now),
        connected: node
            .map(|n| format!("yes, to {n}"))
            .unwrap_or_else(|| "no".into()),
        last_seen: if node.is_some() {
            "now".into()
        } else {
            when(h.last_seen.unwrap_or(0), now)
        },
        ips: join(&h.ips.iter().map(ToString::to_string).collect::<Vec<_>>()),
        requested: join(&h.requested_names),
        labels: data::labels_text(&h),
        targets: join(&h.targets),
        modes: join(&h.challenge_modes),
        enrolled: when(h.enrolled, now),
        identity_until: when(h.identity_not_after.unwrap_or(0), now),
        rows,
        installed,
        audit: page.records.iter().map(audit_view::row).collect(),
        older: page.next_before.map(|b| format!("/hosts/{id}?before={b}")),
        h,
    }))
}

pub fn cert_page(web: &Web, id: &CertId, now: i64) -> anyhow::Result<Option<CertPage>> {
    let Some(rec) = web.store.cert(id)? else {
        return Ok(None);
    };
    let hostname = web
        .store
        .host(&rec.host_id)?
        .map(|h| h.hostname)
        .unwrap_or_else(|| "(removed host)".into());
    let chain = rec
        .observed
        .current
        .as_ref()
        .map(|c| data::chain_summary(&c.chain_pem, now))
        .unwrap_or_default();
    let renew_reason = rec
        .renew_time(now)
        .map(|(_, why)| why.to_string())
        .unwrap_or_else(|| "nothing issued yet".into());
    let ari = rec.observed.ari.as_ref().map(|a| {
        format!(
            "{} → {}; renew at {}; next check {}{}",
            rfc3339(a.start),
            rfc3339(a.end),
            rfc3339(a.renew_at),
            when(a.next_check, now),
            a.explanation_url
                .as_ref()
                .map(|u| format!("; explanation: {u}"))
                .unwrap_or_default()
        )
    });
    let c = crate::server::cert_view(rec, now);
    Ok(Some(CertPage {
        title: format!("Certificate {} on {hostname}", c.name),
        viewer: String::new(),
        now: rfc3339(now),
        hostname,
        identifiers: c.identifiers.join(", "),
        validated_by: c
            .validated_by
            .iter()
            .map(|(id, how)| format!("{id}: {how}"))
            .collect::<Vec<_>>()
            .join(", "),
        not_before: when(c.not_before_unix, now),
        not_after: when(c.not_after_unix, now),
        targets: c.targets.join(", "),
        served_at: if c.served_unix > 0 {
            format!("seen {}", when(c.served_unix, now))
        } else {
            String::new()
        },
        served_on: if c.served_on.is_empty() {
            String::new()
        } else {
            format!("on {}", c.served_on.join(", "))
        },
        renew_at: when(c.renew_at_unix, now),
        renew_reason,
        next_action: when(c.next_action_unix, now),
        ari: ari.unwrap_or_else(|| "none (the CA has no ARI, or not asked yet)".into()),
        chain,
        c,
    }))
}

fn search(web: &Web, params: &AuditParams, now: i64) -> Result<Search, Vec<String>> {
    let store = web.store.clone();
    params.search(&move || store.hosts().unwrap_or_default(), now)
}

pub fn audit_page(web: &Web, params: AuditParams, viewer: String, now: i64) -> Response {
    let mut page = AuditPage {
        title: "Audit".into(),
        viewer,
        now: rfc3339(now),
        export: format!("/audit.jsonl?{}", params.with_before(None)),
        p: params.clone(),
        errors: Vec::new(),
        summary: String::new(),
        newest: None,
        older: None,
        older_label: String::new(),
        audit: Vec::new(),
    };
    let s = match search(web, &params, now) {
        Ok(s) => s,
        Err(errors) => {
            page.errors = errors;
            return super::handlers::html(StatusCode::BAD_REQUEST, &page);
        }
    };
    match web.audit.page(&s.query, s.before, s.limit, SCAN) {
        Ok(result) => {
            page.summary = summary(&result, web.audit.len());
            // A page cut short by the scan budget (fewer records than asked) goes on
            // searching from where it stopped; a full page just shows older records.
            let searching = result.records.len() < s.limit;
            page.older = result
                .next_before
                .map(|b| format!("/audit?{}", params.with_before(Some(b))));
            page.older_label = if searching {
                "continue searching older records →"
            } else {
                "older →"
            }
            .into();
            page.newest = s
                .before
                .map(|_| format!("/audit?{}", params.with_before(None)));
            page.audit = result.records.iter().map(audit_view::row).collect();
            super::handlers::html(StatusCode::OK, &page)
        }
        Err(e) => {
            page.errors = vec![format!("the audit trail could not be read: {e}")];
            super::handlers::html(StatusCode::SERVICE_UNAVAILABLE, &page)
        }
    }
}

/// What a page holds and, when the scan budget stopped it, how far back it searched.
fn summary(result: &crate::audit::Page, trail: u64) -> String {
    let reached = match (result.next_before, result.reached) {
        (Some(_), Some((seq, time))) => format!(
            "; searched back to #{seq} ({}), older records not read yet",
            rfc3339(time)
        ),
        _ => String::new(),
    };
    match (result.records.first(), result.records.last()) {
        (Some(a), Some(b)) => format!(
            "{} record{}, #{} to #{}, newest first ({} of the trail's {trail} read{reached})",
            result.records.len(),
            if result.records.len() == 1 { "" } else { "s" },
            a.seq,
            b.seq,
            result.scanned,
        ),
        _ if result.next_before.is_some() => format!(
            "no match among the {} records read{reached}",
            result.scanned
        ),
        _ => "no matching records".into(),
    }
}

/// The matches as JSON Lines, oldest first like the CLI's `audit --json`: with `limit`,
/// the records of that audit page (the `limit` newest matches below `before`, read
/// backwards, then written oldest first); without, every match below `before`, read
/// forwards and streamed as it is read.
pub fn audit_export(web: &Web, params: AuditParams, viewer: &Viewer, now: i64) -> Response {
    let s = match search(web, &params, now) {
        Ok(s) => s,
        Err(errors) => return (StatusCode::BAD_REQUEST, errors.join("\n") + "\n").into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(8);
    let audit = web.audit.clone();
    let page_only = !params.limit.trim().is_empty();
    tracing::info!(operator = %viewer.name, filter = %params.with_before(None), "web: audit export");
    web.tasks.spawn_blocking(move || {
        let sent = if page_only {
            export_page(&audit, &s, &tx)
        } else {
            export_all(&audit, &s, &tx)
        };
        if let Err(e) = sent {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"certfleet-audit.jsonl\"",
            ),
        ],
        body,
    )
        .into_response()
}

type Chunks = tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>;

fn json_lines<'a>(records: impl Iterator<Item = &'a crate::audit::Record>) -> String {
    let mut chunk = String::new();
    for r in records {
        chunk.push_str(&serde_json::to_string(r).unwrap_or_default());
        chunk.push('\n');
    }
    chunk
}

/// The `limit` newest matches below `before` (at most [`audit_view::MAX_LIMIT`]), oldest
/// first.
fn export_page(audit: &AuditLog, s: &Search, tx: &Chunks) -> Result<(), AuditError> {
    let mut records = Vec::with_capacity(s.limit);
    let mut before = s.before;
    while records.len() < s.limit {
        let page = audit.page(&s.query, before, s.limit - records.len(), EXPORT_SCAN)?;
        records.extend(page.records);
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let _ = tx.blocking_send(Ok(json_lines(records.iter().rev()).into()));
    Ok(())
}

/// Every match below `before`, oldest first, a chunk at a time (the CLI's reading order:
/// `AuditLog::query` after a cursor).
fn export_all(audit: &AuditLog, s: &Search, tx: &Chunks) -> Result<(), AuditError> {
    let mut q = s.query.clone();
    q.before = s.before;
    q.limit = Some(EXPORT_CHUNK);
    loop {
        let records = audit.query(&q)?;
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(());
        };
        if tx
            .blocking_send(Ok(json_lines(records.iter()).into()))
            .is_err()
        {
            return Ok(()); // the browser went away
        }
        if records.len() < EXPORT_CHUNK {
            return Ok(());
        }
        q.after = Some(last);
    }
}
