//! The undo journal: what has been applied to the backing directory but is not yet durable.
//!
//! Every change is written through to the backing directory at once, so reads need no overlay.
//! What a power loss would take back is kept here as undo records:
//! - data records per inode (a write, a truncate, a preallocation), dropped by `fsync` of that
//!   inode: the kernel's page cache loses unsynced data, `fsync`/`fdatasync` is the only promise;
//! - namespace records (create, mkdir, unlink, rmdir, rename) in one global order, each tagged
//!   with the directory holding the (new) name and dropped by `fsync` of that directory: a new
//!   or removed directory entry is durable only once its directory is synced (POSIX; ext4 and
//!   xfs can lose a rename or create that was not followed by a directory fsync).
//!
//! A removed name is not deleted while its removal is pending: the file or directory is moved
//! into the stash (`.lazyfs-stash/<n>` in the backing root) so that an undo can put it back.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::inodes::InodeTable;

/// Name of the stash directory in the backing root; hidden from the mount.
pub(crate) const STASH_DIR: &str = ".lazyfs-stash";

/// How to take back one change of a file's data or length.
#[derive(Debug)]
pub(crate) enum DataUndo {
    /// A write of `len` bytes at `offset`: `old` holds the bytes it overwrote (those of
    /// `[offset, offset + len)` that existed) and `old_len` the file's length before.
    Write { offset: u64, old: Vec<u8>, old_len: u64, len: u64 },
    /// A change of the file's length (truncate, `set_len`, `fallocate`): `cut` holds the bytes a
    /// shrink removed, from `old_len - cut.len()` on.
    Resize { old_len: u64, cut: Vec<u8> },
}

impl DataUndo {
    /// Bytes of the write stream this record stands for (a resize counts as none).
    fn stream_len(&self) -> u64 {
        match self {
            DataUndo::Write { len, .. } => *len,
            DataUndo::Resize { .. } => 0,
        }
    }
}

#[derive(Debug)]
struct DataRecord {
    /// Global order of all data records, to find the file written last.
    seq: u64,
    undo: DataUndo,
}

/// A pending change of a directory entry; paths are relative to the backing root.
#[derive(Debug)]
pub(crate) enum NameOp {
    /// A file or directory was created at `path`.
    Created { path: PathBuf },
    /// `from` was renamed to `to`; what `to` named before waits in the stash at `replaced`.
    Renamed { from: PathBuf, to: PathBuf, replaced: Option<PathBuf> },
    /// `path` was unlinked or removed; the file or directory waits in the stash at `stash`.
    Removed { path: PathBuf, stash: PathBuf },
}

impl NameOp {
    /// The stash entry this op keeps alive, deleted for good once the op is durable.
    fn stash(&self) -> Option<&Path> {
        match self {
            NameOp::Created { .. } => None,
            NameOp::Renamed { replaced, .. } => replaced.as_deref(),
            NameOp::Removed { stash, .. } => Some(stash),
        }
    }
}

#[derive(Debug)]
struct NameRecord {
    /// Inode of the directory whose fsync makes this op durable.
    dir: u64,
    op: NameOp,
}

/// What is not yet durable, as counted by [`crate::LazyFs::pending`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Unsynced data records: writes, truncates and preallocations.
    pub writes: usize,
    /// Bytes written by the unsynced writes.
    pub bytes: u64,
    /// Directory entries created, removed or renamed whose directory was not synced.
    pub namespace_ops: usize,
}

/// The file whose unsynced writes a power loss tore: a prefix of its write stream survived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornFile {
    /// Path relative to the mount's root.
    pub path: PathBuf,
    /// Bytes of its unsynced write stream that were kept.
    pub bytes_kept: u64,
    /// Bytes of its unsynced write stream there were.
    pub bytes_pending: u64,
    /// Whether one write was cut in the middle (only a prefix of it kept).
    pub partial_write: bool,
}

/// What a power loss took back, for the harness's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Data records undone, fully or in part.
    pub writes_dropped: usize,
    /// Bytes of unsynced writes that were lost.
    pub bytes_dropped: u64,
    /// Directory-entry changes undone.
    pub namespace_ops_dropped: usize,
    /// The torn file, when a tear was asked for and some file had unsynced data.
    pub torn: Option<TornFile>,
    /// Undo steps that failed (the backing directory may then hold more than was durable).
    pub undo_failures: Vec<String>,
}

