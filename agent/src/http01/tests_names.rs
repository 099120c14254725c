//! HTTP-01 challenges for DNS names: accepted in every mode, resolved (a warning naming
//! the addresses when the name does not point here), and self-checked through the host's
//! addresses with `Host: <name>`.

use super::*;
use crate::resolve;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "tok_names_0123456789";

fn challenge(identifier: &str) -> Challenge {
    Challenge {
        identifier: identifier.into(),
        token: TOKEN.into(),
        key_authorization: format!("{TOKEN}.thumbprint_value"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn free_port(ip: IpAddr) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

fn webroot(own: &[IpAddr], root: &Path, port: u16, table: &[(&str, &[&str])]) -> Responder {
    let cfg = Http01Config {
        mode: Http01Mode::Webroot,
        port,
        webroot: Some(root.to_path_buf()),
        ..Default::default()
    };
    Responder::new(own.to_vec(), &cfg, Counter::default()).with_resolver(resolve::table(table))
}

/// A static web server for `root` on `addr` that answers only requests whose Host header is
/// `host` (like a virtual host for the name; anything else gets 404), and counts requests.
async fn vhost(addr: SocketAddr, host: String, root: PathBuf) -> Arc<Mutex<u32>> {
    let hits = Arc::new(Mutex::new(0u32));
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            *lock(&counter) += 1;
            let (host, root) = (host.clone(), root.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let asked = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Host: "))
                    .unwrap_or_default()
                    .to_owned();
                let file = std::fs::read_to_string(root.join(path.trim_start_matches('/')));
                let reply = match file {
                    Ok(body) if asked == host => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
                };
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    hits
}

#[tokio::test]
async fn webroot_self_check_fetches_a_name_through_the_host_with_its_host_header() {
    let own = [ip("127.0.0.51"), ip("127.0.0.52")];
    let port = free_port(own[0]);
    let tmp = tempfile::tempdir().unwrap();
    let host = format!("web-1.example.net:{port}");
    let hits = vhost(SocketAddr::new(own[0], port), host, tmp.path().into()).await;
    // The name points at the first address only: fetched there, no warning.
    let r = webroot(
        &own,
        tmp.path(),
        port,
        &[("web-1.example.net", &["127.0.0.51"])],
    );
    let warnings = r.present(&[challenge("web-1.example.net")]).await.unwrap();
    assert_eq!(warnings, Vec::<String>::new());
    assert_eq!(
        *lock(&hits),
        1,
        "fetched through the address the name resolves to"
    );
    r.clear(&[TOKEN.into()]);
    // A virtual host for another name: the self-check sees the 404 and says so.
    let r = webroot(
        &own,
        tmp.path(),
        port,
        &[("api.example.net", &["127.0.0.51"])],
    );
    let warnings = r.present(&[challenge("api.example.net")]).await.unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!(
            "http://api.example.net:{port}{PREFIX}{TOKEN} (through 127.0.0.51:{port}) answered 404"
        )),
        "{}",
        warnings[0]
    );
}

#[tokio::test]
async fn a_name_that_points_elsewhere_is_warned_about_and_still_checked_through_the_host() {
    let own = [ip("127.0.0.53")];
    let port = free_port(own[0]);
    let tmp = tempfile::tempdir().unwrap();
    let host = format!("web-1.example.net:{port}");
    let hits = vhost(SocketAddr::new(own[0], port), host, tmp.path().into()).await;
    let r = webroot(
        &own,
        tmp.path(),
        port,
        &[("web-1.example.net", &["198.51.100.4"])],
    );
    let warnings = r.present(&[challenge("web-1.example.net")]).await.unwrap();
    assert_eq!(
        warnings,
        ["web-1.example.net resolves to 198.51.100.4, not to this host's addresses 127.0.0.53: the CA will not reach this host"]
    );
    assert_eq!(
        *lock(&hits),
        1,
        "the web server is still checked through the host"
    );
    // Not resolving at all is said too.
    let r = webroot(&own, tmp.path(), port, &[]);
    let warnings = r.present(&[challenge("web-2.example.net")]).await.unwrap();
    assert!(
        warnings[0].starts_with("web-2.example.net does not resolve here"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn standalone_answers_a_name_on_the_host_addresses() {
    let own = ip("127.0.0.54");
    let port = free_port(own);
    let cfg = Http01Config {
        mode: Http01Mode::Standalone,
        port,
        ..Default::default()
    };
    let r = Responder::new(vec![own], &cfg, Counter::default())
        .with_resolver(resolve::table(&[("web-1.example.net", &["127.0.0.54"])]));
    let c = challenge("web-1.example.net");
    assert_eq!(
        r.present(std::slice::from_ref(&c)).await.unwrap(),
        Vec::<String>::new()
    );
    let mut s = tokio::net::TcpStream::connect((own, port)).await.unwrap();
    let req = format!(
        "GET {PREFIX}{TOKEN} HTTP/1.1\r\nHost: web-1.example.net\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with(&c.key_authorization),
        "{body}"
    );
    r.clear(&[TOKEN.into()]);
    r.close(Duration::from_secs(1)).await;
    // Standalone has no self-check, but a name pointing elsewhere is still reported.
    let r = Responder::new(vec![own], &cfg, Counter::default())
        .with_resolver(resolve::table(&[("web-1.example.net", &["198.51.100.4"])]));
    let warnings = r.present(&[c]).await.unwrap();
    assert!(
        warnings[0].contains("resolves to 198.51.100.4"),
        "{warnings:?}"
    );
    r.clear(&[TOKEN.into()]);
}

#[tokio::test]
async fn wildcards_and_names_not_in_canonical_form_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let r = webroot(&[ip("127.0.0.1")], tmp.path(), 80, &[]);
    let cases = [
        ("*.example.net", "only with DNS-01"),
        ("Web-1.example.net", "send it as \"web-1.example.net\""),
        ("a_b.example.net", "letters, digits and hyphens"),
        ("com", "public suffix"),
    ];
    for (id, want) in cases {
        let e = r.present(&[challenge(id)]).await.unwrap_err();
        assert_eq!(e.code, "bad_request", "{id}");
        assert!(e.message.contains(want), "{id}: {}", e.message);
    }
    assert!(!tmp
        .path()
        .join(".well-known/acme-challenge")
        .join(TOKEN)
        .exists());
}
