//! Range reads with etcd's semantics: key ranges, reads at a revision, limit, sort, filters,
//! keys_only and count_only. Used by the read path (over the engine) and inside transactions
//! (over the apply overlay).

use std::ops::Bound;

use kv_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use kv_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use kv_api::mvccpb::KeyValue;
use kv_api::EtcdError;

use super::index::Space;
use super::keys::{after_all_versions, encode_key, history_key, indexed_revs_key, Record, Version};
use super::view::Reader;
use super::MvccError;

/// The key interval a request names (etcd's `key`/`range_end` rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// `range_end` empty: exactly `key`.
    Single(Vec<u8>),
    /// `[start, end)`, or `[start, ∞)` when `end` is `None` (`range_end == "\0"`).
    Interval(Vec<u8>, Option<Vec<u8>>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::Interval(key.to_vec(), None),
            end => KeyRange::Interval(key.to_vec(), Some(end.to_vec())),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(s) => s == k,
            KeyRange::Interval(s, e) => k >= s.as_slice() && e.as_ref().is_none_or(|e| k < e.as_slice()),
        }
    }

    /// Whether two ranges share a key (used by the txn duplicate check).
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let (a0, a1) = self.bounds();
        let (b0, b1) = other.bounds();
        let a_before_b_end = b1.as_ref().is_none_or(|e| a0 < *e);
        let b_before_a_end = a1.as_ref().is_none_or(|e| b0 < *e);
        a_before_b_end && b_before_a_end
    }

    /// Half-open `[start, end)` form, `None` = unbounded.
    fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            KeyRange::Interval(s, e) => (s.clone(), e.clone()),
        }
    }
}

/// Live versions of the keys in `range` as of the latest state, in key order.
pub fn latest<R: Reader + ?Sized>(r: &R, range: &KeyRange) -> Result<Vec<(Vec<u8>, Record)>, MvccError> {
    match range {
        KeyRange::Single(k) => Ok(match r.get(Space::Current, k)? {
            Some(v) => vec![(k.clone(), Record::decode(&v)?)],
            None => vec![],
        }),
        KeyRange::Interval(s, e) => {
            let upper = e.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut out = Vec::new();
            for item in r.scan(Space::Current, Bound::Included(s), upper, false) {
                let (k, v) = item?;
                out.push((k, Record::decode(&v)?));
            }
            Ok(out)
        }
    }
}

/// The `KvRevs` key a `KvHistory` pair names.
pub(super) fn indexed(history_key: &[u8], value: &[u8]) -> Result<[u8; 16], MvccError> {
    indexed_revs_key(history_key, value).ok_or(MvccError::Corrupt("a malformed index entry"))
}

/// The version stored in `KvRevs` under `revs_key`, which the index names (so it must exist).
pub(super) fn version<R: Reader + ?Sized>(r: &R, revs_key: &[u8]) -> Result<Version, MvccError> {
    let bytes = r.get(Space::Revs, revs_key)?.ok_or(MvccError::Corrupt("an indexed version is missing"))?;
    Ok(Version::decode(&bytes)?)
}

/// The version of `key` visible at `revision` (latest with mod_revision <= revision), if live.
pub(super) fn version_at<R: Reader + ?Sized>(
    r: &R,
    encoded: &[u8],
    key: &[u8],
    revision: i64,
) -> Result<Option<Record>, MvccError> {
    let upper = history_key(key, revision + 1);
    let mut scan = r.scan(Space::History, Bound::Included(encoded), Bound::Excluded(&upper), true);
    match scan.next().transpose()? {
        Some((hk, sub)) => {
            let rec = version(r, &indexed(&hk, &sub)?)?.record;
            Ok((!rec.is_tombstone()).then_some(rec))
        }
        None => Ok(None),
    }
}

