//! Server configuration: etcd's flag names where the concept is the same, or a TOML file
//! (`--config-file`) with the same keys in kebab-case. As in etcd, a config file replaces the
//! command-line flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use raft_core::ids;
use raft_core::typ::PeerNode;
use serde::Deserialize;

/// How this member joins: by forming a new cluster, or by joining an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    New,
    Existing,
}

/// raftkv server: a Raft-replicated key-value store speaking the etcd v3 API.
#[derive(Clone, Debug, Parser, Deserialize)]
#[command(name = "kv-server", version, about)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerConfig {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory of the member's data (created if missing).
    #[arg(long, default_value = "./raftkv-data")]
    pub data_dir: PathBuf,
    /// URLs to serve clients on (comma-separated, http only). Port 0 picks a free port.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,
    /// Client URLs published to the cluster (default: the listen URLs).
    #[arg(long, value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// URLs to serve peers on.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs of this member as the others know them (default: the listen peer URLs).
    #[arg(long, value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial members: name=peer-url,... (default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` forms a cluster on an empty data dir; `existing` never initializes one.
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Token that makes member and cluster ids unique to this cluster.
    #[arg(long, default_value = "raftkv-cluster")]
    pub initial_cluster_token: String,
    /// Leader heartbeat period in milliseconds.
    #[arg(long, default_value_t = raft_core::node::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_interval: u64,
    /// Election timeout E in milliseconds: a follower that hears no leader for 2E (the leader's
    /// lease) plus a random time in [E, 2E) starts an election (docs/operations.md).
    #[arg(long, default_value_t = raft_core::node::DEFAULT_ELECTION_TIMEOUT_MS)]
    pub election_timeout: u64,
    /// Largest request accepted, in bytes.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Most operations in one txn branch.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Applied entries between snapshots.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Bound on a proposal or a linearizable read, e.g. `5s`, `500ms`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// How often an idle watch created with `progress_notify` gets a progress response, e.g.
    /// `10m` (etcd's default and its `--experimental-watch-progress-notify-interval`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub watch_progress_notify_interval: Duration,
    /// How often the leader writes its lease clock to the log, e.g. `500ms`: an abandoned lease
    /// may outlive its TTL by this much (plus an election) when the leader changes
    /// (docs/coordination.md).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub lease_checkpoint_interval: Duration,
    /// Most write requests batched into one Raft entry; 1 disables batching.
    #[arg(long, default_value_t = 512)]
    pub max_batch_requests: usize,
    /// Whether concurrent linearizable reads share one leadership confirmation (quorum round);
    /// `false` only to measure what sharing saves.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub share_read_index: bool,
    /// Read the configuration from this TOML file instead of the flags.
    #[arg(long)]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Most stored bytes of log entries one AppendEntries carries (raft-core's `NodeConfig`).
    /// No flag or key: the default suits every deployment; the simulation varies it.
    #[arg(skip = raft_core::log_store::MAX_APPEND_BYTES)]
    #[serde(skip)]
    pub max_append_bytes: usize,
    /// Most entries one AppendEntries carries (openraft's `max_payload_entries`). No flag or
    /// key, as above.
    #[arg(skip = raft_core::NodeConfig::default().max_payload_entries)]
    #[serde(skip)]
    pub max_payload_entries: u64,
    /// Bytes of snapshot data per InstallSnapshot RPC (raft-core's `NodeConfig`). No flag or
    /// key, as above: the simulation lowers it so a transfer takes many round trips.
    #[arg(skip = raft_core::NodeConfig::default().snapshot_chunk_bytes)]
    #[serde(skip)]
    pub snapshot_chunk_bytes: usize,
    /// The rate of this member's lease clock against its monotonic clock (raft-core's
    /// `NodeConfig`): 1 but in the simulation, which tests leases under clock drift. No flag.
    #[arg(skip = 1.0)]
    #[serde(skip, default = "one")]
    pub lease_clock_rate: f64,
    /// Bugs planted on purpose for the simulation (feature `planted-bugs`; no flag sets them).
    #[cfg(feature = "planted-bugs")]
    #[arg(skip)]
    #[serde(skip)]
    pub planted: raft_core::planted::PlantedBugs,
}

