//! The leader's lease clock: when each lease expires, by this member's monotonic clock.
//!
//! Only the leader keeps deadlines (as in etcd): renewals reach it and stay in memory, expiry is
//! its decision, carried out by proposing revocations through the log, and it writes the lease
//! clock to the log now and then (checkpoints: the time elapsed since the previous one and the
//! remaining TTL of the leases granted or renewed since) so that a new leader starts each lease
//! from what it had left rather than from its full TTL. The clock is passed in, so this file
//! holds the rules and the tests drive time; [`super::leases`] runs it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::mvcc::lease::LeaseInfo;

/// The clock leases are timed by: this member's monotonic clock, at `rate` times its speed
/// (1 but in the simulation, which runs members' lease clocks fast or slow to test drift).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    rate: f64,
}

impl Clock {
    pub fn new(rate: f64) -> Clock {
        Clock { base: Instant::now(), rate }
    }

    pub fn now(&self) -> Instant {
        let real = Instant::now();
        if self.rate == 1.0 {
            return real;
        }
        self.base + real.saturating_duration_since(self.base).mul_f64(self.rate)
    }
}

/// One lease the leader holds a deadline for.
#[derive(Clone, Copy, Debug)]
struct Held {
    ttl: Duration,
    deadline: Instant,
}

/// A checkpoint to propose: advance the lease clock by `elapsed_ms`, and set these leases'
/// remaining TTLs (ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its number in this term (from 1).
    pub seq: u64,
    pub elapsed_ms: i64,
    pub remaining: Vec<(i64, i64)>,
}

/// Deadlines of every lease, while this member leads.
#[derive(Debug)]
pub struct Lessor {
    /// The term in which this member runs the clock; `None` while it does not lead.
    term: Option<u64>,
    leases: HashMap<i64, Held>,
    /// (deadline, id): expiry in deadline order without a scan of every lease.
    by_deadline: BTreeSet<(Instant, i64)>,
    /// Expired leases whose revocation was proposed and has not been applied.
    revoking: HashSet<i64>,
    /// Leases granted or renewed since the last checkpoint was taken: the log does not know
    /// what they have left.
    dirty: HashSet<i64>,
    /// The moment the lease clock in the log last read what this member's clock says, minus
    /// what was credited at the start (see [`Lessor::lead`]).
    checkpointed_at: Instant,
    /// Checkpoints taken in this term: a renewal is safe once checkpoint `taken + 1` (the
    /// next, which carries it) is committed.
    taken: u64,
}

impl Default for Lessor {
    fn default() -> Self {
        Lessor {
            term: None,
            leases: HashMap::new(),
            by_deadline: BTreeSet::new(),
            revoking: HashSet::new(),
            dirty: HashSet::new(),
            checkpointed_at: Instant::now(),
            taken: 0,
        }
    }
}

impl Lessor {
    /// Starts the clock of a member that leads in `term` and has applied everything committed
    /// before it: each lease runs from what the table says it had left at the last checkpoint,
    /// less `credit`.
    ///
    /// `credit` is time known to have passed since that checkpoint was committed: no member
    /// votes for a new leader within the election timeout of hearing from the old one, so at
    /// least that long lies between the old leader's last commit and this moment. Taking it
    /// off (and writing it to the log in the first checkpoint) makes an abandoned lease expire
    /// even when leaders keep changing before any of them checkpoints.
    pub fn lead(&mut self, term: u64, now: Instant, credit: Duration, leases: impl IntoIterator<Item = LeaseInfo>) {
        *self =
            Lessor { term: Some(term), checkpointed_at: now.checked_sub(credit).unwrap_or(now), ..Lessor::default() };
        for lease in leases {
            let ttl = Duration::from_secs(lease.ttl.max(0) as u64);
            let left = Duration::from_millis(lease.remaining_ms.max(0) as u64).min(ttl);
            self.set(lease.id, Held { ttl, deadline: self.checkpointed_at + left });
        }
    }

    /// This member no longer leads: it forgets every deadline (the next leader starts from the
    /// log).
    pub fn demote(&mut self) {
        *self = Lessor::default();
    }

