//! The Raft log in files of its own, apart from sled.
//!
//! Why not a sled tree: making one appended entry durable then meant flushing sled, which writes
//! everything the state machine changed since the last flush and wakes sled's whole I/O thread
//! pool; the leader pays that before it may even send the entry (openraft 0.9 replicates only
//! after its own append is durable). Here an append is one positional write and one
//! `fdatasync` of the bytes just written.
//!
//! Layout: `<dir>/<index of the first entry, 20 digits>.seg`, entries appended to the newest
//! segment until it holds [`SEGMENT_BYTES`]. A segment starts with [`MAGIC`], then records
//! `[payload length: u32][crc32: u32][index: u64][synced below: u64][payload]` (little endian;
//! the checksum covers index, synced-below and payload). Segments follow one another without
//! gaps. A purge deletes whole segments; a truncation cuts one and deletes those after it.
//!
//! A crash can leave a torn record only at the end of the newest segment (a segment is synced
//! before the next one is started): opening cuts it off, since it was never acknowledged. A bad
//! record anywhere else, or a gap between segments, is corruption, and opening fails. In the
//! newest segment the two look alike at the bad record itself; what tells them apart is what
//! follows it. Each record carries "synced below", the index below which every entry was durable
//! when it was written: if any intact record further on says entry `i` was already durable, a
//! bad record of entry `i` is damage to acknowledged data (opening fails, naming the file), not
//! an append that a crash cut short. Segments written before this rule (no [`MAGIC`]) carry no
//! such field and keep the old one: a bad record in the newest is cut off.

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

/// The first bytes of every segment written in the current record format.
const MAGIC: [u8; 8] = *b"rkvlog\x00\x02";

/// How a segment's records are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// No [`MAGIC`], records without "synced below" (segments of older builds).
    Legacy,
    Current,
}

impl Format {
    /// Bytes of a record before its payload.
    fn header(self) -> usize {
        match self {
            Format::Legacy => 16,
            Format::Current => 24,
        }
    }

    /// Where the first record starts.
    fn start(self) -> u64 {
        match self {
            Format::Legacy => 0,
            Format::Current => MAGIC.len() as u64,
        }
    }
}

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
    format: Format,
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
    /// A segment of no records in the current format, before its header is written.
    fn empty(first: u64, path: PathBuf, file: File) -> Segment {
        Segment { first, format: Format::Current, path, file: Arc::new(file), offsets: Vec::new(), len: 0, filled: 0 }
    }

    /// Writes the header of an empty segment, durably.
    fn write_magic(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        self.file.write_all_at(&MAGIC, 0)?;
        self.file.sync_all()?;
        self.len = MAGIC.len() as u64;
        self.filled = self.len;
        Ok(())
    }

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
    /// Every entry below this index is durable: what each new record says it was written after.
    synced_below: u64,
    /// Counts truncations, so that a sync that ran across one does not claim entries it cut.
    cuts: u64,
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

/// One record as stored.
struct Record<'a> {
    index: u64,
    payload: &'a [u8],
    /// Bytes of the whole record.
    len: usize,
}

