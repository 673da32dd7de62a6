//! The history table of the key index: each key's retained revisions, in memory, like etcd's
//! key index.
//!
//! Why: the versions themselves live in `KvRevs`, keyed by revision, where the sled engine
//! packs the pairs of one apply into one record. Kept in sled, an index keyed by user key took a
//! sled insert into a random leaf per put on every member, and once the history outgrew sled's
//! cache each insert read its leaf back from disk, and put throughput fell by a third within a
//! minute of load (docs/benchmarks.md has the measurements). Here an insert is a push onto the
//! key's revision list.
//!
//! The tree's keys are `prefix ‖ revision` (8 bytes, big-endian) and its values are 8 bytes
//! (the sub-revision), so a key's entries pack into one list of 16-byte pairs. Prefixes must be
//! prefix-free (no prefix is the start of another: the MVCC key encoding ends every key with
//! 0x00 0x01 and escapes every other 0x00), so ordering by (prefix, revision) is the byte order
//! of the full keys, which scans follow.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::chunked::ChunkedScan;
use crate::engine::{Pair, Scan};
use crate::mvcc::MvccError;

/// Pairs a scan's first chunk copies (see [`ChunkedScan`]): reads at a revision take only the
/// first pair of most scans.
const FIRST_CHUNK: usize = 2;

/// Each prefix's (revision, value) pairs, sorted by revision.
type Map = BTreeMap<Vec<u8>, Vec<(u64, [u8; 8])>>;

/// The index. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct HistoryTable {
    map: Arc<RwLock<Map>>,
}

/// Splits a key into its prefix and revision.
fn split(key: &[u8]) -> Option<(&[u8], u64)> {
    let at = key.len().checked_sub(8)?;
    let (prefix, rev) = key.split_at(at);
    Some((prefix, u64::from_be_bytes(rev.try_into().ok()?)))
}

