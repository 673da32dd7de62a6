//! The simulation's teeth: members run with a planted bug (feature `planted-bugs`), and each
//! bug must be found within 200 seeds of its scenario, from MADSIM_TEST_SEED on. The failing
//! seed is then run again in a fresh process and must fail the same way with the same digest.
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim MADSIM_TEST_SEED=<S> cargo test -p
//! simulation --release --features planted-bugs --test planted` (or `cargo xtask sim`)
#![cfg(all(madsim, feature = "planted-bugs"))]

use raft_core::planted::PlantedBugs;
use simulation::cluster::Options;
use simulation::scenario::{child, replay_command, run_isolated, scenario, seeds_from_env};

/// Seeds a planted bug may take to be found.
const BUDGET: u64 = 200;

fn found_and_replayed(scenario_name: &str, test: &str, bugs: PlantedBugs) {
    let sc = scenario(scenario_name);
    if child(sc, &Options { planted: bugs, ..Options::default() }) {
        return;
    }
    let base = seeds_from_env().start;
    for seed in base..base + BUDGET {
        let outcome = run_isolated(test, seed);
        let Some(failure) = &outcome.failure else { continue };
        println!(
            "planted {bugs:?}: found by {scenario_name} at seed {seed}, the {}th seed: {}",
            seed - base + 1,
            failure.lines().next().unwrap_or_default()
        );
        let again = run_isolated(test, seed);
        assert_eq!(again, outcome, "seed {seed} did not replay the same failure");
        println!(
            "replayed seed {seed}: same digest {} and failure; replay: {}",
            again.digest,
            replay_command(test, seed, " --features planted-bugs")
        );
        return;
    }
    panic!("{bugs:?} was not found within {BUDGET} seeds of {scenario_name} from seed {base}");
}

/// Linearizable reads served from local state: a leader cut off from the other members keeps
/// answering its clients with values the new leader has overwritten.
#[test]
fn local_linearizable_reads_are_found() {
    let bugs = PlantedBugs { local_linearizable_reads: true, ..PlantedBugs::default() };
    found_and_replayed("isolate_leader", "local_linearizable_reads_are_found", bugs);
}

/// The leader counts its own copy of an entry towards the quorum before its sync: a crash of
/// the leader drops the entry from its log, and an election it then helps win can overwrite an
/// entry a client was told is committed.
#[test]
fn leader_counted_before_flush_is_found() {
    let bugs = PlantedBugs { leader_counted_before_flush: true, ..PlantedBugs::default() };
    found_and_replayed("crashes", "leader_counted_before_flush_is_found", bugs);
}

/// Appends acknowledged before they are flushed: killing a majority loses entries a quorum
/// counted as stored, and with them acknowledged writes.
#[test]
fn ack_before_flush_is_found() {
    let bugs = PlantedBugs { ack_before_flush: true, ..PlantedBugs::default() };
    found_and_replayed("crashes", "ack_before_flush_is_found", bugs);
}

/// A watch that has caught up from the stored history skips the first revision it then takes
/// live: the watchers' check finds the revision missing.
#[test]
fn watch_skip_at_switch_is_found() {
    let bugs = PlantedBugs { watch_skip_at_switch: true, ..PlantedBugs::default() };
    found_and_replayed("crashes", "watch_skip_at_switch_is_found", bugs);
}

/// The leader's lease checkpoints leave renewals out: a new leader counts each lease from what
/// it had left before its holder renewed it, and a key whose holder keeps renewing vanishes.
#[test]
fn lease_forget_renewals_is_found() {
    let bugs = PlantedBugs { lease_forget_renewals: true, ..PlantedBugs::default() };
    found_and_replayed("crashes", "lease_forget_renewals_is_found", bugs);
}

/// A lock or campaign granted once no key is left ahead, without checking that the waiter's
/// own key and lease are still there: a locker that abandoned its lease while waiting is told
/// it holds the lock (etcd issue 11456).
#[test]
fn lock_grant_unchecked_is_found() {
    let bugs = PlantedBugs { lock_grant_unchecked: true, ..PlantedBugs::default() };
    found_and_replayed("pauses", "lock_grant_unchecked_is_found", bugs);
}
