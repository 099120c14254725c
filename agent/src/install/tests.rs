//! Installs into temp dirs with a throwaway CA: both layouts, rollback, recovery.

use super::files::{exists, promote, staged_path};
use super::journal::{CertbotJournal, Phase, VersionedJournal};
use super::versioned::{current_version, version_file_name};
use super::*;
use crate::target::TargetConfig;
use certfleet_proto::v1::KeyType;
use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use std::os::unix::fs::PermissionsExt;

/// Signs the agent's CSR with a throwaway CA: a real chain for the install logic.
pub(crate) fn sign(csr_der: &[u8]) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let csr = rcgen::CertificateSigningRequestParams::from_der(
        &CertificateSigningRequestDer::from(csr_der),
    )
    .unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let leaf = params.signed_by(&csr.public_key, &issuer).unwrap();
    format!("{}{}", leaf.pem(), ca_cert.pem())
}

fn target(toml_text: &str) -> Target {
    let cfg: TargetConfig = toml::from_str(toml_text).unwrap();
    cfg.resolve("web", &["127.0.0.1".parse().unwrap()]).unwrap()
}

pub(crate) fn ips() -> Vec<IpAddr> {
    vec!["127.0.0.1".parse().unwrap()]
}

/// A temp dir with the agent's state (pending keys, journal) under `state/`.
pub(super) fn fixture() -> (tempfile::TempDir, PendingKeys, Installer) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let pending = PendingKeys::new(&state);
    let inst = Installer::new(&state).unwrap();
    (dir, pending, inst)
}

async fn issue_and_install(
    inst: &Installer,
    t: &Target,
    pending: &PendingKeys,
) -> Result<InstallOutcome, AgentFailure> {
    let csr = pending
        .create_csr(&ips(), KeyType::EcdsaP256, None)
        .unwrap();
    inst.install(t, &sign(&csr), &ips(), pending, &BTreeMap::new())
        .await
}

pub(crate) fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn install_writes_files_keeps_previous_and_reloads() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let log = dir.path().join("reload.log");
    let t = target(&format!(
        "cert = \"{d}/tls/cert.pem\"\nchain = \"{d}/tls/chain.pem\"\nfullchain = \"{d}/tls/fullchain.pem\"\nkey = \"{d}/tls/key.pem\"\nverify = []\nreload = [\"/bin/sh\", \"-c\", \"echo reloaded >> {}\"]\n",
        log.display()
    ));
    let mut serials = Vec::new();
    for _ in 0..2 {
        let out = issue_and_install(&inst, &t, &pending).await.unwrap();
        assert!(out.verify_disabled);
        assert_eq!(inspect(&t).map(|i| i.serial), Some(out.serial.clone()));
        serials.push(out.serial);
    }
    let key = t.key_source().unwrap().path.clone();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    // The paths are links into the store's current version; the previous one is kept.
    let store = t.store_dir.clone().unwrap();
    assert_eq!(store, dir.path().join("tls/.certfleet-web"));
    for f in &t.files {
        assert_eq!(
            std::fs::read_link(&f.path).unwrap(),
            store.join("current").join(version_file_name(f.role))
        );
    }
    assert_eq!(
        current_version(&store).as_deref(),
        Some(serials[1].as_str())
    );
    let prev = std::fs::read_to_string(store.join(&serials[0]).join("cert.pem")).unwrap();
    let prev_leaf = CertInfo::from_der(&parse_pem_chain(&prev).unwrap()[0]).unwrap();
    assert_eq!(
        prev_leaf.serial_hex, serials[0],
        "previous certificate kept"
    );
    assert_eq!(mode(&store.join(&serials[0]).join("key.pem")), 0o600);
    assert!(!inst.journal_path("web").exists(), "journal removed");
    // A third install prunes the oldest version.
    let third = issue_and_install(&inst, &t, &pending).await.unwrap();
    assert!(!store.join(&serials[0]).exists());
    assert!(store.join(&serials[1]).exists() && store.join(&third.serial).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tls"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("cf-new"))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test]
async fn failed_config_test_restores_previous_without_reload() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let flag = dir.path().join("broken");
    let log = dir.path().join("reload.log");
    let t = target(&format!(
        "fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = []\ncheck = [\"/bin/sh\", \"-c\", \"! test -e {}\"]\nreload = [\"/bin/sh\", \"-c\", \"echo r >> {}\"]\n",
        flag.display(),
        log.display()
    ));
    let first = issue_and_install(&inst, &t, &pending).await.unwrap();
    std::fs::write(&flag, "").unwrap();
    let err = issue_and_install(&inst, &t, &pending).await.unwrap_err();
    assert_eq!(err.code, "config_test_failed");
    assert!(err.rolled_back);
    assert_eq!(err.current_serial.as_deref(), Some(first.serial.as_str()));
    assert_eq!(inspect(&t).unwrap().serial, first.serial, "old pair back");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        1,
        "no reload"
    );
}

