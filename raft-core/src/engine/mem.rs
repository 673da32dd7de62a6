//! In-memory engine for deterministic simulation and fast tests.
//!
//! It keeps two states: `live` (what reads see) and `durable` (what survived the last
//! [`Engine::flush`]). [`MemEngine::crash`] throws `live` away and restarts from `durable`, so a
//! code path that acknowledges data before flushing it loses that data in simulation exactly as
//! it would lose it on power failure with the real engine.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{owned_bound, Batch, Engine, FileWrite, Pair, Result, Scan, Tree};

type Trees = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

struct State {
    live: Trees,
    durable: Trees,
    /// Batches written since the last flush, in order; replayed onto `durable` by a flush.
    pending: Vec<Batch>,
    /// Stored files: durable as soon as written, so a crash keeps them.
    files: BTreeMap<String, Vec<u8>>,
}

/// In-memory [`Engine`]. Cloning shares the same "disk".
#[derive(Clone)]
pub struct MemEngine {
    state: Arc<Mutex<State>>,
}

impl Default for MemEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemEngine {
    pub fn new() -> Self {
        let empty: Trees = vec![BTreeMap::new(); Tree::ALL.len()];
        MemEngine {
            state: Arc::new(Mutex::new(State {
                live: empty.clone(),
                durable: empty,
                pending: Vec::new(),
                files: BTreeMap::new(),
            })),
        }
    }

    /// Simulates power loss: every write after the last flush is gone. Whoever used the engine
    /// must be stopped first; reopen the stores on the same engine to model a restart.
    pub fn crash(&self) {
        let mut st = self.state.lock();
        st.live = st.durable.clone();
        st.pending.clear();
    }

    /// Flushes, as [`Engine::flush`] (handy where the trait is not in scope).
    pub fn flush_for_test(&self) {
        let _ = Engine::flush(self);
    }

    /// Number of batches written but not yet flushed.
    pub fn unflushed_batches(&self) -> usize {
        self.state.lock().pending.len()
    }
}

fn apply(trees: &mut Trees, batch: &Batch) {
    for op in &batch.ops {
        let t = &mut trees[op.tree.index()];
        match &op.value {
            Some(v) => {
                t.insert(op.key.clone(), v.clone());
            }
            None => {
                t.remove(&op.key);
            }
        }
    }
}

/// Re-seeks on every step so no lock is held between items.
struct MemScan {
    state: Arc<Mutex<State>>,
    tree: Tree,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    done: bool,
}

impl Iterator for MemScan {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let found = {
            let st = self.state.lock();
            let t = &st.live[self.tree.index()];
            if !valid(&self.lower, &self.upper) {
                None
            } else {
                let mut r = t.range::<Vec<u8>, _>((self.lower.clone(), self.upper.clone()));
                let item = if self.reverse { r.next_back() } else { r.next() };
                item.map(|(k, v)| (k.clone(), v.clone()))
            }
        };
        match found {
            Some((k, v)) => {
                if self.reverse {
                    self.upper = Bound::Excluded(k.clone());
                } else {
                    self.lower = Bound::Excluded(k.clone());
                }
                Some(Ok((k, v)))
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

/// BTreeMap::range panics on inverted or empty-excluded ranges.
fn valid(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    use Bound::*;
    match (lower, upper) {
        (Included(a), Included(b)) => a <= b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) => a < b,
        (Excluded(a), Excluded(b)) => a < b,
        _ => true,
    }
}

impl Engine for MemEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().live[tree.index()].get(key).cloned())
    }

    fn scan(&self, tree: Tree, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        Box::new(MemScan {
            state: self.state.clone(),
            tree,
            lower: owned_bound(lower),
            upper: owned_bound(upper),
            reverse,
            done: false,
        })
    }

    fn write(&self, batch: Batch) -> Result<()> {
        let mut st = self.state.lock();
        apply(&mut st.live, &batch);
        st.pending.push(batch);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for b in &pending {
            apply(&mut st.durable, b);
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        let st = self.state.lock();
        let trees: u64 = st.durable.iter().flat_map(|t| t.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum();
        trees + st.files.values().map(|f| f.len() as u64).sum::<u64>()
    }

    fn put_file(&self, name: &str, fill: &mut dyn FnMut(&mut dyn FileWrite) -> std::io::Result<()>) -> Result<()> {
        let mut data = std::io::Cursor::new(Vec::new());
        fill(&mut data)?;
        self.state.lock().files.insert(name.to_string(), data.into_inner());
        Ok(())
    }

    fn get_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().files.get(name).cloned())
    }

    fn retain_file(&self, keep: &str) -> Result<()> {
        self.state.lock().files.retain(|name, _| name == keep);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineExt;

    #[test]
    fn crash_drops_exactly_the_unflushed_writes() {
        let e = MemEngine::new();
        let mut b = Batch::default();
        b.put(Tree::Kv, b"a".to_vec(), b"1".to_vec());
        e.write(b).unwrap();
        e.flush().unwrap();
        let mut b = Batch::default();
        b.put(Tree::Kv, b"b".to_vec(), b"2".to_vec());
        b.delete(Tree::Kv, b"a".to_vec());
        e.write(b).unwrap();
        assert_eq!(e.get(Tree::Kv, b"a").unwrap(), None);
        assert_eq!(e.unflushed_batches(), 1);
        e.crash();
        assert_eq!(e.get(Tree::Kv, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(Tree::Kv, b"b").unwrap(), None);
    }

    #[test]
    fn scans_in_both_directions_while_writing() {
        let e = MemEngine::new();
        let mut b = Batch::default();
        for k in [b"a", b"b", b"c", b"d"] {
            b.put(Tree::Kv, k.to_vec(), k.to_vec());
        }
        e.write(b).unwrap();
        let fwd: Vec<_> =
            e.scan(Tree::Kv, Bound::Included(b"b"), Bound::Excluded(b"d"), false).map(|r| r.unwrap().0).collect();
        assert_eq!(fwd, vec![b"b".to_vec(), b"c".to_vec()]);
        let mut rev = e.scan(Tree::Kv, Bound::Unbounded, Bound::Unbounded, true);
        assert_eq!(rev.next().unwrap().unwrap().0, b"d".to_vec());
        // A write between steps is seen by a re-seeking scan without deadlock.
        let mut b = Batch::default();
        b.delete(Tree::Kv, b"c".to_vec());
        e.write(b).unwrap();
        assert_eq!(rev.next().unwrap().unwrap().0, b"b".to_vec());
        assert_eq!(e.last(Tree::Kv).unwrap().unwrap().0, b"d".to_vec());
    }
}
