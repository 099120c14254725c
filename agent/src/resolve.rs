//! Does a DNS name point at this host? The CA resolves a name it validates and connects to
//! what it finds; when that is not one of the host's addresses the challenge fails there,
//! however well the agent answers here. Before a challenge for a name is answered, the
//! agent resolves the name with the system resolver (`tokio::net::lookup_host`) and warns
//! (never fails: the host's view of DNS may differ from the CA's, e.g. split horizon),
//! naming the addresses on both sides.

use certfleet_shared::identifier::DnsName;
use futures::future::BoxFuture;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A lookup gets this long.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves a name to its addresses (the system resolver in production, a table in tests).
pub type Resolver =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Vec<IpAddr>, String>> + Send + Sync>;

/// The system resolver: A and AAAA through `getaddrinfo`, bounded by [`TIMEOUT`].
pub fn system() -> Resolver {
    Arc::new(|name: String| {
        Box::pin(async move {
            match tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((name.as_str(), 0))).await {
                Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(addrs)) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    Ok(ips)
                }
            }
        })
    })
}

/// What resolving one name found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameCheck {
    /// The host's own addresses the name resolves to (empty: none).
    pub on_host: Vec<IpAddr>,
    /// For the operator, when the CA may not reach this host through the name.
    pub warning: Option<String>,
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves `name` and compares what it finds with the host's addresses `own`.
pub async fn check(name: &DnsName, own: &[IpAddr], resolver: &Resolver) -> NameCheck {
    let found = resolver(name.as_str().to_owned()).await;
    let found = match found {
        Ok(found) if !found.is_empty() => found,
        Ok(_) | Err(_) => {
            let why = found.err().unwrap_or_else(|| "no addresses".to_owned());
            return NameCheck {
                on_host: Vec::new(),
                warning: Some(format!(
                    "{name} does not resolve here ({why}); it must resolve to this host's \
                     addresses {} for the CA to reach this host",
                    list(own),
                    name = name.as_str(),
                )),
            };
        }
    };
    let (on_host, elsewhere): (Vec<IpAddr>, Vec<IpAddr>) =
        found.iter().partition(|ip| own.contains(ip));
    let warning = match (on_host.is_empty(), elsewhere.is_empty()) {
        (true, _) => Some(format!(
            "{} resolves to {}, not to this host's addresses {}: the CA will not reach this host",
            name.as_str(),
            list(&elsewhere),
            list(own)
        )),
        (false, false) => Some(format!(
            "{} resolves to {} of this host but also to {}, which are not this host's \
             addresses ({}): the CA may connect there and fail",
            name.as_str(),
            list(&on_host),
            list(&elsewhere),
            list(own)
        )),
        (false, true) => None,
    };
    NameCheck { on_host, warning }
}

/// A resolver answering from a fixed table (names not in it do not resolve), for tests.
#[cfg(test)]
pub fn table(entries: &[(&str, &[&str])]) -> Resolver {
    let map: std::collections::HashMap<String, Vec<IpAddr>> = entries
        .iter()
        .map(|(n, ips)| {
            let ips = ips.iter().map(|s| s.parse().expect("test IP")).collect();
            (n.to_string(), ips)
        })
        .collect();
    Arc::new(move |name: String| {
        let got = map
            .get(&name)
            .cloned()
            .ok_or_else(|| "Name or service not known".to_owned());
        Box::pin(async move { got })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_pointing_elsewhere_are_warned_about_naming_the_addresses() {
        let own: Vec<IpAddr> = vec!["10.99.0.11".parse().unwrap(), "fd99::11".parse().unwrap()];
        let r = table(&[
            ("web-1.example.net", &["198.51.100.4"]),
            ("web-2.example.net", &["10.99.0.11", "fd99::11"]),
            ("web-3.example.net", &["10.99.0.11", "198.51.100.5"]),
        ]);
        let name = |s: &str| DnsName::parse(s).unwrap();
        let c = check(&name("web-1.example.net"), &own, &r).await;
        assert!(c.on_host.is_empty());
        assert_eq!(
            c.warning.as_deref(),
            Some("web-1.example.net resolves to 198.51.100.4, not to this host's addresses 10.99.0.11, fd99::11: the CA will not reach this host")
        );
        let c = check(&name("web-2.example.net"), &own, &r).await;
        assert_eq!((c.on_host.len(), c.warning), (2, None));
        let c = check(&name("web-3.example.net"), &own, &r).await;
        assert_eq!(c.on_host, vec!["10.99.0.11".parse::<IpAddr>().unwrap()]);
        assert!(c.warning.unwrap().contains("but also to 198.51.100.5"));
        let c = check(&name("nowhere.example.net"), &own, &r).await;
        let w = c.warning.unwrap();
        assert!(
            w.starts_with("nowhere.example.net does not resolve here (Name or service not known)")
                && w.contains("10.99.0.11, fd99::11"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn the_system_resolver_answers_for_an_ip_literal_and_fails_cleanly() {
        let r = system();
        assert_eq!(
            r("127.0.0.1".into()).await.unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        // .invalid never resolves (RFC 6761).
        assert!(r("certfleet-test.invalid".into()).await.is_err());
    }
}
