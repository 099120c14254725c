//! Responder tests on real sockets (127.0.0.x, free ports) and temp dirs.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

/// Now on the wall clock, read through the clock module.
fn wall_now() -> SystemTime {
    use certfleet_shared::clock::{Clock, SystemClock};
    SystemTime::UNIX_EPOCH + Duration::from_secs(SystemClock.now_unix() as u64)
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "tok_0123456789abcdef";

fn challenge(ip: &str, token: &str) -> Challenge {
    Challenge {
        identifier: ip.into(),
        token: token.into(),
        key_authorization: format!("{token}.thumbprint_value"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn free_port(ip: IpAddr) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

fn config(mode: Http01Mode, port: u16) -> Http01Config {
    Http01Config {
        mode,
        port,
        ..Default::default()
    }
}

fn webroot_responder(ips: &[&str], root: &Path, port: u16, self_check: bool) -> Responder {
    let cfg = Http01Config {
        webroot: Some(root.to_path_buf()),
        self_check: Some(self_check),
        ..config(Http01Mode::Webroot, port)
    };
    Responder::new(
        ips.iter().map(|s| ip(s)).collect(),
        &cfg,
        Counter::default(),
    )
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A tiny web server on `addr`: `respond(path)` is the raw HTTP response to send.
async fn web_server(addr: SocketAddr, respond: impl Fn(&str) -> String + Send + Sync + 'static) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let _ = s.write_all(respond(&path).as_bytes()).await;
            });
        }
    });
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn tokens() {
    assert!(valid_token("abcdefghijklmnop_-AZ09"));
    assert!(!valid_token("short"));
    assert!(!valid_token("abcdefghijklmnop/../"));
    assert!(!valid_token("abcdefghijklmnop.."));
}

#[tokio::test]
async fn standalone_serves_then_stops() {
    let ip = ip("127.0.0.1");
    let port = free_port(ip);
    let r = Responder::new(
        vec![ip],
        &config(Http01Mode::Standalone, port),
        Counter::default(),
    );
    assert_eq!(r.mode(), Http01Mode::Standalone);
    let c = challenge("127.0.0.1", TOKEN);
    assert!(
        r.present(&[challenge("10.0.0.1", TOKEN)]).await.is_err(),
        "not our IP"
    );
    assert!(!r.is_listening());
    assert_eq!(
        r.present(std::slice::from_ref(&c)).await.unwrap(),
        Vec::<String>::new()
    );
    let addr = SocketAddr::new(ip, port);
    let body = http_get(addr, &format!("{PREFIX}{TOKEN}")).await;
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with(&c.key_authorization),
        "{body}"
    );
    assert!(http_get(addr, &format!("{PREFIX}other_token_000000"))
        .await
        .starts_with("HTTP/1.1 404"));
    r.clear(&[TOKEN.into()]);
    assert!(!r.is_listening());
}

/// A clear followed at once by a present rebinds the same port: once `wait_stopped`
/// returns, the stopped listener's socket is closed (before, a present right after a clear
/// could find the agent's own socket still holding the port), and a plain bind of the
/// port succeeds too (the port is free for the other challenge type).
#[tokio::test]
async fn clear_then_present_rebinds_the_port() {
    let ip = ip("127.0.0.1");
    let port = free_port(ip);
    let r = Responder::new(
        vec![ip],
        &config(Http01Mode::Standalone, port),
        Counter::default(),
    );
    let addr = SocketAddr::new(ip, port);
    for round in 0..20 {
        let token = format!("tok_round_{round:02}_0123456789");
        let c = challenge("127.0.0.1", &token);
        r.present(std::slice::from_ref(&c))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        let body = http_get(addr, &format!("{PREFIX}{token}")).await;
        assert!(body.starts_with("HTTP/1.1 200"), "round {round}: {body}");
        r.clear(&[token]);
        r.wait_stopped().await;
        assert!(!r.is_listening());
        // The port is ours to give away: nothing of ours holds it.
        drop(
            tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| panic!("round {round}: port still held: {e}")),
        );
    }
}

