//! Faults, driven by the seed. A scenario names the faults it allows; the nemesis applies one
//! at a time, holds it for a random while, undoes it, rests, and logs every step so a failing
//! seed says what happened to the cluster.

use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::seq::SliceRandom;
use madsim::rand::{thread_rng, Rng};
use madsim::time::{sleep, Instant};

use crate::cluster::SimCluster;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The leader is cut off from the other members; clients still reach it.
    IsolateLeader,
    /// A random member is cut off from everything, clients included.
    IsolateOne,
    /// The members split into a random minority and majority.
    Split,
    /// A random member's messages to the others are dropped; it still hears them.
    OneWay,
    /// Two halves that cannot see each other, and one member that sees both.
    Bridge,
    /// Each member lands on a random side of a two-way split.
    RandomPartition,
    /// Every message is delayed by up to 50–200 ms, and some are lost.
    DelayLoss,
    /// A random member is killed (losing unflushed writes) and restarted.
    CrashOne,
    /// The leader is killed and restarted.
    CrashLeader,
    /// A majority is killed at once and restarted.
    CrashMajority,
    /// A random member's process is paused, then resumed.
    PauseOne,
    /// The leader's process is paused, then resumed.
    PauseLeader,
}

/// Every fault the nemesis knows.
pub const ALL: [Fault; 12] = [
    Fault::IsolateLeader,
    Fault::IsolateOne,
    Fault::Split,
    Fault::OneWay,
    Fault::Bridge,
    Fault::RandomPartition,
    Fault::DelayLoss,
    Fault::CrashOne,
    Fault::CrashLeader,
    Fault::CrashMajority,
    Fault::PauseOne,
    Fault::PauseLeader,
];

/// The longest one-way delay [`Fault::DelayLoss`] sets.
pub const MAX_DELAY: Duration = Duration::from_millis(200);

/// How to undo an applied fault.
enum Undo {
    Network,
    Restart(Vec<usize>),
    Resume(usize),
}

/// Applies random faults from `faults` for `for_how_long`; returns the log of what it did
/// (times in ms since `clock`, the clients' start, so they match the history's). Everything is
/// healed, restarted and resumed when it returns.
pub async fn run(c: &SimCluster, faults: &[Fault], for_how_long: Duration, clock: Instant) -> Vec<String> {
    let start = Instant::now();
    let mut log = Vec::new();
    while start.elapsed() < for_how_long {
        let fault = *faults.choose(&mut thread_rng()).expect("a scenario allows some fault");
        let (what, undo) = apply(c, fault).await;
        log.push(format!("{} ms: {what}", clock.elapsed().as_millis()));
        let hold = Duration::from_millis(thread_rng().gen_range(200..2000));
        sleep(hold).await;
        match undo {
            Undo::Network => {
                c.heal_network();
                NetSim::current().update_config(|cfg| *cfg = Default::default());
            }
            Undo::Restart(members) => members.iter().for_each(|&i| c.restart(i)),
            Undo::Resume(i) => c.resume(i),
        }
        log.push(format!("{} ms: healed", clock.elapsed().as_millis()));
        sleep(Duration::from_millis(thread_rng().gen_range(200..1000))).await;
    }
    log
}

/// A random member, or the leader where the fault targets it (a random member if none leads).
async fn target(c: &SimCluster, leader: bool) -> usize {
    if leader {
        if let Some(l) = c.leader().await {
            return l;
        }
    }
    thread_rng().gen_range(0..c.len())
}

/// Member indices in a random order.
fn shuffled(c: &SimCluster) -> Vec<usize> {
    let mut members: Vec<usize> = (0..c.len()).collect();
    members.shuffle(&mut thread_rng());
    members
}

async fn apply(c: &SimCluster, fault: Fault) -> (String, Undo) {
    let n = c.len();
    match fault {
        Fault::IsolateLeader => {
            let l = target(c, true).await;
            let rest = (0..n).filter(|&i| i != l).collect();
            c.partition(&[vec![l], rest]);
            (format!("m{} (leader) cut off from the members", l + 1), Undo::Network)
        }
        Fault::IsolateOne => {
            let i = target(c, false).await;
            c.isolate(i);
            (format!("m{} cut off from everything", i + 1), Undo::Network)
        }
        Fault::Split => {
            let members = shuffled(c);
            let (minority, majority) = members.split_at((n - 1) / 2);
            c.partition(&[minority.to_vec(), majority.to_vec()]);
            (format!("split {} | {}", names(minority), names(majority)), Undo::Network)
        }
        Fault::OneWay => {
            let i = target(c, thread_rng().gen_bool(0.5)).await;
            for j in (0..n).filter(|&j| j != i) {
                c.clog_one_way(i, j);
            }
            (format!("m{}'s messages to the members dropped", i + 1), Undo::Network)
        }
        Fault::Bridge => {
            let members = shuffled(c);
            let (bridge, rest) = members.split_first().expect("a cluster has members");
            let (left, right) = rest.split_at(rest.len() / 2);
            c.partition(&[left.to_vec(), right.to_vec()]);
            (format!("bridge m{} between {} and {}", bridge + 1, names(left), names(right)), Undo::Network)
        }
        Fault::RandomPartition => {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for i in 0..n {
                if thread_rng().gen_bool(0.5) {
                    a.push(i)
                } else {
                    b.push(i)
                }
            }
            c.partition(&[a.clone(), b.clone()]);
            (format!("partition {} | {}", names(&a), names(&b)), Undo::Network)
        }
        Fault::DelayLoss => {
            let (loss, max) = {
                let mut rng = thread_rng();
                (rng.gen_range(0.0..0.2), Duration::from_millis(rng.gen_range(50..=MAX_DELAY.as_millis() as u64)))
            };
            NetSim::current().update_config(|cfg| {
                cfg.packet_loss_rate = loss;
                cfg.send_latency = Duration::from_millis(1)..max;
            });
            (format!("messages delayed up to {max:?}, {:.0}% lost", loss * 100.0), Undo::Network)
        }
        Fault::CrashOne | Fault::CrashLeader => {
            let i = target(c, fault == Fault::CrashLeader).await;
            c.crash(i);
            (format!("m{} killed", i + 1), Undo::Restart(vec![i]))
        }
        Fault::CrashMajority => {
            let mut members = shuffled(c);
            members.truncate(n / 2 + 1);
            members.iter().for_each(|&i| c.crash(i));
            (format!("{} killed", names(&members)), Undo::Restart(members))
        }
        Fault::PauseOne | Fault::PauseLeader => {
            let i = target(c, fault == Fault::PauseLeader).await;
            c.pause(i);
            (format!("m{} paused", i + 1), Undo::Resume(i))
        }
    }
}

fn names(members: &[usize]) -> String {
    let names: Vec<String> = members.iter().map(|i| format!("m{}", i + 1)).collect();
    format!("{{{}}}", names.join(","))
}
