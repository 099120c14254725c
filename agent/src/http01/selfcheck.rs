//! The self-check for webroot and proxy modes: after presenting, fetch
//! `http://<identifier>:<port>/.well-known/acme-challenge/<token>` from this host the way
//! the CA will, **without following redirects** — for an IP from that address, for a DNS
//! name from each of the host's addresses the name resolves to (all of them when it
//! resolves to none) with `Host: <name>`, so the web server's virtual host for the name
//! answers — and turn whatever would stop the CA into a
//! warning: a redirect in front of the challenge path, a status other than 200, a body that
//! is not the key authorization, no answer. All checks run concurrently, each bounded by
//! [`TIMEOUT`], so presenting is delayed by at most that.
//!
//! A deliberately small HTTP/1.1 client (one request, `Connection: close`, bounded read):
//! the agent only ever needs this one GET, and it must see redirects as they are.

use super::{Challenge, PREFIX};
use std::net::{IpAddr, SocketAddr};

/// Where one challenge is fetched from: these addresses, with `Host: host` (the name) or,
/// for an IP identifier, with the address itself as Host.
pub(super) struct Via {
    pub addrs: Vec<IpAddr>,
    pub host: Option<String>,
}
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(super) const TIMEOUT: Duration = Duration::from_secs(2);
/// A key authorization is about 90 bytes; read no more than this of any answer.
const MAX_RESPONSE: usize = 16 * 1024;

/// Mode-specific advice for the warnings.
pub(super) struct Hint {
    /// `webroot` or `proxy`: names the snippets in `deploy/`.
    pub mode: &'static str,
    /// What the web server must do, e.g. "serve /var/www/certfleet/.well-known/acme-challenge".
    pub serves: String,
}

/// Checks every challenge on each of its addresses concurrently; one warning per fetch
/// that would fail.
pub(super) async fn check_all(
    challenges: &[(Via, &Challenge)],
    port: u16,
    hint: &Hint,
) -> Vec<String> {
    let checks = challenges.iter().flat_map(|(via, c)| {
        via.addrs
            .iter()
            .map(move |ip| check_one(SocketAddr::new(*ip, port), via.host.as_deref(), c, hint))
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn check_one(
    addr: SocketAddr,
    name: Option<&str>,
    c: &Challenge,
    hint: &Hint,
) -> Option<String> {
    let host = host_header(addr, name);
    let url = match name {
        Some(_) => format!("http://{host}{PREFIX}{} (through {addr})", c.token),
        None => format!("http://{host}{PREFIX}{}", c.token),
    };
    let see = format!(
        "see deploy/nginx/acme-{m}.conf or deploy/apache/acme-{m}.conf",
        m = hint.mode
    );
    let got = match tokio::time::timeout(TIMEOUT, fetch(addr, &host, &c.token)).await {
        Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
        Ok(r) => r,
    };
    let got = match got {
        Ok(got) => got,
        Err(e) => {
            return Some(format!(
                "cannot fetch {url}: {e}; the CA connects to the same address: is the web \
                 server listening on {addr} and the port open? ({see})"
            ))
        }
    };
    match got.status {
        300..=399 => Some(format!(
            "a redirect ({} → {}) sits in front of {PREFIX} on {addr}; the CA would be sent \
             there instead of to the agent's answer: exempt the challenge path from the \
             redirect ({see})",
            got.status,
            got.location.as_deref().unwrap_or("no Location")
        )),
        200 if got.body.trim_ascii_end() == c.key_authorization.as_bytes() => None,
        200 => Some(format!(
            "{url} answered 200 but not with the key authorization (got {} bytes: {:?}); \
             something else answers there: the web server on {addr} must {} ({see})",
            got.body.len(),
            preview(&got.body),
            hint.serves
        )),
        s => Some(format!(
            "{url} answered {s} instead of 200 with the key authorization; the web server \
             on {addr} must {} ({see})",
            hint.serves
        )),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fetched {
    pub status: u16,
    pub location: Option<String>,
    /// Only read for 200; empty otherwise.
    pub body: Vec<u8>,
}

/// The Host header the CA sends: the identifier (the name, or the address), with the port
/// only when it is not 80.
fn host_header(addr: SocketAddr, name: Option<&str>) -> String {
    let id = match (name, addr.ip()) {
        (Some(name), _) => name.to_owned(),
        (None, IpAddr::V4(ip)) => ip.to_string(),
        (None, IpAddr::V6(ip)) => format!("[{ip}]"),
    };
    match addr.port() {
        80 => id,
        p => format!("{id}:{p}"),
    }
}

async fn fetch(addr: SocketAddr, host: &str, token: &str) -> Result<Fetched, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET {PREFIX}{token} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certfleet-agent \
         self-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        let done = n == 0 || buf.len() >= MAX_RESPONSE;
        if let Some(f) = parse(&buf, done)? {
            return Ok(f);
        }
        if done {
            return Err("incomplete HTTP response".into());
        }
    }
}

/// Parses what was read so far: `None` when more is needed (and `done` is false).
pub(super) fn parse(buf: &[u8], done: bool) -> Result<Option<Fetched>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if done {
            return Err("the connection closed before a complete HTTP response header".into());
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(s))) if v.starts_with("HTTP/1.") => s,
        _ => {
            return Err(format!(
                "not an HTTP/1.x response: {:?}",
                preview(status_line.as_bytes())
            ))
        }
    };
    let (mut location, mut length, mut chunked) = (None, None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "location" => location = Some(printable(value)),
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let raw = &buf[head_end + 4..];
    let body = if status != 200 {
        Vec::new() // only a 200's body matters
    } else if chunked {
        match dechunk(raw) {
            Some(b) => b,
            None if done => raw.to_vec(),
            None => return Ok(None),
        }
    } else {
        match length {
            Some(n) if raw.len() >= n => raw[..n].to_vec(),
            _ if done => raw.to_vec(),
            _ => return Ok(None),
        }
    };
    Ok(Some(Fetched {
        status,
        location,
        body,
    }))
}

/// Decodes a complete chunked body; `None` while incomplete (or malformed).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size_field = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size_hex = size_field.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if rest.len() < size.checked_add(2)? {
            return None;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// At most 200 characters, control characters replaced: header values go into logs.
fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn preview(b: &[u8]) -> String {
    printable(&String::from_utf8_lossy(&b[..b.len().min(64)]))
}
