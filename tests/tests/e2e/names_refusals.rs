//! Bad DNS names in either daemon's config are refused when it loads, before anything
//! else happens, with one `error:` line naming the config, the entry and the rule: an
//! agent asking for them (`names = [...]`) does not enroll or run; a coordinator whose
//! `[[policy.certificate]]` lists one does not `init` or `serve`. Process-level: the
//! binaries only, no pebble, no namespaces.

use certfleet_tests::{agent, coordinator};

use crate::refusals::{
    agent_config, assert_refused_once, coordinator_config, toml_string, REFUSAL_TIMEOUT,
};

/// `(names entry, the rule the refusal must state)`.
const BAD_NAMES: [(&str, &str); 4] = [
    (
        "bad_name!.example.test",
        "label \"bad_name!\" holds '_'; a label holds only letters, digits and hyphens (LDH)",
    ),
    (
        "co.uk",
        "\"co.uk\" is a public suffix (on the Public Suffix List's ICANN section)",
    ),
    (
        "192.0.2.7",
        "\"192.0.2.7\" is an IP address, not a name; list it as an IP: 192.0.2.7",
    ),
    ("intranet", "\"intranet\" has only one label"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_bad_names_in_its_config_naming_the_entry_and_the_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (bad, rule) in BAD_NAMES {
        // A good name first: the refusal must point at the second entry.
        let names = format!("names = [\"web-1.example.net\", {}]\n", toml_string(bad));
        let config = agent_config(dir.path(), &["127.0.0.1"], "port = 5002");
        let body = std::fs::read_to_string(&config).expect("config");
        std::fs::write(&config, body.replace("ips = [", &format!("{names}ips = [")))
            .expect("config");
        let config_arg = config.to_str().expect("utf-8 path");
        let entry = format!("names[1]: {}", toml_string(bad));
        let out = agent::run_with_config(&config, &["run"], REFUSAL_TIMEOUT)
            .await
            .expect("agent run must exit, refusing its config");
        assert_refused_once(
            &format!("agent run asking for {bad:?}"),
            &out,
            &[config_arg, &entry, rule],
        );
        // Enrolling loads the same config: refused before any connection is tried.
        let out = agent::run_with_config(
            &config,
            &[
                "enroll",
                "--coordinator",
                "https://127.0.0.1:9",
                "--token",
                "unused",
                "--ca-sha256",
                &"0".repeat(64),
            ],
            REFUSAL_TIMEOUT,
        )
        .await
        .expect("agent enroll must exit, refusing its config");
        assert_refused_once(
            &format!("agent enroll asking for {bad:?}"),
            &out,
            &[config_arg, &entry, rule],
        );
        assert!(
            !dir.path().join("state/enrollment.json").exists(),
            "a refused config enrolled nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_refuses_a_policy_certificate_with_a_bad_name_naming_policy_certificate_and_rule(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    // `check_files` is not reached: the config is refused as it loads.
    let root = dir.path().join("root.pem");
    std::fs::write(&root, "").expect("root");
    for (bad, rule) in BAD_NAMES {
        let config = coordinator_config(dir.path(), &root);
        let mut body = std::fs::read_to_string(&config).expect("config");
        body.push_str(&format!(
            "\n[[policy]]\nname = \"web\"\n\n[[policy.certificate]]\nname = \"site\"\n\
             names = [\"{{hostname}}.example.net\", {}]\n",
            toml_string(bad)
        ));
        std::fs::write(&config, body).expect("config");
        let config_arg = config.to_str().expect("utf-8 path");
        let wants = [
            config_arg,
            "[[policy]] \"web\", [[policy.certificate]] \"site\"",
            &format!("names entry {}", toml_string(bad)),
            rule,
        ];
        for cmd in ["init", "serve"] {
            let out = coordinator::run_with_config(&config, &[cmd], REFUSAL_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("coordinator {cmd} must exit, refusing: {e:#}"));
            assert_refused_once(&format!("coordinator {cmd} with {bad:?}"), &out, &wants);
        }
        assert!(
            !dir.path().join("state/fleet-ca.pem").exists(),
            "a refused config initialised nothing"
        );
    }
}
