//! The configuration the engine runs on, swappable at a reload (SIGHUP, see
//! [`crate::reload`]): the config itself, the ACME issuers made from it and the DNS
//! providers. [`Engine::live`] hands out one snapshot; a certificate's task
//! ([`Engine::with_snapshot`], taken when the task starts) sees the same snapshot from
//! its first step to its last, so one order never sees two configurations. An issuer
//! whose settings did not change is kept across a reload (its account and directory stay
//! cached); an order in flight keeps the issuer it started with until it ends.

use super::Engine;
use crate::acme::AcmeIssuer;
use crate::config::{Config, IssuerConfig};
use crate::dns::DnsProviders;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// One configuration and what is made from it.
pub struct Live {
    pub config: Arc<Config>,
    pub issuers: HashMap<String, Arc<AcmeIssuer>>,
    /// DNS-01's providers (the fleet's only DNS credentials).
    pub dns: Arc<DnsProviders>,
}

tokio::task_local! {
    /// The snapshot of the unit of work the current task runs.
    static SNAPSHOT: Arc<Live>;
}

impl Live {
    /// What `config` describes, reusing from `previous` every issuer whose settings are
    /// the same (`make` makes the others). Returns the issuers that are new (to warm up).
    pub(super) fn build(
        config: Config,
        dns: Arc<DnsProviders>,
        previous: Option<&Live>,
        make: impl Fn(&IssuerConfig) -> AcmeIssuer,
    ) -> (Live, Vec<Arc<AcmeIssuer>>) {
        let mut fresh = Vec::new();
        let issuers = config
            .issuers
            .iter()
            .map(|c| {
                let kept = previous
                    .and_then(|p| p.issuers.get(&c.name))
                    .filter(|i| i.cfg == *c)
                    .cloned();
                let issuer = kept.unwrap_or_else(|| {
                    let i = Arc::new(make(c));
                    fresh.push(i.clone());
                    i
                });
                (c.name.clone(), issuer)
            })
            .collect();
        let live = Live {
            config: Arc::new(config),
            issuers,
            dns,
        };
        (live, fresh)
    }
}

impl Engine {
    /// A new issuer on the engine's store, clock and metrics.
    fn make_issuer(&self, cfg: &IssuerConfig) -> AcmeIssuer {
        AcmeIssuer::new(
            cfg.clone(),
            self.store.clone(),
            self.clock.clone(),
            self.metrics.clone(),
        )
    }

    /// The configuration of the current unit of work: the certificate task's snapshot, or
    /// (outside one) the one in force now. Take it once per unit of work.
    pub fn live(&self) -> Arc<Live> {
        SNAPSHOT
            .try_with(Arc::clone)
            .unwrap_or_else(|_| self.current())
    }

    /// The configuration in force now.
    fn current(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `work` on the configuration in force now, whatever a reload swaps meanwhile.
    pub(crate) fn with_snapshot<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        SNAPSHOT.scope(self.current(), work)
    }

    /// Puts `config` (checked by the caller) in force for every unit of work that starts
    /// from now on, and warms up the accounts of issuers that are new. Returns the
    /// configuration it replaced.
    pub fn swap_config(self: &Arc<Self>, config: Config, dns: Arc<DnsProviders>) -> Arc<Config> {
        let mut guard = self.live.write().unwrap_or_else(|p| p.into_inner());
        let (live, fresh) = Live::build(config, dns, Some(&guard), |c| self.make_issuer(c));
        let old = std::mem::replace(&mut *guard, Arc::new(live));
        drop(guard);
        for issuer in fresh {
            self.warm_up(issuer);
        }
        old.config.clone()
    }
}

impl Engine {
    /// The certificates whose tasks run now.
    pub(crate) fn running_certs(&self) -> Vec<certfleet_shared::ids::CertId> {
        super::lock(&self.running).iter().cloned().collect()
    }

    pub(crate) fn is_running(&self, cert: &certfleet_shared::ids::CertId) -> bool {
        super::lock(&self.running).contains(cert)
    }

    /// Runs `work` on the engine's task tracker; it is dropped at shutdown.
    pub(crate) fn spawn_tracked(&self, work: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = work => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use certfleet_shared::clock::ManualClock;

    fn config(extra: &str) -> Config {
        let text = format!(
            "version = 1\nstate_dir = \"/var/lib/c\"\n[server]\nlisten = \"127.0.0.1:7443\"\n\
             [issuance]\nissuer = \"a\"\n\
             [[issuer]]\nname = \"a\"\ndirectory = \"https://a.example/dir\"\n{extra}"
        );
        Config::from_toml(&text, std::path::Path::new("t.toml"), std::iter::empty())
            .expect("config")
    }

    #[test]
    fn an_unchanged_issuer_is_kept_across_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let clock: certfleet_shared::clock::SharedClock = Arc::new(ManualClock::new(0));
        let make = |c: &IssuerConfig| {
            AcmeIssuer::new(c.clone(), store.clone(), clock.clone(), Arc::default())
        };
        let dns = Arc::new(DnsProviders::from_config(&[]).unwrap());
        let (first, fresh) = Live::build(config(""), dns.clone(), None, make);
        assert_eq!(fresh.len(), 1);

        // `a` unchanged, `b` added: `a` is the same issuer (its account stays cached).
        let b = "[[issuer]]\nname = \"b\"\ndirectory = \"https://b.example/dir\"\n";
        let (second, fresh) = Live::build(config(b), dns.clone(), Some(&first), make);
        assert!(Arc::ptr_eq(&first.issuers["a"], &second.issuers["a"]));
        assert_eq!(
            fresh
                .iter()
                .map(|i| i.cfg.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );

        // `a` changed (its contact): a new issuer; the old one lives on with whoever holds it.
        let contact = "contact = [\"mailto:ops@example.org\"]\n";
        let (third, fresh) = Live::build(config(contact), dns, Some(&second), make);
        assert!(!Arc::ptr_eq(&second.issuers["a"], &third.issuers["a"]));
        assert_eq!(fresh.len(), 1);
        assert!(!third.issuers.contains_key("b"));
        assert_eq!(second.issuers["a"].cfg.contact, Vec::<String>::new());
    }
}
