//! Nodes, sessions, leases and the command relay ([`ClusterStore`]): what both backends
//! agree on, and what only a shared PostgreSQL store does (two coordinators, one relay).

use super::{each_backend, pg_options, postgres};
use certfleet_coordinator::store::cluster::{ClusterStore, RelayRequest};
use certfleet_coordinator::store::PgSyncStore;
use certfleet_shared::ids::{CertId, HostId};

#[test]
fn a_session_routes_only_while_its_node_is_alive() {
    each_backend("cluster_sessions", |b| {
        let s = b.open();
        let now = 1_000_000;
        let host = HostId::generate();
        s.node_beat("n1", "one@127.0.0.1:1", now - 100, 1, now)
            .unwrap();
        s.put_session(&host, "n1", 7, now).unwrap();
        // PostgreSQL measures with its own clock; pass a `now` that is "now" for sled.
        let real_now = unix_now();
        s.node_beat("n1", "one@127.0.0.1:1", now - 100, 1, real_now)
            .unwrap();
        assert_eq!(
            s.session_node(&host, real_now).unwrap().as_deref(),
            Some("n1")
        );
        assert_eq!(
            s.sessions(real_now).unwrap(),
            vec![(host.clone(), "n1".to_owned())]
        );
        let nodes = s.nodes(real_now).unwrap();
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert!(nodes[0].alive && nodes[0].sessions == 1 && nodes[0].name == "one@127.0.0.1:1");
        // Another session's end does not remove this one; its own does.
        s.end_session(&host, "n1", 6).unwrap();
        assert!(s.session_node(&host, real_now).unwrap().is_some());
        s.end_session(&host, "n1", 7).unwrap();
        assert_eq!(s.session_node(&host, real_now).unwrap(), None);
        // A node that stops cleanly takes its sessions with it.
        s.put_session(&host, "n1", 8, real_now).unwrap();
        s.remove_node("n1").unwrap();
        assert_eq!(s.session_node(&host, real_now).unwrap(), None);
        assert!(s.nodes(real_now).unwrap().is_empty());
    });
}

#[test]
fn live_leases_show_who_works_on_what() {
    each_backend("cluster_leases", |b| {
        let s = b.open();
        let now = unix_now();
        let (a, c) = (CertId::generate(), CertId::generate());
        let la = s.take_lease(&a, "n1", now, 20).unwrap().unwrap();
        let lc = s.take_lease(&c, "n2", now, 20).unwrap().unwrap();
        let mut live = s.live_leases(now).unwrap();
        live.sort_by(|x, y| x.cert.cmp(&y.cert));
        let mut want = vec![(a.clone(), "n1"), (c.clone(), "n2")];
        want.sort();
        let got: Vec<(CertId, &str)> = live
            .iter()
            .map(|l| (l.cert.clone(), l.holder.as_str()))
            .collect();
        assert_eq!(got, want);
        s.release_lease(&la).unwrap();
        let live = s.live_leases(now).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0], lc);
    });
}

#[test]
fn sled_is_one_node_and_has_no_relay() {
    let b = super::sled();
    let s = b.open();
    assert!(!s.shared());
    assert!(s.backend().starts_with("sled ("), "{}", s.backend());
    let req = RelayRequest {
        id: "r".into(),
        host: HostId::generate(),
        from_node: "a".into(),
        to_node: "b".into(),
        message: vec![1],
        timeout_ms: 1000,
    };
    let e = s.relay_send(&req).unwrap_err().to_string();
    assert!(e.contains("not shared"), "{e}");
}

#[test]
fn two_coordinators_relay_a_command_through_postgres() {
    let Some(b) = postgres("cluster_relay") else {
        return;
    };
    let url = &b.pg.as_ref().unwrap().1;
    let (one, two) = (
        PgSyncStore::open(pg_options(url)).unwrap(),
        PgSyncStore::open(pg_options(url)).unwrap(),
    );
    assert!(one.shared() && one.backend().starts_with("postgres ("));
    let host = HostId::generate();
    let now = unix_now();
    two.node_beat("two", "two@x", now, 1, now).unwrap();
    two.put_session(&host, "two", 1, now).unwrap();
    // One sees two's session and posts a command for it.
    assert_eq!(
        one.session_node(&host, now).unwrap().as_deref(),
        Some("two")
    );
    let req = RelayRequest {
        id: "req-1".into(),
        host: host.clone(),
        from_node: "one".into(),
        to_node: "two".into(),
        message: vec![1, 2, 3],
        timeout_ms: 5000,
    };
    one.relay_send(&req).unwrap();
    assert_eq!(one.relay_reply("req-1").unwrap(), None, "no answer yet");
    // Each command is handed out once, and only to its node.
    assert!(one.relay_inbox("one", 10).unwrap().is_empty());
    assert_eq!(two.relay_inbox("two", 10).unwrap(), vec![req.clone()]);
    assert!(two.relay_inbox("two", 10).unwrap().is_empty());
    two.relay_answer("req-1", &[0, 9]).unwrap();
    assert_eq!(one.relay_reply("req-1").unwrap(), Some(vec![0, 9]));
    assert_eq!(one.relay_reply("req-1").unwrap(), None, "collected once");
    // A cancelled command is never handed out.
    one.relay_send(&RelayRequest {
        id: "req-2".into(),
        ..req.clone()
    })
    .unwrap();
    one.relay_cancel("req-2").unwrap();
    assert!(two.relay_inbox("two", 10).unwrap().is_empty());
    // A command nobody took can be withdrawn, and then it is never handed out...
    one.relay_send(&RelayRequest {
        id: "req-3".into(),
        ..req.clone()
    })
    .unwrap();
    assert!(one.relay_withdraw("req-3").unwrap(), "not taken: withdrawn");
    assert!(two.relay_inbox("two", 10).unwrap().is_empty());
    // ...but one already taken is not: its answer still arrives.
    one.relay_send(&RelayRequest {
        id: "req-4".into(),
        ..req
    })
    .unwrap();
    assert_eq!(two.relay_inbox("two", 10).unwrap().len(), 1);
    assert!(!one.relay_withdraw("req-4").unwrap(), "taken: stays");
    two.relay_answer("req-4", &[7]).unwrap();
    assert_eq!(one.relay_reply("req-4").unwrap(), Some(vec![7]));
}

fn unix_now() -> i64 {
    use certfleet_shared::clock::Clock as _;
    certfleet_shared::clock::SystemClock.now_unix()
}
