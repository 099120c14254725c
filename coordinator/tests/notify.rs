//! The coordinator binary under a fake systemd: `serve` with `$NOTIFY_SOCKET` pointing at a
//! datagram socket the test bound sends READY=1 only once it serves (the gRPC port accepts,
//! `/readyz` says ready), RELOADING=1 (with MONOTONIC_USEC) … READY=1 around a SIGHUP
//! reload, good or refused, and STOPPING=1 when asked to stop; `/healthz` answers
//! meanwhile.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The coordinator binary with no `CERTFLEET_*` variable of ours: the test runner's
/// environment (e.g. `CERTFLEET_CHAOS_SEED` from tests/run.sh) would otherwise override
/// the config the test writes.
fn coordinator(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CERTFLEET_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The next notification, as its lines.
fn next_message(sock: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification from the daemon within the timeout");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn serve_notifies_ready_once_serving_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, metrics) = (free_port(), free_port());
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1
state_dir = "{}"
[server]
listen = "127.0.0.1:{grpc}"
ips = ["127.0.0.1"]
[metrics]
listen = "127.0.0.1:{metrics}"
[[issuer]]
name = "nowhere"
directory = "https://127.0.0.1:9/dir"
allow_private_ips = true
"#,
            dir.path().join("state").display()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_certfleet-coordinator");
    let init = coordinator(bin)
        .arg("--config")
        .arg(&config)
        .arg("init")
        .output()
        .expect("run init");
    assert!(init.status.success(), "init: {init:?}");

    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let started = Instant::now();
    let mut child = coordinator(bin)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start serve");

    let ready = next_message(&sock);
    assert_eq!(ready[0], "READY=1", "{ready:?}");
    assert_eq!(
        ready.get(1).map(String::as_str),
        Some(format!("STATUS=serving on 127.0.0.1:{grpc}").as_str())
    );
    // Ready means serving: the gRPC port and the metrics port answer now, no retry.
    std::net::TcpStream::connect(("127.0.0.1", grpc)).expect("gRPC port accepts once READY=1");
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok\n".into()));
    assert_eq!(
        http_get(metrics, "/readyz"),
        (200, "ready: serving; store readable\n".into())
    );
    eprintln!("READY=1 after {:?}", started.elapsed());

    // SIGHUP: a reload, told to systemd as RELOADING=1 + MONOTONIC_USEC … READY=1; the
    // daemon goes on serving. The same file: applied, no change.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let reloading = |msg: &[String]| {
        assert_eq!(msg[0], "RELOADING=1", "{msg:?}");
        let usec = msg[1]
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC");
        assert!(usec.parse::<u64>().expect("a number") > 0, "{msg:?}");
        assert_eq!(msg[2], "STATUS=reloading the configuration");
    };
    hup();
    reloading(&next_message(&sock));
    assert_eq!(
        next_message(&sock),
        [
            "READY=1",
            "STATUS=serving; configuration reloaded (no change)"
        ]
    );
    // A setting read only at start changed: the reload is refused, the daemon serves on.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(&format!("127.0.0.1:{grpc}"), "127.0.0.1:1"),
    )
    .expect("config");
    hup();
    reloading(&next_message(&sock));
    let refused = next_message(&sock);
    assert_eq!(refused[0], "READY=1");
    assert!(
        refused[1].contains("the last reload was refused"),
        "{refused:?}"
    );
    std::net::TcpStream::connect(("127.0.0.1", grpc)).expect("still serving on the old port");
    assert!(child.try_wait().expect("try_wait").is_none());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(next_message(&sock), ["STOPPING=1"]);
    let status = child.wait().expect("wait");
    assert!(status.success(), "serve exit after SIGTERM: {status:?}");
}

#[test]
fn without_notify_socket_nothing_is_sent_and_serve_runs() {
    // The same daemon outside systemd: no NOTIFY_SOCKET, no error, `/readyz` still ready.
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, metrics) = (free_port(), free_port());
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nstate_dir = \"{}\"\n[server]\nlisten = \"127.0.0.1:{grpc}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[[issuer]]\nname = \"nowhere\"\ndirectory = \"https://127.0.0.1:9/dir\"\nallow_private_ips = true\n",
            dir.path().join("state").display()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_certfleet-coordinator");
    let init = coordinator(bin)
        .args(["--config"])
        .arg(&config)
        .arg("init")
        .output()
        .expect("init");
    assert!(init.status.success(), "init: {init:?}");
    let child = coordinator(bin)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok()
            && http_get(metrics, "/readyz").0 == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("cannot notify systemd"), "{log}");
}
