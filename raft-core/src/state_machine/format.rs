//! The snapshot format: a snapshot's data is the MVCC history up to the snapshot's revision,
//! and the small trees, after a header naming the format and its version.
//!
//! Stored as a file beside the trees (`KvEngine::put_file`), named after the snapshot. After the
//! header ([`MAGIC`], then [`FORMAT_VERSION`] as a little-endian u32), the layout is the bincode
//! encoding of `Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>` (tree name, then its
//! pairs; every length a little-endian u64), but it is never built as that value: holding each
//! pair as two `Vec`s besides the encoding took several times the snapshot's size, and members'
//! memory peaked at every snapshot of a large store.
//!
//! The history is exported while apply goes on (a copy of a large store under the gate stalled
//! apply for over a second, long enough for elections under load). That works because
//! `KvRevs` only grows between compactions and a version never changes once written: the
//! export takes every version at or below the revision it captured, and compaction waits for
//! it. The key index and the current-key table are derived from `KvRevs`, so they are not
//! exported; the importer hands every version to a callback that rebuilds them
//! ([`crate::mvcc::index::KeyIndex::derive`]). `KvRevs` always holds each live
//! key's latest version (compaction keeps it).

use std::io::SeekFrom;
use std::ops::Bound;

use crate::engine::{Batch, FileWrite, KvEngine, Pair, Tree};
use crate::mvcc::keys::{revs_key, split_revs_key};

/// The first bytes of every snapshot's data: a file that does not start with them is not a
/// raftkv snapshot.
pub const MAGIC: &[u8; 8] = b"RKVSNAP\0";

/// The version of the layout after the header. An importer refuses any other version instead
/// of misreading it; change it with every change to the layout.
pub const FORMAT_VERSION: u32 = 1;

fn write_header(out: &mut dyn FileWrite) -> std::io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())
}

/// Reads and checks the header: the data is a raftkv snapshot of the version this build reads.
fn read_header(r: &mut dyn std::io::Read) -> std::io::Result<()> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => invalid("the data ends inside the header".into()),
        _ => e,
    })?;
    if &head[..8] != MAGIC {
        return Err(invalid("the data is not a raftkv snapshot (no header)".into()));
    }
    let version = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "snapshot format version {version} is not supported: this build reads version {FORMAT_VERSION} only"
            ),
        ));
    }
    Ok(())
}

fn write_len(out: &mut dyn FileWrite, n: usize) -> std::io::Result<()> {
    out.write_all(&(n as u64).to_le_bytes())
}

fn write_bytes(out: &mut dyn FileWrite, b: &[u8]) -> std::io::Result<()> {
    write_len(out, b.len())?;
    out.write_all(b)
}

/// Writes one tree's section from `pairs`, holding nothing but the pair at hand: the pair
/// count is written as 0 and filled in once the pairs are done.
fn section(
    out: &mut dyn FileWrite,
    tree: Tree,
    pairs: impl Iterator<Item = std::io::Result<Pair>>,
) -> std::io::Result<()> {
    write_bytes(out, tree.name().as_bytes())?;
    let count_at = out.stream_position()?;
    write_len(out, 0)?;
    let mut count = 0;
    for pair in pairs {
        let (k, v) = pair?;
        write_bytes(out, &k)?;
        write_bytes(out, &v)?;
        count += 1;
    }
    let end = out.stream_position()?;
    out.seek(SeekFrom::Start(count_at))?;
    write_len(out, count)?;
    out.seek(SeekFrom::Start(end))?;
    Ok(())
}

/// Writes the state at `revision`: every `KvRevs` pair at or below it, then `small`, the
/// other trees as the caller copied them at that revision. The caller keeps compaction from
/// removing versions until this returns.
///
/// The versions come from `base` up to its revision, when the caller has one: an earlier
/// snapshot's data with no compaction since, so it holds exactly the versions at or below
/// its revision that are stored now (history only grows between compactions). Only the
/// newer ones are read from the engine, in one scan (later versions that apply adds
/// meanwhile are past its end). Reading the whole history back from sled at every
/// snapshot cost the time to read it, and memory: sled keeps the pages a scan reads in
/// memory until its cache has seen many more accesses since (docs/architecture.md).
pub fn export<E: KvEngine + ?Sized>(
    engine: &E,
    revision: i64,
    base: Option<Base>,
    small: &[(Tree, Vec<Pair>)],
    out: &mut dyn FileWrite,
) -> std::io::Result<()> {
    write_header(out)?;
    write_len(out, 1 + small.len())?;
    section(out, Tree::KvRevs, versions(engine, revision, base)?)?;
    for (tree, pairs) in small {
        section(out, *tree, pairs.iter().cloned().map(Ok))?;
    }
    Ok(())
}

