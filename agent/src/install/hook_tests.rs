//! Deploy hooks: config, environment, real hook processes, and an install that runs one.

use super::*;
use crate::install::tests::{fixture, ips, sign};
use crate::keys::PendingKeys;
use crate::target::TargetConfig;
use certfleet_proto::v1::KeyType;
use std::collections::{BTreeMap, HashMap};

fn target(toml_text: &str) -> Target {
    let cfg: TargetConfig = toml::from_str(toml_text).unwrap();
    cfg.resolve("web", &["127.0.0.1".parse().unwrap()]).unwrap()
}

fn resolve_err(toml_text: &str) -> String {
    let cfg: TargetConfig = toml::from_str(toml_text).unwrap();
    cfg.resolve("web", &["127.0.0.1".parse().unwrap()])
        .unwrap_err()
}

fn leaf(ips: &[&str], names: &[&str]) -> CertInfo {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    for ip in ips {
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
    }
    p.serial_number = Some(vec![0x0a, 0xbc].into());
    CertInfo::from_der(p.self_signed(&key).unwrap().der()).unwrap()
}

fn env_map(t: &Target, l: &CertInfo) -> HashMap<&'static str, String> {
    hook_env(t, l).into_iter().collect()
}

#[test]
fn config_resolves_with_a_default_timeout_and_refuses_mistakes() {
    let t = target("preset = \"nginx\"\ndir = \"/etc/tls\"\ndeploy_hook = [\"/usr/local/bin/push\", \"--all\"]\n");
    assert_eq!(
        t.deploy_hook,
        Some(DeployHook {
            argv: vec!["/usr/local/bin/push".into(), "--all".into()],
            timeout: DEFAULT_TIMEOUT
        })
    );
    let t = target("preset = \"nginx\"\ndir = \"/etc/tls\"\ndeploy_hook = [\"/x\"]\ndeploy_hook_timeout = \"2m\"\n");
    assert_eq!(t.deploy_hook.unwrap().timeout, Duration::from_secs(120));
    assert_eq!(
        target("preset = \"nginx\"\ndir = \"/etc/tls\"\ndeploy_hook = []\n").deploy_hook,
        None
    );
    assert_eq!(
        target("preset = \"nginx\"\ndir = \"/etc/tls\"\n").deploy_hook,
        None
    );

    let base = "preset = \"nginx\"\ndir = \"/etc/tls\"\n";
    let e = resolve_err(&format!("{base}deploy_hook = [\"push.sh\"]\n"));
    assert!(e.contains("must be an absolute path"), "{e}");
    let e = resolve_err(&format!(
        "{base}deploy_hook = [\"/x\"]\ndeploy_hook_timeout = \"soon\"\n"
    ));
    assert!(
        e.contains("deploy_hook_timeout = \"soon\"") && e.contains("\"60s\""),
        "{e}"
    );
    let e = resolve_err(&format!(
        "{base}deploy_hook = [\"/x\"]\ndeploy_hook_timeout = \"10m\"\n"
    ));
    assert!(e.contains("between 1s and 120s"), "{e}");
    let e = resolve_err(&format!(
        "{base}deploy_hook = [\"/x\"]\ndeploy_hook_timeout = \"100ms\"\n"
    ));
    assert!(e.contains("between 1s and 120s"), "{e}");
    let e = resolve_err(&format!("{base}deploy_hook_timeout = \"30s\"\n"));
    assert!(e.contains("no deploy_hook"), "{e}");
}

