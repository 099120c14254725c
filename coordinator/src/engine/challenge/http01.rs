//! HTTP-01: the agent that owns the identifier serves the key authorization under
//! `/.well-known/acme-challenge/<token>` (standalone on port 80 of the host's addresses, or
//! through its web server: webroot, proxy).

use crate::acme::PendingChallenge;
use certfleet_proto::v1 as pb;

/// The challenge as the agent is handed it (`PresentChallenges.challenges`).
pub(super) fn wire(c: &PendingChallenge) -> pb::Http01Challenge {
    pb::Http01Challenge {
        identifier: c.identifier.clone(),
        token: c.token.clone(),
        key_authorization: c.key_authorization.clone(),
    }
}
