//! A sled tree that stores runs of consecutive pairs in one record each, for the revision
//! index ([`Tree::KvRevs`](super::Tree::KvRevs)).
//!
//! Every put writes one revision-index pair, always past the end of the index. As one sled
//! record each, those pairs cost about half of all the sled work of a put on every member
//! (sled copies the leaf it inserts into, and splits its leaves every 16 pairs, writing the
//! whole node and its parent each time). Packed, the pairs of one apply go in as one record.
//!
//! Above the engine nothing changes: the tree still reads and writes pairs, which this module
//! maps to records. A record is keyed by its first pair's key and holds pairs in key order;
//! records never overlap, so the one that may hold a key is the last record at or below it.
//! Pairs past the last record (the appends of every apply) start new records and never touch
//! old ones, so a scan running alongside an apply always finds the records it started with;
//! a put or delete inside a record rewrites that record (compaction, snapshot installs).

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use super::{EngineError, Op, Pair, Result};

/// Most pairs in one record.
const RUN_PAIRS: usize = 128;
/// Most bytes of pairs in one record (a pair larger than this goes alone): sled writes a whole
/// record again for every change to it, and turns records of over 128 KiB into files.
const RUN_BYTES: usize = 16 << 10;

/// The pairs of a record or of a run of appends, in key order.
type Run = BTreeMap<Vec<u8>, Vec<u8>>;

/// A write to a sled record: `None` removes it.
pub type RecordOp = (Vec<u8>, Option<Vec<u8>>);

fn corrupt(what: &str) -> EngineError {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt packed record: {what}")).into()
}

/// The pairs of a record, borrowed from its bytes: each is a key and a value, each a
/// little-endian u32 length and the bytes.
fn pairs(record: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8])>> {
    let mut rest = record;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut field = || -> Result<&[u8]> {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| corrupt("truncated length"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > tail.len() {
                return Err(corrupt("length past the end"));
            }
            let (bytes, tail) = tail.split_at(len);
            rest = tail;
            Ok(bytes)
        };
        let pair = field().and_then(|k| Ok((k, field()?)));
        if pair.is_err() {
            rest = &[];
        }
        Some(pair)
    })
}

fn encode<'a>(run: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in run {
        for field in [k, v] {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field);
        }
    }
    out
}

/// Appends records holding `run` (in key order) to `out`, each at most [`RUN_PAIRS`] pairs and
/// about [`RUN_BYTES`].
fn records_of(run: &BTreeMap<Vec<u8>, Vec<u8>>, out: &mut Vec<RecordOp>) {
    let mut chunk: Vec<(&Vec<u8>, &Vec<u8>)> = Vec::new();
    let mut bytes = 0;
    let mut emit = |chunk: &mut Vec<(&Vec<u8>, &Vec<u8>)>| {
        if let Some((first, _)) = chunk.first() {
            out.push(((*first).clone(), Some(encode(chunk.drain(..)))));
        }
    };
    for (k, v) in run {
        let len = k.len() + v.len() + 8;
        if !chunk.is_empty() && (chunk.len() == RUN_PAIRS || bytes + len > RUN_BYTES) {
            emit(&mut chunk);
            bytes = 0;
        }
        chunk.push((k, v));
        bytes += len;
    }
    emit(&mut chunk);
}

/// The record that may hold `key`: the last one at or below it, if it reaches `key`.
fn holding(tree: &sled::Tree, key: &[u8]) -> Result<Option<(sled::IVec, sled::IVec)>> {
    let Some((first, record)) = tree.range::<&[u8], _>(..=key).next_back().transpose()? else {
        return Ok(None);
    };
    let mut last = None;
    for pair in pairs(&record) {
        last = Some(pair?.0);
    }
    Ok(last.is_some_and(|last| last >= key).then_some((first, record)))
}

