//! The Raft log in files of its own, apart from sled.
//!
//! Why not a sled tree: making one appended entry durable then meant flushing sled, which writes
//! everything the state machine changed since the last flush and wakes sled's whole I/O thread
//! pool; the leader pays that before it may even send the entry (openraft 0.9 replicates only
//! after its own append is durable). Here an append is one positional write and one
//! `fdatasync` of the bytes just written.
//!
//! Layout: `<dir>/<index of the first entry, 20 digits>.seg`, entries appended to the newest
//! segment until it holds [`SEGMENT_BYTES`], each as a record
//! `[payload length: u32][crc32 of index and payload: u32][index: u64][payload]` (little endian).
//! Segments follow one another without gaps. A purge deletes whole segments; a truncation cuts
//! one and deletes those after it.
//!
//! A crash can leave a torn record only at the end of the newest segment (a segment is synced
//! before the next one is started): opening cuts it off, since it was never acknowledged. A bad
//! record anywhere else, or a gap between segments, is corruption, and opening fails.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};

use super::Result;

/// Bytes after which the next append starts a new segment (etcd's WAL uses the same size).
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Bytes of a record before its payload.
const HEADER: usize = 16;

/// The newest segment is kept written with zeros up to this multiple of bytes past its records.
/// An append that overwrites bytes already in the file changes no file metadata, so its
/// `fdatasync` is a data write and a cache flush; one that extends the file also commits the
/// file system's journal for the new size, and on the reference machine took about twice as
/// long (330 and 290 µs against 175 and 140 µs per 8 KiB append). The zeros go out with the
/// append that crosses into a new stretch, once per this many bytes. (etcd preallocates its
/// WAL segments for the same reason.)
const FILL_BYTES: u64 = 1 << 20;

/// A log that cannot be read or would be written out of order.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("entry {index} appended where entry {expected} comes next")]
    NotNext { index: u64, expected: u64 },
    #[error("{file}: {what} (the Raft log is damaged; restore this member from its peers)")]
    Corrupt { file: String, what: String },
}

/// One segment file and where its records start.
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// `offsets[i]` is where the record of entry `first + i` starts.
    offsets: Vec<u64>,
    /// Bytes of complete records: where the next record goes.
    len: u64,
    /// Bytes of the file, zeros after `len` ([`FILL_BYTES`]).
    filled: u64,
}

impl Segment {
    /// The index the next entry appended here would have.
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// The byte range of entry `index`'s record.
    fn record(&self, index: u64) -> (u64, u64) {
        let i = (index - self.first) as usize;
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.len);
        (self.offsets[i], end)
    }
}

struct State {
    /// Oldest first; appends go to the last.
    segments: VecDeque<Segment>,
    /// Files written since their last sync.
    unsynced: Vec<Arc<File>>,
}

impl State {
    /// The index the next append must start at, or `None` for an empty log.
    fn next(&self) -> Option<u64> {
        self.segments.back().filter(|s| !s.offsets.is_empty() || self.segments.len() > 1).map(Segment::next)
    }
}

