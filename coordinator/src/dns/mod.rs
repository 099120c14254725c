//! TEMPORARY (branch dns01-engine only): the API the dns-providers branch provides, so
//! the engine compiles against it before the merge. Replaced by that branch's module.
#![allow(dead_code, unused_variables)]

use certfleet_shared::identifier::DnsName;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
pub struct DnsProviderConfig {
    pub name: String,
    pub zones: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresentedSet {
    pub records: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("dns: {0}")]
pub struct DnsError(String);

impl DnsError {
    pub fn is_retryable(&self) -> bool {
        true
    }
}

pub struct DnsProviders {
    providers: Vec<DnsProviderConfig>,
}

impl DnsProviders {
    pub fn from_config(cfg: &[DnsProviderConfig]) -> Result<Self, DnsError> {
        Ok(DnsProviders {
            providers: cfg.to_vec(),
        })
    }
    pub fn zone_for(&self, name: &DnsName) -> Option<(String, String)> {
        None
    }
    pub async fn plan(&self, records: &[(DnsName, String)]) -> Result<PresentedSet, DnsError> {
        Err(DnsError("not merged".into()))
    }
    pub async fn present_set(&self, set: &PresentedSet) -> Result<(), DnsError> {
        Err(DnsError("not merged".into()))
    }
    pub async fn wait_propagated(&self, set: &PresentedSet) -> Result<(), DnsError> {
        Err(DnsError("not merged".into()))
    }
    pub async fn cleanup(&self, set: &PresentedSet) -> Result<(), DnsError> {
        Ok(())
    }
}
