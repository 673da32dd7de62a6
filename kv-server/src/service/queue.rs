//! A lock's or an election's queue as of a revision, carried forward revision by revision from
//! the stored history: what Election `Observe` is built on, so that an observer is told of
//! every leader in turn (each proclamation too), in revision order, with none skipped however
//! quickly leaders come and go, and every observer of the same election sees the same
//! sequence. (Re-reading the first key after each apply, as etcd's recipe does, skips a leader
//! that came and went between two reads.)

use std::collections::{BTreeMap, HashMap};

use kv_api::etcdserverpb::RangeRequest;
use kv_api::mvccpb::KeyValue;
use kv_api::EtcdError;
use raft_core::engine::Engine;
use raft_core::mvcc::changes::ChunkLimit;
use raft_core::mvcc::read::KeyRange;
use raft_core::mvcc::MvccError;
use tonic::Status;

use super::recipe::{prefix_end, read};
use super::Ctx;
use crate::error;

/// Most history one step reads: an observer that fell far behind catches up in bounded reads.
const STEP: ChunkLimit = ChunkLimit { events: 1000, bytes: 256 << 10 };

/// The keys under a prefix at [`Queue::revision`], ordered by create revision.
pub struct Queue {
    prefix: Vec<u8>,
    by_create: BTreeMap<i64, KeyValue>,
    create_of: HashMap<Vec<u8>, i64>,
    revision: i64,
}

impl Queue {
    /// The queue under `prefix` now (a linearizable read).
    pub async fn load<E: Engine>(ctx: &Ctx<E>, prefix: &[u8]) -> Result<Queue, Status> {
        let all = RangeRequest { key: prefix.to_vec(), range_end: prefix_end(prefix), ..Default::default() };
        let read = read(ctx, all).await?;
        let mut q = Queue {
            prefix: prefix.to_vec(),
            by_create: BTreeMap::new(),
            create_of: HashMap::new(),
            revision: read.header.map_or(0, |h| h.revision),
        };
        for kv in read.kvs {
            q.create_of.insert(kv.key.clone(), kv.create_revision);
            q.by_create.insert(kv.create_revision, kv);
        }
        Ok(q)
    }

    /// The first key (the lock's holder, the election's leader), if any.
    pub fn head(&self) -> Option<&KeyValue> {
        self.by_create.values().next()
    }

    /// The revision the queue is at.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Carries the queue forward through every revision this member has applied, calling
    /// `each` with the head after each revision that changed the queue. History compacted
    /// away under a slow reader is skipped: the queue is read again as it is now (and `each`
    /// called once), which is all anyone can be told of it.
    pub async fn advance<E: Engine>(&mut self, ctx: &Ctx<E>, mut each: impl FnMut(&Queue)) -> Result<(), Status> {
        let store = ctx.node.store();
        let range = KeyRange::new(&self.prefix, &prefix_end(&self.prefix));
        loop {
            let upto = store.revision();
            if self.revision >= upto {
                return Ok(());
            }
            let read = match store.changes(&range, self.revision + 1, upto, false, STEP) {
                Ok(read) => read,
                Err(MvccError::Etcd(EtcdError::Compacted)) => {
                    *self = Queue::load(ctx, &self.prefix).await?;
                    each(self);
                    continue;
                }
                Err(e) => return Err(error::mvcc(e)),
            };
            let mut changes = read.changes.into_iter().peekable();
            while let Some(change) = changes.next() {
                let at = change.version.mod_revision;
                if let Some(create) = self.create_of.remove(&change.key) {
                    self.by_create.remove(&create);
                }
                if !change.is_delete() {
                    let kv = change.version.to_kv(&change.key, false);
                    self.create_of.insert(change.key, kv.create_revision);
                    self.by_create.insert(kv.create_revision, kv);
                }
                if changes.peek().is_none_or(|next| next.version.mod_revision != at) {
                    self.revision = at;
                    each(self);
                }
            }
            self.revision = self.revision.max(read.next - 1);
        }
    }
}
