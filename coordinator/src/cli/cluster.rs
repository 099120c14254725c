//! `status`'s lines about the store and the coordinator nodes sharing it.

use certfleet_proto::v1 as pb;
use certfleet_shared::timefmt::relative;

/// `status`'s store and node lines.
pub(super) fn lines(c: &pb::ClusterStatusResponse, now: i64) -> String {
    let mut out = String::new();
    if c.store_ok {
        out.push_str(&format!(
            "store         {} (read in {} ms)\n",
            c.backend, c.store_latency_ms
        ));
    } else {
        out.push_str(&format!(
            "store         {} UNREACHABLE: {}\n",
            c.backend, c.store_error
        ));
    }
    let alive = c.nodes.iter().filter(|n| n.alive).count();
    out.push_str(&format!(
        "nodes         {} ({} alive, {} leases held)\n",
        c.nodes.len(),
        alive,
        c.leases.len()
    ));
    for n in &c.nodes {
        out.push_str(&format!(
            "  {}{} {}: {} sessions, {} leases, last beat {}{}\n",
            if n.this_node { "*" } else { " " },
            n.name,
            n.node,
            n.sessions,
            n.leases,
            relative(n.beat_unix, now),
            if n.alive { "" } else { " (DEAD)" }
        ));
    }
    out
}
