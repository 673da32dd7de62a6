//! Read access shared by the read path and the apply path.
//!
//! [`Reader`] is what the MVCC logic reads through. [`Stored`] reads the engine's trees and the
//! key index together (the read path); an [`Overlay`] is a reader that also buffers writes (the
//! apply path), so later requests of a batch see earlier ones before anything reaches the
//! engine, and the whole entry lands as one set of [`Changes`] together with its meta.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use super::index::{Changes, KeyIndex, Space};
use crate::engine::{KvEngine, Pair, Result, Scan};

/// Point reads and ordered scans over the MVCC spaces.
pub trait Reader {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn scan(&self, space: Space, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_>;
}

/// The stored state: the engine's trees and the key index derived from them.
pub struct Stored<'a, E: KvEngine + ?Sized> {
    pub engine: &'a E,
    pub index: &'a KeyIndex,
}

impl<E: KvEngine + ?Sized> Reader for Stored<'_, E> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match space.tree() {
            Some(tree) => self.engine.get(tree, key),
            None => Ok(self.index.get(space, key)),
        }
    }
    fn scan(&self, space: Space, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        match space.tree() {
            Some(tree) => self.engine.scan(tree, lower, upper, reverse),
            None => self.index.scan(space, lower, upper, reverse),
        }
    }
}

type Slot = Option<Vec<u8>>;

/// Buffered writes over a reader, with savepoints so one failed request of a batch rolls back
/// alone.
pub struct Overlay<'e, R: Reader + ?Sized> {
    base: &'e R,
    writes: Vec<BTreeMap<Vec<u8>, Slot>>,
    /// (space, key, previous overlay slot) for every write, newest last.
    undo: Vec<(Space, Vec<u8>, Option<Slot>)>,
}

impl<'e, R: Reader + ?Sized> Overlay<'e, R> {
    pub fn new(base: &'e R) -> Self {
        Overlay { base, writes: vec![BTreeMap::new(); Space::ALL.len()], undo: Vec::new() }
    }

    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.set(space, key, Some(value));
    }

    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.set(space, key, None);
    }

    fn set(&mut self, space: Space, key: Vec<u8>, slot: Slot) {
        let prev = self.writes[space.slot()].insert(key.clone(), slot);
        self.undo.push((space, key, prev));
    }

    /// A point to roll back to.
    pub fn savepoint(&self) -> usize {
        self.undo.len()
    }

    /// Undoes every write made after `sp`.
    pub fn rollback(&mut self, sp: usize) {
        while self.undo.len() > sp {
            let (space, key, prev) = self.undo.pop().expect("len > sp");
            match prev {
                Some(p) => self.writes[space.slot()].insert(key, p),
                None => self.writes[space.slot()].remove(&key),
            };
        }
    }

    /// Whether anything was written after `sp`.
    pub fn wrote_since(&self, sp: usize) -> bool {
        self.undo.len() > sp
    }

    /// The buffered writes: an engine batch for the stored spaces, ops for the key index.
    pub fn into_changes(self) -> Changes {
        let mut changes = Changes::default();
        for (i, (space, writes)) in Space::ALL.iter().zip(self.writes).enumerate() {
            debug_assert_eq!(space.slot(), i);
            for (k, v) in writes {
                match (space.tree(), v) {
                    (Some(tree), Some(v)) => changes.stored.put(tree, k, v),
                    (Some(tree), None) => changes.stored.delete(tree, k),
                    (None, v) => changes.index.push((*space, k, v)),
                }
            }
        }
        changes
    }
}

impl<R: Reader + ?Sized> Reader for Overlay<'_, R> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes[space.slot()].get(key) {
            Some(slot) => Ok(slot.clone()),
            None => self.base.get(space, key),
        }
    }

    fn scan(&self, space: Space, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        let map = &self.writes[space.slot()];
        let mut local: Vec<(Vec<u8>, Slot)> = if crate::engine::owned_range_is_empty(lower, upper) {
            Vec::new()
        } else {
            map.range::<[u8], _>((lower, upper)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if reverse {
            local.reverse();
        }
        Box::new(Merge {
            base: self.base.scan(space, lower, upper, reverse).peekable(),
            local: local.into_iter().peekable(),
            reverse,
        })
    }
}

/// Merges an engine scan with buffered writes; a buffered slot shadows the engine's value.
struct Merge<'a, L: Iterator<Item = (Vec<u8>, Slot)>> {
    base: Peekable<Scan<'a>>,
    local: Peekable<L>,
    reverse: bool,
}

impl<L: Iterator<Item = (Vec<u8>, Slot)>> Iterator for Merge<'_, L> {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_local = match (self.base.peek(), self.local.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(Ok((bk, _))), Some((lk, _))) => {
                    if bk == lk {
                        self.base.next(); // shadowed
                        true
                    } else {
                        (lk < bk) != self.reverse
                    }
                }
            };
            if take_local {
                let (k, slot) = self.local.next().expect("peeked");
                if let Some(v) = slot {
                    return Some(Ok((k, v)));
                }
            } else {
                return self.base.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{MemEngine, Tree};

    #[test]
    fn overlay_shadows_and_rolls_back() {
        let e = MemEngine::new();
        let index = KeyIndex::default();
        let mut b = crate::engine::Batch::default();
        for k in ["a", "c", "e"] {
            b.put(Tree::Members, k.as_bytes().to_vec(), b"base".to_vec());
        }
        e.write(b).unwrap();
        let stored = Stored { engine: &e, index: &index };
        let mut o = Overlay::new(&stored);
        o.put(Space::Members, b"b".to_vec(), b"new".to_vec());
        let sp = o.savepoint();
        o.delete(Space::Members, b"c".to_vec());
        o.put(Space::Members, b"e".to_vec(), b"new".to_vec());
        o.put(Space::Current, b"x".to_vec(), b"new".to_vec());
        let keys = |o: &Overlay<Stored<MemEngine>>, rev| {
            o.scan(Space::Members, Bound::Unbounded, Bound::Unbounded, rev)
                .map(|r| {
                    let (k, v) = r.unwrap();
                    format!("{}={}", String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&o, false), ["a=base", "b=new", "e=new"]);
        assert_eq!(keys(&o, true), ["e=new", "b=new", "a=base"]);
        o.rollback(sp);
        assert_eq!(keys(&o, false), ["a=base", "b=new", "c=base", "e=base"]);
        let changes = o.into_changes();
        assert_eq!(changes.stored.ops.len(), 1);
        assert!(changes.index.is_empty(), "the write to the index was rolled back");
    }
}
