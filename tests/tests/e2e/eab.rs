//! External account binding against a pebble that requires it: the right kid + HMAC key
//! gets a certificate installed; no EAB, or a wrong HMAC key, fails with the CA's problem
//! in `last_error` (each coordinator with its own state dir, so its own ACME account).

use std::collections::BTreeMap;

use base64::Engine as _;
use certfleet_tests::coordinator::CoordinatorOptions;
use certfleet_tests::{Agent, Coordinator, Pebble, PebbleOptions};

use crate::support::{assert_still_serving, check_installed, ISSUE_TIMEOUT};

const KID: &str = "kid-1";

fn random_hmac_key() -> String {
    let key: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

async fn coordinator(pebble: &Pebble, eab: Option<(&str, &str)>) -> Coordinator {
    let opts = CoordinatorOptions {
        eab_kid: eab.map(|(k, _)| k.to_owned()),
        eab_hmac_key: eab.map(|(_, h)| h.to_owned()),
        ..CoordinatorOptions::default()
    };
    Coordinator::start_with(pebble, opts)
        .await
        .expect("start coordinator")
}

async fn running_agent(pebble: &Pebble, coord: &Coordinator, name: &str) -> Agent {
    let mut agent = Agent::new(name, pebble.http_port()).expect("agent");
    agent.enroll_with(coord).await.expect("enroll");
    agent.start().expect("start agent");
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eab_required_right_missing_and_wrong_keys() {
    certfleet_tests::require_root().expect("root");
    certfleet_tests::install_crypto_provider();
    let key = random_hmac_key();
    let pebble = Pebble::start_with(PebbleOptions {
        eab_required: true,
        eab_keys: BTreeMap::from([(KID.to_owned(), key.clone())]),
        ..PebbleOptions::default()
    })
    .await
    .expect("start pebble with EAB");

    // Three coordinators, each with its own state dir (and ACME account).
    let mut good = coordinator(&pebble, Some((KID, &key))).await;
    let mut none = coordinator(&pebble, None).await;
    let wrong_key = loop {
        let k = random_hmac_key();
        if k != key {
            break k;
        }
    };
    let mut wrong = coordinator(&pebble, Some((KID, &wrong_key))).await;

    let mut a = running_agent(&pebble, &good, "eab-good").await;
    let mut b = running_agent(&pebble, &none, "eab-none").await;
    let mut c = running_agent(&pebble, &wrong, "eab-wrong").await;

    // (a) the right kid + key: installed.
    let root = pebble
        .issuing_root_der()
        .await
        .expect("pebble issuing root");
    let row = a
        .wait_installed(&good, ISSUE_TIMEOUT)
        .await
        .expect("with the right EAB the certificate is installed");
    check_installed(&a, &row, &root);

    // (b) no EAB: the CA says an external account is required.
    let row = b
        .wait_cert_state(&none, "failed", ISSUE_TIMEOUT)
        .await
        .expect("without EAB the certificate fails");
    eprintln!("no-EAB last_error: {:?}", row.last_error);
    let err = row
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("failed row without last_error: {row:?}"));
    assert!(
        err.contains("urn:ietf:params:acme:error:externalAccountRequired"),
        "last_error should carry the CA's problem type externalAccountRequired: {err:?}"
    );
    // pebble's detail: "ACME server policy requires newAccount requests must include a
    // value for the 'externalAccountBinding' field".
    assert!(
        err.to_lowercase().contains("externalaccountbinding"),
        "last_error should carry the CA's detail about external account binding: {err:?}"
    );
    assert_eq!(row.order_url, None, "no account, so no order: {row:?}");
    assert!(
        !b.fullchain_path().exists(),
        "nothing installed without EAB"
    );

    // (c) a wrong HMAC key: fails with the CA's complaint.
    let row = c
        .wait_cert_state(&wrong, "failed", ISSUE_TIMEOUT)
        .await
        .expect("with a wrong EAB key the certificate fails");
    eprintln!("wrong-EAB-key last_error: {:?}", row.last_error);
    let err = row
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("failed row without last_error: {row:?}"));
    // pebble: "external account binding JWS verification error: ...
    // (urn:ietf:params:acme:error:unauthorized)".
    assert!(
        err.contains("urn:ietf:params:acme:error:unauthorized"),
        "last_error should carry the CA's problem type (unauthorized): {err:?}"
    );
    assert!(
        err.to_lowercase().contains("external account binding"),
        "last_error should carry the CA's detail about the binding: {err:?}"
    );
    assert!(
        !err.contains(&wrong_key) && !err.contains(&key),
        "last_error must not reveal an HMAC key: {err:?}"
    );
    assert_eq!(row.order_url, None, "no account, so no order: {row:?}");
    assert!(
        !c.fullchain_path().exists(),
        "nothing installed with a wrong EAB key"
    );

    // No coordinator logged an HMAC key; all keep serving.
    for (what, coord) in [
        ("good", &mut good),
        ("none", &mut none),
        ("wrong", &mut wrong),
    ] {
        let logs = coord.logs();
        assert!(
            !logs.contains(&key) && !logs.contains(&wrong_key),
            "coordinator {what} logged an EAB HMAC key"
        );
        assert_still_serving(coord).await;
    }
}
