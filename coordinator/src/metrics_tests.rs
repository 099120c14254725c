//! The exposition, the alert rules and the Grafana dashboard against it.

use super::*;
use crate::model::{OperatorRecord, Role};
use crate::server_cert::ServerCertInfo;
use crate::store::SledStore;

fn exposition() -> String {
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::open(&tmp.path().join("db")).unwrap();
    for (name, revoked) in [("alice", None), ("mallory", Some(5))] {
        let rec = OperatorRecord {
            name: name.into(),
            role: Role::Viewer,
            serial: "0a".into(),
            issued: 1,
            not_after: 1_000,
            lifetime_secs: 999,
            added_by: "operator:root".into(),
            added: 1,
            revoked_at: revoked,
            revoked_by: None,
            generation: 0,
        };
        assert!(store.put_operator(&rec, None).unwrap());
    }
    // One certificate with a current issue, so its per-certificate series exist.
    let spec = crate::model::CertSpec {
        name: Default::default(),
        challenges: Default::default(),
        policy: None,
        identifiers: vec!["192.0.2.1".parse().unwrap()],
        issuer: "le".into(),
        fallback_issuers: vec![],
        required_profile: None,
        key_type: Default::default(),
        targets: vec!["t".into()],
        key_group: None,
    };
    let host = certfleet_shared::ids::HostId::generate();
    let rec: crate::model::HostRecord = serde_json::from_value(serde_json::json!({
        "id": host, "hostname": "web-1", "enrolled": 1, "identity_serial": "01",
        "last_seen": 5,
    }))
    .unwrap();
    store.put_host(&rec).unwrap();
    let mut cert = crate::model::CertRecord::new(
        certfleet_shared::ids::CertId::generate(),
        host,
        spec.clone(),
        1,
    );
    cert.observed.current = Some(crate::model::IssuedCert {
        identifiers: spec.identifiers,
        issuer: "le".into(),
        profile: None,
        serial: "01".into(),
        not_before: 0,
        not_after: 100,
        chain_pem: String::new(),
        ari_id: None,
        renew_unit: 0.5,
        issued_at: 0,
        validated_by: Default::default(),
    });
    store.put_cert(&cert).unwrap();
    let credentials = Credentials {
        server: ServerCertInfo {
            serial: "5e".into(),
            not_before: 0,
            not_after: 2_000,
        },
        fleet_ca_not_after: 3_000,
    };
    let metrics = Metrics::default();
    // Counters and histograms appear once touched.
    let reason = IssuerReason {
        issuer: "le".into(),
        reason: "due".into(),
    };
    metrics.renewals.get_or_create(&reason).inc();
    metrics.failures.get_or_create(&reason).inc();
    metrics.observe_acme("le", "new_order", 0.1);
    metrics
        .ip_blocked
        .get_or_create(&BlockLabel {
            kind: "ip_conflict".into(),
        })
        .inc();
    metrics
        .render(
            &store,
            &Sessions::default(),
            &[("le".into(), 3)],
            // A silent host counts down to its decommission.
            Some(3600),
            &credentials,
            10,
        )
        .unwrap()
}

#[test]
fn credential_expiry_is_exported_per_kind() {
    let text = exposition();
    for line in [
        r#"certfleet_credential_not_after_seconds{kind="operator",name="alice"} 1000"#,
        r#"certfleet_credential_not_after_seconds{kind="server_certificate",name="5e"} 2000"#,
        r#"certfleet_credential_not_after_seconds{kind="fleet_ca",name="fleet-ca"} 3000"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    assert!(
        !text.contains("mallory"),
        "a revoked operator has no series"
    );
}

/// The metric families the exposition declares (`# TYPE` lines).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether `name` (as a query writes it) is a series of one of `families`: the family
/// itself, or a counter's `_total` / a histogram's `_bucket`, `_sum`, `_count`.
fn exported(families: &[String], name: &str) -> bool {
    families.iter().any(|f| {
        name == f
            || ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{f}{suffix}"))
    })
}

/// Every `certfleet_…` metric name a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("certfleet_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

/// The label names of a metric's series in the exposition (empty when it has none).
fn label_names(text: &str, metric: &str) -> Vec<String> {
    let Some(line) = text.lines().find(|l| l.starts_with(&format!("{metric}{{"))) else {
        return vec![];
    };
    let inner = &line[metric.len() + 1..line.find('}').unwrap_or(line.len())];
    inner
        .split(',')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
        .collect()
}

