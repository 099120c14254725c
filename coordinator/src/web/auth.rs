//! Who may see the web view: an operator, by its client certificate (checked like every
//! admin call: `operators::authorize`) or by a browser session opened with a one-time login
//! link (`certfleet-coordinator web login`). Every request is checked against the stored
//! operator again, so a revoked or expired operator's sessions stop at the next request.
//!
//! Login links are tickets in the state directory (`web-logins/`, 0700; one file per
//! ticket, 0600, named by the SHA-256 of its token — the token itself is stored nowhere):
//! `web login` runs on the coordinator's machine with access to the state directory, like
//! `operators bootstrap`, and needs no running admin API. Redeeming removes the file first,
//! so a link works once even when two browsers race. Sessions live in this coordinator's
//! memory (a restart logs everyone out); the cookie holds a random id, the map its hash.

use crate::fleet_ca::StateDir;
use crate::model::{OperatorRecord, Role};
use crate::operators::{self, AdminRpc, Refusal};
use base64::Engine as _;
use certfleet_shared::fsutil::{create_dir_with_mode, write_atomic};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "certfleet_session";
/// Login tickets, under the state directory.
pub const LOGIN_DIR: &str = "web-logins";
/// `web login --ttl` default and bounds (seconds).
pub const DEFAULT_LOGIN_TTL: i64 = 600;
pub const MAX_LOGIN_TTL: i64 = 3600;
/// Sessions kept at most (the oldest expire first; a sweep runs past this).
const MAX_SESSIONS: usize = 10_000;

/// What `web login` leaves for the coordinator to redeem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginTicket {
    pub operator: String,
    pub created: i64,
    pub expires: i64,
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A token is 43 characters of URL-safe base64; anything else is refused before any file
/// is looked at.
fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn login_dir(dir: &StateDir) -> PathBuf {
    dir.root.join(LOGIN_DIR)
}

/// `web login`: a one-time ticket for `operator`, valid `ttl_secs`; returns the token for
/// the link (shown once, stored only as its hash).
pub fn create_login(dir: &StateDir, operator: &str, ttl_secs: i64, now: i64) -> io::Result<String> {
    let logins = login_dir(dir);
    create_dir_with_mode(&logins, 0o700)?;
    sweep_logins(dir, now);
    let token = random_token();
    let ticket = LoginTicket {
        operator: operator.to_owned(),
        created: now,
        expires: now + ttl_secs,
    };
    let json = serde_json::to_vec(&ticket).map_err(io::Error::other)?;
    write_atomic(&logins.join(token_hash(&token)), &json, 0o600)?;
    Ok(token)
}

/// Removes expired (and unreadable) tickets.
pub fn sweep_logins(dir: &StateDir, now: i64) {
    let Ok(entries) = std::fs::read_dir(login_dir(dir)) else {
        return;
    };
    for e in entries.flatten() {
        let keep = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<LoginTicket>(&b).ok())
            .is_some_and(|t| t.expires > now);
        if !keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Why a login link did not log in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    #[error("this login link is unknown or was already used (a link works once); run `certfleet-coordinator web login` on the coordinator for a new one")]
    Unknown,
    #[error("this login link expired; run `certfleet-coordinator web login` on the coordinator for a new one")]
    Expired,
}

/// Redeems a login link's token once: the ticket is removed before it is believed, so a
/// second visit (or a racing one) finds nothing. Returns the operator's name.
pub fn redeem_login(dir: &StateDir, token: &str, now: i64) -> Result<String, LoginRefusal> {
    if !well_formed(token) {
        return Err(LoginRefusal::Unknown);
    }
    let path = login_dir(dir).join(token_hash(token));
    let bytes = std::fs::read(&path).map_err(|_| LoginRefusal::Unknown)?;
    // Whoever removes it redeems it.
    std::fs::remove_file(&path).map_err(|_| LoginRefusal::Unknown)?;
    let ticket: LoginTicket = serde_json::from_slice(&bytes).map_err(|_| LoginRefusal::Unknown)?;
    if ticket.expires <= now {
        return Err(LoginRefusal::Expired);
    }
    Ok(ticket.operator)
}

struct Session {
    operator: String,
    expires: i64,
}

/// Browser sessions, by the SHA-256 of their cookie value.
pub struct WebSessions {
    map: Mutex<HashMap<String, Session>>,
    pub lifetime_secs: i64,
}

impl WebSessions {
    pub fn new(lifetime_secs: i64) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            lifetime_secs,
        }
    }

    /// A new session for `operator`; returns the cookie value.
    pub fn open(&self, operator: &str, now: i64) -> String {
        let id = random_token();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                // Still full of live sessions: the one closest to its end goes.
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            token_hash(&id),
            Session {
                operator: operator.to_owned(),
                expires: now + self.lifetime_secs,
            },
        );
        id
    }

    /// The operator of a live session.
    pub fn operator(&self, cookie: &str, now: i64) -> Option<String> {
        if !well_formed(cookie) {
            return None;
        }
        let key = token_hash(cookie);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(s) if s.expires > now => Some(s.operator.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, cookie: &str) {
        let key = token_hash(cookie);
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An operator allowed to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub name: String,
    pub role: Role,
    /// "client certificate" or "login session".
    pub via: &'static str,
}

/// The web view's one access decision, from what was presented: the client certificate's
/// verdict (`operators::authorize` for a read call; `None` when no certificate was sent)
/// and the session's operator with its stored record (`None` when there is no live
/// session). A valid certificate wins; otherwise the session's operator is checked like a
/// certificate holding its current serial (revoked, expired, role). Refused: every reason,
/// for the 401 page.
pub fn decide(
    certificate: Option<Result<OperatorRecord, Refusal>>,
    session: Option<(String, Option<OperatorRecord>)>,
    now: i64,
) -> Result<Viewer, Vec<String>> {
    let mut reasons = Vec::new();
    match certificate {
        Some(Ok(rec)) => {
            return Ok(Viewer {
                name: rec.name,
                role: rec.role,
                via: "client certificate",
            })
        }
        Some(Err(refusal)) => reasons.push(format!("client certificate refused: {refusal}")),
        None => {}
    }
    match session {
        Some((name, Some(rec))) => {
            let serial = rec.serial.clone();
            match operators::check(rec, &serial, now, AdminRpc::ListHosts) {
                Ok(rec) => {
                    return Ok(Viewer {
                        name: rec.name,
                        role: rec.role,
                        via: "login session",
                    })
                }
                Err(refusal) => {
                    reasons.push(format!("session of operator {name:?} refused: {refusal}"))
                }
            }
        }
        Some((name, None)) => reasons.push(format!(
            "session of operator {name:?} refused: the operator is no longer in the store"
        )),
        None => {}
    }
    if reasons.is_empty() {
        reasons.push("no client certificate and no login session".into());
    }
    Err(reasons)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
