//! Every scenario over the seeds MADSIM_TEST_SEED..+MADSIM_TEST_NUM, each run printing
//! `sim-digest <scenario> seed=<S> <hex>`; a failure prints the command that replays it.
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim MADSIM_TEST_SEED=<S> MADSIM_TEST_NUM=<N>
//! cargo test -p simulation --release` (or `cargo xtask sim <N> <S>`)
#![cfg(madsim)]

use simulation::scenario::{scenario, sweep};

#[test]
fn isolate_leader() {
    sweep(scenario("isolate_leader"), "isolate_leader");
}

#[test]
fn partitions() {
    sweep(scenario("partitions"), "partitions");
}

#[test]
fn lossy_network() {
    sweep(scenario("lossy_network"), "lossy_network");
}

#[test]
fn crashes() {
    sweep(scenario("crashes"), "crashes");
}

#[test]
fn pauses() {
    sweep(scenario("pauses"), "pauses");
}

#[test]
fn snapshot_catchup() {
    sweep(scenario("snapshot_catchup"), "snapshot_catchup");
}

#[test]
fn random_faults() {
    sweep(scenario("random_faults"), "random_faults");
}