impl fmt::Display for LossReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dropped {} unsynced writes ({} bytes) and {} unsynced directory entries",
            self.writes_dropped, self.bytes_dropped, self.namespace_ops_dropped
        )?;
        if let Some(t) = &self.torn {
            write!(
                f,
                "; tore {}: kept {} of {} unsynced bytes{}",
                t.path.display(),
                t.bytes_kept,
                t.bytes_pending,
                if t.partial_write { " (one write cut)" } else { "" }
            )?;
        }
        for failure in &self.undo_failures {
            write!(f, "; undo failed: {failure}")?;
        }
        Ok(())
    }
}

/// The pending (not yet durable) changes of one mount session.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    seq: u64,
    data: HashMap<u64, Vec<DataRecord>>,
    names: Vec<NameRecord>,
    next_stash: u64,
}

impl Journal {
    pub(crate) fn record_data(&mut self, ino: u64, undo: DataUndo) {
        self.seq += 1;
        self.data.entry(ino).or_default().push(DataRecord { seq: self.seq, undo });
    }

    /// `fsync`/`fdatasync` of `ino`: its data is durable.
    pub(crate) fn sync_file(&mut self, ino: u64) {
        self.data.remove(&ino);
    }

    pub(crate) fn record_name(&mut self, dir: u64, op: NameOp) {
        self.names.push(NameRecord { dir, op });
    }

    /// `fsync` of directory `dir`: its pending entries are durable. Returns the stash entries
    /// (relative paths) that no undo needs any more, for the caller to delete.
    pub(crate) fn sync_dir(&mut self, dir: u64) -> Vec<PathBuf> {
        let (durable, pending): (Vec<NameRecord>, Vec<NameRecord>) =
            mem::take(&mut self.names).into_iter().partition(|r| r.dir == dir);
        self.names = pending;
        durable.iter().filter_map(|r| r.op.stash().map(Path::to_path_buf)).collect()
    }

    /// A fresh stash path (relative to the backing root) for a name being removed.
    pub(crate) fn new_stash_path(&mut self) -> PathBuf {
        self.next_stash += 1;
        Path::new(STASH_DIR).join(self.next_stash.to_string())
    }

    /// Whether an undo record needs inode `ino` (its path) to stay in the inode table.
    pub(crate) fn pins(&self, ino: u64) -> bool {
        self.data.contains_key(&ino) || self.names.iter().any(|r| r.dir == ino)
    }

    pub(crate) fn pending(&self) -> Pending {
        let records = self.data.values().flatten();
        Pending {
            writes: records.clone().count(),
            bytes: records.map(|r| r.undo.stream_len()).sum(),
            namespace_ops: self.names.len(),
        }
    }

    /// Applies every pending undo record to `backing`: first the data records (newest first per
    /// file, on each file's current path as `inodes` knows it), then the namespace records
    /// (newest first). With `tear`, the file written last keeps a random prefix of its unsynced
    /// write stream, as a disk that persisted part of the stream before the power went.
    pub(crate) fn power_loss<R: Rng + ?Sized>(
        self,
        backing: &Path,
        inodes: &InodeTable,
        mut tear: Option<&mut R>,
    ) -> LossReport {
        let mut report = LossReport::default();
        let torn_ino = if tear.is_some() {
            self.data.iter().filter_map(|(&ino, recs)| recs.last().map(|r| (r.seq, ino))).max().map(|(_, ino)| ino)
        } else {
            None
        };
        for (ino, records) in &self.data {
            let Some(path) = inodes.path(*ino) else {
                report.undo_failures.push(format!("inode {ino} with unsynced data has no path"));
                continue;
            };
            let full = backing.join(path);
            let file = match OpenOptions::new().read(true).write(true).open(&full) {
                Ok(f) => f,
                // Gone for good: its removal was made durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    report.undo_failures.push(format!("open {}: {e}", full.display()));
                    continue;
                }
            };
            let (keep, partial) = match (&mut tear, torn_ino == Some(*ino)) {
                (Some(rng), true) => {
                    let (keep, partial) = tear_point(records, &mut **rng);
                    let total: u64 = records.iter().map(|r| r.undo.stream_len()).sum();
                    let kept: u64 = records[..keep].iter().map(|r| r.undo.stream_len()).sum::<u64>()
                        + partial.map_or(0, |(_, p)| p);
                    report.torn = Some(TornFile {
                        path: path.to_path_buf(),
                        bytes_kept: kept,
                        bytes_pending: total,
                        partial_write: partial.is_some(),
                    });
                    (keep, partial)
                }
                _ => (0, None),
            };
            let undo_from = keep + usize::from(partial.is_some());
            for record in records[undo_from..].iter().rev() {
                report.writes_dropped += 1;
                report.bytes_dropped += record.undo.stream_len();
                if let Err(e) = undo_data(&file, &record.undo) {
                    report.undo_failures.push(format!("undo of a write to {}: {e}", full.display()));
                }
            }
            if let Some((i, prefix)) = partial {
                report.writes_dropped += 1;
                report.bytes_dropped += records[i].undo.stream_len() - prefix;
                if let Err(e) = undo_write_keeping_prefix(&file, &records[i].undo, prefix) {
                    report.undo_failures.push(format!("tear of a write to {}: {e}", full.display()));
                }
            }
        }
        for record in self.names.iter().rev() {
            report.namespace_ops_dropped += 1;
            if let Err(e) = undo_name(backing, &record.op) {
                report.undo_failures.push(format!("undo of {:?}: {e}", record.op));
            }
        }
        report
    }
}

