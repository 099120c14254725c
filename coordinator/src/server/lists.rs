//! The admin API's list calls, paged: `ListHosts`, `ListCerts`, `ListTokens` and the
//! pages of `QueryAudit`.
//!
//! A page is read from the store as one bounded key range after the cursor
//! (`Store::hosts_page` …), so a 10,000-host fleet is never loaded whole for one call. The
//! page token is the last key of the page (opaque to clients), not an offset: items added
//! while a client pages cannot shift what it has not read yet. Every reply stays under
//! [`MAX_REPLY_BYTES`], well inside tonic's 4 MiB default decoding limit, whatever the
//! page size asked for.
//!
//! Old clients (no `page_size`) get the whole list when it fits in one reply; when it does
//! not, FAILED_PRECONDITION naming the fix — never a silently cut list.

use super::{cert_view, internal, Api};
use crate::operators::AdminRpc;
use certfleet_proto::v1 as pb;
use certfleet_shared::ids::{CertId, HostId};
use prost::Message;
use tonic::{Request, Status};

/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 5_000;
/// The largest reply the list calls produce (encoded), under tonic's 4 MiB default.
pub const MAX_REPLY_BYTES: usize = 3 * 1024 * 1024;
/// Store reads per page come in ranges of at most this many records.
const READ_CHUNK: usize = 1_000;

/// A page token: the kind of list and the last key of the page before.
pub fn encode_token(kind: &str, last_key: &str) -> String {
    format!("{kind}.{}", hex::encode(last_key))
}

/// The last key a token of `kind` carries; `None` for "" (the first page).
pub fn decode_token(kind: &str, token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Status::invalid_argument(format!(
            "page_token {:?} was not given by this list call: pass the next_page_token of the \
             previous reply with the same filters, or none to start from the first page",
            token.chars().take(40).collect::<String>()
        ))
    };
    let (k, hexed) = token.split_once('.').ok_or_else(bad)?;
    if k != kind || hexed.len() > 512 {
        return Err(bad());
    }
    let key = hex::decode(hexed).map_err(|_| bad())?;
    String::from_utf8(key).map(Some).map_err(|_| bad())
}

/// What one page holds.
pub struct Page<V> {
    pub items: Vec<V>,
    /// The last key of the page when more items follow it.
    pub more_after: Option<String>,
}

/// Bytes an item adds to a reply as a `repeated` message field.
fn field_len(item: &impl Message) -> usize {
    let n = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(n as u64) + n
}

/// Collects one page: up to `page_size` items (0: every item, if they fit) from `read`
/// (up to `n` records after a key, in key order), each made a view by `view`, the reply
/// kept under [`MAX_REPLY_BYTES`]. `what` names the items for the error an old client
/// gets.
pub fn collect<R, V: Message>(
    page_size: u32,
    start: Option<String>,
    what: &str,
    mut read: impl FnMut(Option<&str>, usize) -> Result<Vec<(String, R)>, Status>,
    mut view: impl FnMut(R) -> V,
) -> Result<Page<V>, Status> {
    let whole = page_size == 0;
    let want = if whole {
        usize::MAX
    } else {
        (page_size as usize).min(MAX_PAGE_SIZE)
    };
    let (mut items, mut bytes) = (Vec::new(), 0usize);
    let mut last: Option<String> = start;
    loop {
        // One more than the page needs: tells "more follow" from "exactly the end".
        let ask = want
            .saturating_sub(items.len())
            .saturating_add(1)
            .min(READ_CHUNK);
        let chunk = read(last.as_deref(), ask)?;
        let ended = chunk.len() < ask;
        for (key, rec) in chunk {
            let v = view(rec);
            let len = field_len(&v);
            let full = items.len() >= want || (bytes + len > MAX_REPLY_BYTES && !items.is_empty());
            if full {
                if whole {
                    return Err(Status::failed_precondition(format!(
                        "the {what} do not fit in one reply ({} of them fill {} MiB): this \
                         client does not page — use a certfleet-coordinator CLI of this \
                         version or later (it fetches every page), or send page_size",
                        items.len(),
                        MAX_REPLY_BYTES >> 20
                    )));
                }
                return Ok(Page {
                    items,
                    more_after: last,
                });
            }
            bytes += len;
            items.push(v);
            last = Some(key);
        }
        if ended {
            return Ok(Page {
                items,
                more_after: None,
            });
        }
    }
}

fn next_token(kind: &str, page_more: Option<String>) -> String {
    page_more
        .map(|k| encode_token(kind, &k))
        .unwrap_or_default()
}

/// Runs a blocking store read off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

