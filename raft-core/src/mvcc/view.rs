//! Read access shared by the read path and the apply path.
//!
//! [`Reader`] is what the MVCC logic reads through. The engine itself is a reader (the read
//! path); an [`Overlay`] is a reader that also buffers writes (the apply path), so later
//! requests of a batch see earlier ones before anything reaches the engine, and the whole
//! entry lands in one atomic engine batch together with its meta.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use crate::engine::{Batch, Engine, Pair, Result, Scan, Tree};

/// Point reads and ordered scans over the trees.
pub trait Reader {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn scan(&self, tree: Tree, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_>;
}

impl<E: Engine + ?Sized> Reader for E {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Engine::get(self, tree, key)
    }
    fn scan(&self, tree: Tree, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        Engine::scan(self, tree, lower, upper, reverse)
    }
}

type Slot = Option<Vec<u8>>;

/// Buffered writes over an engine, with savepoints so one failed request of a batch rolls back
/// alone.
pub struct Overlay<'e, E: Engine + ?Sized> {
    engine: &'e E,
    writes: Vec<BTreeMap<Vec<u8>, Slot>>,
    /// (tree, key, previous overlay slot) for every write, newest last.
    undo: Vec<(Tree, Vec<u8>, Option<Slot>)>,
}

impl<'e, E: Engine + ?Sized> Overlay<'e, E> {
    pub fn new(engine: &'e E) -> Self {
        Overlay { engine, writes: vec![BTreeMap::new(); Tree::ALL.len()], undo: Vec::new() }
    }

    pub fn put(&mut self, tree: Tree, key: Vec<u8>, value: Vec<u8>) {
        self.set(tree, key, Some(value));
    }

    pub fn delete(&mut self, tree: Tree, key: Vec<u8>) {
        self.set(tree, key, None);
    }

    fn set(&mut self, tree: Tree, key: Vec<u8>, slot: Slot) {
        let prev = self.writes[tree as usize].insert(key.clone(), slot);
        self.undo.push((tree, key, prev));
    }

    /// A point to roll back to.
    pub fn savepoint(&self) -> usize {
        self.undo.len()
    }

    /// Undoes every write made after `sp`.
    pub fn rollback(&mut self, sp: usize) {
        while self.undo.len() > sp {
            let (tree, key, prev) = self.undo.pop().expect("len > sp");
            match prev {
                Some(p) => self.writes[tree as usize].insert(key, p),
                None => self.writes[tree as usize].remove(&key),
            };
        }
    }

    /// Whether anything was written after `sp`.
    pub fn wrote_since(&self, sp: usize) -> bool {
        self.undo.len() > sp
    }

    /// The buffered writes as one engine batch.
    pub fn into_batch(self) -> Batch {
        let mut batch = Batch::default();
        for (i, (tree, writes)) in Tree::ALL.iter().zip(self.writes).enumerate() {
            debug_assert_eq!(*tree as usize, i);
            for (k, v) in writes {
                match v {
                    Some(v) => batch.put(*tree, k, v),
                    None => batch.delete(*tree, k),
                }
            }
        }
        batch
    }
}

impl<E: Engine + ?Sized> Reader for Overlay<'_, E> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes[tree as usize].get(key) {
            Some(slot) => Ok(slot.clone()),
            None => self.engine.get(tree, key),
        }
    }

    fn scan(&self, tree: Tree, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        let map = &self.writes[tree as usize];
        let mut local: Vec<(Vec<u8>, Slot)> = if crate::engine::owned_range_is_empty(lower, upper) {
            Vec::new()
        } else {
            map.range::<[u8], _>((lower, upper)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if reverse {
            local.reverse();
        }
        Box::new(Merge {
            base: self.engine.scan(tree, lower, upper, reverse).peekable(),
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
    use crate::engine::MemEngine;

    #[test]
    fn overlay_shadows_and_rolls_back() {
        let e = MemEngine::new();
        let mut b = Batch::default();
        for k in ["a", "c", "e"] {
            b.put(Tree::Kv, k.as_bytes().to_vec(), b"base".to_vec());
        }
        e.write(b).unwrap();
        let mut o = Overlay::new(&e);
        o.put(Tree::Kv, b"b".to_vec(), b"new".to_vec());
        let sp = o.savepoint();
        o.delete(Tree::Kv, b"c".to_vec());
        o.put(Tree::Kv, b"e".to_vec(), b"new".to_vec());
        let keys = |o: &Overlay<MemEngine>, rev| {
            o.scan(Tree::Kv, Bound::Unbounded, Bound::Unbounded, rev)
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
        assert_eq!(o.into_batch().ops.len(), 1);
    }
}
