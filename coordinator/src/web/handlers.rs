//! The routes. Every page handler runs its store reads off the async threads
//! (`spawn_blocking`: the PostgreSQL bridge blocks) and starts with the access decision
//! ([`auth::decide`]); without an operator identity the answer is the 401 page, which says
//! how to log in.

use super::audit::AuditParams;
use super::auth::{self, Viewer};
use super::data::{self, DEFAULT_PAGE};
use super::pages::*;
use super::{query_string, security_headers, PeerCert, Web};
use crate::audit::{Entry, Kind};
use crate::operators::{self, AdminRpc};
use askama::Template;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use certfleet_shared::ids::{CertId, HostId};
use certfleet_shared::timefmt::rfc3339;
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

const CSS: &str = include_str!("style.css");

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/hosts", get(hosts))
        .route("/hosts/{id}", get(host))
        .route("/certs", get(certs))
        .route("/certs/{id}", get(cert))
        .route("/audit", get(audit))
        .route("/audit.jsonl", get(audit_export))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/style.css", get(style))
        .fallback(not_found)
        .layer(axum::middleware::map_response(headers))
        .with_state(web)
}

async fn headers(resp: Response) -> Response {
    security_headers(resp)
}

/// What a request brings to the access decision.
#[derive(Debug, Clone, Default)]
pub struct Presented {
    pub cert: PeerCert,
    pub cookie: Option<String>,
}

/// The session cookie's value in a `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == auth::COOKIE)
        .map(|(_, v)| v.to_owned())
}

impl<S: Send + Sync> FromRequestParts<S> for Presented {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Presented {
            cert: parts
                .extensions
                .get::<PeerCert>()
                .cloned()
                .unwrap_or_default(),
            cookie: session_cookie(&parts.headers),
        })
    }
}

impl Web {
    /// The access decision for one request.
    pub fn authenticate(&self, p: &Presented, now: i64) -> Result<Viewer, Vec<String>> {
        let store = self.store.as_ref();
        let certificate = match &p.cert.0 {
            Some(der) => match operators::authorize(Some(der), store, now, AdminRpc::ListHosts) {
                Ok(v) => Some(v.map(|op| op.record)),
                Err(e) => return Err(vec![format!("the store could not be read: {e}")]),
            },
            None => None,
        };
        let session = match p
            .cookie
            .as_deref()
            .and_then(|c| self.logins.operator(c, now))
        {
            Some(name) => match store.operator(&name) {
                Ok(rec) => Some((name, rec)),
                Err(e) => return Err(vec![format!("the store could not be read: {e}")]),
            },
            None => None,
        };
        auth::decide(certificate, session, now)
    }
}

pub(super) fn html<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "web: a page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page did not render; see the coordinator's log",
            )
                .into_response()
        }
    }
}

fn message(
    status: StatusCode,
    title: &str,
    viewer: &str,
    lines: Vec<String>,
    reasons: Vec<String>,
    now: i64,
) -> Response {
    html(
        status,
        &MessagePage {
            title: title.into(),
            viewer: viewer.into(),
            now: rfc3339(now),
            lines,
            reasons,
        },
    )
}

/// The 401 page: how to log in, and why this request was not let in.
fn unauthorized(reasons: Vec<String>, now: i64) -> Response {
    message(
        StatusCode::UNAUTHORIZED,
        "Log in to see the fleet",
        "",
        vec![
            "This view is for certfleet operators. Either:".into(),
            "• open a login link: on the coordinator, run `certfleet-coordinator web login --operator NAME` and open the link it prints (it works once, for 10 minutes); or".into(),
            "• present your operator credential as a client certificate: `certfleet-coordinator operators add NAME --role viewer --out DIR --p12` writes DIR/operator.p12 (its password in DIR/operator.p12.password) to import into the browser.".into(),
        ],
        reasons,
        now,
    )
}

fn store_error(e: impl std::fmt::Display, viewer: &Viewer, now: i64) -> Response {
    tracing::error!(error = %e, "web: store read failed");
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "The store could not be read",
        &who(viewer),
        vec![
            format!("{e}"),
            "Try again; the coordinator's log has more.".into(),
        ],
        vec![],
        now,
    )
}

