//! The current-key table of the key index: each live key's latest version, in memory.
//!
//! Why in memory: it is derived data (every version is also in `KvRevs`, written by the same
//! apply), and the state machine rebuilds it from the versions when it opens. Kept in sled it
//! cost a sled read and a sled insert per put on every member (each sled insert copies the
//! leaf it lands in) and made every current-revision read a sled lookup; held here, both are a
//! `BTreeMap` operation. The price is memory for the live keys' latest versions (what etcd
//! keeps in memory too) and a scan of the history at start.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::chunked::{ChunkedScan, SCAN_CHUNK};
use crate::engine::{Pair, Scan};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// User key -> encoded record of its latest live version. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct CurrentTable {
    map: Arc<RwLock<Map>>,
}

impl CurrentTable {
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().get(key).cloned()
    }

    /// Sets or (`None`) removes a key.
    pub fn apply(&self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut map = self.map.write();
        match value {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
    }

    pub fn clear(&self) {
        self.map.write().clear();
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;
    fn put(t: &CurrentTable, k: &str) {
        t.apply(k.as_bytes().to_vec(), Some(k.as_bytes().to_vec()));
    }

    fn keys(scan: Scan<'_>) -> Vec<String> {
        scan.map(|p| String::from_utf8(p.unwrap().0).unwrap()).collect()
    }

    /// Scans longer than a chunk see every key once, in order, in both directions, and keys
    /// written behind or ahead of a running scan are seen as an ordered map would show them.
    #[test]
    fn scans_resume_across_chunks_in_both_directions() {
        let t = CurrentTable::default();
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
        t.apply(b"k199".to_vec(), None);
        let rest = keys(scan);
        assert!(rest.contains(&"k150a".to_string()) && !rest.contains(&"k000a".to_string()));
        assert_eq!(rest.last().map(String::as_str), Some("k198"));
        assert_eq!(t.get(b"k150a"), Some(b"k150a".to_vec()));
        assert_eq!(keys(t.scan(Bound::Unbounded, Bound::Unbounded, false)).len(), 201);
    }
}