#[test]
fn env_names_what_each_layout_has_and_leaves_the_rest_unset() {
    let l = leaf(
        &["192.0.2.7", "2001:db8::7"],
        &["www.example.test", "example.test"],
    );
    // nginx: full chain + key, no separate leaf or chain file.
    let e = env_map(&target("preset = \"nginx\"\ndir = \"/etc/tls/www\"\n"), &l);
    assert_eq!(e["CERTFLEET_TARGET"], "web");
    assert_eq!(e["CERTFLEET_SERIAL"], "0abc");
    assert_eq!(
        e["CERTFLEET_IDENTIFIERS"],
        "192.0.2.7,2001:db8::7,example.test,www.example.test"
    );
    assert_eq!(
        e["RENEWED_DOMAINS"],
        "192.0.2.7 2001:db8::7 example.test www.example.test"
    );
    assert_eq!(e["CERTFLEET_FULLCHAIN_PATH"], "/etc/tls/www/fullchain.pem");
    assert_eq!(e["CERTFLEET_KEY_PATH"], "/etc/tls/www/privkey.pem");
    assert_eq!(e["LEGO_CERT_PATH"], "/etc/tls/www/fullchain.pem");
    assert_eq!(e["LEGO_CERT_KEY_PATH"], "/etc/tls/www/privkey.pem");
    assert_eq!(e["LEGO_CERT_DOMAIN"], "192.0.2.7");
    assert_eq!(e["RENEWED_LINEAGE"], "/etc/tls/www");
    for unset in [
        "CERTFLEET_CERT_PATH",
        "CERTFLEET_CHAIN_PATH",
        "CERTFLEET_COMBINED_PATH",
    ] {
        assert!(!e.contains_key(unset), "{unset} set for nginx");
    }

    // apache: leaf + chain + key; lego's cert path falls back to the leaf.
    let e = env_map(&target("preset = \"apache\"\ndir = \"/etc/tls/a\"\n"), &l);
    assert_eq!(e["CERTFLEET_CERT_PATH"], "/etc/tls/a/cert.pem");
    assert_eq!(e["CERTFLEET_CHAIN_PATH"], "/etc/tls/a/chain.pem");
    assert_eq!(e["LEGO_CERT_PATH"], "/etc/tls/a/cert.pem");
    assert!(!e.contains_key("CERTFLEET_FULLCHAIN_PATH"));

    // certbot: the lineage is live/<name>, as certbot's own hooks expect.
    let e = env_map(
        &target("preset = \"certbot\"\ndir = \"/etc/letsencrypt\"\n"),
        &l,
    );
    assert_eq!(e["RENEWED_LINEAGE"], "/etc/letsencrypt/live/web");
    assert_eq!(
        e["CERTFLEET_FULLCHAIN_PATH"],
        "/etc/letsencrypt/live/web/fullchain.pem"
    );

    // haproxy: one combined file; no key or lego paths.
    let e = env_map(
        &target("preset = \"haproxy\"\ndir = \"/etc/haproxy/certs\"\n"),
        &l,
    );
    assert_eq!(e["CERTFLEET_COMBINED_PATH"], "/etc/haproxy/certs/web.pem");
    for unset in ["CERTFLEET_KEY_PATH", "LEGO_CERT_PATH", "LEGO_CERT_KEY_PATH"] {
        assert!(!e.contains_key(unset), "{unset} set for haproxy");
    }

    // A name-only certificate: lego's domain is its first name.
    let e = env_map(
        &target("preset = \"nginx\"\ndir = \"/x\"\n"),
        &leaf(&[], &["b.example.test", "a.example.test"]),
    );
    assert_eq!(e["LEGO_CERT_DOMAIN"], "a.example.test");
}

fn hook(script: &str, timeout: Duration) -> DeployHook {
    DeployHook {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        timeout,
    }
}

#[tokio::test]
async fn a_failing_hook_reports_its_exit_code_and_the_end_of_its_stderr() {
    let r = run(
        &hook(
            "echo early >&2; head -c 5000 /dev/zero | tr '\\0' x >&2; echo ' the end' >&2; exit 3",
            DEFAULT_TIMEOUT,
        ),
        &[],
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.status, "exit status 3");
    assert!(
        r.stderr_tail.len() <= STDERR_TAIL,
        "{}",
        r.stderr_tail.len()
    );
    assert!(r.stderr_tail.ends_with("xx the end"), "{}", r.stderr_tail);
    assert!(!r.stderr_tail.contains("early"));

    let ok = run(&hook("echo fine; exit 0", DEFAULT_TIMEOUT), &[]).await;
    assert!(
        ok.ok && ok.exit_code == Some(0) && ok.status == "exit status 0",
        "{ok:?}"
    );
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let started = Instant::now();
    let r = run(
        &hook(
            &format!(
                "sleep 300 & echo $! > {}; echo waiting >&2; wait",
                pidfile.display()
            ),
            Duration::from_secs(1),
        ),
        &[],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.ok);
    assert_eq!(r.exit_code, None);
    assert!(r.status.starts_with("timed out after 1 s"), "{}", r.status);
    assert_eq!(r.stderr_tail, "waiting");
    // The background child was in the hook's process group: gone too.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut gone = false;
    for _ in 0..50 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init to reap it.
        if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the hook's background child {pid} survived the timeout"
    );
}

