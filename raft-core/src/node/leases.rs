//! Leases on a member: the node's lease operations (grant, revoke, renew, time-to-live, list)
//! and the task that runs the leader's lease clock ([`super::lessor`]).
//!
//! Grants and revocations are writes through the log. Renewals reach the leader (a follower
//! forwards them with the Lease peer RPC), which moves its in-memory deadline once it has
//! confirmed its leadership, as etcd does, and answers once a checkpoint carrying the renewal
//! is committed: whichever leader comes next then counts the lease from the renewal, so a lease
//! never expires before its TTL has run from the last renewal its holder was told of. A grant
//! is followed by such a renewal before it is answered, for the same reason.
//!
//! The clock task on every member starts the lessor when this member leads and has applied its
//! first entry of the term (so the lease table holds everything committed before it), proposes
//! the revocation of every expired lease, and proposes checkpoints one at a time: at once when
//! renewals wait for one (so renewals that arrive together share an entry), else every
//! `lease_checkpoint_interval` while leases exist. It stops the lessor when leadership ends. A
//! leader that cannot commit revokes nothing: its proposals fail.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::{LeaseGrantResponse, LeaseRevokeResponse};
use kv_api::EtcdError;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::lessor::{Checkpoint, Clock, Lessor};
use super::write::{propose_on, Reply};
use super::{within, IndexKind, Node, NodeError, Refusal};
use crate::engine::Engine;
use crate::network::{PeerError, Rpc};
use crate::request::{WriteRequest, WriteResponse};
use crate::state_machine::{KvStore, LeaseApplied};
use crate::typ::Raft;

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How often the clock task looks at leadership and deadlines: the resolution of expiry.
const TICK: Duration = Duration::from_millis(20);

/// A lease request only the leader can answer (the Lease peer RPC carries it from a follower).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum LeaseAsk {
    Renew(i64),
    TimeToLive(i64),
}

/// The leader's answer to a [`LeaseAsk`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// The granted TTL in seconds, or `None`: no such lease (or it expired).
    Renewed(Option<i64>),
    /// Remaining ms and granted TTL in seconds, or `None`: no such lease.
    Remaining(Option<(i64, i64)>),
}

/// What the leader's lease clock says of one lease (LeaseTimeToLive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Seconds left (rounded down, as etcd does).
    pub remaining_secs: i64,
    pub granted_ttl: i64,
    /// The attached keys, if asked for.
    pub keys: Vec<Vec<u8>>,
}

impl<E: Engine> Node<E> {
    /// The shortest TTL a lease gets: a lease renewed every third of its TTL must survive a
    /// leader change, which may take up to a checkpoint interval and an election (three
    /// election timeouts) before the holder can renew at the new leader. At least etcd's 2 s.
    pub fn min_lease_ttl(&self) -> i64 {
        let needed = 2 * (self.lease_checkpoint_interval + 3 * self.election_timeout);
        (needed.as_millis() as i64 + 999).div_euclid(1000).max(2)
    }

