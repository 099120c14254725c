//! The agent's own metrics (off unless `[metrics] listen` is set): session state, installs
//! by result, challenges served, and what each target holds. Small on purpose; the fleet
//! view lives on the coordinator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstallLabels {
    pub target: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Default)]
pub struct AgentMetrics {
    pub session_connected: Gauge,
    pub installs: Family<InstallLabels, Counter>,
    pub challenges_served: Counter,
}

impl AgentMetrics {
    pub fn render(
        &self,
        targets: &std::collections::BTreeMap<String, crate::target::Target>,
    ) -> Result<String, String> {
        let mut reg = Registry::default();
        let not_after = Family::<TargetLabel, Gauge>::default();
        for (name, t) in targets {
            if let Some(i) = crate::install::inspect(t) {
                not_after
                    .get_or_create(&TargetLabel {
                        target: name.clone(),
                    })
                    .set(i.not_after);
            }
        }
        reg.register(
            "certfleet_agent_session_connected",
            "1 while the session to the coordinator is up",
            self.session_connected.clone(),
        );
        reg.register(
            "certfleet_agent_installs",
            "Install commands by target and result",
            self.installs.clone(),
        );
        reg.register(
            "certfleet_agent_challenges_served",
            "Challenge responses served by the agent (HTTP-01 answers, TLS-ALPN-01 handshakes)",
            self.challenges_served.clone(),
        );
        reg.register(
            "certfleet_agent_certificate_not_after_timestamp_seconds",
            "notAfter of the certificate installed in each target",
            not_after,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|e| e.to_string())?;
        Ok(out)
    }
}
