//! Test helpers for the MVCC code: an engine with its key index, read as the store reads them,
//! and writes applied to both as apply lands them.

use std::ops::Bound;

use kv_api::etcdserverpb::PutRequest;

use super::index::{KeyIndex, Space};
use super::read::Revisions;
use super::view::{Overlay, Reader, Stored};
use super::write::{Change, Writer};
use crate::engine::{KvEngine, MemEngine, Result, Scan};

/// An in-memory engine and its key index.
#[derive(Default)]
pub struct State {
    pub engine: MemEngine,
    pub index: KeyIndex,
}

impl Reader for State {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Stored { engine: &self.engine, index: &self.index }.get(space, key)
    }

    fn scan(&self, space: Space, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_> {
        match space.tree() {
            Some(tree) => self.engine.scan(tree, lower, upper, reverse),
            None => self.index.scan(space, lower, upper, reverse),
        }
    }
}

/// Applies `f`'s writes to `state` as one set of changes, as apply does; returns the new
/// revisions and the changes apply recorded.
pub fn write(state: &State, revs: Revisions, f: impl FnOnce(&mut Writer<'_, '_, State>)) -> (Revisions, Vec<Change>) {
    let mut view = Overlay::new(state);
    let mut w = Writer { view: &mut view, revs, changes: Some(Vec::new()) };
    f(&mut w);
    let (revs, changes) = (w.revs, w.changes.take().unwrap_or_default());
    let landing = view.into_changes();
    state.engine.write(landing.stored).unwrap();
    state.index.apply(landing.index).unwrap();
    (revs, changes)
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest { key: key.into(), value: value.into(), ..Default::default() }
}
