//! A tree held in memory only, for [`Tree::Kv`](super::Tree::Kv) in the sled engine.
//!
//! Why: `Kv` (each key's live version) is derived data: every version is also in
//! `KvHistory`, written by the same apply, and the state machine rebuilds `Kv` from the history
//! when it opens. Keeping it in sled cost a sled read and a sled insert per put on every member
//! (each sled insert copies the leaf it lands in) and made every current-revision read a sled
//! lookup; held here, both are a `BTreeMap` operation. The price is memory for the live keys'
//! latest versions (what etcd keeps in memory too) and a scan of the history at start.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::mem::valid;
use super::{owned_bound, Op, Pair, Result, Scan};

/// Pairs a scan copies out per lock: scans hold no lock between `next` calls.
const SCAN_CHUNK: usize = 64;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An ordered in-memory map with the engine's read operations. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct MemTable {
    map: Arc<RwLock<Map>>,
}

impl MemTable {
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().get(key).cloned()
    }

    /// Applies one op of a batch.
    pub fn apply(&self, op: Op) {
        let mut map = self.map.write();
        match op.value {
            Some(v) => map.insert(op.key, v),
            None => map.remove(&op.key),
        };
    }

    pub fn scan(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'static> {
        Box::new(TableScan {
            map: self.map.clone(),
            lower: owned_bound(lower),
            upper: owned_bound(upper),
            reverse,
            chunk: Vec::new(),
            done: false,
        })
    }
}

/// A scan copying [`SCAN_CHUNK`] pairs at a time, resuming after the last one it returned.
struct TableScan {
    map: Arc<RwLock<Map>>,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    /// The next pairs, in reverse of the order they are returned in.
    chunk: Vec<Pair>,
    done: bool,
}

impl TableScan {
    fn refill(&mut self) {
        if !valid(&self.lower, &self.upper) {
            self.done = true;
            return;
        }
        let map = self.map.read();
        let range = map.range::<Vec<u8>, _>((self.lower.clone(), self.upper.clone()));
        let copy = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        self.chunk = if self.reverse {
            range.rev().take(SCAN_CHUNK).map(copy).collect()
        } else {
            range.take(SCAN_CHUNK).map(copy).collect()
        };
        drop(map);
        if self.chunk.len() < SCAN_CHUNK {
            self.done = true;
        }
        if let Some((last, _)) = self.chunk.last() {
            if self.reverse {
                self.upper = Bound::Excluded(last.clone());
            } else {
                self.lower = Bound::Excluded(last.clone());
            }
        }
        self.chunk.reverse();
    }
}

impl Iterator for TableScan {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.chunk.is_empty() && !self.done {
            self.refill();
        }
        self.chunk.pop().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Tree;

    fn put(t: &MemTable, k: &str) {
        t.apply(Op { tree: Tree::Kv, key: k.as_bytes().to_vec(), value: Some(k.as_bytes().to_vec()) });
    }

    fn keys(scan: Scan<'_>) -> Vec<String> {
        scan.map(|p| String::from_utf8(p.unwrap().0).unwrap()).collect()
    }

    /// Scans longer than a chunk see every key once, in order, in both directions, and keys
    /// written behind or ahead of a running scan are seen as an ordered map would show them.
    #[test]
    fn scans_resume_across_chunks_in_both_directions() {
        let t = MemTable::default();
        let all: Vec<String> = (0..200).map(|i| format!("k{i:03}")).collect();
        for k in &all {
            put(&t, k);
        }
        assert_eq!(keys(t.scan(Bound::Unbounded, Bound::Unbounded, false)), all);
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(keys(t.scan(Bound::Unbounded, Bound::Unbounded, true)), rev);
        assert_eq!(keys(t.scan(Bound::Included(b"k010"), Bound::Excluded(b"k150"), false)), all[10..150].to_vec());
        assert!(keys(t.scan(Bound::Included(b"k150"), Bound::Excluded(b"k010"), false)).is_empty());

        let mut scan = t.scan(Bound::Unbounded, Bound::Unbounded, false);
        let first: Vec<_> = scan.by_ref().take(100).map(|p| p.unwrap().0).collect();
        assert_eq!(first.len(), 100);
        put(&t, "k000a"); // behind the scan
        put(&t, "k150a"); // ahead of it
        t.apply(Op { tree: Tree::Kv, key: b"k199".to_vec(), value: None });
        let rest = keys(scan);
        assert!(rest.contains(&"k150a".to_string()) && !rest.contains(&"k000a".to_string()));
        assert_eq!(rest.last().map(String::as_str), Some("k198"));
        assert_eq!(t.get(b"k150a"), Some(b"k150a".to_vec()));
        assert_eq!(keys(t.scan(Bound::Unbounded, Bound::Unbounded, false)).len(), 201);
    }
}
