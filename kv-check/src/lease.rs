//! The lease workload's history and its check. Clients grant short leases, put a key on each,
//! renew it a few times and then abandon it; an observer lists the keys again and again. The
//! promises (docs/coordination.md):
//!
//! - a key on a lease is there at least until its lease's deadline: a grant or renewal sent at
//!   instant `s` and answered with TTL `t` keeps the lease, and its keys, until `s + t` at the
//!   earliest (the server starts counting after the request left the client);
//! - a lease that is gone stays gone: no renewal sent after its key was seen gone is answered
//!   with a TTL;
//! - an abandoned lease does expire: its key is gone by the end, once its deadline is long past.

use serde::{Deserialize, Serialize};

/// One lease and its key; times in ns since the workload began.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub client: u32,
    pub key: String,
    pub lease: i64,
    /// The TTL the grant was answered with, seconds.
    pub ttl: i64,
    pub grant_call: i64,
    pub grant_ret: i64,
    /// The put of the key with the lease, once acknowledged (call, return); `None`: the put got
    /// no answer or failed, so nothing is expected of the key.
    pub put: Option<(i64, i64)>,
    pub renewals: Vec<Renewal>,
    /// What the observer saw of the key after its put was acknowledged: its last read that
    /// found the key and its first read that did not (call, return).
    pub last_present: Option<(i64, i64)>,
    pub first_absent: Option<(i64, i64)>,
}

/// One renewal: sent at `call`, answered at `ret` with `ttl` (0: the lease is gone), or no
/// answer (`ret == None`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    pub call: i64,
    pub ret: Option<i64>,
    pub ttl: Option<i64>,
}

const SEC: i64 = 1_000_000_000;

impl LeaseRecord {
    /// The earliest moment the lease may end: its grant's or latest answered renewal's send
    /// time plus the TTL it was answered with.
    pub fn deadline(&self) -> i64 {
        let renewed =
            self.renewals.iter().filter(|r| r.ttl.is_some_and(|t| t > 0)).map(|r| r.call + r.ttl.unwrap_or(0) * SEC);
        renewed.fold(self.grant_call + self.ttl * SEC, i64::max)
    }

    /// The last moment anything may have kept the lease alive: the latest grant or renewal
    /// sent (answered or not) plus the TTL asked, stretched by `slack`.
    pub fn latest_end(&self, slack: i64) -> i64 {
        let last_sent = self.renewals.iter().map(|r| r.call).fold(self.grant_call, i64::max);
        last_sent + self.ttl * SEC + slack
    }
}

/// Checks the leases against the keys still present at the end (`remaining`, read at
/// `final_read` ns once the members converged). `slack`: how long past its latest possible
/// deadline an abandoned lease may take to expire (lease checkpoints, elections, restarts).
/// Up to five problems, in words.
pub fn check(leases: &[LeaseRecord], remaining: &[String], final_read: i64, slack: i64) -> Vec<String> {
    let mut problems = Vec::new();
    let secs = |ns: i64| ns as f64 / 1e9;
    for l in leases.iter().filter(|l| l.put.is_some()) {
        let deadline = l.deadline();
        if let Some((call, ret)) = l.first_absent {
            if ret < deadline {
                problems.push(format!(
                    "lease {:x} (ttl {} s): key {} was gone by {:.3} s (read sent at {:.3} s), before the lease's \
                     deadline {:.3} s",
                    l.lease,
                    l.ttl,
                    l.key,
                    secs(ret),
                    secs(call),
                    secs(deadline)
                ));
            }
            let gone_by = ret;
            if let Some(r) = l.renewals.iter().find(|r| r.call > gone_by && r.ttl.is_some_and(|t| t > 0)) {
                problems.push(format!(
                    "lease {:x}: its key {} was gone by {:.3} s, yet a renewal sent at {:.3} s was answered with ttl {}",
                    l.lease,
                    l.key,
                    secs(gone_by),
                    secs(r.call),
                    r.ttl.unwrap_or(0)
                ));
            }
        }
        if remaining.contains(&l.key) && final_read > l.latest_end(slack) {
            problems.push(format!(
                "lease {:x}: its key {} is still there at {:.3} s, {:.1} s after the latest its lease could last",
                l.lease,
                l.key,
                secs(final_read),
                secs(final_read - l.latest_end(0))
            ));
        }
        if problems.len() >= 5 {
            break;
        }
    }
    problems.truncate(5);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renewals: Vec<Renewal>, first_absent: Option<(i64, i64)>) -> LeaseRecord {
        LeaseRecord {
            client: 0,
            key: "lease/0/1".into(),
            lease: 0x1f,
            ttl: 2,
            grant_call: 0,
            grant_ret: SEC / 100,
            put: Some((SEC / 50, SEC / 20)),
            renewals,
            last_present: Some((SEC, SEC + 1)),
            first_absent,
        }
    }

    fn renewal(call_ms: i64, ttl: Option<i64>) -> Renewal {
        Renewal { call: call_ms * 1_000_000, ret: ttl.map(|_| call_ms * 1_000_000 + 5_000_000), ttl }
    }

    #[test]
    fn a_key_gone_after_its_deadline_passes() {
        let l = lease(vec![renewal(500, Some(2)), renewal(1000, Some(2))], Some((3 * SEC + 10, 3 * SEC + 20)));
        assert_eq!(l.deadline(), 3 * SEC);
        assert_eq!(check(&[l], &[], 20 * SEC, 5 * SEC), Vec::<String>::new());
    }

    #[test]
    fn a_key_gone_before_its_renewed_deadline_is_found() {
        // Renewed at 1 s with ttl 2: the key must last to 3 s; it was gone by 2.5 s (the
        // deadline of the grant, as if the renewals were forgotten).
        let l = lease(vec![renewal(1000, Some(2))], Some((2 * SEC, 2 * SEC + SEC / 2)));
        let found = check(&[l], &[], 20 * SEC, 5 * SEC);
        assert!(found[0].contains("before the lease's deadline 3.000 s"), "{found:?}");
    }

    #[test]
    fn a_renewal_answered_after_the_key_was_gone_is_found() {
        let l = lease(vec![renewal(1000, Some(2)), renewal(3500, Some(2))], Some((3 * SEC + 10, 3 * SEC + 20)));
        let found = check(&[l], &[], 20 * SEC, 5 * SEC);
        assert!(found.iter().any(|p| p.contains("yet a renewal sent at 3.500 s was answered with ttl 2")), "{found:?}");
    }

    #[test]
    fn a_key_that_never_expires_is_found_and_a_recent_one_is_not() {
        let l = lease(vec![], None);
        assert!(
            check(std::slice::from_ref(&l), std::slice::from_ref(&l.key), 20 * SEC, 5 * SEC)[0].contains("still there")
        );
        assert_eq!(
            check(std::slice::from_ref(&l), std::slice::from_ref(&l.key), 6 * SEC, 5 * SEC),
            Vec::<String>::new()
        );
        let unknown_put = LeaseRecord { put: None, ..l.clone() };
        assert_eq!(check(&[unknown_put], &[l.key], 20 * SEC, 5 * SEC), Vec::<String>::new());
    }
}