#[tokio::test]
async fn a_hook_that_exits_while_a_child_holds_its_pipes_is_not_a_timeout() {
    let started = Instant::now();
    let r = run(&hook("sleep 30 >&2 & exit 0", Duration::from_secs(20)), &[]).await;
    assert!(r.ok, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_hook_that_cannot_start_is_reported() {
    let r = run(
        &DeployHook {
            argv: vec!["/nonexistent/hook".into()],
            timeout: DEFAULT_TIMEOUT,
        },
        &[],
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, None);
    assert!(
        r.status.starts_with("cannot run \"/nonexistent/hook\""),
        "{}",
        r.status
    );
}

/// A real install into a target with a hook script that records its environment: the
/// values name the installed files, and a repeated install does not run it again.
#[tokio::test]
async fn an_install_runs_the_hook_once_with_the_installed_paths() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let record = dir.path().join("hook-env");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nenv | grep -E '^(CERTFLEET|RENEWED|LEGO)_' | sort >> {}\necho run >> {}.runs\n", record.display(), record.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t = target(&format!(
        "cert = \"{d}/tls/cert.pem\"\nfullchain = \"{d}/tls/fullchain.pem\"\nkey = \"{d}/tls/key.pem\"\nverify = []\ndeploy_hook = [\"{}\"]\n",
        script.display()
    ));
    let csr = pending
        .create_csr(&ips(), KeyType::EcdsaP256, None)
        .unwrap();
    let chain = sign(&csr);
    let out = inst
        .install(&t, &chain, &ips(), &pending, &BTreeMap::new())
        .await
        .unwrap();
    let report = out.deploy_hook.expect("the hook ran");
    assert!(report.ok, "{report:?}");
    let env: HashMap<String, String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    assert_eq!(env["CERTFLEET_TARGET"], "web");
    assert_eq!(env["CERTFLEET_SERIAL"], out.serial);
    assert_eq!(env["CERTFLEET_IDENTIFIERS"], "127.0.0.1");
    assert_eq!(env["CERTFLEET_CERT_PATH"], format!("{d}/tls/cert.pem"));
    assert_eq!(
        env["CERTFLEET_FULLCHAIN_PATH"],
        format!("{d}/tls/fullchain.pem")
    );
    assert_eq!(env["CERTFLEET_KEY_PATH"], format!("{d}/tls/key.pem"));
    assert_eq!(env["RENEWED_LINEAGE"], format!("{d}/tls"));
    assert_eq!(env["RENEWED_DOMAINS"], "127.0.0.1");
    assert_eq!(env["LEGO_CERT_PATH"], format!("{d}/tls/fullchain.pem"));
    assert_eq!(env["LEGO_CERT_KEY_PATH"], format!("{d}/tls/key.pem"));
    assert_eq!(env["LEGO_CERT_DOMAIN"], "127.0.0.1");
    assert!(!env.contains_key("CERTFLEET_CHAIN_PATH"));
    // The paths it is given hold what was installed.
    let installed = std::fs::read_to_string(&env["CERTFLEET_FULLCHAIN_PATH"]).unwrap();
    assert!(installed.starts_with("-----BEGIN CERTIFICATE-----"));

    // The same certificate again (a repeated command): checked, not hooked again, and the
    // first run's result reported again (the coordinator may have lost the first answer).
    let again = inst
        .install(&t, &chain, &ips(), &pending, &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(again.serial, out.serial);
    let again = again.deploy_hook.expect("the first run's result");
    assert_eq!(summary(&again), summary(&report));
    let runs = std::fs::read_to_string(format!("{}.runs", record.display())).unwrap();
    assert_eq!(runs.lines().count(), 1);
}

/// What is reported of a run (its duration in whole milliseconds, as the proto has it).
fn summary(r: &HookReport) -> (bool, &str, Option<i32>, &str, u128) {
    (
        r.ok,
        &r.status,
        r.exit_code,
        &r.stderr_tail,
        r.duration.as_millis(),
    )
}

/// A target whose hook appends a line to `runs` and then runs `script` (sh), and a signed
/// chain for a pending key, not installed yet.
struct Hooked {
    dir: tempfile::TempDir,
    pending: PendingKeys,
    inst: Installer,
    t: Target,
    chain: String,
    runs: std::path::PathBuf,
}

