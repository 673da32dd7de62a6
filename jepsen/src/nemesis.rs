//! The faults: what each does to the members and the network, and how it is healed. The
//! schedule (which fault when) lives in [`crate::run`]; every fault applied becomes a
//! [`Window`] of the run's timeline.
//!
//! The disk faults (power loss, a full disk, failing syncs) need the members' data on the
//! harness's own file system (lazyfs, see [`crate::members`]): [`Fault::needs_lazyfs`].

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::members::Members;
use crate::net::Net;
use crate::HarnessError;

/// One fault, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of one member chosen at random, restarted at the heal.
    Kill,
    KillLeader,
    /// kill -9 of a majority at once.
    KillMajority,
    KillAll,
    /// SIGSTOP of one member chosen at random, SIGCONT at the heal.
    Pause,
    PauseLeader,
    /// The leader cut off from every other member, both ways.
    PartitionLeader,
    /// A random majority and minority that cannot talk to each other.
    PartitionHalves,
    /// Two sides that cannot talk, and one member that talks to both.
    PartitionBridge,
    /// The leader hears nobody but is heard by all: its messages arrive, the answers do not.
    PartitionOneWay,
    /// Power cut to one member chosen at random: killed, and everything its disk had not synced
    /// is lost (sometimes the last unsynced write torn); restarted at the heal.
    PowerLoss,
    PowerLossMajority,
    PowerLossAll,
    /// One member's disk full: writes fail with ENOSPC until the heal.
    DiskFull,
    /// One member's disk fails every fsync with EIO until the heal.
    DiskEio,
}

pub const ALL: [Fault; 15] = [
    Fault::Kill,
    Fault::KillLeader,
    Fault::KillMajority,
    Fault::KillAll,
    Fault::Pause,
    Fault::PauseLeader,
    Fault::PartitionLeader,
    Fault::PartitionHalves,
    Fault::PartitionBridge,
    Fault::PartitionOneWay,
    Fault::PowerLoss,
    Fault::PowerLossMajority,
    Fault::PowerLossAll,
    Fault::DiskFull,
    Fault::DiskEio,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::KillMajority => "kill-majority",
            Fault::KillAll => "kill-all",
            Fault::Pause => "pause",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionBridge => "partition-bridge",
            Fault::PartitionOneWay => "partition-one-way",
            Fault::PowerLoss => "power-loss",
            Fault::PowerLossMajority => "power-loss-majority",
            Fault::PowerLossAll => "power-loss-all",
            Fault::DiskFull => "disk-full",
            Fault::DiskEio => "disk-eio",
        }
    }

    /// Whether the fault acts on the members' disks, which must then be lazyfs mounts.
    pub fn needs_lazyfs(self) -> bool {
        matches!(
            self,
            Fault::PowerLoss | Fault::PowerLossMajority | Fault::PowerLossAll | Fault::DiskFull | Fault::DiskEio
        )
    }

    /// Whether the fault needs to know the leader.
    pub fn targets_leader(self) -> bool {
        matches!(self, Fault::KillLeader | Fault::PauseLeader | Fault::PartitionLeader | Fault::PartitionOneWay)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
            format!("unknown nemesis {s:?} (one of: {})", names.join(", "))
        })
    }
}

/// A fault as it was applied: to whom, from when to when (ms since the run began).
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub fault: String,
    /// The members it hit, by name; for a partition, its sides.
    pub detail: String,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

/// Applies `fault`. `leader`: the current leader, if one is known (a leader fault without one
/// falls back to a random member). Returns what it did, in words.
pub fn apply<R: Rng>(
    fault: Fault,
    members: &mut Members,
    net: &Net,
    leader: Option<usize>,
    rng: &mut R,
) -> Result<String, HarnessError> {
    let n = members.len();
    let mut all: Vec<usize> = (0..n).collect();
    all.shuffle(rng);
    let target = if fault.targets_leader() { leader.unwrap_or(all[0]) } else { all[0] };
    let names = |ms: &[usize], members: &Members| ms.iter().map(|i| members.name(*i)).collect::<Vec<_>>().join(",");
    let majority = n / 2 + 1;
    Ok(match fault {
        Fault::Kill | Fault::KillLeader => {
            members.kill(target);
            format!("killed {}", members.name(target))
        }
        Fault::KillMajority | Fault::KillAll => {
            let hit = if fault == Fault::KillAll { &all[..] } else { &all[..majority] };
            for i in hit {
                members.kill(*i);
            }
            format!("killed {}", names(hit, members))
        }
        Fault::Pause | Fault::PauseLeader => {
            members.signal(target, true);
            format!("paused {}", members.name(target))
        }
        Fault::PartitionLeader => {
            let rest: Vec<usize> = (0..n).filter(|i| *i != target).collect();
            cut(net, &[target], &rest)?;
            format!("isolated {} from {}", members.name(target), names(&rest, members))
        }
        Fault::PartitionHalves => {
            let (big, small) = all.split_at(majority);
            cut(net, big, small)?;
            format!("{} | {}", names(big, members), names(small, members))
        }
        Fault::PartitionBridge => {
            // all[0] is the bridge; the others split in two sides that each reach it.
            let bridge = all[0];
            let (a, b) = all[1..].split_at((n - 1) / 2);
            cut(net, a, b)?;
            format!("{} | {}, both reaching {}", names(a, members), names(b, members), members.name(bridge))
        }
        Fault::PartitionOneWay => {
            for i in (0..n).filter(|i| *i != target) {
                net.drop_from(target, i)?;
            }
            format!("{} hears nobody, is heard by all", members.name(target))
        }
        Fault::PowerLoss | Fault::PowerLossMajority | Fault::PowerLossAll => {
            let hit = match fault {
                Fault::PowerLoss => &all[..1],
                Fault::PowerLossMajority => &all[..majority],
                _ => &all[..],
            };
            // All at once: every member is down before any disk is rolled back.
            for i in hit {
                members.kill(*i);
            }
            let mut lost = Vec::new();
            for i in hit {
                let tear = rng.gen_bool(0.5);
                let loss = members.power_loss(*i, tear, rng)?;
                lost.push(format!("{}: {loss}", members.name(*i)));
            }
            format!("power lost on {} ({})", names(hit, members), lost.join("; "))
        }
        Fault::DiskFull => {
            members.disk_fault(target, lazyfs::Fault::DiskFull)?;
            format!("{}'s disk full", members.name(target))
        }
        Fault::DiskEio => {
            members.disk_fault(target, lazyfs::Fault::SyncEio)?;
            format!("{}'s syncs fail (EIO)", members.name(target))
        }
    })
}

/// Cuts every link between sides `a` and `b`, both ways.
fn cut(net: &Net, a: &[usize], b: &[usize]) -> Result<(), HarnessError> {
    for x in a {
        for y in b {
            net.drop_from(*x, *y)?;
            net.drop_from(*y, *x)?;
        }
    }
    Ok(())
}

/// Heals every fault: partitions removed, paused members resumed, stopped ones restarted.
pub fn heal(members: &mut Members, net: &Net) -> Result<(), HarnessError> {
    net.heal()?;
    members.heal()
}
