//! The multi-host harness itself, without the binaries under test: namespace hosts on a
//! bridge reach and are reached from the root namespace over IPv4 and IPv6; a real nginx
//! (webroot) and a real apache (proxying the challenge path) serve HTTP-01 files on port
//! 80 and their certificate on port 443; config checks, reloads, redirects, partitions
//! and IP changes behave; and dropping everything leaves no namespace, link or process.
//! If this fails, fix the machine or the harness before reading the multi-host failures.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use certfleet_tests::netns::{self, NsHost};
use certfleet_tests::process::describe_output;
use certfleet_tests::webserver::{
    http_get, CertPaths, Port80, Redirect, ServerKind, TestPki, WebServer, WebServerOptions,
    CHALLENGE_PREFIX,
};
use certfleet_tests::workdir::WorkDir;
use certfleet_tests::{tlsutil, ChildGuard};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Writes a world-readable challenge file.
fn put_token(dir: &Path, token: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).expect("create challenge dir");
    let path = dir.join(token);
    std::fs::write(&path, body).expect("write token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod token");
}

/// Port 80 at every IP answers the challenge path with `body`.
async fn assert_challenge_served(server: &WebServer, token: &str, body: &str) {
    for addr in server.http_addrs() {
        let path = format!("{CHALLENGE_PREFIX}{token}");
        let reply = http_get(addr, &path).await.expect("GET challenge");
        assert_eq!(
            (reply.status, reply.body.as_ref()),
            (200, body.as_bytes()),
            "{:?} http://{addr}{path}: {reply:?}",
            server.kind()
        );
    }
}

/// Port 443 at every IP serves `leaf`, and the chain verifies against `root` for that IP.
async fn assert_tls_served(server: &WebServer, pki: &TestPki) {
    for addr in server.https_addrs() {
        let served = tlsutil::served_leaf(addr).await.expect("served leaf");
        assert!(
            served == pki.leaf_der,
            "{:?} {addr}: served leaf is not the expected one",
            server.kind()
        );
        tlsutil::served_chain_verifies(addr, &pki.ca_der)
            .await
            .unwrap_or_else(|e| panic!("{:?} {addr}: {e:#}", server.kind()));
    }
}

/// `config_test` passes, fails after `break_config`, passes after `restore_config`.
async fn check_config_test_cycle(server: &mut WebServer) {
    let kind = server.kind();
    let out = server.config_test().await.expect("config test runs");
    assert!(
        out.status.success(),
        "{kind:?} -t: {}",
        describe_output(&out)
    );
    server.break_config().expect("break config");
    let out = server.config_test().await.expect("config test runs");
    assert!(
        !out.status.success(),
        "{kind:?} -t must fail on a broken config: {}",
        describe_output(&out)
    );
    server.restore_config().expect("restore config");
    let out = server.config_test().await.expect("config test runs");
    assert!(
        out.status.success(),
        "{kind:?} -t: {}",
        describe_output(&out)
    );
}

/// A new certificate in the configured files + reload => the new leaf is served.
async fn check_reload_swaps_cert(server: &mut WebServer, certs: &CertPaths) {
    let ips = server.ips().to_vec();
    let new = TestPki::generate("renewed", &ips).expect("new test certificate");
    new.write_to(certs).expect("write new certificate");
    server.reload().await.expect("reload");
    server
        .wait_serving(&new.leaf_der, RELOAD_TIMEOUT)
        .await
        .expect("new leaf served after reload");
    assert_tls_served(server, &new).await;
}