impl Hooked {
    fn new(script: &str) -> Self {
        let (dir, pending, inst) = fixture();
        let d = dir.path().display();
        let runs = dir.path().join("runs");
        let t = target(&format!(
            "fullchain = \"{d}/tls/fullchain.pem\"\nkey = \"{d}/tls/key.pem\"\nverify = []\n\
             deploy_hook = [\"/bin/sh\", \"-c\", \"echo run >> {runs}; {script}\"]\n",
            runs = runs.display()
        ));
        let csr = pending
            .create_csr(&ips(), KeyType::EcdsaP256, None)
            .unwrap();
        let chain = sign(&csr);
        Hooked {
            dir,
            pending,
            inst,
            t,
            chain,
            runs,
        }
    }
}

/// A failed run is recorded with the marker: after a restart (a new installer on the same
/// state), a repeated install reports that failure again, with the same status and stderr,
/// without running the hook again. A marker an older agent wrote (the bare serial) still
/// counts as "ran", with nothing to report.
#[tokio::test]
async fn a_repeated_install_reports_the_recorded_failure_of_the_one_run() {
    let h = Hooked::new("echo cannot push >&2; exit 3");
    let first = h
        .inst
        .install(&h.t, &h.chain, &ips(), &h.pending, &BTreeMap::new())
        .await
        .unwrap()
        .deploy_hook
        .expect("the hook ran");
    assert_eq!((first.ok, first.exit_code), (false, Some(3)));

    let restarted = Installer::new(&h.dir.path().join("state")).unwrap();
    let again = restarted
        .install(&h.t, &h.chain, &ips(), &h.pending, &BTreeMap::new())
        .await
        .unwrap()
        .deploy_hook
        .expect("the recorded result");
    assert_eq!(summary(&again), summary(&first));
    assert_eq!(
        (again.status.as_str(), again.stderr_tail.as_str()),
        ("exit status 3", "cannot push")
    );
    assert_eq!(std::fs::read_to_string(&h.runs).unwrap().lines().count(), 1);
    let marker = h.dir.path().join("state/installs/web.hook");
    assert_eq!(crate::install::tests::mode(&marker), 0o600);

    // The marker of an older agent: the serial alone.
    let serial = crate::install::inspect(&h.t).unwrap().serial;
    std::fs::write(&marker, format!("{serial}\n")).unwrap();
    let old = restarted
        .install(&h.t, &h.chain, &ips(), &h.pending, &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(old.deploy_hook, None);
    assert_eq!(std::fs::read_to_string(&h.runs).unwrap().lines().count(), 1);
}

/// Once the agent is stopping, an install that gets to its hook does not start it (the
/// install stands, nothing is recorded); the repeat of the install after the restart runs
/// it.
#[tokio::test]
async fn a_stopping_agent_starts_no_hook_and_the_repeat_after_the_restart_runs_it() {
    let h = Hooked::new("true");
    h.inst.hooks.stop_starting();
    let out = h
        .inst
        .install(&h.t, &h.chain, &ips(), &h.pending, &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(out.deploy_hook, None);
    assert_eq!(
        crate::install::inspect(&h.t).map(|i| i.serial),
        Some(out.serial)
    );
    assert!(!h.runs.exists(), "the hook must not have run");
    assert!(h.inst.hooks.running_until().is_none());

    let restarted = Installer::new(&h.dir.path().join("state")).unwrap();
    let again = restarted
        .install(&h.t, &h.chain, &ips(), &h.pending, &BTreeMap::new())
        .await
        .unwrap();
    assert!(again.deploy_hook.expect("the hook ran now").ok);
    assert_eq!(std::fs::read_to_string(&h.runs).unwrap().lines().count(), 1);
}

/// A hook that fails does not undo the install: the outcome is Ok, with the failure in it.
#[tokio::test]
async fn a_failing_hook_leaves_the_certificate_installed() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let t = target(&format!(
        "fullchain = \"{d}/tls/fullchain.pem\"\nkey = \"{d}/tls/key.pem\"\nverify = []\ndeploy_hook = [\"/bin/sh\", \"-c\", \"echo cannot push >&2; exit 3\"]\n"
    ));
    let csr = pending
        .create_csr(&ips(), KeyType::EcdsaP256, None)
        .unwrap();
    let out = inst
        .install(&t, &sign(&csr), &ips(), &pending, &BTreeMap::new())
        .await
        .unwrap();
    let h = out.deploy_hook.unwrap();
    assert_eq!(
        (h.ok, h.exit_code, h.stderr_tail.as_str()),
        (false, Some(3), "cannot push")
    );
    assert_eq!(
        crate::install::inspect(&t).map(|i| i.serial),
        Some(out.serial)
    );
}
