//! The read barrier: what each consistency level waits for before a read is served from the
//! local state machine, the ReadIndex round that confirms leadership, and lease reads.

use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_api::{Consistency, EtcdError};
use openraft::error::{LinearizableReadError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::forward::{ask_read_index, IndexAsk};
use super::lease::{IndexKind, Lease, ReadRequirement, RestartFloor};
use super::{within, Node, NodeError, Refusal};
use crate::engine::Engine;
use crate::network::Stamp;
use crate::typ::Raft;

/// Pause before asking again for a read index the leader could not confirm.
const CONFIRM_RETRY: Duration = Duration::from_millis(5);

/// Where a read index goes: to a read waiting on this member.
pub(super) type IndexReply = oneshot::Sender<Result<u64, Refusal>>;

impl<E: Engine> Node<E> {
    /// Waits until a read meeting `req` may be served from the local state machine; returns the
    /// level provided. Each level does what docs/consistency.md promises, no more.
    pub async fn read_barrier(&self, req: ReadRequirement) -> Result<Consistency, NodeError> {
        let deadline = Instant::now() + self.request_timeout;
        let level = match req.level {
            Consistency::Unspecified => Consistency::Linearizable,
            l => l,
        };
        #[cfg(feature = "planted-bugs")]
        if self.planted.local_linearizable_reads && level == Consistency::Linearizable {
            // Planted bug: no ReadIndex round, whatever this member has applied is served.
            return Ok(level);
        }
        let outcome = match level {
            Consistency::Serializable => return Ok(level),
            Consistency::Bounded => {
                return match self.check_staleness(req.max_staleness) {
                    Ok(()) => Ok(level),
                    // A leader that has not confirmed itself within the bound does so now, and
                    // serves once it has applied that round's index.
                    Err(e) if self.metrics().state == ServerState::Leader => {
                        match within(deadline, self.index_read(IndexKind::Confirmed, deadline)).await {
                            Ok(Ok(())) => Ok(level),
                            _ => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
            }
            Consistency::Session => {
                let wait = self.store.wait_for_revision(req.min_revision);
                return match within(deadline, wait).await {
                    Ok(()) => Ok(level),
                    Err(()) => Err(EtcdError::Unavailable(format!(
                        "revision {} is not applied on this member within the request timeout",
                        req.min_revision
                    ))
                    .into()),
                };
            }
            Consistency::Lease => within(deadline, self.index_read(IndexKind::Lease, deadline)).await,
            _ => within(deadline, self.index_read(IndexKind::Confirmed, deadline)).await,
        };
        match outcome {
            Ok(r) => r.map(|()| level),
            Err(()) => Err(EtcdError::Timeout.into()),
        }
    }

    /// How far behind the leader this member is (DESIGN's staleness): on the leader, the age of
    /// its last leadership confirmation (a quorum acknowledgement); on a follower, the age of
    /// the newest AppendEntries from the current leader whose commit index this member has
    /// applied, counted from when that leader was last confirmed by a quorum before sending it.
    pub fn staleness(&self) -> Option<Duration> {
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.state, m.current_term)
        };
        // The store's own record: openraft's metrics may publish an apply after its reply.
        let last_applied = self.store.last_applied();
        let applied = last_applied.map_or(0, |l| l.index);
        if state == ServerState::Leader {
            // A leader new in its term may not have applied what earlier leaders acknowledged
            // until it applies an entry of its own term.
            if last_applied.map(|l| l.leader_id.term) != Some(term) {
                return None;
            }
            // A leader restored at startup may not have applied what it acknowledged before.
            if !self.peers.restart_floor().covers(term, applied) {
                return None;
            }
            // Our own record of the last quorum acknowledgement, not openraft's metric: a
            // metric is only as fresh as its last publication, which a paused process does not
            // advance.
            let confirmed = self.peers.confirmed_at(term)?;
            let lease = (*self.lease.lock()).filter(|l| l.term == term).map(|l| l.since);
            return Some(confirmed.max(lease.unwrap_or(confirmed)).elapsed());
        }
        self.receipts.lock().staleness(term, applied, Instant::now())
    }

    fn check_staleness(&self, bound: Duration) -> Result<(), NodeError> {
        match self.staleness() {
            Some(s) if s <= bound => Ok(()),
            Some(s) => Err(EtcdError::Unavailable(format!(
                "member is {} ms behind the leader, more than max_staleness_ms {}",
                s.as_millis(),
                bound.as_millis()
            ))
            .into()),
            None => Err(EtcdError::Unavailable("member has no recent contact with a leader".into()).into()),
        }
    }

    /// Notes an accepted AppendEntries from the leader of `term` echoing `stamp`, one of this
    /// member's [`Node::clock_stamp`]s, with the leader's applied `index` (called by the peer
    /// service): every write acknowledged before the stamp is at or below `index`.
    pub fn note_append_entries(&self, term: u64, index: u64, stamp: Stamp) {
        // A stamp of an earlier life of this member says nothing about this one's clock.
        if stamp.epoch != self.epoch {
            return;
        }
        let at = self.started + Duration::from_micros(stamp.us);
        self.receipts.lock().record(term, index, at);
    }

    /// Now on this member's clock (peer receipt stamps).
    pub fn clock_stamp(&self) -> Stamp {
        Stamp { epoch: self.epoch, us: self.started.elapsed().as_micros() as u64 }
    }

    /// ReadIndex: learn an index that covers every write acknowledged before now from the
    /// leader (confirmed by a quorum round, or by its lease), then wait until it is applied
    /// here. Reads change nothing, so a failed attempt is retried until `deadline`; a lease
    /// the leader cannot renew is refused at once.
    async fn index_read(&self, kind: IndexKind, deadline: Instant) -> Result<(), NodeError> {
        loop {
            let (leader, node) = self.leader(deadline).await?;
            let index = if leader == self.id {
                self.read_index_of(kind).await
            } else if let Some(asks) = &self.index_asks {
                let (reply, rx) = oneshot::channel();
                asks.send(IndexAsk { leader, node, request: kind, deadline, reply })
                    .await
                    .map_err(|_| EtcdError::ServerStopped)?;
                rx.await.map_err(|_| EtcdError::ServerStopped)?
            } else {
                let timeout = deadline.saturating_duration_since(Instant::now());
                ask_read_index(&self.peers, leader, &node, kind, timeout).await
            };
            match index {
                Ok(index) => {
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    return match self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "read index").await {
                        Ok(_) => Ok(()),
                        Err(openraft::metrics::WaitError::Timeout(..)) => Err(EtcdError::Timeout.into()),
                        Err(openraft::metrics::WaitError::ShuttingDown) => Err(EtcdError::ServerStopped.into()),
                    };
                }
                Err(Refusal::Etcd(e)) => return Err(e.into()),
                Err(Refusal::NotLeader) => self.leader_moved_from(leader, deadline).await?,
                Err(Refusal::Unconfirmed) if kind == IndexKind::Lease => {
                    return Err(EtcdError::Unavailable(
                        "the leader's lease has expired and it cannot confirm its leadership".into(),
                    )
                    .into())
                }
                Err(Refusal::Unconfirmed) => tokio::time::sleep(CONFIRM_RETRY).await,
            }
        }
    }

    /// On the leader: an index at least as high as every write acknowledged before the call,
    /// after confirming leadership with a quorum. Refused on a follower. Concurrent calls (local
    /// reads and followers' ReadIndex requests alike) share one confirmation round.
    pub async fn read_index(&self) -> Result<u64, Refusal> {
        let Some(queue) = &self.read_index_queue else {
            return self.confirmer().confirm().await;
        };
        let (tx, rx) = oneshot::channel();
        let stopped = Refusal::Etcd(EtcdError::ServerStopped);
        queue.send(tx).await.map_err(|_| stopped.clone())?;
        rx.await.map_err(|_| stopped)?
    }

    /// On the leader: a read index of `kind` (see [`IndexKind`]).
    pub async fn read_index_of(&self, kind: IndexKind) -> Result<u64, Refusal> {
        if kind == IndexKind::Lease {
            if let Some(index) = self.lease_index() {
                return Ok(index);
            }
        }
        self.read_index().await
    }

    /// How long a confirmation serves lease reads: the election timeout less a tenth for clock
    /// drift. Voters refuse other candidates for twice the election timeout after they
    /// acknowledged it, so this keeps a wide margin (docs/consistency.md).
    fn lease_duration(&self) -> Duration {
        self.election_timeout - self.election_timeout / 10
    }

    /// The read index of the current lease, if this member leads and the lease holds. Past half
    /// the lease, a renewal starts in the background so steady lease reads never wait.
    ///
    /// The index is the higher of the confirmation's index and what this leader has applied
    /// now: writes acknowledged since the confirmation are past the former, and a follower
    /// serving a lease read must wait for them too (the simulation found this).
    fn lease_index(&self) -> Option<u64> {
        let lease = (*self.lease.lock())?;
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.state, m.current_term)
        };
        // The store's own record: openraft's metrics may publish an apply after its reply.
        let applied = self.store.last_applied().map_or(0, |l| l.index);
        let age = lease.since.elapsed();
        if state != ServerState::Leader || term != lease.term || age >= self.lease_duration() {
            return None;
        }
        if age >= self.lease_duration() / 2 {
            let node = self.clone();
            tokio::spawn(async move {
                let _ = node.read_index().await;
            });
        }
        Some(lease.index.max(applied))
    }

    fn confirmer(&self) -> Confirmer<E> {
        Confirmer {
            floor: self.peers.restart_floor(),
            raft: self.raft.clone(),
            rounds: self.read_index_rounds.clone(),
            lease: self.lease.clone(),
            timeout: self.request_timeout,
        }
    }
}

