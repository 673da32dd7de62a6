//! Compiles raftkv's etcd v3 protos and the internal peer proto. protoc comes from the `protoc-bin-vendored` crate, so a fresh
//! machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts run single-threaded; tonic-build reads PROTOC from the environment.
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/mvccpb/kv.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/raftkvpb/peer.proto",
    ];
    // Event is written by hand (src/watch_event.rs): a server encodes it once for many watchers.
    tonic_build::configure()
        .extern_path(".mvccpb.Event", "crate::mvccpb::Event")
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