/// The record writes that apply `ops` (all on the packed tree, in order; a later op on a key
/// wins): removals of rewritten records first, then the records to put.
pub fn record_ops(tree: &sled::Tree, ops: Vec<Op>) -> Result<Vec<RecordOp>> {
    // The last pair of the tree: keys past it are appends.
    let end = match tree.last()? {
        Some((_, record)) => pairs(&record).last().transpose()?.map(|(k, _)| k.to_vec()),
        None => None,
    };
    // Records being rewritten, by their key: the last key they held, and their pairs once the
    // ops have been applied. A compaction deletes most pairs of the records it reaches: each
    // record is read and decoded once, not once per op.
    let mut touched: BTreeMap<Vec<u8>, (Vec<u8>, Run)> = BTreeMap::new();
    // Keys between records: each becomes a record of its own, so records never overlap.
    let mut loose: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut appended: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for op in ops {
        let past_end = end.as_ref().is_none_or(|end| op.key > *end);
        let already = touched.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(op.key.as_slice()))).next_back();
        let target = if past_end {
            &mut appended
        } else if let Some((_, (_, run))) = already.filter(|(_, (last, _))| op.key <= *last) {
            run
        } else if let Some((first, record)) = holding(tree, &op.key)? {
            let run: Run = pairs(&record).map(|p| p.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Result<_>>()?;
            let last = run.keys().next_back().cloned().unwrap_or_default();
            &mut touched.entry(first.to_vec()).or_insert((last, run)).1
        } else {
            &mut loose
        };
        match op.value {
            Some(v) => target.insert(op.key, v),
            None => target.remove(&op.key),
        };
    }
    let mut out: Vec<RecordOp> = touched.keys().map(|first| (first.clone(), None)).collect();
    for (_, run) in touched.values() {
        records_of(run, &mut out);
    }
    for (k, v) in loose {
        out.push((k.clone(), Some(encode([(&k, &v)]))));
    }
    records_of(&appended, &mut out);
    Ok(out)
}

/// The pair stored under `key`.
pub fn get(tree: &sled::Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let Some((_, record)) = holding(tree, key)? else {
        return Ok(None);
    };
    for pair in pairs(&record) {
        let (k, v) = pair?;
        if k == key {
            return Ok(Some(v.to_vec()));
        }
    }
    Ok(None)
}

