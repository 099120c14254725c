//! The configuration the engine runs on, swappable at a reload (SIGHUP, see
//! [`crate::reload`]): the config itself, the ACME issuers made from it and the DNS
//! providers. [`Engine::live`] hands out one snapshot; a certificate's task
//! ([`Engine::with_snapshot`], taken when the task starts) sees the same snapshot from
//! its first step to its last, so one order never sees two configurations. An issuer
//! whose settings did not change is kept across a reload (its account and directory stay
//! cached); an order in flight keeps the issuer it started with until it ends.

use super::Engine;
use crate::acme::AcmeIssuer;
use crate::config::Config;
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

impl Engine {
    /// Builds what `config` describes, reusing from `previous` every issuer whose settings
    /// are the same. Returns the issuers that are new (to warm up).
    pub(super) fn build_live(
        &self,
        config: Config,
        dns: Arc<DnsProviders>,
        previous: Option<&Live>,
    ) -> (Live, Vec<Arc<AcmeIssuer>>) {
        let mut fresh = Vec::new();
        let issuers = config
            .issuers
            .iter()
            .map(|c| {
                let kept = previous
                    .and_then(|p| p.issuers.get(&c.name))
                    .filter(|i| i.cfg == *c);
                let issuer = match kept {
                    Some(i) => i.clone(),
                    None => {
                        let i = Arc::new(AcmeIssuer::new(
                            c.clone(),
                            self.store.clone(),
                            self.clock.clone(),
                            self.metrics.clone(),
                        ));
                        fresh.push(i.clone());
                        i
                    }
                };
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
        let (live, fresh) = self.build_live(config, dns, Some(&guard));
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
