//! HashKV: a checksum of the key-value history up to a revision, equal on every member that
//! applied the same log, so operators can compare members (`etcdctl endpoint hashkv`).
//!
//! What is hashed is the history a read at any retained revision can see: every version (tombstones
//! included) with `compacted < revision <= at`, and, of the versions at or below the compacted
//! revision, each key's latest one unless it is a tombstone (exactly what a compaction keeps).
//! Versions a compaction has not physically removed yet therefore never change the hash. Each
//! version is fed in revision order as explicit fields, not in the storage encoding, so a
//! change of on-disk format does not change the hash. CRC-32 (IEEE, `crc32fast`): the values
//! are not comparable with etcd's anyway, which hashes its own bbolt records with Castagnoli.

use std::collections::BTreeMap;
use std::ops::Bound;

use kv_api::EtcdError;

use super::index::Space;
use super::keys::{revs_key, split_revs_key, Record, Version};
use super::read::Revisions;
use super::view::Reader;
use super::MvccError;

/// The answer to HashKV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision the hash covers (the current one when 0 was asked).
    pub hash_revision: i64,
    /// The member's compacted revision when it hashed.
    pub compact_revision: i64,
}

/// Hashes the history up to `revision` (0 = current). Like etcd: a revision above the current
/// one is a future revision; one below the compacted revision is compacted (the compacted
/// revision itself is still readable, as for Range). The caller keeps versions from being
/// removed while this runs (`KvStore::with_history`).
pub fn hash_kv<R: Reader + ?Sized>(r: &R, revision: i64, revs: Revisions) -> Result<KvHash, MvccError> {
    if revision > revs.current {
        return Err(EtcdError::FutureRevision.into());
    }
    if revision > 0 && revision < revs.compacted {
        return Err(EtcdError::Compacted.into());
    }
    let at = if revision <= 0 { revs.current } else { revision };
    let mut h = crc32fast::Hasher::new();
    h.update(b"raftkv-kv-history-v1");
    // Each key's latest version at or below the compacted revision, until the scan passes it.
    let mut old: Option<BTreeMap<Vec<u8>, (i64, i64, Record)>> = Some(BTreeMap::new());
    let upper = revs_key(at + 1, 0);
    for item in r.scan(Space::Revs, Bound::Unbounded, Bound::Excluded(&upper), false) {
        let (k, v) = item?;
        let (rev, sub) = split_revs_key(&k).ok_or(MvccError::Corrupt("a malformed version key"))?;
        let Version { key, record } = Version::decode(&v)?;
        if rev <= revs.compacted {
            if let Some(old) = old.as_mut() {
                old.insert(key, (rev, sub, record));
            }
            continue;
        }
        if let Some(old) = old.take() {
            feed_kept(&mut h, old);
        }
        feed(&mut h, rev, sub, &key, &record);
    }
    if let Some(old) = old.take() {
        feed_kept(&mut h, old);
    }
    Ok(KvHash { hash: h.finalize(), hash_revision: at, compact_revision: revs.compacted })
}

/// Feeds the versions a compaction keeps, in revision order.
fn feed_kept(h: &mut crc32fast::Hasher, old: BTreeMap<Vec<u8>, (i64, i64, Record)>) {
    let mut kept: Vec<_> = old.into_iter().filter(|(_, (_, _, rec))| !rec.is_tombstone()).collect();
    kept.sort_by_key(|(_, (rev, sub, _))| (*rev, *sub));
    for (key, (rev, sub, rec)) in kept {
        feed(h, rev, sub, &key, &rec);
    }
}

