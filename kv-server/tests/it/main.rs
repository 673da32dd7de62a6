//! Integration tests of kv-server: real `kv-server` processes on loopback, driven by the
//! third-party `etcd-client` crate and by raw gRPC where exact bytes matter.
#![cfg(not(madsim))]

mod harness;
mod t10_kv;
mod t20_model;
mod t30_restart;
mod t40_bad_input;
mod t50_cluster_info;
mod t60_cluster;
mod t70_failover;
mod t80_snapshot;
mod t85_catch_up;
mod t86_import_failover;
mod t90_consistency;
mod t93_lease;
mod t94_lock;
mod t95_client;
mod t96_etcdctl;
mod t97_watch;
mod t97_watch_stream;
mod t98_watch_failover;
mod t99_slow_watcher;
