//! What the read levels between linearizable and serializable rest on: the leader's lease
//! (lease reads) and how far behind the leader a member is (bounded reads).

use std::collections::VecDeque;
use std::time::Duration;

use kv_api::Consistency;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// What a read asks of the member that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequirement {
    pub level: Consistency,
    /// Session: the member must have applied at least this revision (0: nothing to wait for).
    pub min_revision: i64,
    /// Bounded: the member may be at most this far behind the leader.
    pub max_staleness: Duration,
}

impl ReadRequirement {
    /// A requirement of `level` alone.
    pub fn level(level: Consistency) -> ReadRequirement {
        ReadRequirement { level, min_revision: 0, max_staleness: Duration::ZERO }
    }
}

/// Which read index a follower asks the leader for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexKind {
    /// Confirmed by a quorum round started after the request arrived (linearizable).
    Confirmed,
    /// Covered by the leader's lease, without a quorum round while the lease holds (lease).
    Lease,
}

/// A leadership confirmation: it began at `since`, in `term`, and gave read index `index`.
/// Every voter that acknowledged it refuses to vote for another leader until twice the
/// election timeout after it received it, so no other leader can exist until `since` plus
/// that, minus clock drift: the lease.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease {
    pub since: Instant,
    pub term: u64,
    pub index: u64,
}

/// What a member that was leader when it stopped must have applied before it serves reads in
/// that term again. Since raftkv turned off openraft's leader restore (node/mod.rs), a
/// restarted leader never leads its old term again, so the floor no longer comes into play; it
/// stays as a guard. (The reasoning it was built on, that a leader's log at startup holds
/// every entry it acknowledged, does not hold: openraft 0.10 replicates before the leader's own
/// append is synced, and a power cut can take that tail.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RestartFloor {
    pub term: u64,
    pub index: u64,
}

impl RestartFloor {
    /// Whether a leader of `term` that has applied up to `applied` covers everything it
    /// acknowledged in an earlier life.
    pub fn covers(&self, term: u64, applied: u64) -> bool {
        term != self.term || applied >= self.index
    }

    /// A read index for a leader of `term` that covers this floor.
    pub fn raise(&self, term: u64, index: u64) -> u64 {
        if term == self.term {
            index.max(self.index)
        } else {
            index
        }
    }
}

/// Most AppendEntries receipts remembered for the staleness estimate.
const MAX_RECEIPTS: usize = 4096;

/// Echoes accepted from the leader of `term` (see `echo_us` in peer.proto): each a time T on
/// this member's clock and an index C such that every write acknowledged before T is at or
/// below C. Once this member has applied C, it is at most `now - T` behind.
#[derive(Debug, Default)]
pub(crate) struct Receipts {
    term: u64,
    /// (receipt time, leader commit index), both increasing.
    seen: VecDeque<(Instant, u64)>,
}

impl Receipts {
    /// Records an AppendEntries from the leader of `term` carrying `commit`.
    pub fn record(&mut self, term: u64, commit: u64, now: Instant) {
        if term < self.term {
            return;
        }
        if term > self.term {
            self.term = term;
            self.seen.clear();
        }
        match self.seen.back_mut() {
            // Same commit index, newer receipt: the newer one says more.
            Some(last) if last.1 == commit => last.0 = last.0.max(now),
            // Out of order (an older message delivered late): it adds nothing.
            Some(last) if last.1 > commit => {}
            _ => self.seen.push_back((now, commit)),
        }
        if self.seen.len() > MAX_RECEIPTS {
            self.seen.pop_front();
        }
    }

    /// How far behind the leader of `term` this member is, having applied `applied`: the age
    /// of the newest receipt whose commit index is applied. `None` when there is none.
    pub fn staleness(&mut self, term: u64, applied: u64, now: Instant) -> Option<Duration> {
        if term != self.term {
            return None;
        }
        let newest = self.seen.iter().rposition(|r| r.1 <= applied)?;
        // Older receipts can never be the answer again.
        self.seen.drain(..newest);
        Some(now.saturating_duration_since(self.seen[0].0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_the_age_of_the_newest_applied_receipt() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Receipts::default();
        r.record(2, 10, t0);
        r.record(2, 10, t0 + ms(5));
        r.record(2, 20, t0 + ms(10));
        r.record(2, 15, t0 + ms(11)); // late, ignored
        assert_eq!(r.staleness(2, 9, t0 + ms(50)), None, "nothing applied that any receipt covers");
        assert_eq!(r.staleness(2, 12, t0 + ms(50)), Some(ms(45)));
        assert_eq!(r.staleness(2, 20, t0 + ms(50)), Some(ms(40)));
        assert_eq!(r.staleness(3, 20, t0 + ms(50)), None, "receipts from another term say nothing");
        r.record(1, 99, t0 + ms(60)); // an old leader: ignored
        assert_eq!(r.staleness(2, 20, t0 + ms(70)), Some(ms(60)));
        r.record(3, 25, t0 + ms(80));
        assert_eq!(r.staleness(2, 20, t0 + ms(90)), None, "a new term starts afresh");
        assert_eq!(r.staleness(3, 25, t0 + ms(90)), Some(ms(10)));
    }

    #[test]
    fn restart_floor_holds_only_in_its_term() {
        let f = RestartFloor { term: 17, index: 168 };
        assert!(!f.covers(17, 167));
        assert!(f.covers(17, 168));
        assert!(f.covers(18, 1), "a later term has its own first entry to apply");
        assert_eq!(f.raise(17, 166), 168);
        assert_eq!(f.raise(17, 170), 170);
        assert_eq!(f.raise(18, 5), 5);
        assert!(RestartFloor::default().covers(1, 0));
    }
}