/// Redirects: `ExceptChallenge` keeps the challenge path, `All` redirects it too.
async fn check_redirects(server: &mut WebServer, token: &str, body: &str) {
    let kind = server.kind();
    server
        .reconfigure(|o| o.redirect = Redirect::ExceptChallenge)
        .expect("redirect except challenge");
    server.reload().await.expect("reload");
    for addr in server.http_addrs() {
        let want = format!("https://{}/some/page", url_host(addr.ip()));
        certfleet_tests::wait_for(
            &format!("{kind:?} {addr} to redirect"),
            RELOAD_TIMEOUT,
            Duration::from_millis(50),
            || {
                let want = want.clone();
                async move {
                    let r = http_get(addr, "/some/page").await?;
                    anyhow::ensure!(
                        r.status == 301 && r.location.as_deref() == Some(&want),
                        "want 301 to {want}, got {r:?}"
                    );
                    Ok(Some(()))
                }
            },
        )
        .await
        .expect("redirect in place");
    }
    assert_challenge_served(server, token, body).await;

    server
        .reconfigure(|o| o.redirect = Redirect::All)
        .expect("redirect all");
    server.reload().await.expect("reload");
    for addr in server.http_addrs() {
        let path = format!("{CHALLENGE_PREFIX}{token}");
        let want = format!("https://{}{path}", url_host(addr.ip()));
        certfleet_tests::wait_for(
            &format!("{kind:?} {addr} to redirect the challenge path"),
            RELOAD_TIMEOUT,
            Duration::from_millis(50),
            || {
                let (want, path) = (want.clone(), path.clone());
                async move {
                    let r = http_get(addr, &path).await?;
                    anyhow::ensure!(
                        r.status == 301 && r.location.as_deref() == Some(&want),
                        "want 301 to {want}, got {r:?}"
                    );
                    Ok(Some(()))
                }
            },
        )
        .await
        .expect("challenge path redirected");
    }

    server
        .reconfigure(|o| o.redirect = Redirect::Off)
        .expect("redirect off");
    server.reload().await.expect("reload");
    for addr in server.http_addrs() {
        certfleet_tests::wait_for(
            &format!("{kind:?} {addr} to stop redirecting"),
            RELOAD_TIMEOUT,
            Duration::from_millis(50),
            || async move {
                let path = format!("{CHALLENGE_PREFIX}{token}");
                Ok((http_get(addr, &path).await?.status == 200).then_some(()))
            },
        )
        .await
        .expect("redirect removed");
    }
}

fn url_host(ip: IpAddr) -> String {
    certfleet_tests::webserver::url_host(&ip)
}

/// A python3 HTTP server on 127.0.0.1:`port` inside `host`, serving `root`.
fn backend(host: &NsHost, root: &Path, port: u16, log_dir: &Path) -> ChildGuard {
    let mut cmd = host.std_command("python3");
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(root)
        .arg(port.to_string());
    ChildGuard::spawn("backend", &mut cmd, log_dir).expect("start python3 http.server")
}

/// Every PID in the host's namespace right now.
fn pids_of(host: &NsHost) -> Vec<i32> {
    host.pids().expect("ip netns pids")
}

/// Whether `pid` runs (a zombie — killed, its orphaned corpse not yet reaped by PID 1 —
/// does not count).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

async fn assert_all_gone(pids: &[i32]) {
    let alive = certfleet_tests::wait_for(
        "killed processes to vanish",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async move {
            let alive: Vec<i32> = pids.iter().copied().filter(|p| running(*p)).collect();
            anyhow::ensure!(alive.is_empty(), "still running: {alive:?}");
            Ok(Some(()))
        },
    )
    .await;
    assert!(alive.is_ok(), "processes survived the guards: {alive:?}");
}