/// Where a tear cuts a file's unsynced records: a point drawn uniformly over the bytes of its
/// write stream. Returns how many records are kept whole and, when the point falls inside a
/// write, that write's index and how many of its bytes are kept.
fn tear_point<R: Rng + ?Sized>(records: &[DataRecord], rng: &mut R) -> (usize, Option<(usize, u64)>) {
    let total: u64 = records.iter().map(|r| r.undo.stream_len()).sum();
    let point = rng.gen_range(0..=total);
    let mut at = 0;
    for (i, record) in records.iter().enumerate() {
        let len = record.undo.stream_len();
        if at + len <= point {
            at += len;
            continue;
        }
        return (i, (point > at).then_some((i, point - at)));
    }
    (records.len(), None)
}

fn undo_data(file: &File, undo: &DataUndo) -> io::Result<()> {
    match undo {
        DataUndo::Write { offset, old, old_len, .. } => {
            file.write_all_at(old, *offset)?;
            file.set_len(*old_len)
        }
        DataUndo::Resize { old_len, cut } => {
            file.set_len(*old_len)?;
            file.write_all_at(cut, old_len - cut.len() as u64)
        }
    }
}

/// Takes back a write except its first `prefix` bytes (`0 < prefix < len`).
fn undo_write_keeping_prefix(file: &File, undo: &DataUndo, prefix: u64) -> io::Result<()> {
    let DataUndo::Write { offset, old, old_len, .. } = undo else {
        return undo_data(file, undo);
    };
    let p = prefix as usize;
    if old.len() > p {
        file.write_all_at(&old[p..], offset + prefix)?;
    }
    file.set_len((*old_len).max(offset + prefix))
}

fn undo_name(backing: &Path, op: &NameOp) -> io::Result<()> {
    match op {
        NameOp::Created { path } => remove_any(&backing.join(path)),
        NameOp::Renamed { from, to, replaced } => {
            fs::rename(backing.join(to), backing.join(from))?;
            match replaced {
                Some(stash) => fs::rename(backing.join(stash), backing.join(to)),
                None => Ok(()),
            }
        }
        NameOp::Removed { path, stash } => fs::rename(backing.join(stash), backing.join(path)),
    }
}

/// Deletes a file or a whole directory tree; a missing path is fine.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    fn write(len: u64) -> DataRecord {
        DataRecord { seq: 0, undo: DataUndo::Write { offset: 0, old: Vec::new(), old_len: 0, len } }
    }

    #[test]
    fn tear_point_stays_within_the_stream() {
        let records = [write(10), write(0), write(5)];
        for seed in 0..200 {
            let (keep, partial) = tear_point(&records, &mut SmallRng::seed_from_u64(seed));
            assert!(keep <= records.len());
            if let Some((i, p)) = partial {
                assert_eq!(i, keep);
                assert!(p > 0 && p < records[i].undo.stream_len());
            }
        }
    }

    #[test]
    fn undo_restores_overwritten_bytes_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"hello").unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        file.write_all_at(b"HELLO world", 0).unwrap();
        let undo = DataUndo::Write { offset: 0, old: b"hello".to_vec(), old_len: 5, len: 11 };
        undo_write_keeping_prefix(&file, &undo, 7).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"HELLO w");
        undo_data(&file, &undo).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
    }
}