#[tokio::test]
async fn presets_write_their_layouts() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    // haproxy: one combined file, 0600, that inspect() reads back.
    let t = target(&format!(
        "preset = \"haproxy\"\ndir = \"{d}/haproxy\"\ncheck = []\nreload = []\nverify = []"
    ));
    let out = issue_and_install(&inst, &t, &pending).await.unwrap();
    let combined = dir.path().join("haproxy/web.pem");
    let text = std::fs::read_to_string(&combined).unwrap();
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(text.contains("BEGIN PRIVATE KEY"));
    assert_eq!(mode(&combined), 0o600);
    assert_eq!(inspect(&t).unwrap().serial, out.serial);
    // lego: .crt (bundle), .issuer.crt, .key, .json.
    let t = target(&format!(
        "preset = \"lego\"\ndir = \"{d}/lego\"\nverify = []"
    ));
    let out = issue_and_install(&inst, &t, &pending).await.unwrap();
    let base = dir.path().join("lego/certificates");
    for f in ["web.crt", "web.issuer.crt", "web.key", "web.json"] {
        assert!(base.join(f).exists(), "{f}");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("web.json")).unwrap()).unwrap();
    assert_eq!(meta["domain"], "127.0.0.1");
    assert_eq!(meta["serial"], out.serial.as_str());
    // certbot: live/ symlinks into a versioned archive/.
    let t = target(&format!(
        "preset = \"certbot\"\ndir = \"{d}/le\"\nverify = []"
    ));
    let a = issue_and_install(&inst, &t, &pending).await.unwrap();
    let b = issue_and_install(&inst, &t, &pending).await.unwrap();
    let live = dir.path().join("le/live/web");
    let link = std::fs::read_link(live.join("fullchain.pem")).unwrap();
    assert_eq!(link, Path::new("../../archive/web/fullchain2.pem"));
    assert!(dir.path().join("le/archive/web/privkey1.pem").exists());
    assert_eq!(mode(&dir.path().join("le/archive/web/privkey2.pem")), 0o600);
    assert_eq!(inspect(&t).unwrap().serial, b.serial);
    assert_ne!(a.serial, b.serial);
}