/// Every `KvRevs` pair at or below `revision`, in order: from `base` up to its revision
/// when there is one (see [`export`]), the rest from the engine.
pub fn versions<'e, E: KvEngine + ?Sized>(
    engine: &'e E,
    revision: i64,
    base: Option<Base>,
) -> std::io::Result<impl Iterator<Item = std::io::Result<Pair>> + 'e> {
    let end = revs_key(revision.saturating_add(1), 0);
    let (from, base) = match base {
        Some(base) if base.revision <= revision => {
            (revs_key(base.revision.saturating_add(1), 0).to_vec(), Some(BaseVersions::open(base)?))
        }
        _ => (Vec::new(), None),
    };
    let newer = engine
        .scan(Tree::KvRevs, Bound::Included(&from), Bound::Excluded(&end), false)
        .map(|item| item.map_err(std::io::Error::other));
    Ok(base.into_iter().flatten().chain(newer))
}

/// An earlier snapshot's data to export from (see [`export`]).
pub struct Base {
    pub data: Box<dyn crate::engine::ReadSeek>,
    /// The revision it was taken at.
    pub revision: i64,
}

/// The `KvRevs` section a snapshot's data starts with, read as a stream.
struct BaseVersions {
    base: Base,
    left: u64,
}

/// Most bytes of one key or value in a snapshot: a version is at most a request's size.
const MAX_FIELD: u64 = 64 << 20;

/// Reads a length (the encoding's count of pairs, trees or bytes) from snapshot data, held
/// whole (`&[u8]`) or streamed from a file alike.
fn read_len(r: &mut dyn std::io::Read) -> std::io::Result<u64> {
    let mut n = [0u8; 8];
    r.read_exact(&mut n).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => invalid("the data ends inside a length".into()),
        _ => e,
    })?;
    Ok(u64::from_le_bytes(n))
}

/// Reads a key, a value or a tree name (see [`read_len`]).
fn read_bytes(r: &mut dyn std::io::Read) -> std::io::Result<Vec<u8>> {
    let n = read_len(r)?;
    if n > MAX_FIELD {
        return Err(invalid(format!("a field of {n} bytes")));
    }
    let mut b = Vec::with_capacity(n as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(r, n), &mut b)?;
    if b.len() as u64 != n {
        return Err(invalid(format!("{n} bytes announced, {} left", b.len())));
    }
    Ok(b)
}

impl BaseVersions {
    fn open(mut base: Base) -> std::io::Result<Self> {
        read_header(&mut base.data)?;
        read_len(&mut base.data)?;
        if read_bytes(&mut base.data)? != Tree::KvRevs.name().as_bytes() {
            return Err(invalid("the base snapshot does not start with its versions".into()));
        }
        let left = read_len(&mut base.data)?;
        Ok(BaseVersions { base, left })
    }

    fn pair(&mut self) -> std::io::Result<Pair> {
        let k = read_bytes(&mut self.base.data)?;
        let v = read_bytes(&mut self.base.data)?;
        match split_revs_key(&k) {
            Some((rev, _)) if rev <= self.base.revision => Ok((k, v)),
            _ => Err(invalid("a base snapshot version past the base's revision".into())),
        }
    }
}

impl Iterator for BaseVersions {
    type Item = std::io::Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let pair = self.pair();
        if pair.is_err() {
            self.left = 0;
        }
        Some(pair)
    }
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt snapshot: {what}"))
}

/// Most bytes of pairs [`import`] gathers before handing them on.
pub const IMPORT_PART: usize = 1 << 20;

/// What [`import`] hands each version to: its `KvRevs` key and value.
pub type VersionSink<'a> = dyn FnMut(&[u8], &[u8]) -> std::io::Result<()> + 'a;