fn one() -> f64 {
    1.0
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::parse_from(["kv-server"])
    }
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub id: u64,
    pub peer_urls: Vec<String>,
}

impl ServerConfig {
    /// The effective configuration: the file's when `--config-file` is given, else the flags.
    pub fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let Some(path) = &self.config_file else { return Ok(self) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("invalid config file {}: {e}", path.display())))
    }

    pub fn advertise_client_urls(&self) -> Vec<String> {
        if self.advertise_client_urls.is_empty() {
            self.listen_client_urls.clone()
        } else {
            self.advertise_client_urls.clone()
        }
    }

    pub fn advertise_peer_urls(&self) -> Vec<String> {
        if self.initial_advertise_peer_urls.is_empty() {
            self.listen_peer_urls.clone()
        } else {
            self.initial_advertise_peer_urls.clone()
        }
    }

    /// Parses `--initial-cluster` into members with their ids, sorted by name.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let spec = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => {
                self.advertise_peer_urls().iter().map(|u| format!("{}={u}", self.name)).collect::<Vec<_>>().join(",")
            }
        };
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("--initial-cluster: expected name=url, got {part:?}")))?;
            parse_http_url(url).map_err(|e| ConfigError(format!("--initial-cluster: {e}")))?;
            by_name.entry(name.to_string()).or_default().push(url.to_string());
        }
        if by_name.is_empty() {
            return Err(ConfigError("--initial-cluster is empty".into()));
        }
        Ok(by_name
            .into_iter()
            .map(|(name, peer_urls)| InitialMember {
                id: ids::member_id(&self.initial_cluster_token, &peer_urls),
                name,
                peer_urls,
            })
            .collect())
    }

    /// This member's entry of the initial cluster.
    pub fn me(&self, members: &[InitialMember]) -> Result<InitialMember, ConfigError> {
        let me = members
            .iter()
            .find(|m| m.name == self.name)
            .ok_or_else(|| ConfigError(format!("--initial-cluster has no member named {:?}", self.name)))?;
        let mut mine = self.advertise_peer_urls();
        mine.sort();
        let mut listed = me.peer_urls.clone();
        listed.sort();
        if mine != listed {
            return Err(ConfigError(format!(
                "--initial-cluster lists {listed:?} for {:?} but its advertised peer URLs are {mine:?}",
                self.name
            )));
        }
        Ok(me.clone())
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for u in self.listen_client_urls.iter().chain(&self.listen_peer_urls).chain(&self.advertise_client_urls) {
            parse_http_url(u)?;
        }
        if self.listen_client_urls.is_empty() {
            return Err(ConfigError("--listen-client-urls is empty".into()));
        }
        if self.heartbeat_interval == 0 || self.election_timeout <= self.heartbeat_interval {
            return Err(ConfigError(format!(
                "--election-timeout ({} ms) must be greater than --heartbeat-interval ({} ms), which must be positive",
                self.election_timeout, self.heartbeat_interval
            )));
        }
        if self.max_request_bytes == 0
            || self.max_txn_ops == 0
            || self.snapshot_count == 0
            || self.max_batch_requests == 0
        {
            return Err(ConfigError(
                "--max-request-bytes, --max-txn-ops, --snapshot-count and --max-batch-requests must be positive".into(),
            ));
        }
        if self.max_append_bytes == 0 || self.max_payload_entries == 0 || self.snapshot_chunk_bytes == 0 {
            return Err(ConfigError(
                "max_append_bytes, max_payload_entries and snapshot_chunk_bytes must be positive".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError("--request-timeout must be positive".into()));
        }
        if self.watch_progress_notify_interval.is_zero() {
            return Err(ConfigError("--watch-progress-notify-interval must be positive".into()));
        }
        if self.lease_checkpoint_interval.is_zero() {
            return Err(ConfigError("--lease-checkpoint-interval must be positive".into()));
        }
        if self.listen_peer_urls.is_empty() {
            return Err(ConfigError("--listen-peer-urls is empty".into()));
        }
        let members = self.initial_members()?;
        self.me(&members)?;
        let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != members.len() {
            return Err(ConfigError("--initial-cluster lists the same peer URLs under two names".into()));
        }
        if members.len() > 1 && members.iter().flat_map(|m| &m.peer_urls).any(|u| u.ends_with(":0")) {
            return Err(ConfigError(
                "--initial-cluster: peer URLs of a multi-member cluster need real ports, not 0".into(),
            ));
        }
        Ok(())
    }

    /// The openraft membership of the initial cluster.
    pub fn initial_membership(&self) -> Result<BTreeMap<u64, PeerNode>, ConfigError> {
        Ok(self.initial_members()?.into_iter().map(|m| (m.id, PeerNode { peer_urls: m.peer_urls })).collect())
    }
}

