//! The apply event seam: after each apply, what it changed (every version written, with the
//! key's previous version) goes to subscribers, in revision order. The Watch service is built
//! on it.
//!
//! Publishing never blocks apply: the channel is a ring of [`CAPACITY`] applies, and a
//! subscriber that falls further behind is told how many it missed (`Lagged`) and must read
//! those revisions from storage, as a watcher catching up does. When nobody subscribes, apply
//! records nothing and copies nothing.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

use crate::mvcc::write::Change;

/// Applies a subscriber may fall behind before it misses some (then it reads them from
/// storage): a bound on the memory slow subscribers hold, whatever they do.
pub const CAPACITY: usize = 1024;

/// What subscribers make of one apply's changes, made by the first that needs it and shared
/// by all: the Watch service keeps each change's encoded events here, so that thousands of
/// watchers of the same keys cost one encoding per event.
pub type Derived = OnceLock<Box<dyn Any + Send + Sync>>;

/// What one apply published.
#[derive(Debug)]
pub enum Applied {
    /// The versions written by revisions `after + 1..=revision`, in revision order (and in
    /// write order within a revision).
    Changes { after: i64, revision: i64, changes: Vec<Change>, derived: Derived },
    /// An apply that began before anyone subscribed landed after a subscription: its changes,
    /// revisions `after + 1..=upto`, were not recorded and must be read from storage.
    Unrecorded { after: i64, upto: i64 },
    /// A snapshot from the leader replaced the whole state, now at `revision`: a subscriber
    /// must start again from storage.
    Replaced { revision: i64 },
}

/// The publishing side, owned by the store.
pub struct Events {
    tx: broadcast::Sender<Arc<Applied>>,
}

impl Default for Events {
    fn default() -> Self {
        Events { tx: broadcast::channel(CAPACITY).0 }
    }
}

impl Events {
    /// Whether anyone subscribes: apply records changes only then.
    pub fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A new subscription: it receives what is published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.tx.subscribe()
    }

    /// Publishes an apply's changes; `recorded` is `None` when it did not record them.
    pub(super) fn publish(&self, before: i64, revision: i64, recorded: Option<Vec<Change>>) {
        let applied = match recorded {
            Some(changes) if !changes.is_empty() => {
                Applied::Changes { after: before, revision, changes, derived: Derived::new() }
            }
            Some(_) => return,
            None if revision > before && self.listening() => Applied::Unrecorded { after: before, upto: revision },
            None => return,
        };
        // An error means nobody subscribes any more: nothing to deliver.
        let _ = self.tx.send(Arc::new(applied));
    }

    pub(super) fn publish_replaced(&self, revision: i64) {
        let _ = self.tx.send(Arc::new(Applied::Replaced { revision }));
    }
}