fn assert_no_leftovers(tag: &str) {
    let left = netns::leftovers(tag).expect("list namespaces and links");
    assert!(left.is_empty(), "left behind after drop: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_apache_on_namespace_hosts() {
    let Some(lan) = netns::require_namespaces("netns_smoke::nginx_and_apache_on_namespace_hosts")
    else {
        return;
    };
    certfleet_tests::install_crypto_provider();
    let tag = lan.tag().to_owned();
    eprintln!(
        "LAN {} (tag {tag}): gateway {} / {}",
        lan.bridge_name(),
        lan.gateway_v4(),
        lan.gateway_v6()
    );
    let mut h1 = lan.add_host("nginx-host").expect("host 1");
    let h2 = lan.add_host("apache-host").expect("host 2");
    let files = WorkDir::new("netns-smoke").expect("work dir");

    // nginx: challenge files from a webroot.
    let webroot = files.join("webroot");
    let nginx_certs = CertPaths::in_dir(&files.join("nginx-tls"));
    let mut nginx = WebServer::new(
        &h1,
        WebServerOptions::new(ServerKind::Nginx, h1.ips(), nginx_certs.clone())
            .port80(Port80::Webroot(webroot.clone())),
    )
    .expect("nginx config");
    nginx.start().await.expect("start nginx");
    put_token(
        &webroot.join(".well-known/acme-challenge"),
        "tok-nginx",
        "nginx-key-auth",
    );

    // apache: the challenge path proxied to a backend on the host's own loopback.
    let backend_root = files.join("backend");
    put_token(
        &backend_root.join(".well-known/acme-challenge"),
        "tok-apache",
        "apache-key-auth",
    );
    let backend_port = 8402;
    let _backend = backend(&h2, &backend_root, backend_port, files.path());
    let apache_certs = CertPaths::in_dir(&files.join("apache-tls"));
    let mut apache = WebServer::new(
        &h2,
        WebServerOptions::new(ServerKind::Apache, h2.ips(), apache_certs.clone()).port80(
            Port80::Proxy(SocketAddr::from(([127, 0, 0, 1], backend_port))),
        ),
    )
    .expect("apache config");
    apache.start().await.expect("start apache");

    // Both address families, from the root namespace, through the bridge.
    for server in [&nginx, &apache] {
        assert_eq!(server.http_addrs().len(), 2);
        assert!(server.ips()[0].is_ipv4() && server.ips()[1].is_ipv6());
    }
    assert_challenge_served(&nginx, "tok-nginx", "nginx-key-auth").await;
    // The backend may still be starting: wait for the proxy to get through once.
    let first = apache.http_addrs()[0];
    certfleet_tests::wait_for(
        "the proxied backend to answer",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async move {
            let r = http_get(first, &format!("{CHALLENGE_PREFIX}tok-apache")).await?;
            Ok((r.status == 200).then_some(()))
        },
    )
    .await
    .expect("backend reachable through apache");
    assert_challenge_served(&apache, "tok-apache", "apache-key-auth").await;
    let missing = http_get(first, &format!("{CHALLENGE_PREFIX}nope"))
        .await
        .expect("GET missing token");
    assert_eq!(
        missing.status, 404,
        "the proxy passes the backend's 404 through"
    );

    // Port 443 serves the bootstrap certificate.
    for server in [&nginx, &apache] {
        let boot = server.bootstrap().expect("bootstrap written").clone();
        assert!(server.configured_leaf().expect("configured leaf") == boot.leaf_der);
        assert_tls_served(server, &boot).await;
    }

    // The commands the agent would be given.
    for server in [&nginx, &apache] {
        for argv in [server.check_argv(), server.reload_argv()] {
            assert!(Path::new(&argv[0]).is_absolute(), "{argv:?}");
            assert!(!argv.iter().any(|a| a == "netns"), "{argv:?}");
        }
    }

    check_config_test_cycle(&mut nginx).await;
    check_config_test_cycle(&mut apache).await;
    check_reload_swaps_cert(&mut nginx, &nginx_certs).await;
    check_reload_swaps_cert(&mut apache, &apache_certs).await;
    check_redirects(&mut nginx, "tok-nginx", "nginx-key-auth").await;
    check_redirects(&mut apache, "tok-apache", "apache-key-auth").await;

    // A broken config makes the reload command fail and the old config keep serving.
    nginx.break_config().expect("break nginx config");
    let out = nginx.reload_output().await.expect("run nginx reload");
    assert!(
        !out.status.success(),
        "reload of a broken nginx config: {}",
        describe_output(&out)
    );
    nginx.restore_config().expect("restore nginx config");
    assert!(nginx.is_running(), "nginx must survive a failed reload");
    assert_challenge_served(&nginx, "tok-nginx", "nginx-key-auth").await;

    // Partition: host 1 unreachable, host 2 unaffected; then back.
    h1.link_down().expect("partition host 1");
    let v4_443 = nginx.https_addrs()[0];
    let cut = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(v4_443),
    )
    .await;
    assert!(
        !matches!(cut, Ok(Ok(_))),
        "partitioned host still reachable"
    );
    assert_challenge_served(&apache, "tok-apache", "apache-key-auth").await;
    h1.link_up().expect("reconnect host 1");
    assert_challenge_served(&nginx, "tok-nginx", "nginx-key-auth").await;

    // IP change: host 1 moves to new addresses, nginx follows after a reload.
    let new_ips = vec![IpAddr::V4(lan.v4(201)), IpAddr::V6(lan.v6(201))];
    let old_ips = h1.ips();
    h1.set_ips(&new_ips).expect("change host 1 addresses");
    assert_eq!(h1.ips(), new_ips);
    let renewed = TestPki::generate("moved", &new_ips).expect("certificate for new IPs");
    renewed
        .write_to(&nginx_certs)
        .expect("write certificate for new IPs");
    nginx.set_ips(new_ips.clone()).expect("nginx on new IPs");
    nginx.reload().await.expect("reload on new IPs");
    nginx
        .wait_serving(&renewed.leaf_der, RELOAD_TIMEOUT)
        .await
        .expect("served on the new IPs");
    assert_tls_served(&nginx, &renewed).await;
    assert_challenge_served(&nginx, "tok-nginx", "nginx-key-auth").await;
    for ip in old_ips {
        let gone = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(SocketAddr::new(ip, 443)),
        )
        .await;
        assert!(!matches!(gone, Ok(Ok(_))), "old address {ip} still answers");
    }

    // Dropping everything leaves no process, namespace or link behind.
    let mut pids = pids_of(&h1);
    pids.extend(pids_of(&h2));
    assert!(
        pids.len() >= 5,
        "nginx master+worker, apache parent+child, python: {pids:?}"
    );
    drop(apache);
    drop(nginx);
    drop(_backend);
    drop(h1);
    drop(h2);
    drop(lan);
    assert_all_gone(&pids).await;
    assert_no_leftovers(&tag);
}

