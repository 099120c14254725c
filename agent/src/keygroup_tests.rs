//! Key groups through `Agent::handle`, with real state directories, real identity keys
//! and real envelopes: members make, seal, import and install a group's key.

use super::*;
use crate::identity::Enrollment;
use crate::session::Agent;
use certfleet_proto::v1::{coordinator_message::Cmd, reply, CoordinatorMessage};
use rcgen::{KeyPair, PublicKeyData};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const CERT: &str = "c-group-cert";
const NAMES: [&str; 2] = ["*.example.net", "example.net"];

/// One enrolled host: its agent, id, identity SPKI and state directory.
struct Member {
    agent: Arc<Agent>,
    id: HostId,
    spki: Vec<u8>,
    dir: PathBuf,
}

/// An enrolled agent in `dir` listing `groups`, with a target `t` (no reload, no verify).
fn member(dir: &Path, groups: &[&str]) -> Member {
    let state = dir.join("state");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let id = HostId::generate();
    let identity = KeyPair::generate().unwrap();
    write_atomic(
        &state.join("identity.key"),
        identity.serialize_pem().as_bytes(),
        0o600,
    )
    .unwrap();
    let enrollment = Enrollment {
        host_id: id.clone(),
        coordinator: "https://127.0.0.1:1".into(),
        coordinators: Vec::new(),
        ca_sha256: "0".repeat(64),
        enrolled: 0,
    };
    std::fs::write(
        state.join("enrollment.json"),
        serde_json::to_vec(&enrollment).unwrap(),
    )
    .unwrap();
    let groups = groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "version = 1\nstate_dir = \"{d}/state\"\nips = [\"192.0.2.10\"]\nkey_groups = [{groups}]\n\
         [http01]\nmode = \"webroot\"\nwebroot = \"{d}/www\"\nself_check = false\n\
         [targets.t]\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\nverify = []\n",
        d = dir.display()
    );
    let config = AgentConfig::from_toml(&text, Path::new("agent.toml"), Vec::new()).unwrap();
    Member {
        agent: Agent::new(config).unwrap(),
        id,
        spki: identity.subject_public_key_info(),
        dir: dir.to_path_buf(),
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

async fn run(m: &Member, cmd: Cmd) -> reply::Result {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    m.agent
        .handle(CoordinatorMessage {
            request_id: format!("r-{n}"),
            cmd: Some(cmd),
        })
        .await
}

/// The failure's code and message, or a panic naming what came instead.
fn failure(r: reply::Result) -> (String, String) {
    match r {
        reply::Result::Failure(f) => (f.code, f.message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn create_csr(group: &str) -> Cmd {
    Cmd::CreateCsr(pb::CreateCsr {
        identifiers: NAMES.iter().map(|s| s.to_string()).collect(),
        key_type: pb::KeyType::EcdsaP256 as i32,
        target: "t".into(),
        cert_id: CERT.into(),
        key_group: group.into(),
    })
}

/// `m` makes a key for `group`: the CSR and its public key's SHA-256.
async fn make_key(m: &Member, group: &str) -> (Vec<u8>, String) {
    let r = run(m, create_csr(group)).await;
    let reply::Result::Csr(csr) = r else {
        panic!("{r:?}")
    };
    let spki = CsrInfo::from_der(&csr.csr_der).unwrap().spki_der;
    (csr.csr_der, sha256_hex(&spki))
}

fn seal_cmd(group: &str, sha: &str, to: &Member) -> Cmd {
    Cmd::SealKey(pb::SealKey {
        key_group: group.into(),
        key_spki_sha256: sha.into(),
        recipient_host_id: to.id.to_string(),
        recipient_identity_spki_der: to.spki.clone(),
    })
}

async fn seal(from: &Member, group: &str, sha: &str, to: &Member) -> pb::SealedKey {
    match run(from, seal_cmd(group, sha, to)).await {
        reply::Result::SealedKey(s) => s,
        other => panic!("{other:?}"),
    }
}

fn import_cmd(group: &str, envelope: pb::SealedKey) -> Cmd {
    Cmd::ImportKey(pb::ImportKey {
        key_group: group.into(),
        cert_id: CERT.into(),
        envelope: Some(envelope),
    })
}

/// The one pending key file of `m` (panics unless there is exactly one).
fn pending_file(m: &Member) -> PathBuf {
    let files: Vec<_> = std::fs::read_dir(m.dir.join("state/pending"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_groups_in_the_config_are_names_listed_once() {
    let base = "version = 1\nstate_dir = \"/var/lib/cfa\"\nips = [\"192.0.2.10\"]\n";
    let parse = |groups: &str| {
        AgentConfig::from_toml(
            &format!("{base}key_groups = [{groups}]\n"),
            Path::new("a.toml"),
            Vec::new(),
        )
    };
    let cfg = parse(r#""edge-wildcard", "api_2""#).unwrap();
    assert_eq!(cfg.key_groups, ["edge-wildcard", "api_2"]);
    let none = AgentConfig::from_toml(base, Path::new("a.toml"), Vec::new()).unwrap();
    assert!(none.key_groups.is_empty(), "default: no group");
    let long = format!("{:?}", "g".repeat(65));
    for (groups, want) in [
        (
            r#""edge", "edge""#,
            "key_groups[1]: \"edge\" is listed twice; remove one",
        ),
        (r#""a b""#, "key_groups[0]: \"a b\" is not a group name"),
        (r#""""#, "key_groups[0]: \"\" is not a group name"),
        (r#""x.y""#, "letters, digits, - or _"),
        (long.as_str(), "1 to 64 letters"),
    ] {
        let err = parse(groups).unwrap_err().to_string();
        assert!(err.contains(want), "{groups}: {err:?} should say {want:?}");
    }
}

#[tokio::test]
async fn a_key_for_an_unlisted_group_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let a = member(dir.path(), &["edge"]);
    let (code, message) = failure(run(&a, create_csr("other")).await);
    assert_eq!(code, "key_group_not_allowed");
    assert!(message.contains("key_groups = [\"other\"]"), "{message}");
    assert!(!dir.path().join("state/pending").exists(), "no key made");
    // No group: an ordinary key, with no marker (it never leaves the host).
    let (_, sha) = make_key(&a, "").await;
    assert_eq!(a.agent.key_groups.group_of(&sha), None);
}

/// A makes the group's key, seals it to B; B imports it byte for byte (0600), then
/// installs the certificate issued for A's CSR with it.
#[tokio::test]
async fn a_member_seals_its_key_to_another_which_imports_and_installs_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = member(da.path(), &["edge"]);
    let b = member(db.path(), &["edge"]);
    let (csr, sha) = make_key(&a, "edge").await;
    let marker = da.path().join("state/key-groups").join(&sha);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "edge\n");
    assert_eq!(mode(&marker), 0o600);
    assert_eq!(mode(marker.parent().unwrap()), 0o700);

    let sealed = seal(&a, "edge", &sha, &b).await;
    assert_eq!(sealed.sender_host_id, a.id.to_string());
    assert_eq!(sealed.key_spki_sha256, sha);
    let a_key = std::fs::read(pending_file(&a)).unwrap();
    assert!(
        !sealed
            .ciphertext
            .windows(16)
            .any(|w| a_key.windows(16).any(|k| k == w)),
        "the key does not travel in clear"
    );
    let r = run(&b, import_cmd("edge", sealed.clone())).await;
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
    let file = pending_file(&b);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        a_key,
        "the same key, byte for byte"
    );
    assert_eq!(mode(&file), 0o600);
    assert_eq!(
        file.file_name().unwrap().to_str().unwrap(),
        format!("{}.{CERT}.key", &sha[..32]),
        "named as CreateCsr names its keys"
    );
    assert_eq!(b.agent.key_groups.group_of(&sha).as_deref(), Some("edge"));
    // Imported again (the coordinator retried): the same result.
    let again = run(&b, import_cmd("edge", sealed)).await;
    assert!(matches!(again, reply::Result::Done(_)), "{again:?}");
    assert_eq!(std::fs::read(pending_file(&b)).unwrap(), a_key);

    // The certificate for A's CSR goes into B's target with the imported key.
    let install = Cmd::Install(pb::InstallCertificate {
        target: "t".into(),
        chain_pem: crate::install::tests_names::sign(&csr),
    });
    let r = run(&b, install).await;
    assert!(matches!(r, reply::Result::Installed(_)), "{r:?}");
    let installed = std::fs::read_to_string(db.path().join("key.pem")).unwrap();
    assert_eq!(installed.trim(), String::from_utf8(a_key).unwrap().trim());
    assert_eq!(
        b.agent.pending.count(),
        0,
        "the pending key went with the install"
    );
    // The order ended: the marker stays while the target holds the key, so B may seal it
    // to a member that joins later.
    let discard = || {
        Cmd::DiscardPendingKeys(pb::DiscardPendingKeys {
            cert_id: CERT.into(),
            keep_spki_sha256: vec![],
        })
    };
    run(&b, discard()).await;
    assert_eq!(b.agent.key_groups.group_of(&sha).as_deref(), Some("edge"));
    let c_dir = tempfile::tempdir().unwrap();
    let c = member(c_dir.path(), &["edge"]);
    let from_b = seal(&b, "edge", &sha, &c).await;
    assert_eq!(from_b.sender_host_id, b.id.to_string());
    let r = run(&c, import_cmd("edge", from_b)).await;
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
    // A's order ended without an install on A: its key and then its marker go.
    run(&a, discard()).await;
    assert_eq!(a.agent.pending.count(), 0);
    assert!(!marker.exists(), "no marker left for a key no longer here");
}

#[tokio::test]
async fn seal_is_refused_unless_the_key_is_this_groups_and_here() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = member(da.path(), &["edge", "api"]);
    let b = member(db.path(), &["edge", "api"]);
    let (_, edge) = make_key(&a, "edge").await;
    let (_, api) = make_key(&a, "api").await;
    let (_, plain) = make_key(&a, "").await;
    let refused = |code: &'static str, want: &'static str| {
        move |(c, m): (String, String)| {
            assert_eq!(c, code, "{m}");
            assert!(m.contains(want), "{m:?} should say {want:?}");
        }
    };
    refused("key_group_not_allowed", "add it to key_groups")(failure(
        run(&a, seal_cmd("other", &edge, &b)).await,
    ));
    refused(
        "key_group_not_allowed",
        "was not made or imported for key group \"edge\"",
    )(failure(run(&a, seal_cmd("edge", &plain, &b)).await));
    refused("key_group_not_allowed", "belongs to key group \"api\"")(failure(
        run(&a, seal_cmd("edge", &api, &b)).await,
    ));
    let unknown = "ab".repeat(32);
    refused("key_group_not_allowed", "was not made or imported")(failure(
        run(&a, seal_cmd("edge", &unknown, &b)).await,
    ));
    refused("bad_request", "64 lower-case hex")(failure(
        run(&a, seal_cmd("edge", &edge.to_uppercase(), &b)).await,
    ));
    let mut to_nobody = seal_cmd("edge", &edge, &b);
    if let Cmd::SealKey(s) = &mut to_nobody {
        s.recipient_host_id = "c-not-a-host".into();
    }
    refused("bad_request", "recipient_host_id")(failure(run(&a, to_nobody).await));
    let mut bad_spki = seal_cmd("edge", &edge, &b);
    if let Cmd::SealKey(s) = &mut bad_spki {
        s.recipient_identity_spki_der = b"not a key".to_vec();
    }
    refused("bad_request", "not a P-256 SubjectPublicKeyInfo")(failure(run(&a, bad_spki).await));
    // The marker is there but the key is gone (pruned): nothing to seal.
    let spki_of = |sha: &str| {
        let key = a.agent.pending.find_sha256(sha).unwrap();
        KeyPair::from_pem(&key.0).unwrap().subject_public_key_info()
    };
    a.agent.pending.remove(&spki_of(&edge));
    refused("no_matching_key", "no key with public key SHA-256")(failure(
        run(&a, seal_cmd("edge", &edge, &b)).await,
    ));
}

#[tokio::test]
async fn import_is_refused_for_another_identity_group_or_key_and_writes_nothing() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = member(dirs[0].path(), &["edge", "api"]);
    let b = member(dirs[1].path(), &["edge", "api"]);
    let c = member(dirs[2].path(), &["edge"]);
    let (_, sha) = make_key(&a, "edge").await;
    let sealed = seal(&a, "edge", &sha, &b).await;
    let refused = |r: reply::Result, code: &str, want: &str| {
        let (c, m) = failure(r);
        assert_eq!(c, code, "{m}");
        assert!(m.contains(want), "{m:?} should say {want:?}");
    };
    // Sealed to B: C's identity key does not open it.
    refused(
        run(&c, import_cmd("edge", sealed.clone())).await,
        "envelope_not_opened",
        "sealed again to this host's current identity",
    );
    // Opened for another group than it was sealed for.
    refused(
        run(&b, import_cmd("api", sealed.clone())).await,
        "envelope_not_opened",
        "group \"api\"",
    );
    // The envelope names another key than the one sealed.
    let mut other_key = sealed.clone();
    other_key.key_spki_sha256 = "cd".repeat(32);
    refused(
        run(&b, import_cmd("edge", other_key)).await,
        "envelope_not_opened",
        "does not open",
    );
    // Another sender than the one that sealed it.
    let mut other_sender = sealed.clone();
    other_sender.sender_host_id = c.id.to_string();
    refused(
        run(&b, import_cmd("edge", other_sender)).await,
        "envelope_not_opened",
        "does not open",
    );
    let mut altered = sealed.clone();
    altered.ciphertext[0] ^= 1;
    refused(
        run(&b, import_cmd("edge", altered)).await,
        "envelope_not_opened",
        "altered",
    );
    refused(
        run(&c, import_cmd("api", sealed.clone())).await,
        "key_group_not_allowed",
        "add it to key_groups",
    );
    let mut truncated = sealed.clone();
    truncated.ciphertext.truncate(4);
    refused(
        run(&b, import_cmd("edge", truncated)).await,
        "bad_request",
        "malformed envelope",
    );
    let no_envelope = Cmd::ImportKey(pb::ImportKey {
        key_group: "edge".into(),
        cert_id: CERT.into(),
        envelope: None,
    });
    refused(
        run(&b, no_envelope).await,
        "bad_request",
        "without an envelope",
    );
    for m in [&b, &c] {
        assert!(!m.dir.join("state/pending").exists(), "no key written");
        assert!(
            !m.dir.join("state/key-groups").exists(),
            "no marker written"
        );
    }
    // The untouched envelope still opens at B.
    let r = run(&b, import_cmd("edge", sealed)).await;
    assert!(matches!(r, reply::Result::Done(_)), "{r:?}");
}

#[tokio::test]
async fn sweep_removes_only_markers_of_keys_not_here_and_interrupted_writes() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path(), &["edge"]);
    let groups = &m.agent.key_groups;
    let kept = KeyPair::generate().unwrap();
    let kept_sha = sha256_hex(&kept.subject_public_key_info());
    let cert = CertId::parse(CERT).unwrap();
    m.agent
        .pending
        .keep(&kept.serialize_pem(), &kept_sha, Some(&cert))
        .unwrap();
    groups.mark(&kept_sha, "edge").unwrap();
    let gone = "ef".repeat(32);
    groups.mark(&gone, "edge").unwrap();
    let half = dir
        .path()
        .join(format!("state/key-groups/.{gone}.tmp-1-0000"));
    std::fs::write(&half, "edge").unwrap();
    let foreign = dir.path().join("state/key-groups/README");
    std::fs::write(&foreign, "not ours").unwrap();
    assert_eq!(groups.sweep(&m.agent.pending, &m.agent.targets), 1);
    assert_eq!(groups.group_of(&kept_sha).as_deref(), Some("edge"));
    assert_eq!(groups.group_of(&gone), None);
    assert!(!half.exists() && foreign.exists());
    // A new group key sweeps first: a marker left over never stays beside it.
    groups.mark(&gone, "edge").unwrap();
    let (_, new) = make_key(&m, "edge").await;
    assert_eq!(groups.group_of(&gone), None);
    assert_eq!(groups.group_of(&new).as_deref(), Some("edge"));
    assert_eq!(groups.group_of(&kept_sha).as_deref(), Some("edge"));
}