fn who(v: &Viewer) -> String {
    format!("{} ({}, {})", v.name, v.role, v.via)
}

/// Runs `page` off the async threads once the request is let in.
async fn guarded<F>(web: Arc<Web>, p: Presented, page: F) -> Response
where
    F: FnOnce(&Web, &Viewer, i64) -> Response + Send + 'static,
{
    let run = tokio::task::spawn_blocking(move || {
        let now = web.clock.now_unix();
        match web.authenticate(&p, now) {
            Ok(v) => page(&web, &v, now),
            Err(reasons) => unauthorized(reasons, now),
        }
    });
    run.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "web: a page handler failed");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListParams {
    q: String,
    state: String,
    offset: String,
    limit: String,
}

impl ListParams {
    fn offset(&self) -> usize {
        self.offset.trim().parse().unwrap_or(0)
    }
    fn limit(&self) -> usize {
        self.limit.trim().parse().unwrap_or(DEFAULT_PAGE)
    }
    fn link(&self, path: &str, offset: Option<usize>, limit: usize) -> Option<String> {
        offset.map(|o| {
            let (o, l) = (o.to_string(), limit.to_string());
            format!(
                "{path}?{}",
                query_string(&[
                    ("q", &self.q),
                    ("state", &self.state),
                    ("offset", &o),
                    ("limit", &l)
                ])
            )
        })
    }
}

async fn overview(State(web): State<Arc<Web>>, p: Presented) -> Response {
    guarded(web, p, |web, v, now| match web.fleet.get() {
        Ok(snap) => html(
            StatusCode::OK,
            &OverviewPage {
                title: "Fleet overview".into(),
                viewer: who(v),
                now: rfc3339(now),
                as_of: data::as_of(&snap, now),
                o: data::overview(&snap, now),
            },
        ),
        Err(e) => store_error(e, v, now),
    })
    .await
}

async fn hosts(State(web): State<Arc<Web>>, p: Presented, Query(q): Query<ListParams>) -> Response {
    guarded(web, p, move |web, v, now| {
        let snap = match web.fleet.get() {
            Ok(s) => s,
            Err(e) => return store_error(e, v, now),
        };
        let page = data::host_list(&snap, &q.q, q.offset(), q.limit(), now);
        html(
            StatusCode::OK,
            &HostsPage {
                title: "Hosts".into(),
                viewer: who(v),
                now: rfc3339(now),
                as_of: data::as_of(&snap, now),
                filter: q.q.clone(),
                range: page.range(),
                prev: q.link("/hosts", page.prev(), page.limit),
                next: q.link("/hosts", page.next(), page.limit),
                rows: page.rows,
            },
        )
    })
    .await
}

async fn certs(State(web): State<Arc<Web>>, p: Presented, Query(q): Query<ListParams>) -> Response {
    guarded(web, p, move |web, v, now| {
        let snap = match web.fleet.get() {
            Ok(s) => s,
            Err(e) => return store_error(e, v, now),
        };
        let state = q.state.trim().to_ascii_lowercase();
        let page = data::cert_list(&snap, &state, &q.q, q.offset(), q.limit(), now);
        html(
            StatusCode::OK,
            &CertsPage {
                title: if state.is_empty() {
                    "Certificates".into()
                } else {
                    format!("Certificates: {state}")
                },
                viewer: who(v),
                now: rfc3339(now),
                as_of: data::as_of(&snap, now),
                state,
                filter: q.q.clone(),
                range: page.range(),
                prev: q.link("/certs", page.prev(), page.limit),
                next: q.link("/certs", page.next(), page.limit),
                rows: page.rows,
            },
        )
    })
    .await
}

fn not_found_page(v: &Viewer, what: &str, now: i64) -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        &who(v),
        vec![what.to_owned()],
        vec![],
        now,
    )
}