#[tokio::test]
async fn concurrent_presents_bind_once() {
    let ip = ip("127.0.0.1");
    let port = free_port(ip);
    let r = Responder::new(
        vec![ip],
        &config(Http01Mode::Standalone, port),
        Counter::default(),
    );
    let (a, b) = (
        challenge("127.0.0.1", TOKEN),
        challenge("127.0.0.1", "tok_other_0123456789"),
    );
    let (ra, rb) = tokio::join!(
        r.present(std::slice::from_ref(&a)),
        r.present(std::slice::from_ref(&b))
    );
    ra.unwrap();
    rb.unwrap();
    r.clear(&[a.token]);
    assert!(r.is_listening(), "b is still live");
    r.clear_all();
    assert!(!r.is_listening());
}

#[tokio::test]
async fn proxy_serves_on_listen_while_live() {
    let host = ip("127.0.0.21");
    let listen = SocketAddr::new(ip("127.0.0.22"), free_port(ip("127.0.0.22")));
    let public = SocketAddr::new(host, free_port(host));
    // The "web server": forwards every connection on the public port to the agent.
    let front = tokio::net::TcpListener::bind(public).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(listen).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let cfg = Http01Config {
        listen: Some(listen),
        ..config(Http01Mode::Proxy, public.port())
    };
    let served = Counter::default();
    let r = Responder::new(vec![host], &cfg, served.clone());
    assert!(!r.is_listening());
    let c = challenge("127.0.0.21", TOKEN);
    let warnings = r.present(std::slice::from_ref(&c)).await.unwrap();
    assert!(
        warnings.is_empty(),
        "self-check through the forwarder: {warnings:?}"
    );
    assert!(r.is_listening());
    let body = http_get(listen, &format!("{PREFIX}{TOKEN}")).await;
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with(&c.key_authorization),
        "{body}"
    );
    assert_eq!(served.get(), 2, "self-check and our GET");
    r.clear(&[TOKEN.into()]);
    assert!(!r.is_listening());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "stopped listening after clear"
    );
}

#[tokio::test]
async fn proxy_self_check_warns_when_nothing_answers() {
    let host = ip("127.0.0.23");
    let listen = SocketAddr::new(host, free_port(host));
    let cfg = Http01Config {
        listen: Some(listen),
        ..config(Http01Mode::Proxy, free_port(host))
    };
    let r = Responder::new(vec![host], &cfg, Counter::default());
    let started = Instant::now();
    let warnings = r.present(&[challenge("127.0.0.23", TOKEN)]).await.unwrap();
    assert!(started.elapsed() < selfcheck::TIMEOUT + Duration::from_secs(1));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("cannot fetch") && warnings[0].contains("acme-proxy.conf"),
        "{}",
        warnings[0]
    );
    assert!(r.is_listening(), "a warning does not undo the presentation");
}

#[tokio::test]
async fn webroot_writes_and_removes_token_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("www");
    let r = webroot_responder(&["127.0.0.1", "::1"], &root, 80, false);
    assert_eq!(r.mode(), Http01Mode::Webroot);
    let (a, b) = (
        challenge("127.0.0.1", TOKEN),
        challenge("::1", "tok_second_000000000"),
    );
    assert!(r.present(&[a.clone(), b.clone()]).await.unwrap().is_empty());
    let dir = root.join(".well-known/acme-challenge");
    for c in [&a, &b] {
        let p = dir.join(&c.token);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), c.key_authorization);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
    for d in [root.join(".well-known"), dir.clone()] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    assert!(!r.is_listening(), "webroot never listens");
    r.clear(&[a.token.clone(), "unknown_token_00000000".into()]);
    assert!(!dir.join(&a.token).exists());
    assert!(dir.join(&b.token).exists());
    r.clear_all();
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn webroot_refuses_bad_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let r = webroot_responder(&["127.0.0.1"], tmp.path(), 80, false);
    let dir = tmp.path().join(".well-known/acme-challenge");
    for token in [
        "../../../etc/passwd_x",
        "short",
        "tok_0123456789abcdef/x",
        ".hidden_0123456789ab",
    ] {
        let err = r
            .present(&[challenge("127.0.0.1", token)])
            .await
            .unwrap_err();
        assert_eq!(err.code, "bad_request", "{token}");
    }
    let mut bad_ka = challenge("127.0.0.1", TOKEN);
    bad_ka.key_authorization = "other_token_0000000.x".into();
    assert_eq!(r.present(&[bad_ka]).await.unwrap_err().code, "bad_request");
    // One bad challenge refuses the whole request.
    let err = r
        .present(&[challenge("127.0.0.1", TOKEN), challenge("10.9.9.9", TOKEN)])
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_my_ip");
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());
}

