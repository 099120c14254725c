//! Paging backwards through the audit trail: newest first, a bounded amount of work per
//! page, and a cursor (a sequence number) to go on from. The web view's audit search, host
//! timelines and JSON Lines export read the trail this way, so a page stays cheap with a
//! million records.

use super::{parse_record, AuditError, AuditLog, Kind, Query, Record, CLOCK_SLACK_SECS};
use serde::Deserialize;

/// Records read from the store per round trip of an unindexed page.
const BATCH: usize = 512;

/// One page of matching records, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub records: Vec<Record>,
    /// Where the next (older) page starts: pass it as `before`. `None`: nothing older
    /// matches.
    pub next_before: Option<u64>,
    /// How many records were read to make the page (at most the `scan` asked for).
    pub scanned: usize,
    /// The oldest record read: (sequence number, time). With `next_before` set and few
    /// records, how far back this page searched.
    pub reached: Option<(u64, i64)>,
}

/// The two fields most filters of an unindexed scan decide on, read without building the
/// whole record (serde skips the rest): a record of another kind or outside the time
/// range is passed over at a fraction of a full parse.
#[derive(Deserialize)]
struct Probe {
    time: i64,
    kind: Kind,
}

impl Query {
    /// False when the record's kind or time rules it out.
    fn may_match(&self, p: &Probe) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&p.kind))
            && self.since.is_none_or(|t| p.time >= t)
            && self.until.is_none_or(|t| p.time < t)
    }
}

impl AuditLog {
    /// Records matching `q` (its `limit` is ignored) with a sequence number below `before`
    /// (`None`: from the newest), newest first: at most `limit` of them, after reading at
    /// most `scan` records. A page that stops at `scan` may hold fewer than `limit`
    /// records and still have a `next_before`: a rare kind over a long trail is found page
    /// by page, never by one unbounded read. Host, serial and address filters read the
    /// store's index instead of the trail; `since`/`until` bound the range by bisection.
    pub fn page(
        &self,
        q: &Query,
        before: Option<u64>,
        limit: usize,
        scan: usize,
    ) -> Result<Page, AuditError> {
        let limit = limit.max(1);
        let scan = scan.max(limit);
        let lower = match q.since {
            Some(t) => self.first_seq_from(t)?,
            None => 0,
        };
        let mut upper = before.unwrap_or(u64::MAX);
        if let Some(u) = q.until {
            // The first record at or after `until` + slack: nothing from there on matches.
            let cut = self.first_seq_from(u.saturating_add(2 * CLOCK_SLACK_SECS))?;
            if cut < self.len() {
                upper = upper.min(cut);
            }
        }
        let mut page = Page::default();
        if upper <= lower {
            return Ok(page);
        }
        if let Some(seqs) = self.candidates(q) {
            // Index entries are small (a sequence number): collect the range, walk it
            // backwards reading records one by one.
            let mut in_range = Vec::new();
            for seq in seqs {
                let seq = seq?;
                if (lower..upper).contains(&seq) {
                    in_range.push(seq);
                }
            }
            for (i, &seq) in in_range.iter().enumerate().rev() {
                let Some(r) = self.get(seq)? else { continue };
                page.scanned += 1;
                page.reached = Some((r.seq, r.time));
                if q.matches(&r) {
                    page.records.push(r);
                }
                if page.records.len() >= limit || page.scanned >= scan {
                    page.next_before = (i > 0).then_some(seq);
                    break;
                }
            }
            return Ok(page);
        }
        let mut cursor = upper;
        loop {
            let want = BATCH.min(scan - page.scanned);
            let batch = self.store.audit_records_before(cursor, want)?;
            let Some(last) = batch.last() else {
                return Ok(page);
            };
            let (got, last_seq) = (batch.len(), last.seq);
            for stored in batch {
                if stored.seq < lower {
                    return Ok(page);
                }
                page.scanned += 1;
                let probe: Probe =
                    serde_json::from_slice(&stored.json).map_err(|e| AuditError::Corrupt {
                        seq: stored.seq,
                        detail: e.to_string(),
                    })?;
                page.reached = Some((stored.seq, probe.time));
                if !q.may_match(&probe) {
                    continue;
                }
                let r = parse_record(stored.seq, &stored.json)?;
                if q.matches(&r) {
                    page.records.push(r);
                    if page.records.len() >= limit {
                        page.next_before = (stored.seq > lower).then_some(stored.seq);
                        return Ok(page);
                    }
                }
            }
            if got < want || last_seq <= lower {
                return Ok(page);
            }
            cursor = last_seq;
            if page.scanned >= scan {
                page.next_before = Some(cursor);
                return Ok(page);
            }
        }
    }
}