/// The segmented Raft log of a data dir. Appends, truncations and purges come one at a time
/// (from openraft's core); reads may run alongside them.
pub struct SegmentLog {
    dir: PathBuf,
    /// [`SEGMENT_BYTES`]; smaller in tests.
    segment_bytes: u64,
    state: Mutex<State>,
    /// Held across a sync, so a sync that returns covers every append before it even when
    /// another sync took the list of unsynced files first.
    syncing: Mutex<()>,
    /// Held shared by a read from planning to parsing, exclusively by a truncation: a read
    /// never finds the bytes it planned cut away under it. (A leader that has just stepped down
    /// may still be reading for a replication stream while the new leader's entries truncate its
    /// own; the cut records would read as corruption, and that error stops the member.)
    cutting: RwLock<()>,
    /// Set when an fsync failed: the kernel may have dropped the pages it could not write and
    /// a retried fsync would then succeed without them, so the log refuses all further appends
    /// and syncs. The member stops, and a restart reads back what is really on disk.
    failed: AtomicBool,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn corrupt(path: &Path, what: String) -> LogError {
    LogError::Corrupt { file: path.display().to_string(), what }
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// One record parsed from `buf`: `(index, payload, record length)`, or why it is not one.
fn parse(buf: &[u8]) -> std::result::Result<(u64, &[u8], usize), &'static str> {
    if buf.len() < HEADER {
        return Err("a record header is cut short");
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let index = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let payload = buf.get(HEADER..HEADER + len).ok_or("a record is cut short")?;
    if checksum(index, payload) != crc {
        return Err("a record's checksum does not match");
    }
    Ok((index, payload, HEADER + len))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl SegmentLog {
    /// Opens the log in `dir` (created if missing), cutting off a torn record at its end.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: impl AsRef<Path>, segment_bytes: u64) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        for (n, first) in firsts.iter().enumerate() {
            let newest = n + 1 == firsts.len();
            let segment = Self::load(&dir, *first, newest)?;
            if let Some(prev) = segments.back() {
                if prev.next() != segment.first {
                    let what = format!("follows a segment that ends before entry {}", prev.next());
                    return Err(corrupt(&segment.path, what).into());
                }
            }
            segments.push_back(segment);
        }
        sync_dir(&dir)?;
        let state = Mutex::new(State { segments, unsynced: Vec::new() });
        Ok(SegmentLog {
            dir,
            segment_bytes,
            state,
            syncing: Mutex::new(()),
            cutting: RwLock::new(()),
            failed: AtomicBool::new(false),
        })
    }

    /// Reads one segment's records; a bad record ends the newest segment there and is an
    /// error in any other.
    fn load(dir: &Path, first: u64, newest: bool) -> Result<Segment> {
        let path = dir.join(segment_name(first));
        let file = File::options().read(true).write(true).open(&path)?;
        let data = std::fs::read(&path)?;
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let expected = first + offsets.len() as u64;
            match parse(&data[at..]) {
                Ok((index, _, n)) if index == expected => {
                    offsets.push(at as u64);
                    at += n;
                }
                Ok((index, _, _)) => {
                    let what = format!("entry {index} stored where entry {expected} belongs");
                    return Err(corrupt(&path, what).into());
                }
                Err(why) if newest => {
                    // Zeros written ahead of the appends ([`FILL_BYTES`]), or an append that a
                    // crash cut short: never synced, so never acknowledged. Either way the file
                    // ends here, so that nothing after it (a later record of that cut append)
                    // can ever be read as an entry once appends go on.
                    if data[at..].iter().any(|b| *b != 0) {
                        tracing::warn!(file = %path.display(), at, dropped = data.len() - at, why, "cutting a torn record off the Raft log");
                    }
                    file.set_len(at as u64)?;
                    file.sync_all()?;
                    break;
                }
                Err(why) => return Err(corrupt(&path, format!("{why} at byte {at}")).into()),
            }
        }
        Ok(Segment { first, path, file: Arc::new(file), offsets, len: at as u64, filled: at as u64 })
    }