#[tokio::test]
async fn webroot_refuses_symlinked_challenge_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let root = tmp.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join(".well-known")).unwrap();
    let r = webroot_responder(&["127.0.0.1"], &root, 80, false);
    let err = r
        .present(&[challenge("127.0.0.1", TOKEN)])
        .await
        .unwrap_err();
    assert_eq!(err.code, "write_failed");
    assert!(err.message.contains("not a symlink"), "{}", err.message);
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    assert!(
        lock(&r.table).is_empty(),
        "a failed present leaves nothing live"
    );
}

#[tokio::test]
async fn webroot_refuses_a_symlinked_webroot() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    let challenges = real.join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenges).unwrap();
    // A stale token file behind the link: the sweep at start must not reach it either.
    let stale = challenges.join("stale_token_00000000");
    std::fs::write(&stale, "x").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(wall_now() - CHALLENGE_TTL - Duration::from_secs(60))
        .unwrap();
    let root = tmp.path().join("www");
    std::os::unix::fs::symlink(&real, &root).unwrap();

    let r = webroot_responder(&["127.0.0.1"], &root, 80, false);
    assert!(stale.exists(), "no sweep through a symlinked webroot");
    let err = r
        .present(&[challenge("127.0.0.1", TOKEN)])
        .await
        .unwrap_err();
    assert_eq!(err.code, "write_failed");
    for want in [
        &format!("[http01] webroot {} is a symlink", root.display()),
        "could point its writes anywhere",
        &format!(
            "its real path is {}",
            real.canonicalize().unwrap().display()
        ),
        "set webroot to the real directory",
    ] {
        assert!(err.message.contains(want), "{want:?} in {}", err.message);
    }
    let names: Vec<_> = std::fs::read_dir(&challenges)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["stale_token_00000000"], "nothing written");
    assert!(
        lock(&r.table).is_empty(),
        "a failed present leaves nothing live"
    );
}

#[tokio::test]
async fn webroot_sweeps_stale_files_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&dir).unwrap();
    let old = wall_now() - CHALLENGE_TTL - Duration::from_secs(60);
    let stale_token = dir.join("stale_token_00000000");
    let stale_temp = dir.join(".stale_temp_000000000.tmp-1-abcd");
    let fresh = dir.join("fresh_token_00000000");
    let foreign = dir.join("index.html");
    for p in [&stale_token, &stale_temp, &fresh, &foreign] {
        std::fs::write(p, "x").unwrap();
    }
    for p in [&stale_token, &stale_temp, &foreign] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let _r = webroot_responder(&["127.0.0.1"], tmp.path(), 80, false);
    assert!(!stale_token.exists() && !stale_temp.exists());
    assert!(fresh.exists(), "younger than the TTL: may still be in use");
    assert!(foreign.exists(), "not a token name: not ours");
}

