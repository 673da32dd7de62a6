//! Bugs planted on purpose, to show that the simulation finds them (cargo feature
//! `planted-bugs`, never on by default and never in a release build of the server).
//!
//! Each switch breaks one guarantee in the way a plausible mistake would:
//! - `local_linearizable_reads` serves a linearizable read from the member's own state, with
//!   no ReadIndex round: a deposed leader or a lagging follower answers with stale data;
//! - `ack_before_flush` tells openraft a log append is done before it is flushed, so a crash
//!   can lose an entry a quorum counted as stored;
//! - `skip_log_fsync` makes the log's flusher report appends durable without syncing them: a
//!   kill -9 loses nothing (the page cache keeps the writes), only a power loss does;
//! - `leader_counted_before_flush` has the leader report its own appends durable before the
//!   sync (followers still sync): the leader counts itself towards a quorum early, so a crash
//!   of the leader and one follower can lose an entry acknowledged to a client;
//! - `watch_skip_at_switch` makes a watch that has just caught up from the stored history
//!   skip the first revision it then takes live (kv-server's Watch service);
//! - `lease_forget_renewals` leaves renewals out of the leader's lease checkpoints, so a new
//!   leader starts each lease from what it had left when granted, not when last renewed;
//! - `lock_grant_unchecked` grants a lock or a campaign once no key is left ahead of the
//!   waiter, without checking that its own key and lease are still there (etcd issue 11456;
//!   kv-server's Lock and Election services).

/// Which planted bugs a member runs with; all off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    pub local_linearizable_reads: bool,
    pub ack_before_flush: bool,
    pub leader_counted_before_flush: bool,
    pub skip_log_fsync: bool,
    pub watch_skip_at_switch: bool,
    pub lease_forget_renewals: bool,
    pub lock_grant_unchecked: bool,
}

impl std::str::FromStr for PlantedBugs {
    type Err = String;

    /// Comma-separated switch names, e.g. `local_linearizable_reads,ack_before_flush` (how the
    /// black-box harness asks a kv-server built with the feature for them).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut bugs = PlantedBugs::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let switch = match name {
                "local_linearizable_reads" => &mut bugs.local_linearizable_reads,
                "ack_before_flush" => &mut bugs.ack_before_flush,
                "leader_counted_before_flush" => &mut bugs.leader_counted_before_flush,
                "skip_log_fsync" => &mut bugs.skip_log_fsync,
                "watch_skip_at_switch" => &mut bugs.watch_skip_at_switch,
                "lease_forget_renewals" => &mut bugs.lease_forget_renewals,
                "lock_grant_unchecked" => &mut bugs.lock_grant_unchecked,
                other => return Err(format!("unknown planted bug {other:?}")),
            };
            *switch = true;
        }
        Ok(bugs)
    }
}
