//! exec: lego's interface (`present|cleanup FQDN VALUE`), argv without a shell, errors and
//! timeouts.

use super::{name, providers};
use certfleet_coordinator::dns::DnsErrorKind;
use certfleet_tests::workdir::WorkDir;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes an executable script.
fn script(dir: &Path, file: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(file);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod script");
    path
}

fn exec_provider(command: Vec<String>, timeout: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "hook",
        "zones": ["example.test"],
        "kind": "exec",
        "command": command,
        "timeout": timeout,
    })
}

#[tokio::test]
async fn the_program_gets_lego_style_argv_for_each_value() {
    let dir = WorkDir::new("dns-exec").unwrap();
    let log = dir.join("calls.log");
    // One line per call: each argument in brackets, so spaces or globs would show.
    let prog = script(
        dir.path(),
        "hook.sh",
        &format!(
            "for a in \"$@\"; do printf '[%s]' \"$a\"; done >> '{}'; echo >> '{}'",
            log.display(),
            log.display()
        ),
    );
    let dns = providers(&[exec_provider(
        vec![prog.display().to_string(), "--flag with space".into()],
        "10s",
    )]);
    let set = dns
        .present(&[
            (name("example.test"), "wild*card".to_owned()),
            (name("example.test"), "apex".to_owned()),
        ])
        .await
        .expect("present");
    assert_eq!(set.records.len(), 1);
    dns.cleanup(&set).await.expect("cleanup");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        vec![
            "[--flag with space][present][_acme-challenge.example.test.][wild*card]",
            "[--flag with space][present][_acme-challenge.example.test.][apex]",
            "[--flag with space][cleanup][_acme-challenge.example.test.][wild*card]",
            "[--flag with space][cleanup][_acme-challenge.example.test.][apex]",
        ]
    );
}

#[tokio::test]
async fn a_failing_program_is_named_with_its_status_and_stderr() {
    let dir = WorkDir::new("dns-exec-fail").unwrap();
    let prog = script(
        dir.path(),
        "fail.sh",
        "echo 'progress on stdout'; echo 'api says: zone locked' >&2; exit 3",
    );
    let dns = providers(&[exec_provider(vec![prog.display().to_string()], "10s")]);
    let err = dns
        .present(&[(name("www.example.test"), "v".to_owned())])
        .await
        .expect_err("exit 3");
    let text = err.to_string();
    for part in [
        prog.display().to_string().as_str(),
        "exit status: 3",
        "api says: zone locked",
        "_acme-challenge.www.example.test",
        "\"hook\"",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    assert!(!text.contains("progress on stdout"), "{text}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_hanging_program_is_killed_at_the_timeout() {
    let dir = WorkDir::new("dns-exec-hang").unwrap();
    let pid_file = dir.join("pid");
    let prog = script(
        dir.path(),
        "hang.sh",
        &format!("echo $$ > '{}'; exec sleep 60", pid_file.display()),
    );
    let dns = providers(&[exec_provider(vec![prog.display().to_string()], "1s")]);
    let started = Instant::now();
    let err = dns
        .present(&[(name("example.test"), "v".to_owned())])
        .await
        .expect_err("timeout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind, DnsErrorKind::Timeout, "{err}");
    assert!(
        err.to_string().contains("did not finish within 1s"),
        "{err}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Killed and reaped: no such process any more.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the program (pid {pid}) still runs"
    );
}

#[tokio::test]
async fn a_missing_program_is_a_config_error() {
    let dns = providers(&[exec_provider(vec!["/nonexistent/dns-hook".into()], "5s")]);
    let err = dns
        .present(&[(name("example.test"), "v".to_owned())])
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("/nonexistent/dns-hook"), "{err}");
}
