//! Members on simulated nodes. Each member is started inside its node so a partition of the
//! node isolates its Raft traffic and its client port alike.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kv_api::etcdserverpb::{StatusRequest, StatusResponse};
use kv_server::ServerConfig;
use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::runtime::{Handle, NodeHandle};
use raft_core::engine::MemEngine;

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub members: usize,
    /// Applied entries between snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Bytes of snapshot data per InstallSnapshot RPC.
    pub snapshot_chunk_bytes: usize,
    /// Bugs the members run with (tests of the simulation itself).
    #[cfg(feature = "planted-bugs")]
    pub planted: raft_core::planted::PlantedBugs,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            members: 3,
            snapshot_count: ServerConfig::default().snapshot_count,
            snapshot_chunk_bytes: ServerConfig::default().snapshot_chunk_bytes,
            #[cfg(feature = "planted-bugs")]
            planted: Default::default(),
        }
    }
}

/// Member settings a sweep varies without editing code: environment variables read when a
/// cluster starts and applied to every member (and printed by the sweep and in its replay
/// commands). An unset one keeps kv-server's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `RAFTKV_SIM_HEARTBEAT_MS`: `--heartbeat-interval`.
    pub heartbeat_ms: Option<u64>,
    /// `RAFTKV_SIM_ELECTION_TIMEOUT_MS`: `--election-timeout`.
    pub election_timeout_ms: Option<u64>,
    /// `RAFTKV_SIM_MAX_APPEND_BYTES`: stored bytes of entries per AppendEntries (1: one entry).
    pub max_append_bytes: Option<u64>,
    /// `RAFTKV_SIM_MAX_PAYLOAD_ENTRIES`: entries per AppendEntries (openraft's count).
    pub max_payload_entries: Option<u64>,
}

const HEARTBEAT_MS: &str = "RAFTKV_SIM_HEARTBEAT_MS";
const ELECTION_TIMEOUT_MS: &str = "RAFTKV_SIM_ELECTION_TIMEOUT_MS";
const MAX_APPEND_BYTES: &str = "RAFTKV_SIM_MAX_APPEND_BYTES";
const MAX_PAYLOAD_ENTRIES: &str = "RAFTKV_SIM_MAX_PAYLOAD_ENTRIES";

impl Overrides {
    /// The overrides the environment sets. Panics, failing the test, on a value that is not a
    /// positive integer, on settings members would refuse (an election timeout not above the
    /// heartbeat), and on an unknown `RAFTKV_SIM_` variable (a misspelt one would otherwise
    /// sweep the defaults unnoticed).
    pub fn from_env() -> Overrides {
        Overrides::parse(std::env::vars_os()).unwrap_or_else(|e| panic!("simulation overrides: {e}"))
    }

    fn parse(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Result<Overrides, String> {
        let mut o = Overrides::default();
        for (key, value) in vars {
            let Some(key) = key.to_str().filter(|k| k.starts_with("RAFTKV_SIM_")) else { continue };
            let slot = match key {
                HEARTBEAT_MS => &mut o.heartbeat_ms,
                ELECTION_TIMEOUT_MS => &mut o.election_timeout_ms,
                MAX_APPEND_BYTES => &mut o.max_append_bytes,
                MAX_PAYLOAD_ENTRIES => &mut o.max_payload_entries,
                _ => {
                    return Err(format!(
                        "unknown variable {key} (known: {HEARTBEAT_MS}, {ELECTION_TIMEOUT_MS}, {MAX_APPEND_BYTES}, \
                         {MAX_PAYLOAD_ENTRIES})"
                    ))
                }
            };
            let parsed = value.to_str().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&v| v > 0);
            *slot = Some(parsed.ok_or_else(|| format!("{key}={value:?} is not a positive integer"))?);
        }
        let mut cfg = ServerConfig::default();
        o.apply(&mut cfg);
        cfg.validate().map_err(|e| format!("{o}: {e}"))?;
        Ok(o)
    }

    /// Sets the overridden settings in a member's configuration.
    pub fn apply(&self, cfg: &mut ServerConfig) {
        if let Some(ms) = self.heartbeat_ms {
            cfg.heartbeat_interval = ms;
        }
        if let Some(ms) = self.election_timeout_ms {
            cfg.election_timeout = ms;
        }
        if let Some(bytes) = self.max_append_bytes {
            cfg.max_append_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.max_payload_entries {
            cfg.max_payload_entries = n;
        }
    }

    fn vars(&self) -> Vec<String> {
        [
            (HEARTBEAT_MS, self.heartbeat_ms),
            (ELECTION_TIMEOUT_MS, self.election_timeout_ms),
            (MAX_APPEND_BYTES, self.max_append_bytes),
            (MAX_PAYLOAD_ENTRIES, self.max_payload_entries),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect()
    }

    /// The overrides as the start of a shell command (empty when none), e.g.
    /// `RAFTKV_SIM_MAX_PAYLOAD_ENTRIES=16 `.
    pub fn env_prefix(&self) -> String {
        self.vars().into_iter().map(|v| v + " ").collect()
    }
}

/// `RAFTKV_SIM_HEARTBEAT_MS=100 RAFTKV_SIM_ELECTION_TIMEOUT_MS=200`, or `none (defaults)`.
impl std::fmt::Display for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vars = self.vars();
        if vars.is_empty() {
            f.write_str("none (defaults)")
        } else {
            f.write_str(&vars.join(" "))
        }
    }
}