impl Api {
    pub(super) async fn list_hosts_paged(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<pb::ListHostsResponse, Status> {
        self.operator(&req, AdminRpc::ListHosts)?;
        let api = self.clone();
        let r = req.into_inner();
        blocking(move || api.hosts_page(&r)).await
    }

    fn hosts_page(&self, r: &pb::ListHostsRequest) -> Result<pb::ListHostsResponse, Status> {
        let start = decode_token("h", &r.page_token)?;
        if let Some(k) = &start {
            HostId::parse(k).map_err(|_| Status::invalid_argument("page_token is damaged"))?;
        }
        let now = self.clock.now_unix();
        let where_connected =
            crate::cluster::connected_by_name(&self.sessions, self.store.as_ref());
        let read = |after: Option<&str>, n| {
            let after = after.map(HostId::parse).transpose().map_err(internal)?;
            Ok(self
                .store
                .hosts_page(after.as_ref(), n)
                .map_err(internal)?
                .into_iter()
                .map(|h| (h.id.to_string(), h))
                .collect())
        };
        let view = |h: crate::model::HostRecord| {
            let node = where_connected.get(&h.id).cloned();
            let connected = node.is_some();
            pb::HostView {
                connected,
                node: node.unwrap_or_default(),
                host_id: h.id.to_string(),
                hostname: h.hostname,
                ips: h.ips.iter().map(|i| i.to_string()).collect(),
                targets: h.targets,
                enrolled_unix: h.enrolled,
                // A connected host is being seen right now.
                last_seen_unix: if connected {
                    now
                } else {
                    h.last_seen.unwrap_or(0)
                },
                labels: h.labels.into_iter().collect(),
                identity_serial: h.identity_serial,
                identity_not_after_unix: h.identity_not_after.unwrap_or(0),
                identity_rotated_unix: h.identity_rotated.unwrap_or(0),
            }
        };
        let page = collect(r.page_size, start, "hosts", read, view)?;
        Ok(pb::ListHostsResponse {
            hosts: page.items,
            next_page_token: next_token("h", page.more_after),
        })
    }

    pub(super) async fn list_certs_paged(
        &self,
        req: Request<pb::ListCertsRequest>,
    ) -> Result<pb::ListCertsResponse, Status> {
        self.operator(&req, AdminRpc::ListCerts)?;
        let api = self.clone();
        let r = req.into_inner();
        blocking(move || api.certs_page(&r)).await
    }

    fn certs_page(&self, r: &pb::ListCertsRequest) -> Result<pb::ListCertsResponse, Status> {
        let start = decode_token("c", &r.page_token)?;
        if let Some(k) = &start {
            CertId::parse(k).map_err(|_| Status::invalid_argument("page_token is damaged"))?;
        }
        let now = self.clock.now_unix();
        let read = |after: Option<&str>, n| {
            let after = after.map(CertId::parse).transpose().map_err(internal)?;
            Ok(self
                .store
                .certs_page(after.as_ref(), n)
                .map_err(internal)?
                .into_iter()
                .map(|c| (c.id.to_string(), c))
                .collect())
        };
        let page = collect(r.page_size, start, "certificates", read, |c| {
            cert_view(c, now)
        })?;
        Ok(pb::ListCertsResponse {
            certs: page.items,
            next_page_token: next_token("c", page.more_after),
        })
    }

    pub(super) async fn list_tokens_paged(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<pb::ListTokensResponse, Status> {
        self.operator(&req, AdminRpc::ListTokens)?;
        let api = self.clone();
        let r = req.into_inner();
        blocking(move || api.tokens_page(&r)).await
    }

    fn tokens_page(&self, r: &pb::ListTokensRequest) -> Result<pb::ListTokensResponse, Status> {
        let start = decode_token("t", &r.page_token)?;
        let read = |after: Option<&str>, n| self.store.tokens_page(after, n).map_err(internal);
        let view = |(hash, t): (String, crate::store::TokenRecord)| pb::TokenView {
            id: hash.chars().take(16).collect(),
            created_unix: t.created,
            expires_unix: t.expires,
            uses_left: t.uses_left,
            used_by: t.used_by.iter().map(|h| h.to_string()).collect(),
            revoked: t.revoked,
            cidrs: t.cidrs.iter().map(ToString::to_string).collect(),
            labels_fixed: t.labels.is_some(),
            labels: t.labels.unwrap_or_default().into_iter().collect(),
        };
        let read_keyed = |after: Option<&str>, n| {
            Ok(read(after, n)?
                .into_iter()
                .map(|(h, t)| (h.clone(), (h, t)))
                .collect())
        };
        let mut page = collect(r.page_size, start, "join tokens", read_keyed, view)?;
        // The whole list (an old client's call) in the order it always had.
        if r.page_size == 0 {
            page.items.sort_by_key(|t| t.created_unix);
        }
        Ok(pb::ListTokensResponse {
            tokens: page.items,
            next_page_token: next_token("t", page.more_after),
        })
    }

    /// `QueryAudit`: with `page_size`, one page after the token's sequence number;
    /// without, up to `limit` records as before. Either way under [`MAX_REPLY_BYTES`].
    pub(super) fn audit_page(
        &self,
        r: &pb::QueryAuditRequest,
    ) -> Result<pb::QueryAuditResponse, Status> {
        let (mut q, cap) = crate::requests::query_audit(r)?;
        let cap = if r.page_size > 0 {
            (r.page_size as usize).min(MAX_PAGE_SIZE)
        } else {
            cap
        };
        q.limit = Some(cap + 1);
        if let Some(k) = decode_token("a", &r.page_token)? {
            let seq = k
                .parse::<u64>()
                .map_err(|_| Status::invalid_argument("page_token is damaged"))?;
            q.after = Some(seq);
        }
        let records = self.audit.query(&q).map_err(internal)?;
        let mut more = records.len() > cap;
        let (mut records_json, mut bytes, mut last) = (Vec::new(), 0usize, None);
        for rec in records.iter().take(cap) {
            let json = serde_json::to_string(rec).map_err(internal)?;
            let len = 2 + prost::encoding::encoded_len_varint(json.len() as u64) + json.len();
            if bytes + len > MAX_REPLY_BYTES && !records_json.is_empty() {
                more = true;
                break;
            }
            bytes += len;
            records_json.push(json);
            last = Some(rec.seq);
        }
        Ok(pb::QueryAuditResponse {
            records_json,
            truncated: more,
            next_page_token: if more {
                next_token("a", last.map(|s| s.to_string()))
            } else {
                String::new()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("k{i:05}"), i as u32)).collect()
    }

    /// Pages through `all` as a client does; returns every page's length.
    fn page_through(all: &[(String, u32)], page_size: u32) -> (Vec<u32>, Vec<usize>) {
        let (mut got, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
        loop {
            let start = decode_token("x", &token).unwrap();
            let read = |after: Option<&str>, n: usize| {
                Ok(all
                    .iter()
                    .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                    .take(n)
                    .cloned()
                    .collect())
            };
            let page = collect(page_size, start, "things", read, |v| pb::TokenView {
                uses_left: v,
                ..Default::default()
            })
            .unwrap();
            sizes.push(page.items.len());
            got.extend(page.items.iter().map(|t| t.uses_left));
            match page.more_after {
                Some(k) => token = encode_token("x", &k),
                None => return (got, sizes),
            }
        }
    }

    #[test]
    fn empty_exact_multiple_and_remainder() {
        assert_eq!(page_through(&[], 10), (vec![], vec![0]));
        let (got, sizes) = page_through(&keys(30), 10);
        assert_eq!(got, (0..30).collect::<Vec<_>>());
        // Exactly three pages: the third says it is the last, no empty fourth.
        assert_eq!(sizes, vec![10, 10, 10]);
        let (got, sizes) = page_through(&keys(2_501), 1_000);
        assert_eq!(got.len(), 2_501);
        assert_eq!(sizes, vec![1_000, 1_000, 501]);
        // Above the maximum: pages of MAX_PAGE_SIZE.
        let (_, sizes) = page_through(&keys(5_001), 9_999);
        assert_eq!(sizes, vec![MAX_PAGE_SIZE, 1]);
        // Old clients: everything in one reply.
        assert_eq!(page_through(&keys(2_345), 0).1, vec![2_345]);
    }

    #[test]
    fn replies_stay_under_the_byte_bound() {
        let big = |_| pb::TokenView {
            id: "x".repeat(100_000),
            ..Default::default()
        };
        let read = |after: Option<&str>, n: usize| {
            Ok(keys(100)
                .into_iter()
                .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                .take(n)
                .collect())
        };
        let page = collect(100, None, "things", read, big).unwrap();
        let reply = pb::ListTokensResponse {
            tokens: page.items,
            next_page_token: String::new(),
        };
        assert!(
            reply.encoded_len() <= MAX_REPLY_BYTES,
            "{}",
            reply.encoded_len()
        );
        assert!(reply.tokens.len() < 100 && page.more_after.is_some());
        // Without page_size the same list is refused, naming the fix.
        let err = collect(0, None, "things", read, big).err().unwrap();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("page_size"), "{}", err.message());
    }

    #[test]
    fn tokens_of_another_list_or_damaged_are_refused() {
        let t = encode_token("h", "h-abc");
        assert_eq!(decode_token("h", &t).unwrap().as_deref(), Some("h-abc"));
        assert!(decode_token("c", &t).is_err());
        assert!(decode_token("h", "h.zz").is_err());
        assert!(decode_token("h", "nonsense").is_err());
        assert_eq!(decode_token("h", "").unwrap(), None);
    }
}