/// Runs leadership confirmations and keeps the lease they establish.
pub(super) struct Confirmer<E: Engine> {
    /// Read indexes of a leader restored at startup cover its log as of then (a copy of
    /// [`Peers::restart_floor`], which never changes).
    pub(super) floor: RestartFloor,
    pub(super) raft: Raft<E>,
    pub(super) rounds: Arc<AtomicU64>,
    pub(super) lease: Arc<parking_lot::Mutex<Option<Lease>>>,
    pub(super) timeout: Duration,
}

impl<E: Engine> Clone for Confirmer<E> {
    fn clone(&self) -> Self {
        Confirmer {
            floor: self.floor,
            raft: self.raft.clone(),
            rounds: self.rounds.clone(),
            lease: self.lease.clone(),
            timeout: self.timeout,
        }
    }
}

impl<E: Engine> Confirmer<E> {
    /// One leadership confirmation: the read index, or why there is none. A success renews the
    /// lease from the moment the round began.
    async fn confirm(&self) -> Result<u64, Refusal> {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let term = self.raft.metrics().borrow_watched().current_term;
        let since = Instant::now();
        let index = match tokio::time::timeout(self.timeout, self.raft.get_read_log_id(openraft::ReadPolicy::ReadIndex))
            .await
        {
            Err(_) => return Err(Refusal::Etcd(EtcdError::Timeout)),
            // openraft's read index (its first entry of this term, or its commit index) misses
            // entries it acknowledged before a restart as leader of the same term.
            Ok(Ok((read_log_id, _applied))) => self.floor.raise(term, read_log_id.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => return Err(Refusal::NotLeader),
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                return Err(Refusal::Unconfirmed)
            }
            Ok(Err(RaftError::Fatal(_))) => return Err(Refusal::Etcd(EtcdError::ServerStopped)),
        };
        let mut lease = self.lease.lock();
        if lease.is_none_or(|l| l.since < since) {
            *lease = Some(Lease { since, term, index });
        }
        Ok(index)
    }
}

/// Runs leadership confirmations one after another; each serves every request that was
/// queued before it started. That is exactly what each of them needs: the index comes from a
/// confirmation that began after the read arrived, so it covers every write acknowledged
/// before the read. openraft 0.9 runs a quorum round per call, so without this every read
/// would cost one.
pub(super) async fn read_index_rounds_task<E: Engine>(confirmer: Confirmer<E>, mut rx: mpsc::Receiver<IndexReply>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let outcome = confirmer.confirm().await;
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }
}