/// Reads snapshot data from `data` as a stream and hands `write` a put for every pair, each
/// into the tree of `trees` it names, in batches of about [`IMPORT_PART`] bytes (the data is
/// never held whole), and `version` every `KvRevs` pair, in revision order, as it reads it.
pub fn import(
    data: &mut dyn std::io::Read,
    trees: &[Tree],
    write: &mut dyn FnMut(Batch) -> std::io::Result<()>,
    version: &mut VersionSink<'_>,
) -> std::io::Result<()> {
    let r = data;
    read_header(r)?;
    let mut batch = Batch::default();
    let mut bytes = 0;
    for _ in 0..read_len(r)? {
        let name = read_bytes(r)?;
        let tree = *trees
            .iter()
            .find(|t| t.name().as_bytes() == name)
            .ok_or_else(|| invalid(format!("unknown tree {}", String::from_utf8_lossy(&name))))?;
        for _ in 0..read_len(r)? {
            let k = read_bytes(r)?;
            let v = read_bytes(r)?;
            bytes += k.len() + v.len();
            if tree == Tree::KvRevs {
                if split_revs_key(&k).is_none() {
                    return Err(invalid("malformed version key".into()));
                }
                version(&k, &v)?;
            }
            batch.put(tree, k, v);
            if bytes >= IMPORT_PART {
                write(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
    }
    if r.read(&mut [0u8])? != 0 {
        return Err(invalid("data after the last tree".into()));
    }
    write(batch)
}

/// Reads snapshot data through without keeping anything: `Err` if it is cut short, malformed
/// or of another format version.
pub(crate) fn check(data: &mut dyn std::io::Read) -> std::io::Result<()> {
    import(data, &super::meta::SM_TREES, &mut |_| Ok(()), &mut |_, _| Ok(()))
}

#[cfg(test)]
mod tests {
    use super as content;
    use super::super::meta::SM_TREES;
    use crate::engine::{KvEngine, MemEngine, Pair, Tree};
    use crate::mvcc::index::{KeyIndex, Space};
    use crate::mvcc::read::Revisions;
    use crate::mvcc::testing::{put, State};
    use crate::mvcc::view::Reader;
    use crate::mvcc::write::Writer;
    use kv_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest};
    use std::ops::Bound;

    fn dump(engine: &MemEngine, tree: Tree) -> Vec<Pair> {
        engine.scan(tree, Bound::Unbounded, Bound::Unbounded, false).collect::<Result<_, _>>().unwrap()
    }

    /// Every pair of `space` in `state`.
    fn dumped(state: &State, space: Space) -> Vec<Pair> {
        state.scan(space, Bound::Unbounded, Bound::Unbounded, false).collect::<Result<_, _>>().unwrap()
    }

    /// Applies `f`'s writes to `state` as apply does; returns the new revisions.
    fn write(state: &State, revs: Revisions, f: impl FnOnce(&mut Writer<'_, '_, State>)) -> Revisions {
        crate::mvcc::testing::write(state, revs, f).0
    }

    /// Puts, an overwrite, a delete and a compaction: history with tombstones and gaps.
    fn first_phase(state: &State) -> Revisions {
        write(state, Revisions { current: 1, compacted: 0 }, |w| {
            for i in 0..20 {
                w.put(&put(&format!("key{i:02}"), &format!("v{i}"))).unwrap();
            }
            w.put(&put("key03", "again")).unwrap();
            w.put(&put("key\0nul", "zero byte in the key")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"key05".to_vec(), ..Default::default() }).unwrap();
            w.compact(&CompactionRequest { revision: 10, ..Default::default() }).unwrap();
            w.put(&put("key07", "after compaction")).unwrap();
        })
    }

    fn export_at(state: &State, revision: i64, small: &[(Tree, Vec<Pair>)]) -> Vec<u8> {
        let mut data = std::io::Cursor::new(Vec::new());
        content::export(&state.engine, revision, None, small, &mut data).unwrap();
        data.into_inner()
    }

    /// An export from an earlier snapshot's data (no compaction since) is byte for byte the
    /// export that reads every version; a base that holds versions past its stated revision
    /// is refused rather than copied.
    #[test]
    fn an_export_from_a_base_is_the_full_export() {
        let state = State::default();
        let revs = first_phase(&state);
        let small = vec![(Tree::Members, Vec::new())];
        let earlier = export_at(&state, revs.current, &small);
        let later = write(&state, revs, |w| {
            w.put(&put("key03", "later")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"key01".to_vec(), ..Default::default() }).unwrap();
            w.put(&put("new", "later")).unwrap();
        });
        let from_base = |data: &[u8], revision: i64| {
            let base = content::Base { data: Box::new(std::io::Cursor::new(data.to_vec())), revision };
            let mut out = std::io::Cursor::new(Vec::new());
            content::export(&state.engine, later.current, Some(base), &small, &mut out).map(|()| out.into_inner())
        };
        let full = export_at(&state, later.current, &small);
        assert_eq!(from_base(&earlier, revs.current).unwrap(), full);
        assert_eq!(from_base(&full, later.current).unwrap(), full, "a base at the revision itself");
        assert!(from_base(&full, revs.current).is_err(), "versions past the base's revision");
        assert!(from_base(&earlier[..earlier.len() / 2], revs.current).is_err(), "a cut base");
    }

    fn import(data: &[u8]) -> State {
        let state = State::default();
        content::import(
            &mut &data[..],
            &SM_TREES,
            &mut |batch| state.engine.write(batch).map_err(std::io::Error::other),
            &mut |k, v| state.index.derive(k, v).map_err(std::io::Error::other),
        )
        .unwrap();
        state
    }

    fn no_index(_: &[u8], _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    /// After the header, the streamed encoding is byte for byte what bincode writes for the
    /// dump of the trees it holds, so stored snapshots and snapshots sent between members keep
    /// their layout.
    #[test]
    fn snapshot_data_is_a_header_and_the_bincode_layout() {
        let state = State::default();
        let revs = first_phase(&state);
        let small = vec![(Tree::SmMeta, vec![(b"revision".to_vec(), b"r".to_vec())]), (Tree::Members, Vec::new())];
        let data = export_at(&state, revs.current, &small);
        let mut expected: Vec<(String, Vec<Pair>)> =
            [Tree::KvRevs].into_iter().map(|t| (t.name().to_string(), dump(&state.engine, t))).collect();
        expected.extend(small.iter().map(|(t, pairs)| (t.name().to_string(), pairs.clone())));
        assert_eq!(&data[..8], content::MAGIC);
        assert_eq!(data[8..12], content::FORMAT_VERSION.to_le_bytes());
        assert_eq!(data[12..], bincode::serialize(&expected).unwrap());
    }

    /// Data of another format version is refused with a message naming the version, before
    /// anything is imported; data with no header is refused as not a snapshot.
    #[test]
    fn an_unknown_format_version_is_refused_by_name() {
        let state = State::default();
        let revs = first_phase(&state);
        let mut data = export_at(&state, revs.current, &[]);
        data[8..12].copy_from_slice(&7u32.to_le_bytes());
        let mut wrote = false;
        let err = content::import(
            &mut &data[..],
            &SM_TREES,
            &mut |_| {
                wrote = true;
                Ok(())
            },
            &mut no_index,
        )
        .unwrap_err();
        assert!(err.to_string().contains("snapshot format version 7 is not supported"), "{err}");
        assert!(!wrote, "nothing of an unknown version is written");
        let err = content::import(&mut &data[12..], &SM_TREES, &mut |_| Ok(()), &mut no_index).unwrap_err();
        assert!(err.to_string().contains("not a raftkv snapshot"), "{err}");
    }

    /// An export running while apply goes on is exactly the state at the revision it
    /// captured: later versions are left out, and the current keys are rebuilt from the
    /// history as they were then (a key deleted later is back, one created later is absent,
    /// one overwritten later has its old value, a tombstoned key stays deleted).
    #[test]
    fn an_export_is_the_state_at_its_revision_whatever_apply_adds() {
        let (then, live) = (State::default(), State::default());
        let revs = first_phase(&then);
        assert_eq!(first_phase(&live).current, revs.current);
        write(&live, revs, |w| {
            w.put(&put("key03", "later")).unwrap();
            w.put(&put("new", "later")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"key01".to_vec(), ..Default::default() }).unwrap();
            w.put(&put("key05", "recreated later")).unwrap();
        });
        assert_ne!(dumped(&live, Space::Current), dumped(&then, Space::Current));

        let restored = import(&export_at(&live, revs.current, &[]));
        for space in [Space::Current, Space::History, Space::Revs] {
            assert_eq!(dumped(&restored, space), dumped(&then, space), "{space:?}");
        }
        assert!(dumped(&restored, Space::Current).iter().any(|(k, _)| k == b"key\0nul"));
    }

    #[test]
    fn corrupt_snapshot_data_is_refused() {
        let state = State::default();
        let revs = first_phase(&state);
        let data = export_at(&state, revs.current, &[(Tree::Members, Vec::new())]);
        let index = KeyIndex::default();
        let mut derive = |k: &[u8], v: &[u8]| index.derive(k, v).map_err(std::io::Error::other);
        for bad in [&data[..data.len() - 1], &[data.as_slice(), &[0]].concat()[..], &data[..3], &data[..15]] {
            assert!(content::import(&mut &bad[..], &SM_TREES, &mut |_| Ok(()), &mut derive).is_err());
        }
        let known = [Tree::KvRevs];
        assert!(content::import(&mut &data[..], &known, &mut |_| Ok(()), &mut derive).is_err(), "unknown tree");
        let with_header = |body: Vec<u8>| [&content::MAGIC[..], &content::FORMAT_VERSION.to_le_bytes(), &body].concat();
        // A version that is not a version, and one under a key that is not a revision.
        let version = crate::mvcc::keys::Version::encode(b"k", &crate::mvcc::keys::Record::default());
        let revs_key = crate::mvcc::keys::revs_key(2, 0).to_vec();
        for pair in [(revs_key.clone(), vec![1u8]), (revs_key[..15].to_vec(), version.clone())] {
            let bad = with_header(bincode::serialize(&vec![("kv_revs", vec![pair])]).unwrap());
            assert!(content::import(&mut &bad[..], &known, &mut |_| Ok(()), &mut derive).is_err());
        }
        let good = with_header(bincode::serialize(&vec![("kv_revs", vec![(revs_key, version)])]).unwrap());
        assert!(content::import(&mut &good[..], &known, &mut |_| Ok(()), &mut derive).is_ok());
    }
}