fn checksum(index: u64, synced_below: Option<u64>, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    if let Some(below) = synced_below {
        h.update(&below.to_le_bytes());
    }
    h.update(payload);
    h.finalize()
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// One record parsed from the start of `buf`, or why it is not one.
fn parse(buf: &[u8], format: Format) -> std::result::Result<Record<'_>, &'static str> {
    let header = format.header();
    if buf.len() < header {
        return Err("a record header is cut short");
    }
    let len = u32_at(buf, 0) as usize;
    let crc = u32_at(buf, 4);
    let index = u64_at(buf, 8);
    let synced_below = if format == Format::Current { Some(u64_at(buf, 16)) } else { None };
    let payload = buf.get(header..header + len).ok_or("a record is cut short")?;
    if checksum(index, synced_below, payload) != crc {
        return Err("a record's checksum does not match");
    }
    Ok(Record { index, payload, len: header + len })
}

/// Appends the record of `(index, payload)` in the current format to `buf`.
fn encode(buf: &mut Vec<u8>, index: u64, synced_below: u64, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("a log entry over 4 GiB"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(index, Some(synced_below), payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&synced_below.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// Whether an intact record somewhere in `rest` (the bytes after a bad record of entry `index`)
/// says entry `index` was durable when it was written. Records after a bad one cannot be found
/// by their lengths, so every offset is tried; the cheap field checks first keep zeros and
/// garbage from costing a checksum.
fn later_record_vouches_for(rest: &[u8], index: u64) -> bool {
    let header = Format::Current.header();
    (0..rest.len().saturating_sub(header)).any(|at| {
        let buf = &rest[at..];
        let (len, claimed, synced_below) = (u32_at(buf, 0) as usize, u64_at(buf, 8), u64_at(buf, 16));
        synced_below > index
            && claimed >= synced_below
            && len <= buf.len() - header
            && parse(buf, Format::Current).is_ok()
    })
}

/// Opens a segment for reading and appending, created empty if `create`.
///
/// Reads of the log do not update the file's access time (`O_NOATIME`). On ext4 an inode whose
/// times changed is written out by the next `fdatasync` of *any* file whose inode shares its
/// inode-table block, before the cache flush: an atime bumped by the read that replicates each
/// entry put one more synchronous write into most log syncs (of this member and of neighbours'
/// files). `O_NOATIME` is refused to a process that does not own the file; the open then goes
/// on without it.
fn open_segment(path: &Path, create: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: i32| {
        File::options().read(true).write(true).create(create).truncate(create).custom_flags(flags).open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
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
        // What was read is what a record written from now on may call durable: a member that
        // was killed (not powered off) finds its unsynced appends still in the page cache.
        if let Some(newest) = segments.back() {
            newest.file.sync_all()?;
        }
        sync_dir(&dir)?;
        let synced_below = segments.back().map_or(0, Segment::next);
        let state = Mutex::new(State { segments, unsynced: Vec::new(), synced_below, cuts: 0 });
        Ok(SegmentLog {
            dir,
            segment_bytes,
            state,
            syncing: Mutex::new(()),
            cutting: RwLock::new(()),
            failed: AtomicBool::new(false),
        })
    }

    /// Reads one segment's records. A bad record is an error in any segment but the newest;
    /// there it is a torn tail, cut off, unless a later record says it had been synced.
    fn load(dir: &Path, first: u64, newest: bool) -> Result<Segment> {
        let path = dir.join(segment_name(first));
        let file = open_segment(&path, false)?;
        let data = std::fs::read(&path)?;
        if newest && MAGIC.starts_with(&data) {
            // Started, but its header never reached the disk: it holds nothing.
            let mut segment = Segment::empty(first, path, file);
            segment.write_magic()?;
            return Ok(segment);
        }
        let format = if data.starts_with(&MAGIC) { Format::Current } else { Format::Legacy };
        let mut offsets = Vec::new();
        let mut at = format.start() as usize;
        while at < data.len() {
            let expected = first + offsets.len() as u64;
            match parse(&data[at..], format) {
                Ok(record) if record.index == expected => {
                    offsets.push(at as u64);
                    at += record.len;
                }
                Ok(record) => {
                    let what = format!("entry {} stored where entry {expected} belongs", record.index);
                    return Err(corrupt(&path, what).into());
                }
                Err(why) if newest => {
                    if format == Format::Current && later_record_vouches_for(&data[at + 1..], expected) {
                        let what = format!("{why} at byte {at}, where entry {expected} is stored and was synced (a later record says so)");
                        return Err(corrupt(&path, what).into());
                    }
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
        let len = at as u64;
        Ok(Segment { first, format, path, file: Arc::new(file), offsets, len, filled: len })
    }

    /// Starts a segment whose first entry will be `first`; durable, header and directory entry.
    fn start_segment(&self, first: u64) -> Result<Segment> {
        let path = self.dir.join(segment_name(first));
        let file = open_segment(&path, true)?;
        let mut segment = Segment::empty(first, path, file);
        segment.write_magic()?;
        sync_dir(&self.dir)?;
        Ok(segment)
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
            // Nothing of this log's new start has been synced.
            st.synced_below = start;
        } else if st.segments.back().is_some_and(|s| s.len >= self.segment_bytes || s.format == Format::Legacy) {
            // A full segment is cut to its records and synced before the next starts: only the
            // newest can be torn or end in zeros. (A segment of an older build gets no records
            // in the current format: a new one starts.)
            let full = st.segments.back_mut().expect("checked");
            full.file.set_len(full.len)?;
            full.filled = full.len;
            let outcome = full.file.sync_all();
            self.synced(outcome)?;
            let segment = self.start_segment(start)?;
            st.segments.push_back(segment);
        }
        let size: usize = entries.iter().map(|(_, p)| Format::Current.header() + p.len()).sum();
        let mut buf = Vec::with_capacity(size);
        let synced_below = st.synced_below;
        let active = st.segments.back_mut().expect("a segment to append to");
        let mut offsets = Vec::with_capacity(entries.len());
        for (index, payload) in &entries {
            offsets.push(active.len + buf.len() as u64);
            encode(&mut buf, *index, synced_below, payload)?;
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
        let (files, below, cuts) = {
            let mut st = self.state.lock();
            (std::mem::take(&mut st.unsynced), st.next(), st.cuts)
        };
        for f in files {
            self.synced(f.sync_data())?;
        }
        let mut st = self.state.lock();
        if let Some(below) = below.filter(|b| st.cuts == cuts && *b > st.synced_below) {
            st.synced_below = below;
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
        st.synced_below = st.synced_below.min(from);
        st.cuts += 1;
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
                    bytes += (end - start) as usize - s.format.header();
                    last += 1;
                    if bytes >= budget {
                        plan.push((s.file.clone(), s.path.clone(), s.format, lo, last, s.record(lo).0, end));
                        break 'segments;
                    }
                }
                plan.push((s.file.clone(), s.path.clone(), s.format, lo, hi, s.record(lo).0, s.record(hi - 1).1));
            }
        }
        let mut out = Vec::new();
        for (file, path, format, lo, hi, start, end) in plan {
            let mut buf = vec![0; (end - start) as usize];
            file.read_exact_at(&mut buf, start)?;
            let mut at = 0;
            for expected in lo..hi {
                let record = parse(&buf[at..], format).map_err(|why| corrupt(&path, why.to_string()))?;
                if record.index != expected {
                    let what = format!("entry {} read where entry {expected} belongs", record.index);
                    return Err(corrupt(&path, what).into());
                }
                out.push(record.payload.to_vec());
                at += record.len;
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
        encode(&mut stray, 5, 0, b"stray").unwrap();
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
        data[MAGIC.len() + Format::Current.header()] ^= 1;
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

    /// Flips one byte of entry `index`'s payload in the (only) segment of `dir`.
    fn damage(dir: &Path, index: u64) {
        let path = dir.join(segment_name(1));
        let mut data = std::fs::read(&path).unwrap();
        let mut at = MAGIC.len();
        for _ in 1..index {
            at += parse(&data[at..], Format::Current).unwrap().len;
        }
        data[at + Format::Current.header()] ^= 1;
        std::fs::write(&path, data).unwrap();
    }

    /// Entries 1-2 synced, 3 synced in a sync of its own, then 4-6 appended together and never
    /// synced: what a member holds when power fails during an append.
    fn synced_then_unsynced(dir: &Path) {
        let log = SegmentLog::open(dir).unwrap();
        log.append(entries(1..=2)).unwrap();
        log.sync().unwrap();
        log.append(entries(3..=3)).unwrap();
        log.sync().unwrap();
        log.append(entries(4..=6)).unwrap();
    }

    #[test]
    fn a_bad_record_that_a_later_record_calls_synced_stops_the_start_naming_the_file() {
        for bad in [1, 2, 3] {
            let dir = tempfile::tempdir().unwrap();
            synced_then_unsynced(dir.path());
            damage(dir.path(), bad);
            let err = SegmentLog::open(dir.path()).err().expect("damage to synced entries is refused").to_string();
            assert!(err.contains(&segment_name(1)), "names the file: {err}");
            assert!(err.contains(&format!("entry {bad} is stored and was synced")), "{err}");
            assert_eq!(std::fs::metadata(dir.path().join(segment_name(1))).unwrap().len(), FILL_BYTES, "nothing cut");
        }
    }

    #[test]
    fn a_bad_record_no_later_record_calls_synced_is_a_torn_tail_and_is_cut() {
        for bad in [4, 5, 6] {
            let dir = tempfile::tempdir().unwrap();
            synced_then_unsynced(dir.path());
            damage(dir.path(), bad);
            let log = SegmentLog::open(dir.path()).unwrap();
            assert_eq!(indexes(&log, 0, 100), (1..bad).collect::<Vec<_>>(), "cut at the torn entry {bad}");
            log.append(entries(bad..=7)).unwrap();
            log.sync().unwrap();
            drop(log);
            let log = SegmentLog::open(dir.path()).unwrap();
            assert_eq!(indexes(&log, 0, 100), (1..=7).collect::<Vec<_>>());
        }
    }

    /// A log written by a build before "synced below": its newest segment keeps the old rule (a
    /// bad record is cut off), and appends go on in a new segment of the current format.
    #[test]
    fn segments_of_the_older_format_are_read_and_appends_go_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for i in 1..=3u64 {
            let payload = format!("entry {i}").into_bytes();
            old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            old.extend_from_slice(&checksum(i, None, &payload).to_le_bytes());
            old.extend_from_slice(&i.to_le_bytes());
            old.extend_from_slice(&payload);
        }
        old.truncate(old.len() - 2); // entry 3 torn
        std::fs::write(dir.path().join(segment_name(1)), old).unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(indexes(&log, 0, 100), vec![1, 2]);
        log.append(entries(3..=4)).unwrap();
        log.sync().unwrap();
        assert_eq!(segment_files(dir.path()), vec![segment_name(1), segment_name(3)]);
        drop(log);
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(indexes(&log, 0, 100), vec![1, 2, 3, 4]);
        assert_eq!(log.read(1, 5, 8).unwrap().len(), 2, "the budget counts payloads of both formats");
    }

    /// A crash between creating a segment and syncing its header leaves it empty or with part of
    /// the header: it holds no entry, and appends go on in it.
    #[test]
    fn a_segment_whose_header_was_cut_short_starts_again() {
        for kept in [0, 3] {
            let dir = tempfile::tempdir().unwrap();
            let log = SegmentLog::open(dir.path()).unwrap();
            log.append(entries(1..=2)).unwrap();
            log.sync().unwrap();
            drop(log);
            std::fs::write(dir.path().join(segment_name(1)), &MAGIC[..kept]).unwrap();
            let log = SegmentLog::open(dir.path()).unwrap();
            assert_eq!(log.last().unwrap(), None);
            log.append(entries(1..=1)).unwrap();
            drop(log);
            let log = SegmentLog::open(dir.path()).unwrap();
            assert_eq!(indexes(&log, 0, 100), vec![1]);
        }
    }

    /// Entries truncated away were synced; the entries appended in their place were not, and
    /// must not be vouched for by what was said of the old ones.
    #[test]
    fn after_a_truncation_new_records_claim_only_what_was_synced_since() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path()).unwrap();
        log.append(entries(1..=5)).unwrap();
        log.sync().unwrap();
        log.truncate(3).unwrap();
        log.append(entries(3..=5)).unwrap();
        drop(log);
        damage(dir.path(), 3);
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(indexes(&log, 0, 100), vec![1, 2], "entry 3 anew was never synced: a torn tail");
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
