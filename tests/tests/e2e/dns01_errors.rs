//! DNS-01 when the DNS side goes wrong: a wrong TSIG key, records that never reach the
//! nameservers checked, a provider program that fails. Each leaves the certificate failed
//! with the provider's own message, nothing written left behind, no validation asked of
//! the CA (so none is spent), and a retry planned; the coordinator keeps running.

use certfleet_tests::dns::{KnotServer, ZONE};
use certfleet_tests::fleet::{Challenge, HostSpec};
use certfleet_tests::netns::{require_namespaces, Lan};
use certfleet_tests::webserver::ServerKind;
use certfleet_tests::CertRow;
use serde_json::Value;

use crate::wildcard::{rfc2136_provider, secret_file, world_with, World, WILDCARD_POLICY};

/// Enrolls one nginx host and waits until its certificate has failed with an error
/// containing every one of `wants`; returns that row.
async fn first_failure(w: &World, lan: &Lan, name: &str, wants: &[&str]) -> CertRow {
    let mut h = w
        .enrolled_host(
            lan,
            HostSpec::new(name, ServerKind::Nginx, Challenge::Webroot),
        )
        .await;
    let what = format!("failed with {wants:?}");
    let row = w
        .wait_rows(&mut h, 1, &what, |r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| wants.iter().all(|w| e.contains(w)))
        })
        .await
        .remove(0);
    assert!(row.serial.is_none(), "nothing may be issued: {row:?}");
    row
}

/// Nothing left in the zone, no validation asked of the CA, a retry planned, the daemon up.
async fn assert_clean_failure(w: &mut World, row: &CertRow) {
    let left = w
        .knot
        .resolve(&format!("_acme-challenge.{ZONE}"), "TXT")
        .await
        .expect("kdig");
    assert!(left.values.is_empty(), "TXT records left behind: {left:?}");
    let records: Vec<Value> = w
        .coord
        .audit_records()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r["cert_id"] == row.cert_id.as_str())
        .collect();
    for kind in [
        "challenge_presented",
        "challenge_validated",
        "certificate_issued",
    ] {
        assert!(
            !records.iter().any(|r| r["kind"] == kind),
            "the CA must not have been asked ({kind}): {records:#?}"
        );
    }
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "challenge_failed" && r["details"]["type"] == "dns-01"),
        "the failure is audited: {records:#?}"
    );
    assert!(
        row.next_action_unix.is_some(),
        "a retry is planned: {row:?}"
    );
    assert!(
        w.coord
            .child()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none()),
        "the coordinator is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_with_a_wrong_tsig_key_fails_cleanly() {
    let Some(lan) = require_namespaces("dns01_errors::wrong_tsig") else {
        return;
    };
    let mut w = world_with(
        &lan,
        |knot, dir| {
            // A well-formed secret the server does not know.
            let file = secret_file(dir, "c2VjcmV0LXRoZS1zZXJ2ZXItZG9lcy1ub3Qta25vdyE=");
            rfc2136_provider(knot, &file, None, "20s")
        },
        WILDCARD_POLICY,
    )
    .await;
    let row = first_failure(&w, &lan, "dtsig", &[ZONE, "certfleet-update"]).await;
    assert_clean_failure(&mut w, &row).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_records_that_never_propagate_fail_before_the_ca_is_asked() {
    let Some(lan) = require_namespaces("dns01_errors::no_propagation") else {
        return;
    };
    // The nameserver checked is a second knot that never gets the updates.
    let other = KnotServer::start().await.expect("second knot");
    let check = other.addr();
    let mut w = world_with(
        &lan,
        |knot, dir| {
            let file = secret_file(dir, &knot.tsig_key().secret);
            rfc2136_provider(knot, &file, Some(check), "3s")
        },
        WILDCARD_POLICY,
    )
    .await;
    let row = first_failure(&w, &lan, "dprop", &[&check.to_string()]).await;
    assert_clean_failure(&mut w, &row).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_exec_provider_exiting_non_zero_fails_with_its_stderr() {
    let Some(lan) = require_namespaces("dns01_errors::exec_fails") else {
        return;
    };
    let mut w = world_with(
        &lan,
        |_, _| {
            format!(
                "[[dns_provider]]\nname = \"script\"\nzones = [\"{ZONE}\"]\nkind = \"exec\"\n\
                 command = [\"/bin/sh\", \"-c\", \"echo boom-from-the-script >&2; exit 3\", \"dns-script\"]\n"
            )
        },
        WILDCARD_POLICY,
    )
    .await;
    let row = first_failure(&w, &lan, "dexec", &["boom-from-the-script"]).await;
    assert_clean_failure(&mut w, &row).await;
}
