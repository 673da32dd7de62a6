//! Members on simulated nodes. Each member is started inside its node so a partition of the
//! node isolates its Raft traffic and its client port alike.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kv_server::ServerConfig;
use madsim::net::NetSim;
use madsim::runtime::Handle;
use raft_core::engine::MemEngine;

/// A simulated cluster of `n` members, m1..mn on 10.0.0.1..n. Clones refer to the same members.
#[derive(Clone)]
pub struct SimCluster {
    /// Each member's simulated node.
    pub nodes: Vec<madsim::task::NodeId>,
    /// Each member's engine, kept across crashes (a crash drops what was not flushed).
    pub engines: Vec<Arc<MemEngine>>,
    /// Each member's client URL.
    pub endpoints: Vec<String>,
}

fn ip(i: usize) -> IpAddr {
    format!("10.0.0.{}", i + 1).parse().expect("valid IP")
}

impl SimCluster {
    /// Starts the members; they elect a leader on their own.
    pub fn start(n: usize) -> SimCluster {
        let h = Handle::current();
        let initial: Vec<String> = (0..n).map(|i| format!("m{}=http://{}:2380", i + 1, ip(i))).collect();
        let initial = initial.join(",");
        let mut c = SimCluster { nodes: Vec::new(), engines: Vec::new(), endpoints: Vec::new() };
        for i in 0..n {
            let engine = Arc::new(MemEngine::new());
            let cfg = ServerConfig {
                name: format!("m{}", i + 1),
                data_dir: format!("/sim/m{}", i + 1).into(),
                listen_client_urls: vec![format!("http://{}:2379", ip(i))],
                listen_peer_urls: vec![format!("http://{}:2380", ip(i))],
                initial_cluster: Some(initial.clone()),
                request_timeout: Duration::from_secs(2),
                ..ServerConfig::default()
            };
            let e = engine.clone();
            let node = h
                .create_node()
                .name(format!("m{}", i + 1))
                .ip(ip(i))
                .init(move || {
                    let (cfg, e) = (cfg.clone(), e.clone());
                    async move {
                        let running = kv_server::start_with_engine(cfg, e).await.expect("member starts");
                        let _ = running.stop_on(std::future::pending::<()>()).await;
                    }
                })
                .build();
            c.nodes.push(node.id());
            c.engines.push(engine);
            c.endpoints.push(format!("http://{}:2379", ip(i)));
        }
        c
    }

    /// kill -9 of member `i` and of its unflushed writes.
    pub fn crash(&self, i: usize) {
        Handle::current().kill(self.nodes[i]);
        self.engines[i].crash();
    }

    /// Starts member `i` again on what its engine kept.
    pub fn restart(&self, i: usize) {
        Handle::current().restart(self.nodes[i]);
    }

    /// Cuts member `i` off from every other node, both ways.
    pub fn isolate(&self, i: usize) {
        NetSim::current().clog_node(self.nodes[i]);
    }

    pub fn heal(&self, i: usize) {
        NetSim::current().unclog_node(self.nodes[i]);
    }
}