#[tokio::test]
async fn self_check_warns_about_a_redirect() {
    let host = ip("127.0.0.31");
    let port = free_port(host);
    web_server(SocketAddr::new(host, port), |path| {
        format!("HTTP/1.1 301 Moved Permanently\r\nLocation: https://127.0.0.31{path}\r\nContent-Length: 0\r\n\r\n")
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let r = webroot_responder(&["127.0.0.31"], tmp.path(), port, true);
    let warnings = r.present(&[challenge("127.0.0.31", TOKEN)]).await.unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let want = format!("a redirect (301 → https://127.0.0.31{PREFIX}{TOKEN}) sits in front of {PREFIX} on 127.0.0.31:{port}");
    assert!(warnings[0].contains(&want), "{}", warnings[0]);
    assert!(
        warnings[0].contains("deploy/nginx/acme-webroot.conf"),
        "{}",
        warnings[0]
    );
    assert!(
        tmp.path()
            .join(".well-known/acme-challenge")
            .join(TOKEN)
            .exists(),
        "still presented"
    );
}

#[tokio::test]
async fn self_check_passes_when_the_web_server_serves_the_file() {
    let host = ip("127.0.0.32");
    let port = free_port(host);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    // A static file server for the webroot, like nginx with the snippet.
    let docroot = root.clone();
    web_server(
        SocketAddr::new(host, port),
        move |path| match std::fs::read_to_string(docroot.join(path.trim_start_matches('/'))) {
            Ok(body) => ok(&body),
            Err(_) => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
        },
    )
    .await;
    let r = webroot_responder(&["127.0.0.32"], &root, port, true);
    let (a, b) = (
        challenge("127.0.0.32", TOKEN),
        challenge("127.0.0.32", "tok_second_000000000"),
    );
    assert_eq!(r.present(&[a, b]).await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn self_check_warns_about_a_wrong_body_or_status() {
    let host = ip("127.0.0.33");
    let port = free_port(host);
    web_server(SocketAddr::new(host, port), |path| {
        if path.ends_with(TOKEN) {
            ok("<html>welcome to nginx</html>")
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()
        }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let r = webroot_responder(&["127.0.0.33"], tmp.path(), port, true);
    let other = "tok_second_000000000";
    let mut warnings = r
        .present(&[
            challenge("127.0.0.33", TOKEN),
            challenge("127.0.0.33", other),
        ])
        .await
        .unwrap();
    warnings.sort();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("answered 200 but not with the key authorization")
            && warnings[0].contains("welcome to nginx"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("answered 404") && warnings[1].contains("must serve"),
        "{}",
        warnings[1]
    );
}

#[test]
fn parses_responses() {
    use selfcheck::parse;
    let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(parse(&full[..20], false).unwrap(), None);
    assert_eq!(parse(&full[..full.len() - 1], false).unwrap(), None);
    assert_eq!(parse(full, false).unwrap().unwrap().body, b"hello");
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
    assert_eq!(parse(chunked, false).unwrap().unwrap().body, b"hello");
    assert_eq!(parse(&chunked[..60], false).unwrap(), None);
    let redirect = parse(b"HTTP/1.0 302 Found\r\nlocation: /x\x07y\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert_eq!(
        (redirect.status, redirect.location.as_deref()),
        (302, Some("/x?y"))
    );
    let eof = parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close", true)
        .unwrap()
        .unwrap();
    assert_eq!(eof.body, b"until close");
    assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
    assert!(parse(b"HTTP/1.1 200", true).is_err());
}

#[tokio::test]
async fn answer_raw_serves_live_tokens_only() {
    let live = vec![(
        "tok_en-0123456789ab".to_owned(),
        "tok_en-0123456789ab.thumb".to_owned(),
    )];
    let ok = answer_raw(
        &live,
        b"GET /.well-known/acme-challenge/tok_en-0123456789ab HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n",
    )
    .await;
    let ok = String::from_utf8_lossy(&ok);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("tok_en-0123456789ab.thumb"), "{ok}");
    let missing = answer_raw(
        &live,
        b"GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&missing).starts_with("HTTP/1.1 404"));
    let post = answer_raw(&live, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&post).starts_with("HTTP/1.1 405"));
    // Garbage and a half-sent request end without a panic and without hanging.
    answer_raw(&live, b"\x00\xff garbage\r\n\r\n").await;
    answer_raw(&live, b"GET /.well-known/acme-").await;
}
