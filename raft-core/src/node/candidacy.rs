//! Who may lead: a member importing a snapshot from the leader stands aside.
//!
//! An import replaces the whole state and holds the state machine until it ends (seconds for
//! a store of a few hundred megabytes), and a leader answers a write only once it has applied
//! it. A member that won an election during its import therefore answered no write until the
//! import ended, although the other surviving member could have led at once: after a leader
//! kill, writes stopped for up to 5.6 s (docs/benchmarks.md). TiKV, likewise, does not tick a
//! peer's Raft (so it starts no election) while the peer applies a snapshot.
//!
//! So while it imports, a member starts no election of its own (it still votes), unless the
//! cluster has had no leader it heard from for [`Candidacy::leaderless`]: its log may be the
//! only one a quorum can elect (it holds entries the others lack), and a leader that is slow to
//! answer beats none. Should it lead during an import all the same, it hands leadership to the
//! voter that holds the most of its log; openraft stops it proposing meanwhile, and stops its
//! heartbeats, so that voter stands for election even if it missed the handover.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use crate::engine::Engine;
use crate::typ::{NodeId, Raft};

/// The task that enables and disables this member's elections around snapshot imports.
pub(super) struct Candidacy<E: Engine> {
    pub raft: Raft<E>,
    pub id: NodeId,
    /// [`crate::state_machine::KvStore::importing`].
    pub importing: tokio::sync::watch::Receiver<bool>,
    /// When an AppendEntries of an established leader was last accepted.
    pub heard_leader_at: Arc<parking_lot::Mutex<Option<Instant>>>,
    /// How often the rule is checked during an import: the heartbeat interval.
    pub tick: Duration,
    /// How long without a leader before an importing member stands all the same: long enough
    /// for a member that is not importing to win an election first. Its timer runs one to two
    /// election timeouts from the last heartbeat, then come a pre-vote and a vote round, and
    /// the importing member, whose log syncs are slow, heard its last AppendEntries earlier
    /// than the others: at three election timeouts it stood, and won, in most leader kills
    /// during an import (docs/benchmarks.md); at six it did not.
    pub leaderless: Duration,
}

impl<E: Engine> Candidacy<E> {
    pub(super) async fn run(mut self) {
        loop {
            if self.importing.wait_for(|i| *i).await.is_err() {
                return;
            }
            tracing::info!(
                leaderless = ?self.leaderless,
                "importing a snapshot: this member stands for election only if no leader is heard"
            );
            let mut standing = true;
            loop {
                let stand = !self.heard_leader_within(self.leaderless);
                if stand != standing {
                    self.raft.runtime_config().elect(stand);
                    standing = stand;
                    if stand {
                        tracing::warn!(
                            "no leader heard for {:?} during a snapshot import: this member stands for election",
                            self.leaderless
                        );
                    }
                }
                self.hand_over().await;
                tokio::select! {
                    changed = self.importing.changed() => {
                        if changed.is_err() || !*self.importing.borrow() {
                            break;
                        }
                    }
                    _ = tokio::time::sleep(self.tick) => {}
                }
            }
            self.raft.runtime_config().elect(true);
            tracing::info!("snapshot import over: this member stands for election again");
        }
    }

    fn heard_leader_within(&self, within: Duration) -> bool {
        self.heard_leader_at.lock().is_some_and(|at| at.elapsed() <= within)
    }

    /// If this member leads, asks openraft to hand leadership to the voter that holds the most
    /// of the log; again on every tick, since a voter that lacks part of the log ignores it.
    async fn hand_over(&self) {
        let to = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            if m.state != ServerState::Leader {
                return;
            }
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            let matched = m.replication.iter().flatten().filter(|(id, _)| **id != self.id && voters.contains(id));
            matched.max_by_key(|(_, at)| at.map(|l| l.index)).map(|(id, _)| *id)
        };
        if let Some(to) = to {
            tracing::info!(to, "leading during a snapshot import: handing leadership over");
            if let Err(e) = self.raft.trigger().transfer_leader(to).await {
                tracing::warn!("handing leadership over failed: {e}");
            }
        }
    }
}
