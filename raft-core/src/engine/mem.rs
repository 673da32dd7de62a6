//! In-memory engine for deterministic simulation and fast tests.
//!
//! It keeps two states: `live` (what reads see) and `durable` (what survived the last
//! [`Engine::flush`], or for the Raft log the last [`RaftEngine::log_sync`]). [`MemEngine::crash`]
//! throws `live` away and restarts from `durable`, so a code path that acknowledges data before
//! flushing it loses that data in simulation exactly as it would lose it on power failure with
//! the real engine; and since a log sync leaves the trees unflushed, a crash can leave the state
//! machine behind the log, as it can on disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{
    owned_bound, Batch, Engine, EngineError, FileWrite, KvEngine, Pair, RaftEngine, ReadSeek, ReceivedFile, Result,
    Scan, Tree,
};

type Trees = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

/// Raft log entries by index.
type Log = BTreeMap<u64, Vec<u8>>;

/// A change to the log, kept until a sync replays it onto the durable log.
enum LogOp {
    Append(Vec<(u64, Vec<u8>)>),
    Purge(u64),
}

struct State {
    live: Trees,
    durable: Trees,
    /// Batches written since the last flush, in order; replayed onto `durable` by a flush.
    pending: Vec<Batch>,
    log: Log,
    durable_log: Log,
    /// Log changes since the last log sync, in order.
    pending_log: Vec<LogOp>,
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
                log: Log::new(),
                durable_log: Log::new(),
                pending_log: Vec::new(),
                files: BTreeMap::new(),
            })),
        }
    }

    /// Simulates power loss: every write after the last flush is gone. Whoever used the engine
    /// must be stopped first; reopen the stores on the same engine to model a restart.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// Simulates power loss after the first `kept` unflushed writes reached the disk (a batch
    /// of [`KvEngine::write`] counts as one, each op of [`KvEngine::write_relaxed`] as one), as an
    /// engine that writes in order may leave it. Unsynced log changes are all lost.
    pub fn crash_keeping(&self, kept: usize) {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for b in pending.iter().take(kept) {
            apply(&mut st.durable, b);
        }
        st.live = st.durable.clone();
        st.log = st.durable_log.clone();
        st.pending_log.clear();
    }

    /// Flushes, as [`Engine::flush`] (handy where the trait is not in scope).
    pub fn flush_for_test(&self) {
        let _ = Engine::flush(self);
    }

    /// Number of batches written but not yet flushed.
    pub fn unflushed_batches(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// The indexes of every stored log entry, purged ones included while they remain.
    pub fn stored_log_indexes(&self) -> Vec<u64> {
        self.state.lock().log.keys().copied().collect()
    }
}

fn apply_log(log: &mut Log, op: &LogOp) {
    match op {
        LogOp::Append(entries) => log.extend(entries.iter().cloned()),
        LogOp::Purge(upto) => *log = log.split_off(&(upto + 1)),
    }
}

impl State {
    fn sync_log(&mut self) {
        let pending = std::mem::take(&mut self.pending_log);
        for op in &pending {
            apply_log(&mut self.durable_log, op);
        }
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
pub(crate) fn valid(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    use Bound::*;
    match (lower, upper) {
        (Included(a), Included(b)) => a <= b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) => a < b,
        (Excluded(a), Excluded(b)) => a < b,
        _ => true,
    }
}

impl KvEngine for MemEngine {
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