    /// The term this member runs the clock in, if it does.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    fn set(&mut self, id: i64, held: Held) {
        if let Some(old) = self.leases.insert(id, held) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((held.deadline, id));
    }

    /// A grant was applied: the lease runs its full TTL from now.
    pub fn granted(&mut self, now: Instant, id: i64, ttl_secs: i64) {
        if self.term.is_none() {
            return;
        }
        let ttl = Duration::from_secs(ttl_secs.max(0) as u64);
        self.set(id, Held { ttl, deadline: now + ttl });
        self.dirty.insert(id);
    }

    /// A revocation was applied (asked for, or expired): the lease is gone.
    pub fn revoked(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.revoking.remove(&id);
        self.dirty.remove(&id);
    }

    /// A renewal: the lease runs its full TTL from now. Returns the TTL in seconds and the
    /// checkpoint that will carry it (see [`Lessor::carried_by`]), or `None` for a lease that
    /// does not exist or has already expired (etcd answers TTL 0).
    pub fn renew(&mut self, now: Instant, id: i64) -> Option<i64> {
        let held = *self.leases.get(&id)?;
        if self.revoking.contains(&id) || held.deadline <= now {
            return None;
        }
        self.dirty.insert(id);
        self.set(id, Held { ttl: held.ttl, deadline: now + held.ttl });
        Some(held.ttl.as_secs() as i64)
    }

    /// The checkpoint that carries what was renewed or granted until now: the next one taken.
    pub fn carried_by(&self) -> u64 {
        self.taken + 1
    }

    /// Whether anything waits for a checkpoint.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// What lease `id` has left (zero once expired), and its granted TTL.
    pub fn remaining(&self, now: Instant, id: i64) -> Option<(Duration, Duration)> {
        let held = self.leases.get(&id)?;
        Some((held.deadline.saturating_duration_since(now), held.ttl))
    }

    /// Leases whose deadline has passed and whose revocation is not yet proposed, earliest
    /// first; they count as being revoked from now on.
    pub fn expired(&mut self, now: Instant) -> Vec<i64> {
        let mut out = Vec::new();
        for &(deadline, id) in &self.by_deadline {
            if deadline > now {
                break;
            }
            if !self.revoking.contains(&id) {
                out.push(id);
            }
        }
        self.revoking.extend(out.iter().copied());
        out
    }

    /// The earliest deadline of a lease not yet being revoked.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.iter().find(|(_, id)| !self.revoking.contains(id)).map(|(d, _)| *d)
    }

    /// A proposed revocation failed (no quorum, lost leadership): it may be proposed again.
    pub fn revoke_failed(&mut self, id: i64) {
        self.revoking.remove(&id);
    }

    /// The next checkpoint: the time since the last one, and what each lease granted or renewed
    /// since has left (leases being revoked are left out: their revocation is what the log will
    /// say).
    pub fn take_checkpoint(&mut self, now: Instant) -> Checkpoint {
        self.taken += 1;
        let elapsed = now.saturating_duration_since(self.checkpointed_at);
        let elapsed_ms = elapsed.as_millis() as i64;
        // Whole milliseconds: what is left over counts toward the next one.
        self.checkpointed_at += Duration::from_millis(elapsed_ms as u64);
        let mut remaining: Vec<(i64, i64)> = self
            .dirty
            .drain()
            .filter(|id| !self.revoking.contains(id))
            .filter_map(|id| {
                self.leases.get(&id).map(|h| (id, h.deadline.saturating_duration_since(now).as_millis() as i64))
            })
            .collect();
        remaining.sort_unstable();
        Checkpoint { seq: self.taken, elapsed_ms, remaining }
    }

    /// A checkpoint was not committed: its leases are still unknown to the log and go into the
    /// next one (whose waiters then include theirs: nothing was answered for this one). Its
    /// elapsed time is not given back: the log's clock then runs behind, and leases live
    /// longer.
    pub fn checkpoint_failed(&mut self, checkpoint: &Checkpoint) {
        if self.term.is_some() {
            self.dirty.extend(checkpoint.remaining.iter().map(|(id, _)| *id).filter(|id| self.leases.contains_key(id)));
        }
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn leading(t0: Instant) -> Lessor {
        let mut l = Lessor::default();
        l.lead(1, t0, Duration::ZERO, []);
        l
    }

    #[test]
    fn a_renewed_lease_never_expires_and_an_abandoned_one_does_once() {
        let t0 = Instant::now();
        let mut l = leading(t0);
        l.granted(t0, 1, 10);
        for s in (3..60).step_by(3) {
            assert_eq!(l.renew(t0 + secs(s), 1), Some(10));
            assert!(l.expired(t0 + secs(s)).is_empty());
        }
        let mut l = leading(t0);
        l.granted(t0, 2, 10);
        assert!(l.expired(t0 + secs(9)).is_empty());
        assert_eq!(l.next_deadline(), Some(t0 + secs(10)));
        assert_eq!(l.expired(t0 + secs(10)), [2]);
        assert_eq!(l.next_deadline(), None);
        assert!(l.expired(t0 + secs(11)).is_empty(), "its revocation is proposed once");
        assert_eq!(l.renew(t0 + secs(11), 2), None, "an expired lease cannot be renewed");
        l.revoke_failed(2);
        assert_eq!(l.expired(t0 + secs(12)), [2], "a failed proposal is made again");
        l.revoked(2);
        assert!(l.is_empty() && l.expired(t0 + secs(99)).is_empty());
    }

    #[test]
    fn a_follower_keeps_no_deadlines() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.granted(t0, 1, 10);
        assert!(l.is_empty() && l.term().is_none());
        let mut l = leading(t0);
        l.granted(t0, 1, 10);
        l.demote();
        assert!(l.is_empty() && l.renew(t0, 1).is_none());
    }

    #[test]
    fn expiry_comes_in_deadline_order() {
        let t0 = Instant::now();
        let mut l = leading(t0);
        for (id, ttl) in [(5, 30), (6, 10), (7, 20)] {
            l.granted(t0, id, ttl);
        }
        l.renew(t0 + secs(8), 6);
        l.renew(t0 + secs(15), 6);
        assert_eq!(l.expired(t0 + secs(60)), [7, 6, 5]);
    }

    /// A new leader starts each lease from what the log says it has left, less the credit,
    /// never beyond its TTL.
    #[test]
    fn a_new_leader_starts_leases_from_the_table_less_the_credit() {
        let t0 = Instant::now() + secs(10);
        let info = |id, ttl, remaining_ms| LeaseInfo { id, ttl, remaining_ms };
        let mut l = Lessor::default();
        l.lead(3, t0, Duration::from_millis(500), [info(1, 60, 4_000), info(2, 60, 60_000), info(3, 5, 99_000)]);
        assert_eq!(l.term(), Some(3));
        assert_eq!(l.remaining(t0, 1), Some((Duration::from_millis(3_500), secs(60))));
        assert_eq!(l.remaining(t0, 3), Some((Duration::from_millis(4_500), secs(5))));
        // The first checkpoint writes the credit down: elapsed counts from before the start.
        let first = l.take_checkpoint(t0);
        assert_eq!(first, Checkpoint { seq: 1, elapsed_ms: 500, remaining: vec![] });
        l.renew(t0 + secs(1), 2);
        assert_eq!(l.carried_by(), 2);
        let second = l.take_checkpoint(t0 + secs(2));
        assert_eq!(second, Checkpoint { seq: 2, elapsed_ms: 2_000, remaining: vec![(2, 59_000)] });
        // Lost: its lease goes into the next one.
        l.checkpoint_failed(&second);
        assert!(l.has_dirty());
        assert_eq!(l.take_checkpoint(t0 + secs(3)).remaining, [(2, 58_000)]);
        assert_eq!(l.remaining(t0 + secs(70), 2), Some((Duration::ZERO, secs(60))));
    }

    /// What the log's clock says each lease has left after a checkpoint is what the leader's
    /// clock says, for renewed leases and for the rest alike.
    #[test]
    fn the_log_clock_agrees_with_the_leaders_deadlines() {
        use crate::mvcc::lease::{clock, table};
        use crate::mvcc::read::Revisions;
        use crate::mvcc::testing::{write, State};
        let state = State::default();
        let t0 = Instant::now();
        let mut l = leading(t0);
        let mut revs = Revisions { current: 1, compacted: 0 };
        (revs, _) = write(&state, revs, |w| {
            w.lease_grant(1, 10).unwrap();
            w.lease_grant(2, 10).unwrap();
        });
        l.granted(t0, 1, 10);
        l.granted(t0, 2, 10);
        let mut at = t0;
        for step in 1..=4u64 {
            at += Duration::from_millis(700);
            if step % 2 == 0 {
                l.renew(at, 1);
            }
            let c = l.take_checkpoint(at + Duration::from_millis(100));
            (revs, _) = write(&state, revs, |w| w.lease_checkpoint(c.elapsed_ms, &c.remaining).unwrap());
        }
        let now = at + Duration::from_millis(100);
        assert_eq!(clock(&state).unwrap(), 2_900, "0.7 s four times, and 0.1 s");
        for lease in table(&state).unwrap() {
            let (left, _) = l.remaining(now, lease.id).unwrap();
            assert_eq!(lease.remaining_ms, left.as_millis() as i64, "lease {}", lease.id);
        }
    }
}
