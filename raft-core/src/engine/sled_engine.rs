//! The sled 0.34.7 engine, made durable, with the Raft log beside it in segment files
//! (`<dir>/log/`, [`SegmentLog`]).
//!
//! sled's `flush()` writes its buffers with `pwrite` + `sync_file_range`, which survives a process
//! crash but not power loss. So [`SledEngine::flush`] follows it with an fsync of sled's data
//! file `<dir>/db`, and of every file sled wrote under `<dir>/blobs/` (large pages go there,
//! written with plain `write()` and never synced) plus the `blobs/` directory itself.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::packed;
use super::{
    owned_bound, Batch, Engine, EngineError, FileWrite, KvEngine, RaftEngine, ReadSeek, ReceivedFile, Result, Scan,
    SegmentLog, Tree,
};

impl From<sled::Error> for EngineError {
    fn from(e: sled::Error) -> Self {
        match e {
            // An I/O error stays one, so callers can tell a failing disk by its kind.
            sled::Error::Io(e) => EngineError::Io(e),
            other => EngineError::Backend(Box::new(other)),
        }
    }
}

/// Counts the fsyncs the durable flush performs, so tests can prove the ack path syncs.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Completed `flush()` calls (each is one durable point).
    pub flushes: AtomicU64,
    /// fsyncs of `<dir>/db`.
    pub db_fsyncs: AtomicU64,
    /// fsyncs of individual files under `<dir>/blobs/`.
    pub blob_file_fsyncs: AtomicU64,
    /// fsyncs of the `<dir>/blobs/` directory.
    pub blob_dir_fsyncs: AtomicU64,
    /// Completed syncs of the Raft log alone ([`RaftEngine::log_sync`]).
    pub log_syncs: AtomicU64,
}

impl SyncStats {
    /// A plain copy of the counters: (flushes, db, blob files, blob dir).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.flushes.load(Ordering::SeqCst),
            self.db_fsyncs.load(Ordering::SeqCst),
            self.blob_file_fsyncs.load(Ordering::SeqCst),
            self.blob_dir_fsyncs.load(Ordering::SeqCst),
        )
    }
}

/// Which blob files are already durable, and at what length: sled writes a blob in several
/// writes after creating it, so a flush may sync one part-way, and must sync it again once it
/// has grown.
#[derive(Default)]
struct BlobState {
    synced: HashMap<PathBuf, u64>,
}

/// sled-backed [`Engine`].
pub struct SledEngine {
    db: sled::Db,
    /// One handle per [`Tree`], indexed by `Tree::index`.
    trees: Vec<sled::Tree>,
    /// A second handle on sled's data file: fsync acts on the file, whichever descriptor asks.
    data_file: File,
    blobs_dir: PathBuf,
    /// Files stored beside the trees ([`KvEngine::put_file`]): `<dir>/files/`.
    files_dir: PathBuf,
    /// Held across a flush so concurrent flushers do not interleave their fsync bookkeeping.
    blobs: Mutex<BlobState>,
    stats: SyncStats,
    log: SegmentLog,
}

/// Trees of older layouts that held derived data, now kept in memory above the engine
/// (`mvcc::index`): dropped at open if a data dir still has them.
const DERIVED_TREES: [&str; 2] = ["kv", "kv_history"];

/// sled's page cache bound. Its 1 GiB default let a member keep every page of history and the
/// stored snapshot it ever touched, and gets were no slower with this bound (docs/benchmarks.md
/// has the measurements): reads touch the current keys, a small working set; history pages are
/// written once and rarely read again. (sled counts its cache in serialized bytes, so the memory
/// it holds is a multiple of this.)
const CACHE_BYTES: u64 = 64 << 20;