    /// Grants a lease of `ttl` seconds (raised to [`Node::min_lease_ttl`]) with `id`, or with
    /// an id this member picks when `id` is 0.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, NodeError> {
        if ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        if id < 0 {
            return Err(EtcdError::InvalidArgument("raftkv: a lease id must not be negative".into()).into());
        }
        let ttl = ttl.max(self.min_lease_ttl());
        // A picked id that happens to be in use is picked again; a client's is its own.
        let attempts = if id == 0 { 8 } else { 1 };
        let mut last = EtcdError::LeaseExists;
        for _ in 0..attempts {
            let id = if id == 0 { self.pick_lease_id() } else { id };
            match self.write(WriteRequest::LeaseGrant { id, ttl }).await {
                Ok(WriteResponse::LeaseGrant(r)) => {
                    // The table counts a new lease from the last checkpoint before its grant;
                    // a renewal makes the log count it from now.
                    self.ask_leader(LeaseAsk::Renew(id)).await?;
                    return Ok(r);
                }
                Ok(other) => return Err(unexpected(other)),
                Err(NodeError::Etcd(EtcdError::LeaseExists)) => last = EtcdError::LeaseExists,
                Err(e) => return Err(e),
            }
        }
        Err(last.into())
    }

    /// An id no other member picks: this member's id in the top bits, then the time in ms at
    /// start and a counter (etcd's scheme).
    fn pick_lease_id(&self) -> i64 {
        (self.next_lease_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & i64::MAX).max(1)
    }

    /// Revokes lease `id` through the log: its keys are deleted in one revision.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, NodeError> {
        match self.write(WriteRequest::LeaseRevoke { id }).await? {
            WriteResponse::LeaseRevoke(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Renews lease `id` at the leader: its granted TTL, or 0 if it does not exist or expired.
    pub async fn lease_renew(&self, id: i64) -> Result<i64, NodeError> {
        match self.ask_leader(LeaseAsk::Renew(id)).await? {
            LeaseAnswer::Renewed(ttl) => Ok(ttl.unwrap_or(0)),
            other => Err(NodeError::Fatal(format!("the leader answered a renewal with {other:?}"))),
        }
    }

    /// What lease `id` has left by the leader's clock, its granted TTL and (if `keys`) its
    /// keys; `None` if it does not exist.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<Option<LeaseStatus>, NodeError> {
        let remaining = match self.ask_leader(LeaseAsk::TimeToLive(id)).await? {
            LeaseAnswer::Remaining(r) => r,
            other => return Err(NodeError::Fatal(format!("the leader answered a time-to-live with {other:?}"))),
        };
        let Some((remaining_ms, granted_ttl)) = remaining else { return Ok(None) };
        let keys = if keys {
            self.read_barrier(super::ReadRequirement::level(kv_api::Consistency::Linearizable)).await?;
            self.store.lease(id).map_err(super::error::fatal)?.map(|(_, keys)| keys).unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Some(LeaseStatus { remaining_secs: remaining_ms / 1000, granted_ttl, keys }))
    }

    /// Every lease id, read linearizably.
    pub async fn lease_list(&self) -> Result<Vec<i64>, NodeError> {
        self.read_barrier(super::ReadRequirement::level(kv_api::Consistency::Linearizable)).await?;
        Ok(self.store.leases().map_err(super::error::fatal)?.into_iter().map(|l| l.id).collect())
    }

    /// Sends `ask` to the leader (itself, or over the Lease peer RPC), following leader changes
    /// until the request timeout.
    async fn ask_leader(&self, ask: LeaseAsk) -> Result<LeaseAnswer, NodeError> {
        let deadline = Instant::now() + self.request_timeout;
        let attempt = async {
            loop {
                let (leader, node) = self.leader(deadline).await?;
                let answer = if leader == self.id {
                    self.answer_lease(ask).await
                } else {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.peers.call(leader, &node, Rpc::Lease, &ask, left).await {
                        Ok(answer) => answer,
                        Err(PeerError::Timeout { .. }) => Err(Refusal::Etcd(EtcdError::Timeout)),
                        Err(_) => Err(Refusal::NotLeader),
                    }
                };
                match answer {
                    Ok(a) => return Ok(a),
                    Err(Refusal::Etcd(e)) => return Err(NodeError::from(e)),
                    Err(Refusal::NotLeader) => self.leader_moved_from(leader, deadline).await?,
                    // Try again: the next confirmation round may succeed.
                    Err(Refusal::Unconfirmed) => tokio::time::sleep(TICK).await,
                }
            }
        };
        match within(deadline, attempt).await {
            Ok(r) => r,
            Err(()) => Err(EtcdError::Timeout.into()),
        }
    }

    /// Answers `ask` as the leader: refused unless this member leads, runs the lease clock and
    /// has confirmed its leadership (a deposed leader that does not know it yet must not renew
    /// what the new leader may already have revoked).
    pub async fn answer_lease(&self, ask: LeaseAsk) -> Result<LeaseAnswer, Refusal> {
        let term = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            if m.state != ServerState::Leader {
                return Err(Refusal::NotLeader);
            }
            m.current_term
        };
        // Just elected: the clock starts once the term's first entry is applied.
        let started = async {
            while self.lessor.lock().term() != Some(term) {
                tokio::time::sleep(TICK).await;
            }
        };
        if tokio::time::timeout(self.request_timeout, started).await.is_err() {
            return Err(Refusal::Etcd(EtcdError::Timeout));
        }
        self.read_index_of(IndexKind::Lease).await?;
        let now = self.lease_clock.now();
        let (answer, carried_by) = {
            let mut lessor = self.lessor.lock();
            if lessor.term() != Some(term) {
                return Err(Refusal::NotLeader);
            }
            match ask {
                LeaseAsk::Renew(id) => (LeaseAnswer::Renewed(lessor.renew(now, id)), Some(lessor.carried_by())),
                LeaseAsk::TimeToLive(id) => {
                    let left = lessor.remaining(now, id);
                    (LeaseAnswer::Remaining(left.map(|(l, ttl)| (l.as_millis() as i64, ttl.as_secs() as i64))), None)
                }
            }
        };
        if let (LeaseAnswer::Renewed(Some(_)), Some(seq)) = (answer, carried_by) {
            self.renewals.notify_one();
            let mut committed = self.checkpointed.subscribe();
            let carried = async { committed.wait_for(|&(t, s)| t != term || s >= seq).await.map(|c| c.0) };
            let outcome = tokio::time::timeout(self.request_timeout, carried).await;
            match outcome {
                Err(_) => return Err(Refusal::Etcd(EtcdError::Timeout)),
                Ok(Err(_)) => return Err(Refusal::Etcd(EtcdError::ServerStopped)),
                Ok(Ok(t)) if t != term => return Err(Refusal::NotLeader),
                Ok(Ok(_)) => {}
            }
        }
        Ok(answer)
    }
}