fn join(prefix: &[u8], rev: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

impl HistoryTable {
    /// Checks that a write fits the layout, before anything of its batch is applied.
    pub fn check(key: &[u8], value: Option<&[u8]>) -> Result<(), MvccError> {
        if split(key).is_none() {
            return Err(MvccError::Corrupt("a history key shorter than its revision"));
        }
        if value.is_some_and(|v| v.len() != 8) {
            return Err(MvccError::Corrupt("a history value that is not 8 bytes"));
        }
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (prefix, rev) = split(key)?;
        let map = self.map.read();
        let revs = map.get(prefix)?;
        let at = revs.binary_search_by_key(&rev, |(r, _)| *r).ok()?;
        Some(revs[at].1.to_vec())
    }

    pub fn clear(&self) {
        self.map.write().clear();
    }

    /// Sets or (`None`) removes one entry; a write that fails [`HistoryTable::check`] is
    /// ignored.
    pub fn apply(&self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let Some((prefix, rev)) = split(&key) else { return };
        let mut map = self.map.write();
        match value {
            Some(v) => {
                let Ok(value) = <[u8; 8]>::try_from(v.as_slice()) else { return };
                let revs = match map.get_mut(prefix) {
                    Some(revs) => revs,
                    None => map.entry(prefix.to_vec()).or_default(),
                };
                // Appends are the common case: a new version is the key's newest.
                match revs.last() {
                    Some((last, _)) if *last >= rev => match revs.binary_search_by_key(&rev, |(r, _)| *r) {
                        Ok(i) => revs[i].1 = value,
                        Err(i) => revs.insert(i, (rev, value)),
                    },
                    _ => revs.push((rev, value)),
                }
            }
            None => {
                let Some(revs) = map.get_mut(prefix) else { return };
                if let Ok(i) = revs.binary_search_by_key(&rev, |(r, _)| *r) {
                    revs.remove(i);
                }
                if revs.is_empty() {
                    map.remove(prefix);
                } else if revs.capacity() > 2 * revs.len() + 4 {
                    // Compaction leaves most keys one version: give the memory back.
                    revs.shrink_to_fit();
                }
            }
        }
    }

    pub fn scan(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'static> {
        let map = self.map.clone();
        let fill = move |lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool, n: usize| {
            collect(&map.read(), lower, upper, reverse, n)
        };
        Box::new(ChunkedScan::new(fill, lower, upper, reverse, FIRST_CHUNK))
    }
}

/// Up to `n` pairs of `map` within the bounds, in key order or in reverse.
fn collect(map: &Map, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool, n: usize) -> Vec<Pair> {
    let below = |k: &[u8]| match lower {
        Bound::Included(l) => k < l,
        Bound::Excluded(l) => k <= l,
        Bound::Unbounded => false,
    };
    let above = |k: &[u8]| match upper {
        Bound::Included(u) => k > u,
        Bound::Excluded(u) => k >= u,
        Bound::Unbounded => false,
    };
    let mut out = Vec::new();
    if reverse {
        // A prefix above the upper bound has every key above it.
        let prefixes = match upper {
            Bound::Included(u) | Bound::Excluded(u) => map.range::<[u8], _>((Bound::Unbounded, Bound::Included(u))),
            Bound::Unbounded => map.range::<[u8], _>((Bound::Unbounded, Bound::Unbounded)),
        };
        for (prefix, revs) in prefixes.rev() {
            for (rev, v) in revs.iter().rev() {
                let k = join(prefix, *rev);
                if below(&k) || out.len() == n {
                    return out;
                }
                if !above(&k) {
                    out.push((k, v.to_vec()));
                }
            }
        }
    } else {
        // A prefix below the lower bound has keys at or above it only when it is the start of
        // the bound, and then it is the bound's immediate predecessor (prefix-free prefixes).
        let (start, first) = match lower {
            Bound::Included(l) | Bound::Excluded(l) => {
                let before = map
                    .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(l)))
                    .next_back()
                    .filter(|(p, _)| l.starts_with(p));
                (map.range::<[u8], _>((Bound::Included(l), Bound::Unbounded)), before)
            }
            Bound::Unbounded => (map.range::<[u8], _>((Bound::Unbounded, Bound::Unbounded)), None),
        };
        for (prefix, revs) in first.into_iter().chain(start) {
            for (rev, v) in revs {
                let k = join(prefix, *rev);
                if above(&k) || out.len() == n {
                    return out;
                }
                if !below(&k) {
                    out.push((k, v.to_vec()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::valid;
    use crate::mvcc::keys::{after_all_versions, encode_key, history_key};
    use proptest::prelude::*;

    fn op(key: Vec<u8>, value: Option<u64>) -> (Vec<u8>, Option<Vec<u8>>) {
        (key, value.map(|v| v.to_be_bytes().to_vec()))
    }

    fn bound(kind: u8, k: Vec<u8>) -> Bound<Vec<u8>> {
        match kind % 3 {
            0 => Bound::Included(k),
            1 => Bound::Excluded(k),
            _ => Bound::Unbounded,
        }
    }

    fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        b.as_ref().map(Vec::as_slice)
    }

    /// A bound of the kinds the MVCC reads use: a history key, a bare key encoding, or the end
    /// of a key's versions.
    fn mvcc_bound(key: &[u8], rev: u64, shape: u8) -> Vec<u8> {
        match shape % 3 {
            0 => history_key(key, rev as i64),
            1 => encode_key(key),
            _ => after_all_versions(&encode_key(key)),
        }
    }

    proptest! {
        /// Through inserts, overwrites and deletes (with keys sharing bytes, holding 0x00, and
        /// revisions out of order), the index answers every point read and every scan, both
        /// ways and across chunks, as a plain ordered map of the full keys does.
        #[test]
        fn behaves_as_an_ordered_map_of_full_keys(
            writes in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(b'a'), Just(b'b')], 0..4),
                 1u64..40, proptest::option::weighted(0.8, 0u64..1000)),
                1..300),
            scans in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..3), 0u64..45, any::<u8>(), any::<u8>(),
                 proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..3), 0u64..45, any::<u8>(), any::<u8>(),
                 any::<bool>()),
                1..20),
        ) {
            let table = HistoryTable::default();
            let mut model = BTreeMap::new();
            for (key, rev, value) in writes {
                let (k, v) = op(history_key(&key, rev as i64), value);
                HistoryTable::check(&k, v.as_deref()).unwrap();
                match &v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(&k),
                };
                table.apply(k, v);
            }
            for (k, v) in &model {
                prop_assert_eq!(table.get(k), Some(v.clone()));
            }
            for (lk, lr, lshape, lkind, uk, ur, ushape, ukind, reverse) in scans {
                let lower = bound(lkind, mvcc_bound(&lk, lr, lshape));
                let upper = bound(ukind, mvcc_bound(&uk, ur, ushape));
                let got: Vec<Pair> =
                    table.scan(as_ref(&lower), as_ref(&upper), reverse).map(|p| p.unwrap()).collect();
                let mut want: Vec<Pair> = if valid(&lower, &upper) {
                    model.range::<Vec<u8>, _>((lower.clone(), upper.clone())).map(|(k, v)| (k.clone(), v.clone())).collect()
                } else {
                    Vec::new()
                };
                if reverse {
                    want.reverse();
                }
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn refuses_keys_and_values_outside_the_layout() {
        assert!(HistoryTable::check(&[1, 2, 3], Some(&1u64.to_be_bytes())).is_err());
        assert!(HistoryTable::check(&history_key(b"k", 1), Some(&[1, 2, 3])).is_err());
        assert!(HistoryTable::check(&history_key(b"k", 1), None).is_ok());
    }

    #[test]
    fn deletes_free_a_key_and_its_memory() {
        let t = HistoryTable::default();
        for rev in 1..=100 {
            t.apply(history_key(b"k", rev), Some(vec![0; 8]));
        }
        for rev in 1..100 {
            t.apply(history_key(b"k", rev), None);
        }
        assert!(t.map.read()[&encode_key(b"k")].capacity() < 10);
        t.apply(history_key(b"k", 100), None);
        assert!(t.map.read().is_empty());
    }
}