/// Live versions of the keys in `range` as of `revision`, in key order (history skip-scan: one
/// seek to find each key, one to find its version).
pub fn at_revision<R: Reader + ?Sized>(
    r: &R,
    range: &KeyRange,
    revision: i64,
) -> Result<Vec<(Vec<u8>, Record)>, MvccError> {
    let (start, end) = match range {
        KeyRange::Single(k) => {
            let enc = encode_key(k);
            return Ok(version_at(r, &enc, k, revision)?.map(|rec| (k.clone(), rec)).into_iter().collect());
        }
        KeyRange::Interval(s, e) => (encode_key(s), e.as_deref().map(encode_key)),
    };
    let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    let mut cursor = Bound::Included(start);
    let mut out = Vec::new();
    loop {
        let lower = match &cursor {
            Bound::Included(k) => Bound::Included(k.as_slice()),
            Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let Some((hk, _)) = r.scan(Space::History, lower, upper, false).next().transpose()? else {
            break;
        };
        let (key, _) = super::keys::decode_history_key(&hk).ok_or(MvccError::Corrupt("history key"))?;
        let enc = encode_key(&key);
        if let Some(rec) = version_at(r, &enc, &key, revision)? {
            out.push((key, rec));
        }
        cursor = Bound::Excluded(after_all_versions(&enc));
    }
    Ok(out)
}

/// Revisions a read runs against.
#[derive(Clone, Copy, Debug)]
pub struct Revisions {
    pub current: i64,
    pub compacted: i64,
}

/// Checks that `revision` (0 = latest) can be read.
pub fn check_revision(revision: i64, revs: Revisions) -> Result<(), EtcdError> {
    if revision > revs.current {
        Err(EtcdError::FutureRevision)
    } else if revision > 0 && revision < revs.compacted {
        Err(EtcdError::Compacted)
    } else {
        Ok(())
    }
}

/// etcd's Range.
pub fn range<R: Reader + ?Sized>(r: &R, req: &RangeRequest, revs: Revisions) -> Result<RangeResponse, MvccError> {
    range_in(r, req, revs, false)
}

/// Range with `pending` telling whether `r` holds writes of an unfinished request (a write txn):
/// a read at an explicit revision must then come from history, which those writes (at the
/// next revision) cannot reach, while revision 0 sees them, as in etcd.
pub fn range_in<R: Reader + ?Sized>(
    r: &R,
    req: &RangeRequest,
    revs: Revisions,
    pending: bool,
) -> Result<RangeResponse, MvccError> {
    check_revision(req.revision, revs)?;
    let order = SortOrder::try_from(req.sort_order).map_err(|_| EtcdError::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| EtcdError::InvalidSortOption)?;
    let range = KeyRange::new(&req.key, &req.range_end);
    let latest_view = req.revision <= 0 || (req.revision >= revs.current && !pending);
    let found = if latest_view { latest(r, &range)? } else { at_revision(r, &range, req.revision)? };
    let count = found.len() as i64;
    let header = Some(ResponseHeader { revision: revs.current, ..Default::default() });
    if req.count_only {
        return Ok(RangeResponse { header, kvs: vec![], more: false, count });
    }
    let mut found: Vec<(Vec<u8>, Record)> = found.into_iter().filter(|(_, rec)| passes_filters(req, rec)).collect();
    // Sort and limit on full records; values are dropped for keys_only only at the end (a
    // VALUE sort must still see them).
    sort(&mut found, order, target);
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let more = limit > 0 && found.len() > limit;
    if more {
        found.truncate(limit);
    }
    let kvs: Vec<KeyValue> = found.iter().map(|(k, rec)| rec.to_kv(k, req.keys_only)).collect();
    Ok(RangeResponse { header, kvs, more, count })
}

fn passes_filters(req: &RangeRequest, rec: &Record) -> bool {
    let min_ok = |min: i64, v: i64| min == 0 || v >= min;
    let max_ok = |max: i64, v: i64| max == 0 || v <= max;
    min_ok(req.min_mod_revision, rec.mod_revision)
        && max_ok(req.max_mod_revision, rec.mod_revision)
        && min_ok(req.min_create_revision, rec.create_revision)
        && max_ok(req.max_create_revision, rec.create_revision)
}

fn sort(kvs: &mut [(Vec<u8>, Record)], order: SortOrder, target: SortTarget) {
    // Results come in key order; NONE with target KEY keeps it, NONE with another target sorts
    // ascending by that target (etcd).
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    match target {
        SortTarget::Key => {}
        SortTarget::Version => kvs.sort_by_key(|(_, r)| r.version),
        SortTarget::Create => kvs.sort_by_key(|(_, r)| r.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|(_, r)| r.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.1.value.cmp(&b.1.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}
