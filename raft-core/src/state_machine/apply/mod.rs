//! Applying committed entries: each entry's requests in order, each dispatched from
//! [`apply_request`] to the function of its family (one file each: [`kv`], [`lease`],
//! [`members`]), all
//! of an `apply` call landing as one set of changes with the meta they produced.
//!
//! A new family of requests (leases, auth) is a new file here and its arms in
//! [`apply_request`].

mod kv;
mod lease;
mod members;

use openraft::EntryPayload;

use super::meta::{meta_ops, sm_write_err};
use super::recovery::mark_torn;
use super::{KvStore, LeaseApplied};
use crate::engine::Engine;
use crate::mvcc::view::{Overlay, Reader};
use crate::mvcc::write::Writer;
use crate::mvcc::MvccError;
use crate::request::{ResponseBatch, WriteRequest, WriteResult};
use crate::typ::{Entry, StorageError, StoredMembership};

/// Applies one request, as its family does. A failed state check (an etcd error) fails the
/// request alone; anything else is a storage error that stops the member.
fn apply_request<R: Reader + ?Sized>(
    w: &mut Writer<'_, '_, R>,
    req: &WriteRequest,
) -> Result<WriteResult, StorageError> {
    let result = match req {
        WriteRequest::Put(r) => kv::put(w, r),
        WriteRequest::DeleteRange(r) => kv::delete_range(w, r),
        WriteRequest::Txn(r) => kv::txn(w, r),
        WriteRequest::Compact(r) => kv::compact(w, r),
        WriteRequest::PublishMember(m) => members::publish(w, m),
        WriteRequest::LeaseGrant { id, ttl } => lease::grant(w, *id, *ttl),
        WriteRequest::LeaseRevoke { id } => lease::revoke(w, *id),
        WriteRequest::LeaseCheckpoint { elapsed_ms, remaining } => lease::checkpoint(w, *elapsed_ms, remaining),
    };
    match result {
        Ok(r) => Ok(Ok(r)),
        Err(MvccError::Etcd(e)) => Ok(Err(e)),
        Err(e) => Err(sm_write_err(e)),
    }
}

impl<E: Engine> KvStore<E> {
    /// Applies `entries` (openraft's `apply`): computes every change against the stored state
    /// without holding the gate, then lands them, takes the gate only while they do, and
    /// publishes what changed.
    pub(crate) fn apply_entries<I>(&self, entries: I) -> Result<Vec<ResponseBatch>, StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        // Waits for an install still replacing the state (see [`KvStore::install`]): apply reads
        // the state without the gate.
        let mut meta = self.meta();
        super::serving(&meta).map_err(sm_write_err)?;
        let compacted_before = meta.compacted;
        let revision_before = meta.revision;
        let stored = self.stored();
        let mut view = Overlay::new(&stored);
        let mut replies = Vec::new();
        let listening = self.shared.events.listening();
        let mut lease_changes = Vec::new();
        let changes = {
            let mut w = Writer { view: &mut view, revs: meta.revisions(), changes: listening.then(Vec::new) };
            for entry in entries {
                meta.last_applied = Some(entry.log_id);
                let mut reply = ResponseBatch::default();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Membership(m) => meta.membership = StoredMembership::new(Some(entry.log_id), m),
                    EntryPayload::Normal(batch) => {
                        let requests = batch.requests().map_err(|e| {
                            StorageError::from(crate::typ::StorageError::read_log_at_index(
                                entry.log_id.index,
                                crate::typ::err_source(&*e),
                            ))
                        })?;
                        for req in &requests {
                            let result = apply_request(&mut w, req)?;
                            match (req, &result) {
                                (WriteRequest::LeaseGrant { id, ttl }, Ok(_)) => {
                                    lease_changes.push(LeaseApplied::Granted { id: *id, ttl: *ttl })
                                }
                                (WriteRequest::LeaseRevoke { id }, Ok(_)) => {
                                    lease_changes.push(LeaseApplied::Revoked { id: *id })
                                }
                                _ => {}
                            }
                            reply.results.push(result);
                        }
                    }
                }
                replies.push(reply);
            }
            meta.revision = w.revs.current;
            meta.compacted = w.revs.compacted;
            w.changes
        };
        meta_ops(&mut view, &meta);
        let landing = view.into_changes();
        let engine = &*self.shared.engine;
        // A compaction removes versions: it waits for a snapshot export reading them.
        let _history = (meta.compacted != compacted_before).then(|| self.history_exclusive());
        let mut gate = self.write_gate();
        mark_torn(engine, &mut gate)?;
        let landed = engine
            .write_relaxed(landing.stored)
            .map_err(sm_write_err)
            .and_then(|()| self.shared.index.apply(landing.index).map_err(sm_write_err));
        if let Err(e) = landed {
            gate.apply_failed = true;
            return Err(e);
        }
        // Only what apply owns: cluster_id is set elsewhere and must not be overwritten.
        gate.revision = meta.revision;
        gate.compacted = meta.compacted;
        gate.last_applied = meta.last_applied;
        *self.shared.applied.lock() = meta.last_applied;
        gate.membership = meta.membership;
        drop(gate);
        self.shared.revision.send_replace(meta.revision);
        self.shared.events.publish(revision_before, meta.revision, changes);
        if let (false, Some(hook)) = (lease_changes.is_empty(), self.shared.lease_hook.get()) {
            hook(&lease_changes);
        }
        Ok(replies)
    }
}
