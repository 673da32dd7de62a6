//! The changes of a revision range, read back from the stored versions: what a watch is served
//! when it starts in the past or falls behind the live changes (etcd's unsynced watchers).
//!
//! `kv_revs` holds every retained version by revision, so a revision range is one ordered scan.
//! A scan is bounded (by events found and by versions read) and always ends at a revision
//! boundary, so the events of one revision are never split between two reads.

use std::ops::Bound;

use kv_api::EtcdError;

use super::index::Space;
use super::keys::{encode_key, revs_key, split_revs_key, Version};
use super::read::{version_at, KeyRange, Revisions};
use super::view::Reader;
use super::write::Change;
use super::MvccError;

/// Most versions one read looks at, whether or not they are in the watched range: a watch of
/// a rare key must not hold the history lock for the whole history at once.
const MAX_SCANNED: usize = 16 * 1024;

/// How much one read may return: it stops at the first revision boundary after either bound
/// (so one revision larger than the bounds is still returned whole).
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimit {
    pub events: usize,
    /// Bytes of keys and values, previous values included.
    pub bytes: usize,
}

/// What one read returned.
#[derive(Debug, Default)]
pub struct Changes {
    /// The changes in the range, in revision order.
    pub changes: Vec<Change>,
    /// The first revision not read yet: the next read starts there.
    pub next: i64,
}

/// The changes of keys in `range` at revisions `from..=upto`, with each key's previous version
/// when `with_prev`, stopping at the first revision boundary after `limit` is reached (or
/// after [`MAX_SCANNED`] versions). A `from` at or below the compacted revision is refused as
/// compacted: its deletes may be gone.
pub fn read<R: Reader + ?Sized>(
    r: &R,
    range: &KeyRange,
    from: i64,
    upto: i64,
    with_prev: bool,
    limit: ChunkLimit,
    revs: Revisions,
) -> Result<Changes, MvccError> {
    if revs.compacted > 0 && from <= revs.compacted {
        return Err(EtcdError::Compacted.into());
    }
    let upto = upto.min(revs.current);
    let mut out = Changes { changes: Vec::new(), next: from };
    if from > upto {
        return Ok(out);
    }
    let (lower, upper) = (revs_key(from, 0), revs_key(upto + 1, 0));
    let (mut scanned, mut current, mut bytes) = (0, from, 0);
    for item in r.scan(Space::Revs, Bound::Included(&lower), Bound::Excluded(&upper), false) {
        let (k, v) = item?;
        let (rev, _) = split_revs_key(&k).ok_or(MvccError::Corrupt("a malformed version key"))?;
        let full = out.changes.len() >= limit.events || bytes >= limit.bytes || scanned >= MAX_SCANNED;
        if rev > current && full {
            // Everything below `rev` is read; `rev` is the next read's first revision.
            out.next = rev;
            return Ok(out);
        }
        current = rev;
        scanned += 1;
        let Version { key, record } = Version::decode(&v)?;
        if !range.contains(&key) {
            continue;
        }
        let prev = if with_prev { version_at(r, &encode_key(&key), &key, rev - 1)? } else { None };
        bytes += 2 * key.len() + record.value.len() + prev.as_ref().map_or(0, |p| p.value.len());
        out.changes.push(Change { key, version: record, prev });
    }
    out.next = upto + 1;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::testing::{put, write, State};
    use kv_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest, RequestOp, TxnRequest};

    fn events(events: usize) -> ChunkLimit {
        ChunkLimit { events, bytes: usize::MAX }
    }

    /// What apply records and what is read back from storage are the same changes, whatever
    /// the chunk size; chunks end on revision boundaries; compacted history is refused.
    #[test]
    fn read_back_changes_are_what_apply_recorded() {
        let state = State::default();
        let (revs, recorded) = write(&state, Revisions { current: 1, compacted: 0 }, |w| {
            for i in 0..30 {
                w.put(&put(&format!("k{}", i % 4), &format!("v{i}"))).unwrap();
                if i % 7 == 0 {
                    w.delete_range(&DeleteRangeRequest { key: b"k1".to_vec(), ..Default::default() }).unwrap();
                }
                if i % 5 == 0 {
                    let op = |k: &str| RequestOp {
                        request: Some(kv_api::etcdserverpb::request_op::Request::RequestPut(put(k, "txn"))),
                    };
                    w.txn(&TxnRequest { success: vec![op("k2"), op("k3")], ..Default::default() }).unwrap();
                }
            }
        });
        let all = KeyRange::new(b"\0", b"\0");
        let limits = [(1, usize::MAX), (2, usize::MAX), (5, usize::MAX), (1000, usize::MAX), (1000, 1), (1000, 20)];
        for (events, bytes) in limits {
            let chunk = ChunkLimit { events, bytes };
            let (mut from, mut got) = (2, Vec::new());
            while from <= revs.current {
                let read = read(&state, &all, from, revs.current, true, chunk, revs).unwrap();
                let first = read.changes.first().map(|c| c.version.mod_revision);
                assert!(first.is_none_or(|r| r >= from));
                assert!(read.changes.iter().all(|c| c.version.mod_revision < read.next));
                assert!(read.next > from, "a read always moves on");
                if bytes == 1 {
                    let revisions = read.changes.iter().map(|c| c.version.mod_revision);
                    assert!(revisions.clone().min() == revisions.max(), "one revision per read over the bytes");
                }
                got.extend(read.changes);
                from = read.next;
            }
            assert_eq!(got, recorded, "chunks of {chunk:?}");
        }
        let only_k2 = read(&state, &KeyRange::new(b"k2", b""), 2, revs.current, false, events(1000), revs).unwrap();
        assert!(only_k2.changes.iter().all(|c| c.key == b"k2" && c.prev.is_none()));
        let (revs, _) = write(&state, revs, |w| {
            w.compact(&CompactionRequest { revision: 10, ..Default::default() }).unwrap();
        });
        assert!(matches!(
            read(&state, &all, 10, revs.current, false, events(10), revs),
            Err(MvccError::Etcd(EtcdError::Compacted))
        ));
        assert!(read(&state, &all, 11, revs.current, false, events(10), revs).is_ok());
    }
}
