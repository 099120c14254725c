//! Tests of `coordinators.rs`: URL lists, spreading, failover order, jitter bounds, the
//! session status file, dialling past an unreachable coordinator.

use super::*;

fn urls(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn url_lists_are_checked_naming_the_entry() {
    assert_eq!(
        check_urls(
            &urls(&["https://a.example:7443/", " https://10.0.0.2:7443"]),
            "x"
        )
        .unwrap(),
        urls(&["https://a.example:7443", "https://10.0.0.2:7443"])
    );
    let err = |l: &[&str]| check_urls(&urls(l), "coordinators").unwrap_err();
    assert!(err(&[]).contains("at least one"), "{}", err(&[]));
    assert!(err(&["https://a:1", "http://b:1"]).starts_with("coordinators[1]:"));
    assert!(err(&["https://a:1", "https://a:1/"]).contains("listed twice"));
    let many: Vec<String> = (0..=MAX_COORDINATORS)
        .map(|i| format!("https://c{i}.example:7443"))
        .collect();
    assert!(check_urls(&many, "x").unwrap_err().contains("at most 16"));
}

#[test]
fn the_config_list_is_checked_and_canonical() {
    let text = |list: &str| {
        format!("version = 1\nstate_dir = \"/var/lib/a\"\nips = [\"192.0.2.1\"]\ncoordinators = [{list}]\n")
    };
    let parse = |list: &str| {
        crate::config::AgentConfig::from_toml(&text(list), Path::new("agent.toml"), Vec::new())
    };
    let cfg = parse(r#""https://a.example:7443/", "https://[2001:db8::1]:7443""#).unwrap();
    assert_eq!(
        cfg.coordinators,
        ["https://a.example:7443", "https://[2001:db8::1]:7443"]
    );
    assert!(
        parse("").unwrap().coordinators.is_empty(),
        "empty: the enrolled ones"
    );
    let err = parse(r#""https://a:1", "a:1""#).unwrap_err().to_string();
    assert!(
        err.contains("coordinators[1]") && err.contains("https://HOST:PORT"),
        "{err}"
    );
}

#[test]
fn agents_spread_over_the_coordinators() {
    // 3,000 agents over 3 endpoints: each starts on about a third.
    let mut counts = [0usize; 3];
    for _ in 0..3000 {
        counts[Failover::random().current(3)] += 1;
    }
    assert!(
        counts.iter().all(|&n| (800..=1200).contains(&n)),
        "starting points {counts:?}"
    );
}

#[test]
fn failover_goes_round_the_list_from_the_start() {
    let mut f = Failover::new(7);
    let mut seen = vec![f.current(3)];
    for _ in 0..5 {
        f.ended(false, 3, 0.5);
        seen.push(f.current(3));
    }
    assert_eq!(
        seen,
        [1, 2, 0, 1, 2, 0],
        "next after each failure, round again"
    );
    assert_eq!(round_from(2, 4).collect::<Vec<_>>(), [2, 3, 0, 1]);
    assert_eq!(round_from(0, 0).count(), 0);
}

#[test]
fn the_next_coordinator_is_tried_soon_and_a_full_outage_backs_off() {
    let b = Backoff::RECONNECT; // 0.5 s doubling to 30 s
    let ms = |failures, unit| failover_delay(&b, failures, 3, unit).as_millis();
    // The first round (3 endpoints): between 250 and 500 ms each.
    for failures in 1..=3 {
        assert_eq!(ms(failures, 0.0), 250);
        assert_eq!(ms(failures, 1.0), 500);
    }
    // Second round: the next step; later rounds up to the ceiling, jitter within half..full.
    assert_eq!((ms(4, 0.0), ms(6, 1.0)), (500, 1000));
    assert_eq!((ms(300, 0.0), ms(300, 1.0)), (15_000, 30_000));
    // Every draw stays within [ceiling / 2, ceiling].
    for failures in 1..40 {
        let ceiling = b.ceiling((failures - 1) / 3);
        for i in 0..=10 {
            let d = failover_delay(&b, failures, 3, f64::from(i) / 10.0);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
    }
    // One endpoint: every failure is a full round (the single-coordinator backoff).
    assert_eq!(failover_delay(&b, 2, 1, 1.0), b.ceiling(1));
    assert_eq!(
        failover_delay(&b, 1, 0, 1.0),
        b.ceiling(0),
        "no endpoints: no panic"
    );
}

#[test]
fn a_healthy_session_resets_the_backoff_but_still_moves_on() {
    let mut f = Failover::new(0);
    for _ in 0..10 {
        f.ended(false, 2, 1.0);
    }
    let at = f.current(2);
    let d = f.ended(true, 2, 1.0);
    assert_eq!(d, Backoff::RECONNECT.ceiling(0), "first step again");
    assert_ne!(
        f.current(2),
        at,
        "the lost coordinator is not dialled again first"
    );
}

#[test]
fn session_status_round_trips_and_knows_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(SessionStatus::read(dir.path()).unwrap(), None);
    let s = SessionStatus {
        pid: std::process::id(),
        connected: true,
        coordinator: Some("https://127.0.0.1:7443".into()),
        address: Some("127.0.0.1:7443".into()),
        since: 1_750_000_000,
        last_error: None,
    };
    s.write(dir.path());
    let back = SessionStatus::read(dir.path()).unwrap().unwrap();
    assert_eq!(back, s);
    assert!(back.writer_running());
    let gone = SessionStatus { pid: u32::MAX, ..s };
    assert!(!gone.writer_running());
    std::fs::write(SessionStatus::path(dir.path()), b"{").unwrap();
    assert!(SessionStatus::read(dir.path())
        .unwrap_err()
        .to_string()
        .contains("corrupt"));
}

#[tokio::test]
async fn names_resolve_to_every_address_and_bad_ones_are_reported() {
    let (eps, errors) = resolve_all(&urls(&[
        "https://127.0.0.1:7443",
        "https://no-such-host.invalid:7443",
        "https://[::1]:7444",
    ]))
    .await;
    assert_eq!(
        eps,
        [
            Endpoint {
                url: "https://127.0.0.1:7443".into(),
                addr: "127.0.0.1:7443".parse().unwrap()
            },
            Endpoint {
                url: "https://[::1]:7444".into(),
                addr: "[::1]:7444".parse().unwrap()
            }
        ]
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("no-such-host.invalid"), "{errors:?}");
    assert_eq!(eps[0].to_string(), "https://127.0.0.1:7443");
    let named = Endpoint {
        url: "https://coord.example:7443".into(),
        addr: "192.0.2.7:7443".parse().unwrap(),
    };
    assert_eq!(
        named.to_string(),
        "https://coord.example:7443 (192.0.2.7:7443)"
    );
}

#[tokio::test]
async fn dialling_moves_past_a_coordinator_that_is_down() {
    // Two ports nothing listens on, then one that completes TCP but is no coordinator:
    // every failure is named, none stops the round.
    let closed = |p| Endpoint {
        url: format!("https://127.0.0.1:{p}"),
        addr: SocketAddr::from(([127, 0, 0, 1], p)),
    };
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    drop((a, b));
    let tls = certfleet_shared::tls::pinned_client_config([0u8; 32]).unwrap();
    let eps = [closed(pa), closed(pb)];
    let err = first_reachable(&eps, tls.clone(), |_| false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&pa.to_string()) && err.contains(&pb.to_string()),
        "{err}"
    );
    // `stop` ends the round at the first failure.
    let err = first_reachable(&eps, tls, |_| true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&pa.to_string()) && !err.contains(&pb.to_string()),
        "{err}"
    );
}
