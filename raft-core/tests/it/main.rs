//! raft-core integration tests: the stores under openraft's own suite, the crash model of the
//! in-memory engine, the fsyncs on the acknowledgement path, installing a leader's snapshot, and
//! snapshots and starts that read the stored snapshot, the apply event seam, and a snapshot
//! build whose file fails to sync.
#![cfg(not(madsim))]

mod common;
mod t10_openraft_suite;
mod t20_crash;
mod t30_fsync;
mod t40_read_index;
mod t50_append_bound;
mod t60_snapshot_install;
mod t70_snapshot_base;
mod t80_events;
mod t90_sync_failure;