/// The pairs within the bounds, in key order or in reverse. The caller has checked the range
/// is not empty.
pub fn scan(
    tree: &sled::Tree,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
) -> Box<dyn Iterator<Item = Result<Pair>> + Send> {
    // Records start at their first pair: the one holding the lower bound may start below it.
    let start = match &lower {
        Bound::Included(l) | Bound::Excluded(l) => match tree.range::<&[u8], _>(..=l.as_slice()).next_back() {
            Some(Ok((first, _))) => Bound::Included(first.to_vec()),
            Some(Err(e)) => return Box::new(std::iter::once(Err(e.into()))),
            None => Bound::Unbounded,
        },
        Bound::Unbounded => Bound::Unbounded,
    };
    let records = tree.range::<Vec<u8>, _>((start, upper.clone()));
    let records: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send> =
        if reverse { Box::new(records.rev()) } else { Box::new(records) };
    Box::new(records.flat_map(move |record| -> Vec<Result<Pair>> {
        match record {
            Err(e) => vec![Err(e.into())],
            Ok((_, record)) => {
                let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
                    (lower.as_ref().map(Vec::as_slice), upper.as_ref().map(Vec::as_slice));
                let mut run: Vec<Result<Pair>> = pairs(&record)
                    .filter(|p| p.as_ref().map_or(true, |(k, _)| RangeBounds::<&[u8]>::contains(&bounds, k)))
                    .map(|p| p.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect();
                if reverse {
                    run.reverse();
                }
                run
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Tree;

    fn apply(tree: &sled::Tree, ops: Vec<Op>) {
        for (k, v) in record_ops(tree, ops).unwrap() {
            match v {
                Some(v) => tree.insert(k, v).unwrap(),
                None => tree.remove(k).unwrap(),
            };
        }
    }

    fn put(k: u32, v: &str) -> Op {
        Op { tree: Tree::KvRevs, key: k.to_be_bytes().to_vec(), value: Some(v.as_bytes().to_vec()) }
    }

    fn del(k: u32) -> Op {
        Op { tree: Tree::KvRevs, key: k.to_be_bytes().to_vec(), value: None }
    }

    fn keys(it: impl Iterator<Item = Result<Pair>>) -> Vec<u32> {
        it.map(|p| u32::from_be_bytes(p.unwrap().0.try_into().unwrap())).collect()
    }

    fn b(k: u32) -> Vec<u8> {
        k.to_be_bytes().to_vec()
    }

    /// The packed tree reads back as the pairs written, whichever records they landed in: a
    /// model map gets the same ops, and every scan and get must agree with it.
    #[test]
    fn reads_match_a_plain_map_through_appends_rewrites_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("packed").unwrap();
        let mut model: BTreeMap<u32, String> = BTreeMap::new();
        let step = |model: &mut BTreeMap<u32, String>, ops: Vec<Op>| {
            for op in &ops {
                let k = u32::from_be_bytes(op.key.clone().try_into().unwrap());
                match &op.value {
                    Some(v) => model.insert(k, String::from_utf8(v.clone()).unwrap()),
                    None => model.remove(&k),
                };
            }
            apply(&tree, ops);
            let all: Vec<u32> = model.keys().copied().collect();
            assert_eq!(keys(scan(&tree, Bound::Unbounded, Bound::Unbounded, false)), all);
            let mut rev = all.clone();
            rev.reverse();
            assert_eq!(keys(scan(&tree, Bound::Unbounded, Bound::Unbounded, true)), rev);
            for (lo, hi) in [(0, 5), (7, 300), (250, 251), (299, 1000), (12, 13)] {
                let want: Vec<u32> = model.range(lo..hi).map(|(k, _)| *k).collect();
                let got = keys(scan(&tree, Bound::Included(b(lo)), Bound::Excluded(b(hi)), false));
                assert_eq!(got, want, "[{lo}, {hi})");
                let want: Vec<u32> = model.range(lo + 1..=hi).rev().map(|(k, _)| *k).collect();
                let got = keys(scan(&tree, Bound::Excluded(b(lo)), Bound::Included(b(hi)), true));
                assert_eq!(got, want, "({lo}, {hi}] reversed");
            }
            for k in 0..1100 {
                assert_eq!(get(&tree, &b(k)).unwrap().map(|v| String::from_utf8(v).unwrap()), model.get(&k).cloned());
            }
        };
        // Appends, as applies write them: several records (RUN_PAIRS is 128).
        step(&mut model, (10..300).map(|k| put(k, "a")).collect());
        step(&mut model, (300..310).map(|k| put(k, "b")).collect());
        // Deletes inside records, a put and delete of one key, overwrites.
        step(&mut model, vec![del(10), del(128), del(129), put(200, "c"), put(305, "d"), put(306, "x"), del(306)]);
        // Keys below the first record and in a gap left by deletes; an append in the same batch.
        step(&mut model, vec![put(1, "e"), put(5, "f"), put(10, "g"), put(1000, "h")]);
        // Everything removed, then written again (a snapshot install).
        let all: Vec<Op> = model.keys().map(|k| del(*k)).collect();
        step(&mut model, all);
        assert!(tree.is_empty(), "no empty records are left behind");
        step(&mut model, (0..1100).step_by(3).map(|k| put(k, "i")).collect());
    }

    /// One apply's pairs go in as one record, and later appends leave earlier records alone.
    #[test]
    fn appends_write_one_record_and_touch_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("packed").unwrap();
        apply(&tree, (0..24).map(|k| put(k, "v")).collect());
        assert_eq!(tree.len(), 1);
        let writes = record_ops(&tree, (24..48).map(|k| put(k, "v")).collect()).unwrap();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].0, b(24));
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_short_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("packed").unwrap();
        tree.insert(b(1), vec![9, 0, 0, 0, 1]).unwrap();
        assert!(scan(&tree, Bound::Unbounded, Bound::Unbounded, false).any(|p| p.is_err()));
        assert!(get(&tree, &b(1)).is_err());
    }
}