    /// Starts a segment whose first entry will be `first`; durable as a directory entry.
    fn start_segment(&self, first: u64) -> Result<Segment> {
        let path = self.dir.join(segment_name(first));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path)?;
        sync_dir(&self.dir)?;
        Ok(Segment { first, path, file: Arc::new(file), offsets: Vec::new(), len: 0, filled: 0 })
    }

    /// Appends entries `(index, payload)` (see [`super::Engine::log_append`]).
    pub fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.check_healthy()?;
        let Some(&(start, _)) = entries.first() else { return Ok(()) };
        let mut st = self.state.lock();
        for (expected, (index, _)) in (st.next().unwrap_or(start)..).zip(&entries) {
            if *index != expected {
                return Err(LogError::NotNext { index: *index, expected }.into());
            }
        }
        if st.next().is_none() {
            // An empty log starts wherever it is told; leftover empty segments go.
            for s in std::mem::take(&mut st.segments) {
                std::fs::remove_file(&s.path)?;
            }
            let segment = self.start_segment(start)?;
            st.segments.push_back(segment);
        } else if st.segments.back().is_some_and(|s| s.len >= self.segment_bytes) {
            // A full segment is cut to its records and synced before the next starts: only the
            // newest can be torn or end in zeros.
            let full = st.segments.back_mut().expect("checked");
            full.file.set_len(full.len)?;
            full.filled = full.len;
            let outcome = full.file.sync_all();
            self.synced(outcome)?;
            let segment = self.start_segment(start)?;
            st.segments.push_back(segment);
        }
        let size: usize = entries.iter().map(|(_, p)| HEADER + p.len()).sum();
        let mut buf = Vec::with_capacity(size);
        let active = st.segments.back_mut().expect("a segment to append to");
        let mut offsets = Vec::with_capacity(entries.len());
        for (index, payload) in &entries {
            let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("a log entry over 4 GiB"))?;
            offsets.push(active.len + buf.len() as u64);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&checksum(*index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let records = buf.len() as u64;
        let end = active.len + records;
        if end > active.filled {
            let filled = end.div_ceil(FILL_BYTES) * FILL_BYTES;
            buf.resize(buf.len() + (filled - end) as usize, 0);
            active.filled = filled;
        }
        active.file.write_all_at(&buf, active.len)?;
        active.len = end;
        active.offsets.extend(offsets);
        let file = active.file.clone();
        if !st.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            st.unsynced.push(file);
        }
        Ok(())
    }

    /// Makes every earlier append durable.
    pub fn sync(&self) -> Result<()> {
        let _one_at_a_time = self.syncing.lock();
        self.check_healthy()?;
        let files = std::mem::take(&mut self.state.lock().unsynced);
        for f in files {
            self.synced(f.sync_data())?;
        }
        Ok(())
    }

    /// Passes on an fsync's outcome, marking the log failed if it failed.
    fn synced(&self, outcome: std::io::Result<()>) -> Result<()> {
        if outcome.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        Ok(outcome?)
    }

    /// Fails once a sync has failed (see [`SegmentLog::failed`]).
    fn check_healthy(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            let what = "an earlier fsync of the Raft log failed, so what it holds is unknown; restart the member";
            return Err(std::io::Error::other(what).into());
        }
        Ok(())
    }

    /// Removes the entries at `from` and above, durably.
    pub fn truncate(&self, from: u64) -> Result<()> {
        self.check_healthy()?;
        let _no_reads = self.cutting.write();
        let mut st = self.state.lock();
        // Later segments go first: a crash in between leaves a shorter log, never a gap.
        let mut removed = false;
        while st.segments.back().is_some_and(|s| s.first >= from && st.segments.len() > 1) {
            let s = st.segments.pop_back().expect("checked");
            std::fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        if let Some(s) = st.segments.back_mut() {
            if from < s.next() {
                let keep = from.saturating_sub(s.first) as usize;
                let len = s.offsets.get(keep).copied().unwrap_or(s.len);
                s.file.set_len(len)?;
                s.offsets.truncate(keep);
                s.len = len;
                s.filled = len;
            }
            // Every earlier append to this file becomes durable with the cut.
            let outcome = s.file.sync_all();
            self.synced(outcome)?;
        }
        Ok(())
    }

    /// Deletes every segment whose entries are all at `upto` or below, durably.
    pub fn purge(&self, upto: u64) -> Result<()> {
        let mut st = self.state.lock();
        let mut removed = false;
        while st.segments.front().is_some_and(|s| s.next() <= upto + 1) {
            let s = st.segments.pop_front().expect("checked");
            std::fs::remove_file(&s.path)?;
            removed = true;
        }
        drop(st);
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Entries of `[from, to)` up to `budget` bytes (see [`super::Engine::log_read`]).
    pub fn read(&self, from: u64, to: u64, budget: usize) -> Result<Vec<Vec<u8>>> {
        // Plan the reads under the lock, read the files outside it: an append or a sync is
        // never held up by a follower being caught up. Records once written never change
        // while readable: a truncation waits for reads in progress, and a segment that a purge
        // deletes stays readable through its open file.
        let _no_cuts = self.cutting.read();
        let mut plan = Vec::new();
        {
            let st = self.state.lock();
            let mut bytes = 0;
            'segments: for s in &st.segments {
                let (lo, hi) = (from.max(s.first), to.min(s.next()));
                if lo >= hi {
                    continue;
                }
                let mut last = lo;
                while last < hi {
                    let (start, end) = s.record(last);
                    bytes += (end - start) as usize - HEADER;
                    last += 1;
                    if bytes >= budget {
                        plan.push((s.file.clone(), s.path.clone(), lo, last, s.record(lo).0, end));
                        break 'segments;
                    }
                }
                plan.push((s.file.clone(), s.path.clone(), lo, hi, s.record(lo).0, s.record(hi - 1).1));
            }
        }
        let mut out = Vec::new();
        for (file, path, lo, hi, start, end) in plan {
            let mut buf = vec![0; (end - start) as usize];
            file.read_exact_at(&mut buf, start)?;
            let mut at = 0;
            for expected in lo..hi {
                let (index, payload, n) = parse(&buf[at..]).map_err(|why| corrupt(&path, why.to_string()))?;
                if index != expected {
                    return Err(corrupt(&path, format!("entry {index} read where entry {expected} belongs")).into());
                }
                out.push(payload.to_vec());
                at += n;
            }
        }
        Ok(out)
    }

    /// The last stored entry.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let last = {
            let st = self.state.lock();
            st.segments.iter().rev().find(|s| !s.offsets.is_empty()).map(|s| s.next() - 1)
        };
        match last {
            Some(index) => Ok(self.read(index, index + 1, usize::MAX)?.pop().map(|p| (index, p))),
            None => Ok(None),
        }
    }

    /// Bytes of every segment file.
    pub fn size(&self) -> u64 {
        self.state.lock().segments.iter().map(|s| s.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, format!("entry {i}").into_bytes())).collect()
    }

    fn indexes(log: &SegmentLog, from: u64, to: u64) -> Vec<u64> {
        let read = log.read(from, to, usize::MAX).unwrap();
        read.iter().map(|p| String::from_utf8_lossy(p)[6..].parse().unwrap()).collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn entries_survive_reopening_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open_with(dir.path(), 100).unwrap();
        for i in 1..=20 {
            log.append(entries(i..=i)).unwrap();
        }
        log.sync().unwrap();
        assert!(segment_files(dir.path()).len() > 3, "small segments filled up: {:?}", segment_files(dir.path()));
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 100).unwrap();
        assert_eq!(indexes(&log, 0, u64::MAX), (1..=20).collect::<Vec<_>>());
        assert_eq!(indexes(&log, 7, 12), (7..12).collect::<Vec<_>>());
        assert_eq!(log.last().unwrap().unwrap().0, 20);
        // The budget stops a read after the entry that reaches it.
        assert_eq!(log.read(3, 21, 1).unwrap().len(), 1);
        assert_eq!(log.read(3, 21, 9).unwrap().len(), 2, "each payload is 7 or 8 bytes");
    }

    #[test]
    fn appends_must_follow_the_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        log.append(entries(5..=6)).unwrap();
        let err = log.append(entries(8..=8)).unwrap_err().to_string();
        assert!(err.contains("entry 8 appended where entry 7 comes next"), "{err}");
        assert!(log.append(vec![(7, vec![]), (9, vec![])]).is_err(), "a gap inside one append");
        assert_eq!(indexes(&log, 0, 100), vec![5, 6], "a refused append writes nothing");
    }

    #[test]
    fn a_torn_record_at_the_end_is_cut_off_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        log.append(entries(1..=3)).unwrap();
        log.sync().unwrap();
        let full = log.size();
        drop(log);
        let path = dir.path().join(segment_name(1));
        // A crash in the middle of writing entry 3.
        File::options().write(true).open(&path).unwrap().set_len(full - 4).unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(indexes(&log, 0, 100), vec![1, 2]);
        log.append(entries(3..=4)).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(indexes(&log, 0, 100), vec![1, 2, 3, 4]);
    }

    /// The newest segment is written with zeros ahead of its records, so appends do not
    /// change the file's size; a start cuts them off, and with them anything a crash left
    /// after them, which must never be read as an entry once appends go on.
    #[test]
    fn zeros_ahead_of_the_records_are_cut_on_start_with_whatever_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        log.append(entries(1..=3)).unwrap();
        log.sync().unwrap();
        let records = log.size();
        let path = dir.path().join(segment_name(1));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILL_BYTES, "zeros written ahead");
        log.append(entries(4..=4)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILL_BYTES, "an append inside them keeps the size");
        log.truncate(4).unwrap();
        drop(log);
        // A well-formed record of entry 5 past the zeros, as a cut append could leave it.
        let mut stray = Vec::new();
        let payload = b"stray";
        stray.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        stray.extend_from_slice(&checksum(5, payload).to_le_bytes());
        stray.extend_from_slice(&5u64.to_le_bytes());
        stray.extend_from_slice(payload);
        File::options().write(true).open(&path).unwrap().write_all_at(&stray, records + 100).unwrap();

        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), records, "cut to the records");
        assert_eq!(indexes(&log, 0, 100), vec![1, 2, 3]);
        log.append(entries(4..=4)).unwrap();
        log.sync().unwrap();
        drop(log);
        // Entry 4 is shorter than the gap to the stray record, which a start must not find.
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(indexes(&log, 0, 100), vec![1, 2, 3, 4]);
        assert_eq!(log.last().unwrap().unwrap().0, 4);
    }

    #[test]
    fn damage_before_the_end_of_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open_with(dir.path(), 10).unwrap();
        for i in 1..=3 {
            log.append(entries(i..=i)).unwrap();
        }
        drop(log);
        // One byte of entry 1's payload flipped, in a segment that is not the newest.
        let path = dir.path().join(segment_name(1));
        let mut data = std::fs::read(&path).unwrap();
        data[HEADER] ^= 1;
        std::fs::write(&path, data).unwrap();
        let err = SegmentLog::open(dir.path()).err().expect("damage is refused").to_string();
        assert!(err.contains("checksum does not match"), "{err}");

        // A missing segment in the middle is a gap.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(dir.path().join(segment_name(2))).unwrap();
        std::fs::write(dir.path().join(segment_name(1)), []).unwrap();
        let err = SegmentLog::open(dir.path()).err().expect("a gap is refused").to_string();
        assert!(err.contains("ends before entry 1"), "{err}");
    }

    #[test]
    fn truncate_and_purge_cut_across_segments_durably() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open_with(dir.path(), 30).unwrap();
        for i in 1..=30 {
            log.append(entries(i..=i)).unwrap();
        }
        log.truncate(17).unwrap();
        assert_eq!(log.last().unwrap().unwrap().0, 16);
        log.append(entries(17..=20)).unwrap();
        log.purge(9).unwrap();
        let kept = indexes(&log, 0, 100);
        assert!(kept.first().is_some_and(|f| *f <= 10) && kept.last() == Some(&20), "{kept:?}");
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 30).unwrap();
        assert_eq!(indexes(&log, 10, 100), (10..=20).collect::<Vec<_>>());
        let first = segment_files(dir.path())[0].clone();
        assert!(first.as_str() > segment_name(1).as_str(), "whole segments below 10 are deleted: {first}");

        // Purging everything empties the log; it starts again wherever it is told.
        log.purge(20).unwrap();
        assert_eq!(log.last().unwrap(), None);
        log.append(entries(41..=42)).unwrap();
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 30).unwrap();
        assert_eq!(indexes(&log, 0, 100), vec![41, 42]);
        log.truncate(41).unwrap();
        assert_eq!(log.last().unwrap(), None);
    }

    /// A read running while the entries it asked for are truncated (a leader that has just
    /// stepped down, still reading for a replication stream) gets the entries as they were
    /// or as they are now, never an error: an error here would stop the member.
    #[test]
    fn reads_racing_truncations_never_fail() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open_with(dir.path(), 4096).unwrap();
        log.append(entries(1..=400)).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..300 {
                    log.truncate(200).unwrap();
                    log.append(entries(200..=400)).unwrap();
                }
                done.store(true, Ordering::SeqCst);
            });
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) || reads < 100 {
                let got = indexes(&log, 150, 401);
                assert!(got.iter().copied().eq(150..150 + got.len() as u64), "read {got:?}");
                reads += 1;
            }
        });
    }
}