#[test]
fn certificate_and_host_series_name_the_host_identifier_and_issuer() {
    let text = exposition();
    for metric in [
        "certfleet_certificate_not_after_timestamp_seconds",
        "certfleet_certificate_remaining_lifetime_ratio",
        "certfleet_certificate_at_risk",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{metric}{{")))
            .unwrap_or_else(|| panic!("no {metric} in\n{text}"));
        assert!(
            line.contains(r#",hostname="web-1",identifier="192.0.2.1",issuer="le"}"#),
            "{line}"
        );
        // One series per certificate.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(&format!("{metric}{{")))
                .count(),
            1,
            "{text}"
        );
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("certfleet_agent_last_seen_timestamp_seconds{")
                && l.contains(r#"hostname="web-1""#)
        ),
        "{text}"
    );
}

#[test]
fn label_values_are_cut_to_the_documented_length() {
    assert_eq!(label_value("web-1"), "web-1");
    let exact = "a".repeat(LABEL_MAX_CHARS);
    assert_eq!(label_value(&exact), exact);
    let long = format!("{}.example.test", "ü".repeat(100));
    let cut = label_value(&long);
    assert_eq!(cut.chars().count(), LABEL_MAX_CHARS);
    assert!(cut.ends_with('…') && cut.starts_with("üüü"), "{cut}");
}

/// Every rule in deploy/prometheus/alerts.yml is well formed, every metric its
/// expression names is one the coordinator exports, and a rule on a series that carries
/// a host's name (or a certificate's identifier) says it in its summary.
#[test]
fn alert_rules_parse_and_name_exported_metrics() {
    let text = exposition();
    let families = families(&text);
    let yaml = include_str!("../../deploy/prometheus/alerts.yml");
    let doc: serde_norway::Value = serde_norway::from_str(yaml).expect("alerts.yml is YAML");
    let groups = doc["groups"].as_sequence().expect("groups");
    let mut rules = 0;
    let mut names_credentials = false;
    let mut names_hosts = 0;
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
    {
        rules += 1;
        let alert = rule["alert"].as_str().expect("alert name");
        let expr = rule["expr"].as_str().expect("expr");
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{alert}: severity"
        );
        let summary = rule["annotations"]["summary"]
            .as_str()
            .unwrap_or_else(|| panic!("{alert}: summary"));
        for name in metric_names(expr) {
            assert!(
                exported(&families, &name),
                "{alert}: {name} is not exported"
            );
            names_credentials |= name == "certfleet_credential_not_after_seconds";
            let labels = label_names(&text, &name);
            for (label, what) in [("hostname", "host"), ("identifier", "identifier")] {
                if labels.iter().any(|l| l == label) {
                    assert!(
                        summary.contains(&format!("$labels.{label}")),
                        "{alert}: its series carry {label}; the summary should name the {what}: {summary}"
                    );
                    names_hosts += usize::from(label == "hostname");
                }
            }
        }
    }
    assert!(rules >= 8, "{rules} rules");
    assert!(names_credentials, "a rule on credential expiry");
    assert!(names_hosts >= 4, "{names_hosts} rules name a host");
}

/// Every PromQL query in a Grafana dashboard: panels' (and nested rows' panels')
/// `targets[].expr`, and the templating variables' `query` (a string or `{query: …}`).
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title}: a target without expr"));
                out.push((title.clone(), expr.to_owned()));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]
                .as_str()
                .or(v["query"]["query"].as_str())
                .expect("a query variable's query");
            out.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    out
}

/// deploy/grafana/certfleet.json is a dashboard Grafana can import (JSON, a uid, a title,
/// panels with unique ids and grid positions, a Prometheus data source input) and every
/// query in it names only metrics the coordinator exports, covering each area the
/// dashboard is for.
#[test]
fn grafana_dashboard_parses_and_names_exported_metrics() {
    let text = exposition();
    let families = families(&text);
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/certfleet.json"))
            .expect("certfleet.json is JSON");
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["schemaVersion"].as_u64().is_some());
    assert!(
        dash["__inputs"]
            .as_array()
            .expect("__inputs")
            .iter()
            .any(|i| i["pluginId"] == "prometheus"),
        "a Prometheus data source input"
    );
    let mut ids = std::collections::HashSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("panel title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id used twice"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        if p["type"] != "row" {
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{title}: no query"
            );
        }
    }
    let queries = dashboard_queries(&dash);
    let mut used = std::collections::HashSet::new();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{panel}: {expr} names no certfleet metric"
        );
        for name in names {
            assert!(
                exported(&families, &name),
                "{panel}: {name} is not exported"
            );
            used.insert(name);
        }
    }
    for want in [
        "certfleet_certificate_not_after_timestamp_seconds",
        "certfleet_certificate_remaining_lifetime_ratio",
        "certfleet_renewals_total",
        "certfleet_issuance_failures_total",
        "certfleet_agents_connected",
        "certfleet_rate_limit_remaining",
        "certfleet_cluster_nodes",
        "certfleet_node_store_up",
    ] {
        assert!(used.contains(want), "the dashboard shows nothing of {want}");
    }
}
