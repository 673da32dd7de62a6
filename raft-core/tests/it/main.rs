//! raft-core integration tests: the stores under openraft's own suite, the crash model of the
//! in-memory engine, and the fsyncs on the acknowledgement path.
#![cfg(not(madsim))]

mod common;
mod t10_openraft_suite;
mod t20_crash;
mod t30_fsync;
mod t40_read_index;
mod t50_append_bound;