/// Feeds one version as length-prefixed fields, so no two histories share an input.
fn feed(h: &mut crc32fast::Hasher, rev: i64, sub: i64, key: &[u8], rec: &Record) {
    for n in [rev, sub, key.len() as i64] {
        h.update(&n.to_be_bytes());
    }
    h.update(key);
    for n in [rec.create_revision, rec.version, rec.lease, rec.value.len() as i64] {
        h.update(&n.to_be_bytes());
    }
    h.update(&rec.value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::testing::{put, State};
    use kv_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest};

    fn write(
        state: &State,
        revs: Revisions,
        f: impl FnOnce(&mut crate::mvcc::write::Writer<'_, '_, State>),
    ) -> Revisions {
        crate::mvcc::testing::write(state, revs, f).0
    }

    /// Puts, overwrites and a delete: revisions 2..=7.
    fn history(engine: &State) -> Revisions {
        write(engine, Revisions { current: 1, compacted: 0 }, |w| {
            w.put(&put("a", "1")).unwrap();
            w.put(&put("b", "1")).unwrap();
            w.put(&put("a", "2")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"b".to_vec(), ..Default::default() }).unwrap();
            w.put(&put("c", "1")).unwrap();
            w.put(&put("a", "3")).unwrap();
        })
    }

    #[test]
    fn equal_histories_hash_equal_and_each_revision_differs() {
        let (x, y) = (State::default(), State::default());
        let (rx, ry) = (history(&x), history(&y));
        assert_eq!(rx.current, 7);
        let mut seen = std::collections::HashSet::new();
        for rev in 1..=7 {
            let hx = hash_kv(&x, rev, rx).unwrap();
            assert_eq!(hx, hash_kv(&y, rev, ry).unwrap());
            assert_eq!((hx.hash_revision, hx.compact_revision), (rev, 0));
            assert!(seen.insert(hx.hash), "revision {rev} hashes like an earlier one");
        }
        assert_eq!(hash_kv(&x, 0, rx).unwrap(), hash_kv(&x, 7, rx).unwrap(), "0 means current");
    }

    #[test]
    fn a_different_value_changes_the_hash() {
        let (x, y) = (State::default(), State::default());
        let rx = history(&x);
        let ry = write(&y, Revisions { current: 1, compacted: 0 }, |w| {
            w.put(&put("a", "1")).unwrap();
            w.put(&put("b", "1")).unwrap();
            w.put(&put("a", "2")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"b".to_vec(), ..Default::default() }).unwrap();
            w.put(&put("c", "1")).unwrap();
            w.put(&put("a", "other")).unwrap();
        });
        assert_eq!(hash_kv(&x, 6, rx).unwrap(), hash_kv(&y, 6, ry).unwrap());
        assert_ne!(hash_kv(&x, 7, rx).unwrap().hash, hash_kv(&y, 7, ry).unwrap().hash);
    }

    #[test]
    fn revisions_out_of_reach_fail_as_in_etcd() {
        let x = State::default();
        let revs = history(&x);
        let revs = write(&x, revs, |w| {
            w.compact(&CompactionRequest { revision: 5, ..Default::default() }).unwrap();
        });
        assert!(matches!(hash_kv(&x, 8, revs), Err(MvccError::Etcd(EtcdError::FutureRevision))));
        assert!(matches!(hash_kv(&x, 4, revs), Err(MvccError::Etcd(EtcdError::Compacted))));
        assert_eq!(hash_kv(&x, 5, revs).unwrap().compact_revision, 5, "the compacted revision is readable");
    }

    /// A member that compacted and one whose compaction left old versions behind (as if it were
    /// deferred) hash the same: only what compaction keeps counts below the compacted revision.
    #[test]
    fn the_hash_covers_what_compaction_keeps_not_what_it_has_removed_yet() {
        let (x, y) = (State::default(), State::default());
        let revs = history(&x);
        history(&y);
        let compacted = write(&x, revs, |w| {
            w.compact(&CompactionRequest { revision: 5, ..Default::default() }).unwrap();
        });
        assert_eq!(compacted.compacted, 5);
        let uncompacted_y = Revisions { current: 7, compacted: 5 };
        for rev in [0, 5, 6, 7] {
            assert_eq!(hash_kv(&x, rev, compacted).unwrap(), hash_kv(&y, rev, uncompacted_y).unwrap(), "rev {rev}");
        }
    }
}