/// Two apaches (and two LANs, when run alongside the test above) side by side: separate
/// pid files, mutexes and runtime dirs; a graceful restart of one leaves the other alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apaches_side_by_side() {
    let Some(lan) = netns::require_namespaces("netns_smoke::two_apaches_side_by_side") else {
        return;
    };
    certfleet_tests::install_crypto_provider();
    let tag = lan.tag().to_owned();
    let files = WorkDir::new("netns-smoke-apaches").expect("work dir");
    let hosts: Vec<NsHost> = (1..=2)
        .map(|i| lan.add_host(&format!("apache{i}")).expect("host"))
        .collect();
    let mut servers = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let webroot = files.join(format!("webroot{i}"));
        let mut s = WebServer::new(
            h,
            WebServerOptions::new(
                ServerKind::Apache,
                h.ips(),
                CertPaths::in_dir(&files.join(format!("tls{i}"))),
            )
            .port80(Port80::Webroot(webroot.clone())),
        )
        .expect("apache config");
        s.start().await.expect("start apache");
        put_token(
            &webroot.join(".well-known/acme-challenge"),
            "t",
            &format!("host{i}"),
        );
        servers.push(s);
    }
    for (i, s) in servers.iter().enumerate() {
        assert_challenge_served(s, "t", &format!("host{i}")).await;
        assert_tls_served(s, s.bootstrap().expect("bootstrap written")).await;
    }
    let before = servers[1].pid();
    let certs = CertPaths::in_dir(&files.join("tls0"));
    check_reload_swaps_cert(&mut servers[0], &certs).await;
    assert!(servers[1].is_running() && servers[1].pid() == before);
    assert_tls_served(
        &servers[1],
        &servers[1].bootstrap().expect("bootstrap written").clone(),
    )
    .await;

    // stop() is clean: the ports close and the pid file's process is gone.
    servers[1].stop().await.expect("stop apache");
    let closed = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(servers[1].https_addrs()[0]),
    )
    .await;
    assert!(!matches!(closed, Ok(Ok(_))), "stopped apache still accepts");
    assert_challenge_served(&servers[0], "t", "host0").await;

    drop(servers);
    drop(hosts);
    drop(lan);
    assert_no_leftovers(&tag);
}

/// A LAN that is dropped while its hosts are still alive tears them down too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_lan_removes_its_hosts() {
    let Some(lan) = netns::require_namespaces("netns_smoke::dropping_the_lan_removes_its_hosts")
    else {
        return;
    };
    let tag = lan.tag().to_owned();
    let host = lan.add_host("orphan").expect("host");
    let mut sleeper = host.std_command("sleep");
    sleeper.arg("300");
    let files = WorkDir::new("netns-smoke-orphan").expect("work dir");
    let mut child =
        ChildGuard::spawn("sleeper", &mut sleeper, files.path()).expect("spawn sleep in namespace");
    // `ip netns exec` enters the namespace a moment after the spawn.
    let pid = child.pid() as i32;
    let host_ref = &host;
    certfleet_tests::wait_for(
        "the sleeper to run in the namespace",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async move { Ok((host_ref.pids()? == vec![pid]).then_some(())) },
    )
    .await
    .expect("sleeper in the namespace");
    drop(lan);
    assert_no_leftovers(&tag);
    assert!(
        child
            .wait_timeout(Duration::from_secs(5))
            .await
            .expect("wait for sleeper")
            .is_some(),
        "the process in the namespace was killed"
    );
    drop(host); // a no-op now
    assert_no_leftovers(&tag);
}