async fn host(
    State(web): State<Arc<Web>>,
    p: Presented,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    guarded(web, p, move |web, v, now| {
        let Ok(id) = HostId::parse(&id) else {
            return not_found_page(v, "No such host: the address names no host id.", now);
        };
        let before = q.get("before").and_then(|b| b.parse::<u64>().ok());
        match super::hostpage::host_page(web, &id, before, now) {
            Ok(Some(mut page)) => {
                page.viewer = who(v);
                html(StatusCode::OK, &page)
            }
            Ok(None) => not_found_page(
                v,
                &format!("No host {id} (removed, or never enrolled)."),
                now,
            ),
            Err(e) => store_error(e, v, now),
        }
    })
    .await
}

async fn cert(State(web): State<Arc<Web>>, p: Presented, Path(id): Path<String>) -> Response {
    guarded(web, p, move |web, v, now| {
        let Ok(id) = CertId::parse(&id) else {
            return not_found_page(
                v,
                "No such certificate: the address names no certificate id.",
                now,
            );
        };
        match super::hostpage::cert_page(web, &id, now) {
            Ok(Some(mut page)) => {
                page.viewer = who(v);
                html(StatusCode::OK, &page)
            }
            Ok(None) => not_found_page(v, &format!("No certificate {id}."), now),
            Err(e) => store_error(e, v, now),
        }
    })
    .await
}

async fn audit(
    State(web): State<Arc<Web>>,
    p: Presented,
    Query(params): Query<AuditParams>,
) -> Response {
    guarded(web, p, move |web, v, now| {
        super::hostpage::audit_page(web, params, who(v), now)
    })
    .await
}

async fn audit_export(
    State(web): State<Arc<Web>>,
    p: Presented,
    Query(params): Query<AuditParams>,
) -> Response {
    guarded(web, p, move |web, v, now| {
        super::hostpage::audit_export(web, params, v, now)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginParams {
    token: String,
}

/// A login link: redeemed once, a session cookie bound to its operator, and a redirect to
/// the overview (the token leaves the address bar).
async fn login(State(web): State<Arc<Web>>, Query(q): Query<LoginParams>) -> Response {
    let run = tokio::task::spawn_blocking(move || {
        let now = web.clock.now_unix();
        let name = match auth::redeem_login(&web.dir, &q.token, now) {
            Ok(name) => name,
            Err(refusal) => return unauthorized(vec![refusal.to_string()], now),
        };
        let record = match web.store.operator(&name) {
            Ok(r) => r,
            Err(e) => return unauthorized(vec![format!("the store could not be read: {e}")], now),
        };
        let viewer = match auth::decide(None, Some((name.clone(), record)), now) {
            Ok(v) => v,
            Err(reasons) => return unauthorized(reasons, now),
        };
        let secs = web.logins.lifetime_secs;
        if let Err(e) = web.audit.append(
            Kind::WebLogin,
            now,
            Entry::by(format!("operator:{}", viewer.name)).detail("session_secs", secs),
        ) {
            tracing::error!(error = %e, "web: login not audited; refused");
            return unauthorized(
                vec!["the login could not be audited; try again".into()],
                now,
            );
        }
        let cookie = web.logins.open(&viewer.name, now);
        tracing::info!(operator = %viewer.name, role = %viewer.role, "web: login link used; session opened");
        let set = format!(
            "{}={cookie}; Path=/; Max-Age={secs}; Secure; HttpOnly; SameSite=Strict",
            auth::COOKIE
        );
        let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        if let Ok(v) = HeaderValue::from_str(&set) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    });
    run.await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Some(c) = session_cookie(&headers) {
        web.logins.close(&c);
    }
    let clear = format!(
        "{}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
        auth::COOKIE
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_owned()),
            (header::SET_COOKIE, clear),
        ],
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn not_found(State(web): State<Arc<Web>>, p: Presented) -> Response {
    guarded(web, p, |_, v, now| {
        not_found_page(v, "There is no such page.", now)
    })
    .await
}

#[cfg(test)]
#[path = "handlers_tests.rs"]
mod tests;
