//! Crash safety of install: the agent is killed with SIGKILL at every step of an install
//! (after each staged file, once the new version is complete, once the paths are links,
//! right after the switch, after the reload). At the instant of the kill the target holds
//! the old pair or the new pair — every file whole, never a mix; once the agent is back it
//! repairs the target before anything else (finishing a switched install, dropping an
//! unswitched one), and the fleet ends with the new certificate installed and a key that
//! matches it.
//!
//! The kill points come from the agent's test hook `CERTFLEET_AGENT_TEST_PAUSE_AT`: the
//! agent stops at the named point and the test kills it there, so every point is hit
//! exactly rather than by timing luck.

use std::path::Path;
use std::time::{Duration, Instant};

use certfleet_tests::{pki, tlsutil, Agent};

use crate::support::{pebble_and_coordinator, ISSUE_TIMEOUT};

const PAUSE_ENV: &str = "CERTFLEET_AGENT_TEST_PAUSE_AT";

/// Serial of the leaf in a whole PEM certificate file, or why it is not whole.
fn leaf_serial(path: &Path) -> Result<String, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = tlsutil::certs_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = certs
        .first()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?;
    pki::leaf_info(first)
        .map(|l| l.serial_hex)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// What the target holds right now: (cert serial, fullchain serial, chain parses, key SPKI).
struct Snapshot {
    cert: String,
    fullchain: String,
    key_spki: Vec<u8>,
}

fn snapshot(a: &Agent) -> Result<Snapshot, String> {
    let cert = leaf_serial(&a.cert_path())?;
    let fullchain = leaf_serial(&a.fullchain_path())?;
    let chain = std::fs::read_to_string(a.chain_path()).map_err(|e| e.to_string())?;
    tlsutil::certs_from_pem(&chain).map_err(|e| format!("chain: {e}"))?;
    let key = std::fs::read_to_string(a.key_path()).map_err(|e| e.to_string())?;
    let key_spki = pki::key_spki_from_pem(&key).map_err(|e| format!("key: {e}"))?;
    Ok(Snapshot {
        cert,
        fullchain,
        key_spki,
    })
}

fn spki_of(path: &Path) -> Vec<u8> {
    pki::leaf_info_from_file(path).expect("leaf").spki_der
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_install_step_leaves_a_whole_matching_pair() {
    let (pebble, coord) = pebble_and_coordinator().await;
    let mut a = Agent::new("crashy", pebble.http_port()).expect("agent");
    let host = a.enroll_with(&coord).await.expect("enroll");
    a.start().expect("start");
    let row = a
        .wait_installed(&coord, ISSUE_TIMEOUT)
        .await
        .expect("first install");
    let mut old_serial = pki::normalize_serial(row.serial.as_deref().expect("serial"));
    let mut old_spki = spki_of(&a.cert_path());

    // The harness's target writes cert, chain, fullchain and key (in that order).
    let points = [
        "staging:0",
        "staging:1",
        "staging:2",
        "staging:3",
        "staged",
        "linked",
        "swapped",
        "reloaded",
    ];
    for point in points {
        a.kill().await.expect("kill");
        let reloads_before = a.reload_count();
        a.start_with_env(&[(PAUSE_ENV, point)])
            .expect("start paused");
        coord
            .wait_connected(&host, true, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}; agent logs:\n{}", a.logs()));
        let out = coord.renew(&["--host", &host]).await.expect("renew");
        assert!(out.status.success(), "renew: {out:?}");

        // Wait until the agent stops at the point.
        let started = Instant::now();
        // (This run's log only: earlier runs reached earlier points.)
        while !a
            .child()
            .is_some_and(|c| c.logs().contains("test pause point reached"))
        {
            assert!(
                started.elapsed() < ISSUE_TIMEOUT,
                "agent never reached {point}; logs:\n{}",
                a.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let paused_after = started.elapsed();
        a.kill().await.expect("kill -9 at the point");

        // At the instant of the kill: every file whole, each the old or the new version.
        let snap = snapshot(&a).unwrap_or_else(|e| panic!("at {point}: a file is not whole: {e}"));
        let expect_new = matches!(point, "swapped" | "reloaded");
        let cert_new = snap.cert != old_serial;
        let full_new = snap.fullchain != old_serial;
        let key_new = snap.key_spki != old_spki;
        assert_eq!(
            (cert_new, full_new, key_new),
            (expect_new, expect_new, expect_new),
            "at {point}: cert/fullchain/key new = {cert_new}/{full_new}/{key_new} (a mix)"
        );
        assert_eq!(
            snap.key_spki,
            spki_of(&a.cert_path()),
            "at {point}: key matches cert"
        );

        // Back up without the hook: it repairs, reconnects, and the new certificate ends
        // up installed with a matching key.
        let restarted = Instant::now();
        a.start().expect("restart");
        let deadline = Instant::now() + ISSUE_TIMEOUT;
        let row = loop {
            let row = coord
                .certs()
                .await
                .expect("certs")
                .into_iter()
                .find(|c| c.host_id == host)
                .expect("row");
            let serial = row.serial.as_deref().map(pki::normalize_serial);
            let installed = row.installed_serial.as_deref().map(pki::normalize_serial);
            if row.state == "installed"
                && serial.is_some()
                && serial != Some(old_serial.clone())
                && installed == serial
            {
                break row;
            }
            assert!(
                Instant::now() < deadline,
                "after the kill at {point} the new certificate was not installed: {row:?}\nagent logs:\n{}",
                a.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let new_serial = pki::normalize_serial(row.serial.as_deref().expect("serial"));
        let snap = snapshot(&a).expect("whole files after recovery");
        assert_eq!(snap.cert, new_serial, "after {point}: cert");
        assert_eq!(snap.fullchain, new_serial, "after {point}: fullchain");
        assert_eq!(
            snap.key_spki,
            spki_of(&a.cert_path()),
            "after {point}: key matches cert"
        );
        let journal = a.state_dir().join("installs/default.json");
        assert!(!journal.exists(), "after {point}: journal left behind");
        let store = a
            .cert_path()
            .parent()
            .expect("dir")
            .join(".certfleet-default");
        let leftovers: Vec<_> = std::fs::read_dir(&store)
            .expect("store")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".staging-") || n.starts_with(".current"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "after {point}: staging left: {leftovers:?}"
        );
        for path in [
            a.cert_path(),
            a.chain_path(),
            a.fullchain_path(),
            a.key_path(),
        ] {
            assert!(
                std::fs::read_link(&path).is_ok_and(|l| l.starts_with(store.join("current"))),
                "after {point}: {} is not a link into the store",
                path.display()
            );
        }
        // A switched install was finished by the agent itself (with a reload) or by the
        // coordinator's re-sent install; either way the web server was reloaded.
        assert!(
            a.reload_count() > reloads_before,
            "after {point}: no reload"
        );
        eprintln!(
            "{point}: ok ({old_serial} -> {new_serial}; paused {paused_after:?} after the renewal request, repaired and installed {:?} after the restart)",
            restarted.elapsed()
        );
        old_serial = new_serial;
        old_spki = snap.key_spki;
    }
}