fn unexpected(r: WriteResponse) -> NodeError {
    NodeError::Fatal(format!("a lease write was answered with {r:?}"))
}

/// What the clock task works with: the parts of the node it needs, not the node (which would
/// then never be dropped).
pub(super) struct LeaseClock<E: Engine> {
    pub(super) raft: Raft<E>,
    pub(super) store: KvStore<E>,
    pub(super) lessor: Arc<parking_lot::Mutex<Lessor>>,
    pub(super) writes: mpsc::Sender<(WriteRequest, Reply)>,
    pub(super) checkpoint_interval: Duration,
    /// What a new leader takes off every lease (see [`Lessor::lead`]).
    pub(super) credit: Duration,
    /// The term this member led when it last stopped, if openraft restores it as leader of it
    /// (0: none). Such a leader gets no credit: no election lies between its last checkpoint
    /// and now, and the restart may have been quick.
    pub(super) restored_term: u64,
    pub(super) request_timeout: Duration,
    pub(super) clock: Clock,
    /// Woken by a renewal that waits for a checkpoint.
    pub(super) renewals: Arc<tokio::sync::Notify>,
    /// (term, the last checkpoint of that term committed).
    pub(super) checkpointed: Arc<tokio::sync::watch::Sender<(u64, u64)>>,
    #[cfg(feature = "planted-bugs")]
    pub(super) planted: crate::planted::PlantedBugs,
}

/// Tells the lessor of grants and revokes as they are applied.
pub(super) fn lease_hook(lessor: Arc<parking_lot::Mutex<Lessor>>, clock: Clock) -> crate::state_machine::LeaseHook {
    Box::new(move |changes: &[LeaseApplied]| {
        let now = clock.now();
        let mut l = lessor.lock();
        for c in changes {
            match *c {
                LeaseApplied::Granted { id, ttl } => l.granted(now, id, ttl),
                LeaseApplied::Revoked { id } => l.revoked(id),
            }
        }
    })
}