    fn write_relaxed(&self, batch: Batch) -> Result<()> {
        let mut st = self.state.lock();
        apply(&mut st.live, &batch);
        st.pending.extend(batch.ops.into_iter().map(|op| Batch { ops: vec![op] }));
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        let st = self.state.lock();
        let trees: u64 = st.durable.iter().flat_map(|t| t.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let log: u64 = st.durable_log.values().map(|v| v.len() as u64 + 8).sum();
        trees + log + st.files.values().map(|f| f.len() as u64).sum::<u64>()
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

    fn open_file(&self, name: &str) -> Result<Option<Box<dyn ReadSeek>>> {
        let data = self.state.lock().files.get(name).cloned();
        Ok(data.map(|d| Box::new(std::io::Cursor::new(d)) as Box<dyn ReadSeek>))
    }

    fn receive_file(&self) -> Result<Box<dyn ReceivedFile>> {
        Ok(Box::new(std::io::Cursor::new(Vec::<u8>::new())))
    }

    fn store_received(&self, name: &str, file: Box<dyn ReceivedFile>) -> Result<()> {
        let data = file
            .into_any()
            .downcast::<std::io::Cursor<Vec<u8>>>()
            .map_err(|_| EngineError::Layout("a received file from another engine"))?;
        self.state.lock().files.insert(name.to_string(), data.into_inner());
        Ok(())
    }

    fn retain_file(&self, keep: &str) -> Result<()> {
        self.state.lock().files.retain(|name, _| name == keep);
        Ok(())
    }
}

impl RaftEngine for MemEngine {
    fn log_append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let mut st = self.state.lock();
        let mut next = st.log.last_key_value().map(|(i, _)| i + 1);
        for (index, _) in &entries {
            if next.is_some_and(|n| n != *index) {
                return Err(super::LogError::NotNext { index: *index, expected: next.unwrap_or_default() }.into());
            }
            next = Some(index + 1);
        }
        let op = LogOp::Append(entries);
        apply_log(&mut st.log, &op);
        st.pending_log.push(op);
        Ok(())
    }

    fn log_sync(&self) -> Result<()> {
        self.state.lock().sync_log();
        Ok(())
    }

    fn log_truncate(&self, from: u64) -> Result<()> {
        let mut st = self.state.lock();
        st.sync_log();
        st.log.split_off(&from);
        st.durable_log.split_off(&from);
        Ok(())
    }

    fn log_purge(&self, upto: u64) -> Result<()> {
        let mut st = self.state.lock();
        let op = LogOp::Purge(upto);
        apply_log(&mut st.log, &op);
        st.pending_log.push(op);
        Ok(())
    }

    fn log_read(&self, from: u64, to: u64, budget: usize) -> Result<Vec<Vec<u8>>> {
        let st = self.state.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        if from < to {
            for (_, v) in st.log.range(from..to) {
                bytes += v.len();
                out.push(v.clone());
                if bytes >= budget {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.state.lock().log.last_key_value().map(|(i, v)| (*i, v.clone())))
    }
}

impl Engine for MemEngine {
    fn flush(&self) -> Result<()> {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for b in &pending {
            apply(&mut st.durable, b);
        }
        st.sync_log();
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
        b.put(Tree::Members, b"a".to_vec(), b"1".to_vec());
        e.write(b).unwrap();
        e.flush().unwrap();
        let mut b = Batch::default();
        b.put(Tree::Members, b"b".to_vec(), b"2".to_vec());
        b.delete(Tree::Members, b"a".to_vec());
        e.write(b).unwrap();
        assert_eq!(e.get(Tree::Members, b"a").unwrap(), None);
        assert_eq!(e.unflushed_batches(), 1);
        e.crash();
        assert_eq!(e.get(Tree::Members, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(Tree::Members, b"b").unwrap(), None);
    }

    #[test]
    fn scans_in_both_directions_while_writing() {
        let e = MemEngine::new();
        let mut b = Batch::default();
        for k in [b"a", b"b", b"c", b"d"] {
            b.put(Tree::Members, k.to_vec(), k.to_vec());
        }
        e.write(b).unwrap();
        let fwd: Vec<_> =
            e.scan(Tree::Members, Bound::Included(b"b"), Bound::Excluded(b"d"), false).map(|r| r.unwrap().0).collect();
        assert_eq!(fwd, vec![b"b".to_vec(), b"c".to_vec()]);
        let mut rev = e.scan(Tree::Members, Bound::Unbounded, Bound::Unbounded, true);
        assert_eq!(rev.next().unwrap().unwrap().0, b"d".to_vec());
        // A write between steps is seen by a re-seeking scan without deadlock.
        let mut b = Batch::default();
        b.delete(Tree::Members, b"c".to_vec());
        e.write(b).unwrap();
        assert_eq!(rev.next().unwrap().unwrap().0, b"b".to_vec());
        assert_eq!(e.last(Tree::Members).unwrap().unwrap().0, b"d".to_vec());
    }
}
