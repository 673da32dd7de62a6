//! The leader's lease clock: when each lease expires, by this member's monotonic clock.
//!
//! Only the leader keeps deadlines (as in etcd): renewals reach it and stay in memory, expiry is
//! its decision, carried out by proposing revocations through the log, and it writes each
//! lease's remaining TTL to the log now and then (checkpoints) so that a new leader starts the
//! lease from there rather than from its full TTL. The clock is passed in, so this file holds
//! the rules and the tests drive time; the node runs it on `Instant::now()`.
//!
//! Not wired into the node yet (issue 22): this is the part that does not depend on it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::mvcc::lease::LeaseRecord;

/// One lease the leader holds a deadline for.
#[derive(Clone, Copy, Debug)]
struct Held {
    ttl: Duration,
    deadline: Instant,
}

/// Deadlines of every lease, while this member leads.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, Held>,
    /// (deadline, id): expiry in deadline order without a scan of every lease.
    by_deadline: BTreeSet<(Instant, i64)>,
    /// Expired leases whose revocation was proposed and has not been applied.
    revoking: std::collections::HashSet<i64>,
}

impl Lessor {
    /// The clock of a member that just became leader: each lease runs from its last checkpoint
    /// (or its full TTL if it was never checkpointed), from `now`.
    pub fn lead(now: Instant, leases: impl IntoIterator<Item = (i64, LeaseRecord)>) -> Lessor {
        let mut l = Lessor::default();
        for (id, record) in leases {
            let ttl = Duration::from_secs(record.ttl.max(0) as u64);
            let left = record.remaining_ms.map_or(ttl, |ms| Duration::from_millis(ms.max(0) as u64).min(ttl));
            l.set(id, Held { ttl, deadline: now + left });
        }
        l
    }

    fn set(&mut self, id: i64, held: Held) {
        if let Some(old) = self.leases.insert(id, held) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((held.deadline, id));
    }

    /// A grant was applied: the lease runs its full TTL from now.
    pub fn granted(&mut self, now: Instant, id: i64, ttl_secs: i64) {
        let ttl = Duration::from_secs(ttl_secs.max(0) as u64);
        self.set(id, Held { ttl, deadline: now + ttl });
    }

    /// A revocation was applied (asked for, or expired): the lease is gone.
    pub fn revoked(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.revoking.remove(&id);
    }

    /// A renewal: the lease runs its full TTL from now. Returns the TTL in seconds, or `None`
    /// for a lease that does not exist or has already expired (etcd answers TTL 0).
    pub fn renew(&mut self, now: Instant, id: i64) -> Option<i64> {
        let held = *self.leases.get(&id)?;
        if self.revoking.contains(&id) || held.deadline <= now {
            return None;
        }
        self.set(id, Held { ttl: held.ttl, deadline: now + held.ttl });
        Some(held.ttl.as_secs() as i64)
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

    /// A proposed revocation failed (no quorum, lost leadership): it may be proposed again.
    pub fn revoke_failed(&mut self, id: i64) {
        self.revoking.remove(&id);
    }

    /// The remaining TTL of every lease, in milliseconds, for a checkpoint (leases being
    /// revoked are left out: their revocation is what the log will say).
    pub fn checkpoint(&self, now: Instant) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self
            .leases
            .iter()
            .filter(|(id, _)| !self.revoking.contains(id))
            .map(|(&id, h)| (id, h.deadline.saturating_duration_since(now).as_millis() as i64))
            .collect();
        out.sort_unstable();
        out
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

    #[test]
    fn a_renewed_lease_never_expires_and_an_abandoned_one_does_once() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.granted(t0, 1, 10);
        for s in (3..60).step_by(3) {
            assert_eq!(l.renew(t0 + secs(s), 1), Some(10));
            assert!(l.expired(t0 + secs(s)).is_empty());
        }
        let mut l = Lessor::default();
        l.granted(t0, 2, 10);
        assert!(l.expired(t0 + secs(9)).is_empty());
        assert_eq!(l.expired(t0 + secs(10)), [2]);
        assert!(l.expired(t0 + secs(11)).is_empty(), "its revocation is proposed once");
        assert_eq!(l.renew(t0 + secs(11), 2), None, "an expired lease cannot be renewed");
        l.revoke_failed(2);
        assert_eq!(l.expired(t0 + secs(12)), [2], "a failed proposal is made again");
        l.revoked(2);
        assert!(l.is_empty() && l.expired(t0 + secs(99)).is_empty());
    }

    #[test]
    fn expiry_comes_in_deadline_order() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        for (id, ttl) in [(5, 30), (6, 10), (7, 20)] {
            l.granted(t0, id, ttl);
        }
        l.renew(t0 + secs(8), 6);
        l.renew(t0 + secs(15), 6);
        assert_eq!(l.expired(t0 + secs(60)), [7, 6, 5]);
    }

    /// A new leader starts each lease from its last checkpoint, never beyond its TTL; one never
    /// checkpointed gets its full TTL.
    #[test]
    fn a_new_leader_starts_leases_from_their_checkpoints() {
        let t0 = Instant::now();
        let record = |ttl, remaining_ms| LeaseRecord { ttl, remaining_ms };
        let l = Lessor::lead(t0, [(1, record(60, Some(4_000))), (2, record(60, None)), (3, record(5, Some(99_000)))]);
        assert_eq!(l.remaining(t0, 1), Some((secs(4), secs(60))));
        assert_eq!(l.remaining(t0, 2), Some((secs(60), secs(60))));
        assert_eq!(l.remaining(t0, 3), Some((secs(5), secs(5))));
        assert_eq!(l.checkpoint(t0 + secs(1)), [(1, 3_000), (2, 59_000), (3, 4_000)]);
        assert_eq!(l.remaining(t0 + secs(70), 2), Some((Duration::ZERO, secs(60))));
    }
}
