//! [`DnsError`]: what went wrong with which provider, zone and record, and whether trying
//! again later can help.

use std::fmt;

/// What kind of failure; [`DnsErrorKind::is_retryable`] tells the engine whether a later
/// attempt can succeed without an operator changing something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsErrorKind {
    /// No provider serves the name (or its CNAME target): fix `[[dns_provider]] zones`.
    NoProvider,
    /// The provider's settings or credentials are wrong (a TSIG key the server does not
    /// accept, an update the server refuses, a missing secret, an unknown hosted zone,
    /// access denied): an operator must fix them.
    Config,
    /// The provider could not be reached or did not answer in time.
    Timeout,
    /// A failure that may pass (server failure, throttling, a program that exited non-zero,
    /// an answer we could not read).
    Transient,
    /// The records were written but not every nameserver served them in time.
    NotPropagated,
}

impl DnsErrorKind {
    /// Whether the same call may succeed later without a configuration change.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Timeout | Self::Transient | Self::NotPropagated)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::NoProvider => "no provider",
            Self::Config => "configuration",
            Self::Timeout => "timeout",
            Self::Transient => "failed",
            Self::NotPropagated => "not propagated",
        }
    }
}

/// A DNS provider failure. `Display` names the provider, the zone, the record and the
/// cause (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsError {
    /// The provider's `name`, or `-` when none serves the record.
    pub provider: String,
    /// The zone apex, or `-` when unknown.
    pub zone: String,
    /// The record's owner name (`_acme-challenge.example.net`).
    pub record: String,
    pub kind: DnsErrorKind,
    /// What happened and, where we know it, what to do.
    pub cause: String,
}

impl DnsError {
    pub fn new(
        kind: DnsErrorKind,
        provider: impl Into<String>,
        zone: impl Into<String>,
        record: impl Into<String>,
        cause: impl Into<String>,
    ) -> Self {
        Self {
            provider: provider.into(),
            zone: zone.into(),
            record: record.into(),
            kind,
            cause: cause.into(),
        }
    }

    /// Whether a later attempt may succeed without a configuration change.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Whether an operator must change the configuration (or the provider's side).
    pub fn is_config(&self) -> bool {
        matches!(self.kind, DnsErrorKind::Config | DnsErrorKind::NoProvider)
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DNS provider {:?} ({}), zone {}, record {}: {}",
            self.provider,
            self.kind.as_str(),
            self.zone,
            self.record,
            self.cause
        )
    }
}

impl std::error::Error for DnsError {}

/// The error of one provider call, before [`super`] adds provider, zone and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    pub kind: DnsErrorKind,
    pub cause: String,
}

impl CallError {
    pub fn new(kind: DnsErrorKind, cause: impl Into<String>) -> Self {
        Self {
            kind,
            cause: cause.into(),
        }
    }
    pub fn config(cause: impl Into<String>) -> Self {
        Self::new(DnsErrorKind::Config, cause)
    }
    pub fn transient(cause: impl Into<String>) -> Self {
        Self::new(DnsErrorKind::Transient, cause)
    }
    pub fn timeout(cause: impl Into<String>) -> Self {
        Self::new(DnsErrorKind::Timeout, cause)
    }
}
