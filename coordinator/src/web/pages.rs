//! The pages' templates (askama: compiled in, checked at build time, every `{{ value }}`
//! HTML-escaped; nothing is marked safe). One struct per page; `templates/web/*.html`.

use super::audit::{AuditParams, AuditRow};
use super::data::{CertRow, ChainEntry, HostRow, Overview};
use crate::model::HostRecord;
use askama::Template;
use certfleet_proto::v1 as pb;

#[derive(Template)]
#[template(path = "web/overview.html")]
pub struct OverviewPage {
    pub title: String,
    pub viewer: String,
    pub now: String,
    /// When the counts and rows were read ([`super::data::as_of`]).
    pub as_of: String,
    pub o: Overview,
}

#[derive(Template)]
#[template(path = "web/hosts.html")]
pub struct HostsPage {
    pub title: String,
    pub viewer: String,
    pub now: String,
    /// When the counts and rows were read ([`super::data::as_of`]).
    pub as_of: String,
    pub filter: String,
    pub rows: Vec<HostRow>,
    pub range: String,
    pub prev: Option<String>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "web/certs.html")]
pub struct CertsPage {
    pub title: String,
    pub viewer: String,
    pub now: String,
    /// When the counts and rows were read ([`super::data::as_of`]).
    pub as_of: String,
    pub state: String,
    pub filter: String,
    pub rows: Vec<CertRow>,
    pub range: String,
    pub prev: Option<String>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "web/host.html")]
pub struct HostPage {
    pub title: String,
    pub viewer: String,
    pub now: String,
    pub h: HostRecord,
    pub connected: String,
    pub last_seen: String,
    pub ips: String,
    pub requested: String,
    pub labels: String,
    pub targets: String,
    pub modes: String,
    pub enrolled: String,
    pub identity_until: String,
    pub rows: Vec<CertRow>,
    /// (target, certificate name, installed serial, expires, served)
    pub installed: Vec<(String, String, String, String, String)>,
    pub audit: Vec<AuditRow>,
    pub older: Option<String>,
}

#[derive(Template)]
#[template(path = "web/cert.html")]
pub struct CertPage {
    pub title: String,
    pub viewer: String,
    pub now: String,
    pub c: pb::CertView,
    pub hostname: String,
    pub identifiers: String,
    pub validated_by: String,
    pub not_before: String,
    pub not_after: String,
    pub targets: String,
    pub served_at: String,
    pub served_on: String,
    pub renew_at: String,
    pub renew_reason: String,
    pub next_action: String,
    pub ari: String,
    pub chain: Vec<ChainEntry>,
}

#[derive(Template)]
#[template(path = "web/audit.html")]
pub struct AuditPage {
    pub title: String,
    pub viewer: String,
    pub now: String,
    pub p: AuditParams,
    pub errors: Vec<String>,
    pub summary: String,
    pub newest: Option<String>,
    pub older: Option<String>,
    /// "older →", or "continue searching older records →" after a page the scan budget
    /// cut short.
    pub older_label: String,
    pub export: String,
    pub audit: Vec<AuditRow>,
}

/// 401, 404, 400 and error pages: a title, lines of text, a list of reasons.
#[derive(Template)]
#[template(path = "web/message.html")]
pub struct MessagePage {
    pub title: String,
    pub viewer: String,
    pub now: String,
    pub lines: Vec<String>,
    pub reasons: Vec<String>,
}