impl<E: Engine> LeaseClock<E> {
    /// Runs until Raft stops.
    pub(super) async fn run(self) {
        let mut next_checkpoint = Instant::now();
        let in_flight = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The term this member leads and the end of its log when it found out: the clock
        // starts once that much is applied.
        let mut became: Option<(u64, u64)> = None;
        loop {
            let (leads, term) = {
                let m = self.raft.metrics();
                let m = m.borrow_watched();
                if m.running_state.is_err() {
                    return;
                }
                if m.state != ServerState::Leader {
                    became = None;
                } else if became.is_none_or(|(t, _)| t != m.current_term) {
                    became = Some((m.current_term, m.last_log_index.unwrap_or(0)));
                }
                // A leader's log holds every committed entry; once all of it that was there
                // when it became leader is applied, so is every entry committed before. (The
                // first entry of the term is not enough: a leader restarted into the term it
                // led may have committed more of it before the restart than it has applied.)
                let applied = m.last_applied.map_or(0, |l| l.index);
                (became.is_some_and(|(_, end)| applied >= end), m.current_term)
            };
            let now = self.clock.now();
            let running = self.lessor.lock().term();
            if leads && running != Some(term) {
                self.lead(term, now);
                // Waiters of the last term are told it ended.
                self.checkpointed.send_replace((term, 0));
                next_checkpoint = Instant::now();
            } else if !leads && running.is_some() {
                self.lessor.lock().demote();
                self.checkpointed.send_modify(|c| c.0 = 0);
            }
            let mut wake = Instant::now() + TICK;
            if leads {
                let expired = self.lessor.lock().expired(now);
                if !expired.is_empty() {
                    tracing::debug!(term, ?expired, "leases expired");
                }
                for id in expired {
                    self.revoke(id);
                }
                let (due, any) = {
                    let l = self.lessor.lock();
                    (l.has_dirty() || Instant::now() >= next_checkpoint, !l.is_empty())
                };
                if due && !in_flight.load(std::sync::atomic::Ordering::Acquire) {
                    self.checkpoint(term, now, any, &in_flight);
                    next_checkpoint = Instant::now() + self.checkpoint_interval;
                }
                if let Some(d) = self.lessor.lock().next_deadline() {
                    let until = d.saturating_duration_since(now);
                    wake = wake.min(Instant::now() + until);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.renewals.notified() => {}
            }
        }
    }

    /// Starts the clock from the lease table. The hook may report a grant or revoke that the
    /// table already holds: granting again from now and revoking again are both harmless.
    fn lead(&self, term: u64, now: std::time::Instant) {
        let mut lessor = self.lessor.lock();
        match self.store.leases() {
            Ok(table) => {
                let credit = if term == self.restored_term { Duration::ZERO } else { self.credit };
                tracing::info!(term, leases = table.len(), "lease clock started");
                tracing::debug!(term, ?credit, ?table, "lease table at the start of the clock");
                lessor.lead(term, now, credit, table);
            }
            Err(e) => tracing::error!("lease clock not started: reading the lease table failed: {e}"),
        }
    }

    fn revoke(&self, id: i64) {
        let (writes, lessor, timeout) = (self.writes.clone(), self.lessor.clone(), self.request_timeout);
        tokio::spawn(async move {
            match propose_on(&writes, WriteRequest::LeaseRevoke { id }, timeout).await {
                // The hook removes it as it is applied.
                Ok(_) => {}
                Err(Refusal::Etcd(EtcdError::LeaseNotFound)) => lessor.lock().revoked(id),
                Err(_) => lessor.lock().revoke_failed(id),
            }
        });
    }

    /// Proposes the next checkpoint (one at a time: `in_flight`), and tells renewals waiting
    /// for it once it is committed. With no lease at all, nothing needs the log's clock: the
    /// checkpoint is taken (restarting the count) but not proposed.
    fn checkpoint(
        &self,
        term: u64,
        now: std::time::Instant,
        any_lease: bool,
        in_flight: &Arc<std::sync::atomic::AtomicBool>,
    ) {
        #[allow(unused_mut)]
        let mut checkpoint = self.lessor.lock().take_checkpoint(now);
        #[cfg(feature = "planted-bugs")]
        if self.planted.lease_forget_renewals {
            // Planted bug: the renewals never reach the log, so a new leader starts the leases
            // from what they had left when last granted or checkpointed.
            checkpoint.remaining.retain(|_| false);
        }
        if !any_lease && checkpoint.remaining.is_empty() {
            self.checkpointed.send_modify(|c| {
                if c.0 == term {
                    c.1 = checkpoint.seq;
                }
            });
            return;
        }
        in_flight.store(true, std::sync::atomic::Ordering::Release);
        let (writes, lessor, timeout) = (self.writes.clone(), self.lessor.clone(), self.request_timeout);
        let (checkpointed, in_flight, renewals) = (self.checkpointed.clone(), in_flight.clone(), self.renewals.clone());
        tokio::spawn(async move {
            let Checkpoint { seq, elapsed_ms, remaining } = checkpoint.clone();
            tracing::debug!(term, seq, elapsed_ms, ?remaining, "lease checkpoint proposed");
            let proposed = propose_on(&writes, WriteRequest::LeaseCheckpoint { elapsed_ms, remaining }, timeout).await;
            if proposed.is_ok() {
                checkpointed.send_modify(|c| {
                    if c.0 == term {
                        c.1 = seq;
                    }
                });
            } else {
                lessor.lock().checkpoint_failed(&checkpoint);
            }
            in_flight.store(false, std::sync::atomic::Ordering::Release);
            // Renewals that came while this one was in flight go next, without waiting a tick.
            renewals.notify_one();
        });
    }
}