/// Creates `dir` and whatever of its ancestors is missing, each new directory's entry synced in
/// its parent: a power cut must not take a data dir away, with the votes and entries it
/// acknowledged, and bring the member back blank.
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for created in missing {
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Removes sled's `conf` if a power cut tore it while sled wrote it (at the data dir's first
/// open, before anything else is written; the sync after the open closes that window): sled
/// would refuse to open on it, and writes it anew when it is missing. Its last four bytes are
/// the CRC-32 of the rest.
fn repair_torn_conf(dir: &Path) -> std::io::Result<()> {
    let path = dir.join("conf");
    let conf = match std::fs::read(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // sled itself rewrites one of 8 bytes or fewer.
    if conf.len() > 8 {
        let (body, crc) = conf.split_at(conf.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            tracing::warn!(file = %path.display(), "sled's conf was torn by a crash during the data dir's first start: writing it again");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Opens sled in `dir`, waiting a little for its lock on the data file. sled's I/O threads may
/// still hold an engine that was just dropped in this process (a member restarted in place) for
/// a moment, and with it the lock; another process holding the data dir fails after the wait.
fn open_db(dir: &Path) -> Result<sled::Db> {
    let config = sled::Config::new().path(dir).flush_every_ms(None).cache_capacity(CACHE_BYTES);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    let what = format!("the data dir {} is in use by another process ({e})", dir.display());
                    return Err(std::io::Error::new(std::io::ErrorKind::WouldBlock, what).into());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return Ok(opened?),
        }
    }
}

impl SledEngine {
    /// Opens (or creates) the engine in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        create_dir_durably(dir)?;
        std::fs::create_dir_all(dir.join("files"))?;
        repair_torn_conf(dir)?;
        // Durability comes from our explicit flush; sled's timer flush would only add noise.
        let db = open_db(dir)?;
        // sled writes its `conf` when it creates the data dir and never syncs it.
        File::open(dir.join("conf"))?.sync_all()?;
        for name in DERIVED_TREES {
            db.drop_tree(name)?;
        }
        let trees = Tree::ALL.iter().map(|t| db.open_tree(t.name())).collect::<Result<Vec<_>, _>>()?;
        let data_file = File::open(dir.join("db"))?;
        let engine = SledEngine {
            db,
            trees,
            data_file,
            blobs_dir: dir.join("blobs"),
            files_dir: dir.join("files"),
            blobs: Mutex::new(BlobState::default()),
            stats: SyncStats::default(),
            log: SegmentLog::open(dir.join("log"))?,
        };
        // A `.tmp` file is one a crash cut short while it was written (see `put_file`).
        for entry in std::fs::read_dir(dir.join("files"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        // Files left by an earlier run may never have been synced: sync them once now. The data
        // directory's entries (db, conf, blobs/) must survive power loss too.
        engine.sync_blobs()?;
        File::open(dir)?.sync_all()?;
        Ok(engine)
    }

    /// The fsync counters of this engine.
    pub fn sync_stats(&self) -> &SyncStats {
        &self.stats
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t.index()]
    }

    /// `ops` with those on [`Tree::KvRevs`] turned into writes of its packed records (see
    /// [`packed`]), after the others.
    fn with_revs_packed(&self, ops: Vec<super::Op>) -> Result<Vec<super::Op>> {
        let (revs, mut ops): (Vec<_>, Vec<_>) = ops.into_iter().partition(|op| op.tree == Tree::KvRevs);
        if !revs.is_empty() {
            let records = packed::record_ops(self.tree(Tree::KvRevs), revs)?;
            ops.extend(records.into_iter().map(|(key, value)| super::Op { tree: Tree::KvRevs, key, value }));
        }
        Ok(ops)
    }

    /// fsyncs blob files not yet synced, then the `blobs/` directory if its entries changed.
    ///
    /// sled turns any serialized page over ~128 KiB into a blob file (a page can hold many
    /// smaller values), so size checks on our writes cannot tell when one appears, and the
    /// directory mtime is too coarse: the directory is listed on every flush.
    fn sync_blobs(&self) -> Result<()> {
        let mut st = self.blobs.lock();
        let listing = match std::fs::read_dir(&self.blobs_dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut present = HashMap::new();
        let mut synced_any = false;
        for entry in listing {
            let path = entry?.path();
            let file = match File::open(&path) {
                Ok(f) => f,
                // sled may garbage-collect a blob between listing and opening it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let len = file.metadata()?.len();
            if st.synced.get(&path) != Some(&len) {
                file.sync_all()?;
                self.stats.blob_file_fsyncs.fetch_add(1, Ordering::SeqCst);
                synced_any = true;
            }
            present.insert(path, len);
        }
        // Creations and removals are directory updates: make them durable too.
        // A new file was synced above (`synced_any`); a removal changes the count.
        if synced_any || present.len() != st.synced.len() {
            File::open(&self.blobs_dir)?.sync_all()?;
            self.stats.blob_dir_fsyncs.fetch_add(1, Ordering::SeqCst);
        }
        st.synced = present;
        Ok(())
    }
    /// Applies `ops` to the sled trees atomically.
    fn write_trees(&self, ops: Vec<super::Op>) -> Result<()> {
        let mut per_tree: Vec<Option<sled::Batch>> = vec![None; Tree::ALL.len()];
        for op in ops {
            let b = per_tree[op.tree.index()].get_or_insert_with(sled::Batch::default);
            match op.value {
                Some(v) => b.insert(op.key, v),
                None => b.remove(op.key),
            }
        }
        let mut used: Vec<(usize, sled::Batch)> =
            per_tree.into_iter().enumerate().filter_map(|(i, b)| b.map(|b| (i, b))).collect();
        match used.len() {
            0 => Ok(()),
            1 => {
                let (i, b) = used.pop().expect("one batch");
                Ok(self.trees[i].apply_batch(b)?)
            }
            _ => {
                let trees: Vec<&sled::Tree> = used.iter().map(|(i, _)| &self.trees[*i]).collect();
                trees
                    .as_slice()
                    .transaction(|tx| {
                        for (t, (_, b)) in tx.iter().zip(&used) {
                            t.apply_batch(b)?;
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| match e {
                        TransactionError::Storage(e) => e.into(),
                        TransactionError::Abort(()) => unreachable!("the batch closure never aborts"),
                    })
            }
        }
    }
}

impl KvEngine for SledEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if tree == Tree::KvRevs {
            return packed::get(self.tree(tree), key);
        }
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, tree: Tree, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        let range = (owned_bound(lower), owned_bound(upper));
        // sled panics on an inverted range; an empty scan is the right answer.
        if !super::mem::valid(&range.0, &range.1) {
            return Box::new(std::iter::empty());
        }
        if tree == Tree::KvRevs {
            return packed::scan(self.tree(tree), range.0, range.1, reverse);
        }
        let iter = self.tree(tree).range::<Vec<u8>, _>(range);
        let map = |r: sled::Result<(sled::IVec, sled::IVec)>| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(EngineError::from)
        };
        if reverse {
            Box::new(iter.rev().map(map))
        } else {
            Box::new(iter.map(map))
        }
    }

    fn write(&self, batch: Batch) -> Result<()> {
        // One op is atomic on its own; a sled batch would cost two buffer writes (see
        // `write_relaxed`). The log store records the committed index this way on every commit.
        if batch.ops.len() == 1 {
            return self.write_relaxed(batch);
        }
        self.write_trees(self.with_revs_packed(batch.ops)?)
    }

    fn write_relaxed(&self, batch: Batch) -> Result<()> {
        for op in self.with_revs_packed(batch.ops)? {
            let tree = self.tree(op.tree);
            match op.value {
                Some(v) => tree.insert(op.key, v)?,
                None => tree.remove(op.key)?,
            };
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        let files = std::fs::read_dir(&self.files_dir)
            .map(|l| l.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum::<u64>())
            .unwrap_or(0);
        self.db.size_on_disk().unwrap_or(0) + files + self.log.size()
    }

    /// Writes `<dir>/files/<name>.tmp`, fsyncs it, renames it over `<name>` and fsyncs the
    /// directory: after a crash the file is either the old one or the whole new one.
    fn put_file(&self, name: &str, fill: &mut dyn FnMut(&mut dyn FileWrite) -> std::io::Result<()>) -> Result<()> {
        let path = self.file_path(name)?;
        let tmp = path.with_extension("tmp");
        let written = (|| {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, EarlyWriteback::new(File::create(&tmp)?)?);
            fill(&mut out)?;
            let file = out.into_inner().map_err(|e| e.into_error())?.finish()?;
            file.sync_all()
        })();
        if let Err(e) = written {
            // Nothing else removes it while this process runs (see `retain_file`).
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        self.move_into_place(&tmp, &path)
    }

    fn get_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.file_path(name)?) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn open_file(&self, name: &str) -> Result<Option<Box<dyn ReadSeek>>> {
        match File::open(self.file_path(name)?) {
            Ok(file) => Ok(Some(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `<dir>/files/received-<n>.tmp`: `retain_file` leaves it alone and the next open removes
    /// it if a crash left it.
    fn receive_file(&self) -> Result<Box<dyn ReceivedFile>> {
        static RECEIVED: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = RECEIVED.fetch_add(1, Ordering::Relaxed);
        let path = self.files_dir.join(format!("received-{nanos}-{n}.tmp"));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(Box::new(Received { file: Some(file), path }))
    }

    fn store_received(&self, name: &str, file: Box<dyn ReceivedFile>) -> Result<()> {
        let path = self.file_path(name)?;
        let mut received = file
            .into_any()
            .downcast::<Received>()
            .map_err(|_| EngineError::Layout("a received file from another engine"))?;
        let file = received.file.take().expect("a received file is stored once");
        file.sync_all()?;
        self.move_into_place(&received.path, &path)
    }

    fn retain_file(&self, keep: &str) -> Result<()> {
        let mut removed = false;
        for entry in std::fs::read_dir(&self.files_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            // A `.tmp` is a file still being written (a snapshot build running alongside an
            // install): deleting it would fail that build's rename. Leftovers from a crash are
            // removed when the engine opens.
            if name.to_str() != Some(keep) && !name.to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
                removed = true;
            }
        }
        if removed {
            File::open(&self.files_dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl RaftEngine for SledEngine {
    fn log_append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.log.append(entries)
    }

    fn log_sync(&self) -> Result<()> {
        self.log.sync()?;
        self.stats.log_syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn log_truncate(&self, from: u64) -> Result<()> {
        self.log.truncate(from)
    }

    fn log_purge(&self, upto: u64) -> Result<()> {
        self.log.purge(upto)
    }

    fn log_read(&self, from: u64, to: u64, budget: usize) -> Result<Vec<Vec<u8>>> {
        self.log.read(from, to, budget)
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        self.log.last()
    }
}

impl Engine for SledEngine {
    /// The log first: the trees may hold applied entries, and a state machine that is durably
    /// ahead of its own log would not match it after a crash.
    ///
    /// The blob files before the data file: once durable, the data file's pages point at them,
    /// and a blob lost to a power cut would roll its page back silently (sled skips a missing
    /// blob) or fail its checksum.
    fn flush(&self) -> Result<()> {
        self.log.sync()?;
        self.db.flush()?;
        self.sync_blobs()?;
        self.data_file.sync_all()?;
        self.stats.db_fsyncs.fetch_add(1, Ordering::SeqCst);
        self.stats.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// `fdatasync` of a file being written, with a failpoint (`sled-engine-sync-data`) that tests
/// use to make it fail as a disk would.
fn sync_data(file: &File) -> std::io::Result<()> {
    fail::fail_point!("sled-engine-sync-data", |_| Err(std::io::Error::other("injected sync failure")));
    file.sync_data()
}

/// Bytes written to a file between two requests to sync it in the background.
const WRITEBACK_EVERY: u64 = 4 << 20;

/// A file being written that a helper thread syncs as it grows, while the writer goes on. A
/// snapshot file is the whole store; left to one fsync at the end, its hundred megabytes went to
/// the disk at once and the Raft log's fsyncs queued behind them, long enough for AppendEntries
/// to time out. (`sync_file_range` would start the writeback without a thread, but needs
/// `unsafe`, which the workspace forbids, or a crate that wraps it.)
///
/// Every sync's result counts: the helper syncs through a duplicate of the descriptor, which
/// shares the kernel's write-back error state with the writer's, so an error the helper saw
/// may not be reported again by the final `sync_all`. The first one is kept and fails the file.
struct EarlyWriteback {
    file: File,
    unsynced: u64,
    syncer: Syncer,
    failed: Arc<Mutex<Option<std::io::Error>>>,
}

/// The helper thread; dropping this stops it and waits for its last sync.
struct Syncer {
    /// Wakes the helper; a wake-up already pending covers newer bytes too.
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EarlyWriteback {
    fn new(file: File) -> std::io::Result<Self> {
        let clone = file.try_clone()?;
        let failed = Arc::new(Mutex::new(None));
        let first_error = failed.clone();
        let (wake, wakes) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new().name("raftkv-file-sync".into()).spawn(move || {
            for () in wakes {
                if let Err(e) = sync_data(&clone) {
                    first_error.lock().get_or_insert(e);
                    return;
                }
            }
        })?;
        let syncer = Syncer { wake: Some(wake), thread: Some(thread) };
        Ok(EarlyWriteback { file, unsynced: 0, syncer, failed })
    }

    /// The error of a sync the helper ran, if one failed.
    fn take_failure(&self) -> Option<std::io::Error> {
        self.failed.lock().take()
    }

    /// Stops the helper and returns the file (still to be synced), or the error of a sync the
    /// helper ran.
    fn finish(self) -> std::io::Result<File> {
        let EarlyWriteback { file, syncer, failed, .. } = self;
        drop(syncer);
        let failure = failed.lock().take();
        match failure {
            Some(e) => Err(e),
            None => Ok(file),
        }
    }
}

impl std::io::Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(e) = self.take_failure() {
            return Err(e);
        }
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= WRITEBACK_EVERY {
            if let Some(wake) = &self.syncer.wake {
                let _ = wake.try_send(());
            }
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl std::io::Seek for EarlyWriteback {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file.seek(to)
    }
}

/// A file being received ([`Engine::receive_file`]); removed when dropped unless stored.
struct Received {
    /// `None` once stored.
    file: Option<File>,
    path: PathBuf,
}

impl Received {
    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("a stored received file is not used again")
    }
}

impl std::io::Read for Received {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file().read(buf)
    }
}

impl std::io::Write for Received {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file().write(buf)
    }

    /// Durable: a received snapshot is synced once its last chunk is written, before the
    /// install (which then stores it without waiting for the disk).
    fn flush(&mut self) -> std::io::Result<()> {
        self.file().sync_data()
    }
}

impl std::io::Seek for Received {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file().seek(to)
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not stored: a transfer cut off or refused. Nothing refers to it.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SledEngine {
    /// Renames a synced file over `path` in the files directory and syncs the directory, so
    /// the new name survives power loss: the last step of storing a file.
    fn move_into_place(&self, synced: &Path, path: &Path) -> Result<()> {
        std::fs::rename(synced, path)?;
        File::open(&self.files_dir)?.sync_all()?;
        Ok(())
    }

    /// Where file `name` lives; names are plain (no separators), chosen by raft-core.
    fn file_path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') || name.ends_with(".tmp") {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad file name {name:?}")).into());
        }
        Ok(self.files_dir.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A power cut during the first start can tear sled's `conf`, which sled then refuses to
    /// open on; a `conf` that is whole is kept.
    #[test]
    fn a_torn_conf_is_written_again_and_a_whole_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a").join("member");
        drop(SledEngine::open(&data).unwrap());
        let conf = std::fs::read(data.join("conf")).unwrap();
        std::fs::write(data.join("conf"), &conf[..conf.len() - 3]).unwrap();
        drop(SledEngine::open(&data).expect("opens on a torn conf"));
        assert_eq!(std::fs::read(data.join("conf")).unwrap(), conf, "written again whole");
        drop(SledEngine::open(&data).unwrap());
        assert_eq!(std::fs::read(data.join("conf")).unwrap(), conf);
    }

    #[test]
    fn files_are_replaced_whole_on_disk_and_retained_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        assert_eq!(e.get_file("snapshot-1").unwrap(), None);
        e.put_file("snapshot-1", &mut |w| w.write_all(b"first")).unwrap();
        e.put_file("snapshot-1", &mut |w| w.write_all(b"second")).unwrap();
        e.put_file("snapshot-2", &mut |w| w.write_all(b"other")).unwrap();
        // A writer that fails leaves the stored file as it was.
        let failed = e.put_file("snapshot-2", &mut |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(e.get_file("snapshot-2").unwrap().as_deref(), Some(&b"other"[..]));
        assert!(e.put_file("../escape", &mut |w| w.write_all(b"x")).is_err());
        assert!(e.put_file("x.tmp", &mut |w| w.write_all(b"x")).is_err());
        // Plain files in the data dir, where a restarted member finds them.
        assert_eq!(std::fs::read(dir.path().join("files/snapshot-1")).unwrap(), b"second");

        e.retain_file("snapshot-1").unwrap();
        assert_eq!(e.get_file("snapshot-2").unwrap(), None);
        assert_eq!(e.get_file("snapshot-1").unwrap().as_deref(), Some(&b"second"[..]));
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("files")).unwrap().map(|d| d.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("snapshot-1")], "temporary files are gone too");

        // A file being written while another is retained (a snapshot build alongside an
        // install) is not deleted under its writer.
        e.put_file("snapshot-3", &mut |w| {
            w.write_all(b"built")?;
            w.flush()?;
            e.retain_file("snapshot-1").map_err(std::io::Error::other)
        })
        .unwrap();
        assert_eq!(e.get_file("snapshot-3").unwrap().as_deref(), Some(&b"built"[..]));

        // One a crash cut short is gone when the engine opens again.
        std::fs::write(dir.path().join("files/snapshot-4.tmp"), b"cut short").unwrap();
        drop(e);
        let e = SledEngine::open(dir.path()).unwrap();
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path().join("files")).unwrap().map(|d| d.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from("snapshot-1"), "snapshot-3".into()]);
        assert_eq!(e.get_file("snapshot-1").unwrap().as_deref(), Some(&b"second"[..]));
    }
}
