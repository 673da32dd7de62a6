//! A tree held in memory only, for [`Tree::Kv`](super::Tree::Kv) in the sled engine, and the
//! chunked scan that both in-memory tables ([`MemTable`] and the key index of
//! `engine::history`) serve their scans with.
//!
//! Why: `Kv` (each key's live version) is derived data: every version is also in
//! `KvRevs`, written by the same apply, and the state machine rebuilds `Kv` from it when it
//! opens. Keeping it in sled cost a sled read and a sled insert per put on every member
//! (each sled insert copies the leaf it lands in) and made every current-revision read a sled
//! lookup; held here, both are a `BTreeMap` operation. The price is memory for the live keys'
//! latest versions (what etcd keeps in memory too) and a scan of the history at start.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::mem::valid;
use super::{owned_bound, Op, Pair, Result, Scan};

/// Most pairs a scan copies out per lock: scans hold no lock between `next` calls.
pub(super) const SCAN_CHUNK: usize = 64;

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
        let map = self.map.clone();
        let fill = move |lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool, n: usize| -> Vec<Pair> {
            let map = map.read();
            let range = map.range::<[u8], _>((lower, upper));
            let copy = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
            if reverse {
                range.rev().take(n).map(copy).collect()
            } else {
                range.take(n).map(copy).collect()
            }
        };
        Box::new(ChunkedScan::new(fill, lower, upper, reverse, SCAN_CHUNK))
    }
}

/// A scan over an in-memory table that copies pairs out a chunk at a time, each under the
/// table's lock, and resumes after the last pair it returned: no lock is held between `next`
/// calls, and writes made meanwhile are seen as an ordered map would show them. `fill` copies
/// at most `n` pairs within the bounds, in key order or in reverse. Chunks start at
/// `first_chunk` pairs and grow to [`SCAN_CHUNK`].
pub(super) struct ChunkedScan<F> {
    fill: F,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    /// The next pairs, in reverse of the order they are returned in.
    chunk: Vec<Pair>,
    /// Pairs the next refill copies.
    chunk_len: usize,
    done: bool,
}

impl<F> ChunkedScan<F>
where
    F: FnMut(Bound<&[u8]>, Bound<&[u8]>, bool, usize) -> Vec<Pair>,
{
    pub(super) fn new(fill: F, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool, first_chunk: usize) -> Self {
        ChunkedScan {
            fill,
            lower: owned_bound(lower),
            upper: owned_bound(upper),
            reverse,
            chunk: Vec::new(),
            chunk_len: first_chunk.clamp(1, SCAN_CHUNK),
            done: false,
        }
    }

    fn refill(&mut self) {
        if !valid(&self.lower, &self.upper) {
            self.done = true;
            return;
        }
        let (lower, upper) = (self.lower.as_ref().map(Vec::as_slice), self.upper.as_ref().map(Vec::as_slice));
        self.chunk = (self.fill)(lower, upper, self.reverse, self.chunk_len);
        if self.chunk.len() < self.chunk_len {
            self.done = true;
        }
        self.chunk_len = (self.chunk_len * 4).min(SCAN_CHUNK);
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

impl<F> Iterator for ChunkedScan<F>
where
    F: FnMut(Bound<&[u8]>, Bound<&[u8]>, bool, usize) -> Vec<Pair>,
{
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