#[tokio::test]
async fn versioned_recovery_finishes_a_switch_and_drops_an_unswitched_version() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let t = target(&format!(
        "fullchain = \"{d}/tls/f.pem\"\nkey = \"{d}/tls/k.pem\"\nverify = []"
    ));
    let old = issue_and_install(&inst, &t, &pending).await.unwrap();
    let targets: BTreeMap<String, Target> = [("web".to_owned(), t.clone())].into();
    let store = t.store_dir.clone().unwrap();
    for switched in [false, true] {
        let csr = pending
            .create_csr(&ips(), KeyType::EcdsaP256, None)
            .unwrap();
        let chain = parse_pem_chain(&sign(&csr)).unwrap();
        let leaf = CertInfo::from_der(&chain[0]).unwrap();
        let key = pending.find(&leaf.spki_der).unwrap();
        let contents = contents(&t, &chain, &key.0, &leaf).unwrap();
        if switched {
            // Crash right after `current` moved (journal says swapped).
            inst.swap_version(&t, &leaf.serial_hex, &contents)
                .await
                .unwrap();
        } else {
            // Crash after staging, before the switch.
            inst.write_journal(&Journal::Versioned(VersionedJournal {
                target: "web".into(),
                serial: leaf.serial_hex.clone(),
                phase: Phase::Committed,
                store: store.clone(),
                version: leaf.serial_hex.clone(),
                prev: current_version(&store),
            }))
            .unwrap();
            inst.stage_version(&store, &leaf.serial_hex, &contents)
                .await
                .unwrap();
        }
        inst.recover(&targets).await;
        let now = inspect(&t).expect("a matching pair after recovery");
        let want = if switched {
            &leaf.serial_hex
        } else {
            &old.serial
        };
        assert_eq!(&now.serial, want, "switched = {switched}");
        assert!(!inst.journal_path("web").exists());
        assert_eq!(store.join(&leaf.serial_hex).exists(), switched);
    }
}

#[tokio::test]
async fn certbot_recovery_rolls_forward_a_committed_install_and_drops_a_staged_one() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let t = target(&format!(
        "preset = \"certbot\"\ndir = \"{d}/le\"\nverify = []"
    ));
    let old = issue_and_install(&inst, &t, &pending).await.unwrap();
    let targets: BTreeMap<String, Target> = [("web".to_owned(), t.clone())].into();

    for (phase, expect_new) in [(Phase::Staging, false), (Phase::Committed, true)] {
        let csr = pending
            .create_csr(&ips(), KeyType::EcdsaP256, None)
            .unwrap();
        let chain_pem = sign(&csr);
        let chain = parse_pem_chain(&chain_pem).unwrap();
        let leaf = CertInfo::from_der(&chain[0]).unwrap();
        let key = pending.find(&leaf.spki_der).unwrap();
        let contents = contents(&t, &chain, &key.0, &leaf).unwrap();
        let files = inst.stage(&t, &leaf.serial_hex, &contents).await.unwrap();
        // Crash after the first rename of a committed install / before commit.
        if phase == Phase::Committed {
            promote(&files[0].0).unwrap();
        } else {
            inst.write_journal(&Journal::Certbot(CertbotJournal {
                target: "web".into(),
                serial: leaf.serial_hex.clone(),
                phase: Phase::Staging,
                files: files.clone(),
            }))
            .unwrap();
        }
        inst.recover(&targets).await;
        let now = inspect(&t).expect("a matching pair after recovery");
        if expect_new {
            assert_eq!(now.serial, leaf.serial_hex);
        } else {
            assert_eq!(now.serial, old.serial);
        }
        assert!(!inst.journal_path("web").exists());
        assert!(files.iter().all(|(p, _)| !exists(&staged_path(p))));
    }
}

#[tokio::test]
async fn not_served_rolls_back() {
    // Nothing listens on the verify address: the served check fails within its grace
    // window and the previous certificate comes back.
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let off = target(&format!(
        "fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = []"
    ));
    let first = issue_and_install(&inst, &off, &pending).await.unwrap();
    let on = target(&format!(
        "fullchain = \"{d}/f.pem\"\nkey = \"{d}/k.pem\"\nverify = [\"127.0.0.1:{port}\"]\nverify_grace_secs = 1"
    ));
    let err = issue_and_install(&inst, &on, &pending).await.unwrap_err();
    assert_eq!(err.code, "not_served");
    assert!(err.rolled_back, "{}", err.message);
    assert!(err.message.contains("cannot connect"), "{}", err.message);
    assert_eq!(inspect(&on).unwrap().serial, first.serial);
}

