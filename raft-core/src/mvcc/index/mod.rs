//! The key index: the MVCC data derived from the stored versions and kept in memory, the same
//! with every engine.
//!
//! The versions themselves are stored in the engine's `KvRevs` tree, by revision. Two tables
//! are derived from them and never stored: the index of every retained version by key
//! ([`HistoryTable`], etcd's key index) and each live key's latest version ([`CurrentTable`]).
//! The state machine rebuilds both from the versions when it opens or installs a snapshot,
//! and apply updates them after the versions it wrote. Kept above the engine, they are the same
//! code with the sled engine in production and the in-memory engine in simulation, so every
//! simulated fault exercises the index production serves reads from.

mod chunked;
mod current;
mod history;

use std::ops::Bound;

pub use current::CurrentTable;
pub use history::HistoryTable;

use super::keys::{history_key, index_value, split_revs_key, Record, Version};
use super::MvccError;
use crate::engine::{Batch, Result, Scan, Tree};

/// Where MVCC data lives: one of the index's tables, or a tree of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Latest live version of every key: user key -> encoded record ([`CurrentTable`]).
    Current,
    /// Every retained version by key: memcomparable(user key) ‖ revision (8 bytes) ->
    /// sub-revision (8 bytes) ([`HistoryTable`]).
    History,
    /// The engine's `KvRevs`: every retained version by revision.
    Revs,
    /// The engine's `SmMeta`.
    Meta,
    /// The engine's `Members`.
    Members,
    /// The engine's `Leases`.
    Leases,
    /// The keys attached to each lease: lease id (8 bytes, big-endian) ‖ user key -> empty
    /// ([`CurrentTable`]'s map, derived from the current table's records).
    LeaseKeys,
}

impl Space {
    /// Every space, in the order [`Space::slot`] numbers them.
    pub const ALL: [Space; 7] =
        [Space::Current, Space::History, Space::Revs, Space::Meta, Space::Members, Space::Leases, Space::LeaseKeys];

    /// The engine tree behind a stored space; `None` for the index's tables.
    pub fn tree(self) -> Option<Tree> {
        match self {
            Space::Current | Space::History | Space::LeaseKeys => None,
            Space::Revs => Some(Tree::KvRevs),
            Space::Meta => Some(Tree::SmMeta),
            Space::Members => Some(Tree::Members),
            Space::Leases => Some(Tree::Leases),
        }
    }

    /// A dense number for per-space arrays.
    pub fn slot(self) -> usize {
        self as usize
    }
}

/// One write to the index: `None` removes the key.
pub type IndexOp = (Space, Vec<u8>, Option<Vec<u8>>);

/// The derived tables. Cheap to clone: clones share them.
#[derive(Clone, Default)]
pub struct KeyIndex {
    current: CurrentTable,
    history: HistoryTable,
    /// [`Space::LeaseKeys`]: an ordered map like the current table's.
    lease_keys: CurrentTable,
}

/// The [`Space::LeaseKeys`] key of `key` attached to `lease`.
pub fn lease_key(lease: i64, key: &[u8]) -> Vec<u8> {
    [&lease.to_be_bytes()[..], key].concat()
}

impl KeyIndex {
    /// Reads one key of a table.
    pub fn get(&self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        match space {
            Space::Current => self.current.get(key),
            Space::LeaseKeys => self.lease_keys.get(key),
            _ => self.history.get(key),
        }
    }

    /// Scans a table, holding no lock between `next` calls.
    pub fn scan(&self, space: Space, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'static> {
        match space {
            Space::Current => self.current.scan(lower, upper, reverse),
            Space::LeaseKeys => self.lease_keys.scan(lower, upper, reverse),
            _ => self.history.scan(lower, upper, reverse),
        }
    }

    /// Applies writes that apply computed, once the versions they derive from are written.
    /// Every op is checked first, so writes that do not fit the layout change nothing.
    pub fn apply(&self, ops: Vec<IndexOp>) -> Result<(), MvccError> {
        for (space, key, value) in &ops {
            if *space == Space::History {
                HistoryTable::check(key, value.as_deref())?;
            }
        }
        for (space, key, value) in ops {
            match space {
                Space::Current => self.current.apply(key, value),
                Space::LeaseKeys => self.lease_keys.apply(key, value),
                _ => self.history.apply(key, value),
            }
        }
        Ok(())
    }

    /// Empties both tables (a snapshot replaces the whole state).
    pub fn clear(&self) {
        self.current.clear();
        self.history.clear();
        self.lease_keys.clear();
    }

    /// Adds one stored version, given as its `KvRevs` pair: its entry in the history, and the
    /// key's current entry as of this version (set, or removed by a tombstone). Fed every
    /// version in revision order, the current table ends with each live key's last version;
    /// then [`KeyIndex::derive_lease_keys`] completes the index.
    pub fn derive(&self, revs_key: &[u8], version: &[u8]) -> Result<(), MvccError> {
        let (rev, sub) = split_revs_key(revs_key).ok_or(MvccError::Corrupt("malformed version key"))?;
        let Version { key, record } = Version::decode(version)?;
        self.history.apply(history_key(&key, rev), Some(index_value(sub)));
        if record.is_tombstone() {
            self.current.apply(key, None);
        } else {
            self.current.apply(key, Some(record.encode()));
        }
        Ok(())
    }

    /// Derives the keys of each lease from the current table, once every version was given
    /// to [`KeyIndex::derive`]: only a key's live version says which lease holds it, so this
    /// decodes each live key once rather than every version's predecessor.
    pub fn derive_lease_keys(&self) -> Result<(), MvccError> {
        self.lease_keys.clear();
        for item in self.current.scan(Bound::Unbounded, Bound::Unbounded, false) {
            let (key, record) = item?;
            let lease = Record::decode(&record)?.lease;
            if lease != 0 {
                self.lease_keys.apply(lease_key(lease, &key), Some(Vec::new()));
            }
        }
        Ok(())
    }

    /// Keys in the current table (live keys).
    pub fn live_keys(&self) -> usize {
        self.current.len()
    }
}

/// An apply's writes, split by where they go: the engine's trees, then the index.
#[derive(Default)]
pub struct Changes {
    pub stored: Batch,
    pub index: Vec<IndexOp>,
}