/// A simulated cluster, m1..mn on 10.0.0.1..n. Clones refer to the same members.
#[derive(Clone)]
pub struct SimCluster {
    /// Each member's simulated node.
    pub nodes: Vec<madsim::task::NodeId>,
    /// Each member's engine, kept across crashes (a crash drops what was not flushed).
    pub engines: Vec<Arc<MemEngine>>,
    /// Each member's client URL.
    pub endpoints: Vec<String>,
    /// A node of its own from which the harness asks members for their status and audits them.
    pub control: NodeHandle,
    /// Each member's lease clock rate.
    rates: Vec<f64>,
}

fn ip(i: usize) -> IpAddr {
    format!("10.0.0.{}", i + 1).parse().expect("valid IP")
}

impl SimCluster {
    /// Starts the members, with the [`Overrides`] of the environment; they elect a leader on
    /// their own.
    pub fn start(opts: &Options) -> SimCluster {
        let overrides = Overrides::from_env();
        let h = Handle::current();
        let n = opts.members;
        let initial: Vec<String> = (0..n).map(|i| format!("m{}=http://{}:2380", i + 1, ip(i))).collect();
        let initial = initial.join(",");
        let mut nodes = Vec::new();
        let mut engines = Vec::new();
        let mut rates = Vec::new();
        for i in 0..n {
            // The clock-rate nemesis: each member's lease clock runs fast or slow, within the
            // bound the lease guarantees assume.
            let bound = crate::leases::RATE_BOUND.ln();
            let rate = madsim::rand::thread_rng().gen_range(-bound..=bound).exp();
            rates.push(rate);
            let engine = Arc::new(MemEngine::new());
            let mut cfg = ServerConfig {
                name: format!("m{}", i + 1),
                data_dir: format!("/sim/m{}", i + 1).into(),
                listen_client_urls: vec![format!("http://{}:2379", ip(i))],
                listen_peer_urls: vec![format!("http://{}:2380", ip(i))],
                initial_cluster: Some(initial.clone()),
                request_timeout: Duration::from_secs(2),
                snapshot_count: opts.snapshot_count,
                snapshot_chunk_bytes: opts.snapshot_chunk_bytes,
                lease_clock_rate: rate,
                #[cfg(feature = "planted-bugs")]
                planted: opts.planted,
                ..ServerConfig::default()
            };
            overrides.apply(&mut cfg);
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
            nodes.push(node.id());
            engines.push(engine);
        }
        let control = h.create_node().name("control").ip("10.0.3.1".parse().expect("valid IP")).build();
        let endpoints = (0..n).map(|i| format!("http://{}:2379", ip(i))).collect();
        SimCluster { nodes, engines, endpoints, control, rates }
    }

    /// The members' lease clock rates, for the fault log.
    pub fn lease_clock_rates(&self) -> String {
        let each: Vec<String> = self.rates.iter().enumerate().map(|(i, r)| format!("m{} {r:.3}", i + 1)).collect();
        format!("lease clock rates: {}", each.join(", "))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// kill -9 of member `i` and power loss: of its unflushed writes, only a prefix reached the
    /// disk, of a length the seed picks (none, all, or a cut inside an apply's writes).
    pub fn crash(&self, i: usize) {
        use madsim::rand::{thread_rng, Rng};
        Handle::current().kill(self.nodes[i]);
        let engine = &self.engines[i];
        let kept = thread_rng().gen_range(0..=engine.unflushed_batches());
        engine.crash_keeping(kept);
    }

    /// Starts member `i` again on what its engine kept.
    pub fn restart(&self, i: usize) {
        Handle::current().restart(self.nodes[i]);
    }

    /// Stops member `i`'s process without killing it (SIGSTOP): its timers and peers move on.
    pub fn pause(&self, i: usize) {
        Handle::current().pause(self.nodes[i]);
    }

    pub fn resume(&self, i: usize) {
        Handle::current().resume(self.nodes[i]);
    }

    /// Cuts member `i` off from every other node (members and clients), both ways.
    pub fn isolate(&self, i: usize) {
        NetSim::current().clog_node(self.nodes[i]);
    }

    /// Drops every message from member `from` to member `to`; the other direction still works.
    pub fn clog_one_way(&self, from: usize, to: usize) {
        NetSim::current().clog_link(self.nodes[from], self.nodes[to]);
    }

    /// Cuts every link between members of different groups, both ways. Clients still reach
    /// every member.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        let net = NetSim::current();
        for (g, group) in groups.iter().enumerate() {
            for other in &groups[g + 1..] {
                for &a in group {
                    for &b in other {
                        net.clog_link(self.nodes[a], self.nodes[b]);
                        net.clog_link(self.nodes[b], self.nodes[a]);
                    }
                }
            }
        }
    }

    /// Undoes every isolation, clogged link and partition.
    pub fn heal_network(&self) {
        let net = NetSim::current();
        for &a in &self.nodes {
            net.unclog_node(a);
            for &b in &self.nodes {
                if a != b {
                    net.unclog_link(a, b);
                }
            }
        }
    }

    /// Every member's status, or None where it did not answer within 300 ms.
    pub async fn statuses(&self) -> Vec<Option<StatusResponse>> {
        let endpoints = self.endpoints.clone();
        self.control
            .spawn(async move {
                let mut out = Vec::new();
                for ep in endpoints {
                    let status = madsim::time::timeout(Duration::from_millis(300), async {
                        let mut m = MaintenanceClient::connect(ep).await.ok()?;
                        m.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
                    })
                    .await
                    .ok()
                    .flatten();
                    out.push(status);
                }
                out
            })
            .await
            .expect("control task")
    }

    /// The member that believes it leads in the highest term, if any answers.
    pub async fn leader(&self) -> Option<usize> {
        let statuses = self.statuses().await;
        statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                let me = s.header.as_ref()?.member_id;
                (s.leader == me && me != 0).then_some((s.raft_term, i))
            })
            .max()
            .map(|(_, i)| i)
    }
}