#[tokio::test]
async fn refusals() {
    let (dir, pending, inst) = fixture();
    let d = dir.path().display();
    let t = target(&format!(
        "cert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\nverify = []\nreload = [\"/bin/false\"]"
    ));
    // A certificate whose key this host never made.
    let other = PendingKeys::new(&dir.path().join("elsewhere"));
    let chain = sign(&other.create_csr(&ips(), KeyType::EcdsaP256, None).unwrap());
    let err = inst
        .install(&t, &chain, &ips(), &pending, &BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.code, "no_matching_key");
    assert!(!t.key_source().unwrap().path.exists(), "nothing written");
    let err = inst
        .install(
            &t,
            &chain,
            &["10.0.0.1".parse().unwrap()],
            &pending,
            &BTreeMap::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_my_ip");
    assert_eq!(
        inst.install(&t, "garbage", &ips(), &pending, &BTreeMap::new())
            .await
            .unwrap_err()
            .code,
        "bad_request"
    );
    // A failing reload with nothing to roll back to is reported.
    let err = issue_and_install(&inst, &t, &pending).await.unwrap_err();
    assert_eq!(err.code, "reload_failed");
    assert!(
        err.message.contains("no previous certificate"),
        "{}",
        err.message
    );
}

/// An agent upgraded in the middle of an install: the install is interrupted at each
/// pause point by this code, then its journal is replaced by the one the previous agent
/// wrote at that point (real files, [`super::journal::tests::FLAT_JOURNALS`], with this
/// run's directory, serial and versions), and recovery finishes or drops it as before.
#[tokio::test]
async fn journals_of_the_previous_agent_are_recovered() {
    for (name, flat) in super::journal::tests::FLAT_JOURNALS {
        let (layout, point) = name.split_once(' ').unwrap();
        let (dir, pending, mut inst) = fixture();
        let d = dir.path().display().to_string();
        let t = if layout == "certbot" {
            target(&format!(
                "preset = \"certbot\"\ndir = \"{d}/le\"\nverify = []"
            ))
        } else {
            target(&format!(
                "fullchain = \"{d}/tls/f.pem\"\nkey = \"{d}/tls/k.pem\"\nverify = []"
            ))
        };
        let old = issue_and_install(&inst, &t, &pending).await.unwrap();
        inst.pause_at = Some(point.to_owned());
        // Nothing before a pause point waits on anything else: one poll runs the install
        // up to the point, where it stays; dropping it then is the kill.
        let paused = futures::FutureExt::now_or_never(issue_and_install(&inst, &t, &pending));
        assert!(
            paused.is_none(),
            "{name}: the install stops at its pause point"
        );
        inst.pause_at = None;
        let path = inst.journal_path("web");
        let ours: Journal = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        // The previous agent's journal at the same point, for this run's install.
        let flat_value: serde_json::Value = serde_json::from_str(flat).unwrap();
        let mut text = flat.replace("{DIR}", &d);
        text = text.replace(flat_value["serial"].as_str().unwrap(), ours.serial());
        if let (Journal::Versioned(v), Some(prev)) = (&ours, flat_value["prev"].as_str()) {
            text = text.replace(prev, v.prev.as_deref().unwrap());
        }
        let theirs: Journal = serde_json::from_str(&text).unwrap();
        assert_eq!(
            theirs, ours,
            "{name}: the same install, read from either format"
        );
        std::fs::write(&path, &text).unwrap();

        let targets: BTreeMap<String, Target> = [("web".to_owned(), t.clone())].into();
        inst.recover(&targets).await;
        let now = inspect(&t).expect("a matching pair after recovery");
        let finished = matches!(point, "swapped" | "committed" | "renamed:0");
        let want = if finished { ours.serial() } else { &old.serial };
        assert_eq!(now.serial, want, "{name}");
        assert!(!path.exists(), "{name}: journal removed");
    }
}