/// Validates an `http://host:port` URL and returns `host:port`.
pub fn parse_http_url(u: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(u).map_err(|e| ConfigError(format!("invalid URL {u:?}: {e}")))?;
    if url.scheme() != "http" {
        return Err(ConfigError(format!("invalid URL {u:?}: only http:// is supported")));
    }
    let host = url.host_str().ok_or_else(|| ConfigError(format!("invalid URL {u:?}: no host")))?;
    let port = url.port().ok_or_else(|| ConfigError(format!("invalid URL {u:?}: no port")))?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_is_a_one_member_store_on_2379() {
        let c = ServerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./raftkv-data"));
        assert_eq!(parse_http_url(&c.listen_client_urls[0]).unwrap(), "127.0.0.1:2379");
        let members = c.initial_members().unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].peer_urls, vec!["http://127.0.0.1:2380".to_string()]);
        let node = raft_core::NodeConfig::default();
        assert_eq!((c.max_append_bytes, c.max_payload_entries), (node.max_append_bytes, node.max_payload_entries));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        let parse = |args: &[&str]| {
            let mut v = vec!["kv-server"];
            v.extend_from_slice(args);
            ServerConfig::try_parse_from(v).map_err(|e| e.to_string()).and_then(|c| c.validate().map_err(|e| e.0))
        };
        assert!(parse(&["--listen-client-urls", "ftp://x:1"]).unwrap_err().contains("only http"));
        assert!(parse(&["--initial-cluster", "other=http://127.0.0.1:2380"]).unwrap_err().contains("no member named"));
        assert!(parse(&["--election-timeout", "30"]).unwrap_err().contains("greater than"));
        let two_names_one_url = "default=http://127.0.0.1:2380,other=http://127.0.0.1:2380";
        assert!(parse(&["--initial-cluster", two_names_one_url]).unwrap_err().contains("under two names"));
        let port_zero = ["--listen-peer-urls", "http://127.0.0.1:0", "--initial-cluster"];
        let cluster = "default=http://127.0.0.1:0,other=http://127.0.0.1:2381";
        assert!(parse(&[&port_zero[..], &[cluster]].concat()).unwrap_err().contains("need real ports"));
        assert!(parse(&["--request-timeout", "soon"]).is_err());
        assert!(parse(&["--lease-checkpoint-interval", "0s"]).unwrap_err().contains("must be positive"));
        assert!(parse(&["--watch-progress-notify-interval", "0s"]).unwrap_err().contains("must be positive"));
    }

    #[test]
    fn config_file_uses_the_flag_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftkv.toml");
        std::fs::write(&path, "name = \"n9\"\nrequest-timeout = \"750ms\"\nmax-txn-ops = 7\n").unwrap();
        let c = ServerConfig { config_file: Some(path.clone()), ..ServerConfig::default() }.resolve().unwrap();
        assert_eq!((c.name.as_str(), c.max_txn_ops, c.request_timeout), ("n9", 7, Duration::from_millis(750)));
        // Settings without a key keep raft-core's defaults.
        let node = raft_core::NodeConfig::default();
        assert_eq!((c.max_append_bytes, c.max_payload_entries), (node.max_append_bytes, node.max_payload_entries));
        assert_eq!(c.lease_clock_rate, 1.0, "a member started from a file runs its lease clock in real time");
        std::fs::write(&path, "nmae = \"typo\"\n").unwrap();
        let err = ServerConfig { config_file: Some(path), ..ServerConfig::default() }.resolve().unwrap_err();
        assert!(err.0.contains("unknown field"), "{err}");
    }
}
