//! TLS-ALPN-01 (RFC 8737; RFC 8738 for IP addresses): the agent answers ALPN `acme-tls/1`
//! for the identifier (SNI: the name, or the reverse-DNS name of an address) with a
//! self-signed validation certificate carrying SHA-256 of the key authorization in the
//! critical acmeIdentifier extension — on port 443 of its addresses (standalone), or on a
//! loopback port behind a front that routes by ALPN (loopback). The agent makes the
//! certificate and the digest; it is handed the key authorization itself.

use crate::acme::PendingChallenge;
use certfleet_proto::v1 as pb;

/// The challenge as the agent is handed it (`PresentChallenges.tls_alpn01`).
pub(super) fn wire(c: &PendingChallenge) -> pb::TlsAlpn01Challenge {
    pb::TlsAlpn01Challenge {
        identifier: c.identifier.clone(),
        token: c.token.clone(),
        key_authorization: c.key_authorization.clone(),
    }
}
