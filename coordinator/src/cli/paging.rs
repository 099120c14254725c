//! The list calls, every page fetched (`server/lists.rs` pages them): the commands print
//! the whole list as before. A coordinator older than paging ignores `page_size` and
//! answers everything at once with no next token, which ends the loop too.

use super::status_err;
use certfleet_proto::v1::{self as pb, admin_client::AdminClient};
use tonic::transport::Channel;

/// Items asked for per call (the coordinator may send fewer to stay under its reply size).
pub const PAGE_SIZE: u32 = 500;

/// A guard against a coordinator answering the same token forever.
const MAX_PAGES: usize = 1_000_000;

pub async fn hosts(client: &mut AdminClient<Channel>) -> anyhow::Result<Vec<pb::HostView>> {
    let (mut all, mut token) = (Vec::new(), String::new());
    for _ in 0..MAX_PAGES {
        let r = client
            .list_hosts(pb::ListHostsRequest {
                page_size: PAGE_SIZE,
                page_token: std::mem::take(&mut token),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        all.extend(r.hosts);
        if r.next_page_token.is_empty() {
            return Ok(all);
        }
        token = r.next_page_token;
    }
    anyhow::bail!(
        "the coordinator kept sending more pages of hosts ({} so far)",
        all.len()
    )
}

pub async fn certs(client: &mut AdminClient<Channel>) -> anyhow::Result<Vec<pb::CertView>> {
    let (mut all, mut token) = (Vec::new(), String::new());
    for _ in 0..MAX_PAGES {
        let r = client
            .list_certs(pb::ListCertsRequest {
                page_size: PAGE_SIZE,
                page_token: std::mem::take(&mut token),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        all.extend(r.certs);
        if r.next_page_token.is_empty() {
            return Ok(all);
        }
        token = r.next_page_token;
    }
    anyhow::bail!(
        "the coordinator kept sending more pages of certificates ({} so far)",
        all.len()
    )
}

/// Every token, oldest first (as `tokens list` always showed them).
pub async fn tokens(client: &mut AdminClient<Channel>) -> anyhow::Result<Vec<pb::TokenView>> {
    let (mut all, mut token) = (Vec::new(), String::new());
    for _ in 0..MAX_PAGES {
        let r = client
            .list_tokens(pb::ListTokensRequest {
                page_size: PAGE_SIZE,
                page_token: std::mem::take(&mut token),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        all.extend(r.tokens);
        if r.next_page_token.is_empty() {
            all.sort_by_key(|t: &pb::TokenView| t.created_unix);
            return Ok(all);
        }
        token = r.next_page_token;
    }
    anyhow::bail!(
        "the coordinator kept sending more pages of tokens ({} so far)",
        all.len()
    )
}

/// The audit records `q` matches, up to `limit` (0: all), and whether more matched.
pub async fn audit(
    client: &mut AdminClient<Channel>,
    mut q: pb::QueryAuditRequest,
    limit: usize,
) -> anyhow::Result<(Vec<String>, bool)> {
    let mut all = Vec::new();
    let want = if limit == 0 { usize::MAX } else { limit };
    for _ in 0..MAX_PAGES {
        let left = want - all.len();
        q.page_size = u32::try_from(left).unwrap_or(u32::MAX).min(PAGE_SIZE * 4);
        // A coordinator older than paging reads `limit` instead.
        q.limit = u32::try_from(left).unwrap_or(0);
        let r = client
            .query_audit(q.clone())
            .await
            .map_err(status_err)?
            .into_inner();
        all.extend(r.records_json);
        if all.len() >= want {
            all.truncate(want);
            return Ok((all, !r.next_page_token.is_empty() || r.truncated));
        }
        if r.next_page_token.is_empty() {
            // An older coordinator says `truncated` without a token.
            return Ok((all, r.truncated));
        }
        q.page_token = r.next_page_token;
    }
    anyhow::bail!(
        "the coordinator kept sending more pages of audit records ({} so far)",
        all.len()
    )
}
