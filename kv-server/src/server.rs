//! Assembles a member: opens the engine, starts the node, bootstraps a new cluster, publishes
//! the member's attributes, serves the client API and drains on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::cluster_server::ClusterServer;
use kv_api::etcdserverpb::kv_server::KvServer;
use kv_api::etcdserverpb::lease_server::LeaseServer;
use kv_api::etcdserverpb::maintenance_server::MaintenanceServer;
use kv_api::etcdserverpb::watch_server::WatchServer;
use kv_api::raftkvpb::peer_server::PeerServer;
use kv_api::v3electionpb::election_server::ElectionServer;
use kv_api::v3lockpb::lock_server::LockServer;
use raft_core::engine::Engine;
use raft_core::mvcc::validate::Limits;
use raft_core::network::service::PeerService;
use raft_core::network::{MAX_PEER_MESSAGE, PEER_KEEPALIVE_INTERVAL, PEER_KEEPALIVE_TIMEOUT};
use raft_core::{ids, BatchConfig, MemberAttrs, Node, NodeConfig, NodeError, WriteRequest};
use tokio::sync::oneshot;

use crate::config::{parse_http_url, ClusterState, ConfigError, ServerConfig};
use crate::net::Listeners;
use crate::service::cluster::ClusterService;
use crate::service::election::ElectionService;
use crate::service::kv::KvService;
use crate::service::lease::LeaseService;
use crate::service::lock::LockService;
use crate::service::maintenance::MaintenanceService;
use crate::service::watch::WatchService;
use crate::service::Ctx;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("storage: {0}")]
    Engine(#[from] raft_core::engine::EngineError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Raft stopped on its own (a storage failure): the member exits so that a supervisor
    /// restarts it, and the restart reads back what is really on disk.
    #[error("stopped serving: {0} (restart the member once the cause is fixed; it recovers from what its disk holds)")]
    Failed(String),
}

/// gRPC's receive limit sits above the request limit (etcd: + 512 KiB), so an oversized request
/// still decodes and gets etcd's "request is too large" instead of a transport error.
const GRPC_OVERHEAD: usize = 512 * 1024;

/// Opens the default engine for `dir`: sled, or the in-memory engine under simulation.
#[cfg(not(madsim))]
pub fn open_engine(dir: &std::path::Path) -> Result<Arc<raft_core::engine::SledEngine>, ServerError> {
    Ok(Arc::new(raft_core::engine::SledEngine::open(dir)?))
}

/// Opens the default engine for `dir`: sled, or the in-memory engine under simulation.
#[cfg(madsim)]
pub fn open_engine(_dir: &std::path::Path) -> Result<Arc<raft_core::engine::MemEngine>, ServerError> {
    Ok(Arc::new(raft_core::engine::MemEngine::new()))
}

/// What the drain at shutdown waits beyond the request timeout before it closes the client
/// connections that are still open.
const DRAIN_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a member with the default engine until `shutdown` resolves.
pub async fn run(cfg: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    cfg.validate()?;
    let engine = open_engine(&cfg.data_dir)?;
    run_with_engine(cfg, engine, shutdown).await
}

/// Runs a member on `engine` until `shutdown` resolves (or serving fails).
pub async fn run_with_engine<E: Engine>(
    cfg: ServerConfig,
    engine: Arc<E>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let running = start_with_engine(cfg, engine).await?;
    running.stop_on(shutdown).await
}

/// A started member, serving clients until stopped.
pub struct Running {
    /// The client URLs actually bound (port 0 resolved).
    pub client_urls: Vec<String>,
    /// This member's id.
    pub member_id: u64,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Drains in-flight requests, stops Raft and flushes storage.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.stop_on(async {}).await
    }

    /// Serves until `shutdown` resolves, then stops as [`Running::stop`] does.
    pub async fn stop_on(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        tokio::select! {
            _ = shutdown => {
                let _ = self.stop.send(());
                join(self.task.await)
            }
            done = &mut self.task => join(done),
        }
    }
}

fn join(r: Result<Result<(), ServerError>, tokio::task::JoinError>) -> Result<(), ServerError> {
    r.unwrap_or_else(|e| {
        Err(ServerError::Io { context: "server task".into(), source: std::io::Error::other(e.to_string()) })
    })
}

/// Starts a member with the default engine.
pub async fn start(cfg: ServerConfig) -> Result<Running, ServerError> {
    cfg.validate()?;
    let engine = open_engine(&cfg.data_dir)?;
    start_with_engine(cfg, engine).await
}

/// Starts a member on `engine`: opens the node, bootstraps a new cluster, binds the client
/// listeners and serves in the background. Returns once clients can connect.
pub async fn start_with_engine<E: Engine>(cfg: ServerConfig, engine: Arc<E>) -> Result<Running, ServerError> {
    Ok(start_member(cfg, engine).await?.0)
}

/// [`start_with_engine`], also returning the services' shared context (for embedding).
pub(crate) async fn start_member<E: Engine>(
    cfg: ServerConfig,
    engine: Arc<E>,
) -> Result<(Running, Arc<Ctx<E>>), ServerError> {
    cfg.validate()?;
    let members = cfg.initial_members()?;
    let me = cfg.me(&members)?;
    let wanted = ids::cluster_id(&cfg.initial_cluster_token, members.iter().map(|m| m.id));
    let node_cfg = NodeConfig {
        id: me.id,
        cluster_id: wanted,
        heartbeat_interval: Duration::from_millis(cfg.heartbeat_interval),
        election_timeout: Duration::from_millis(cfg.election_timeout),
        snapshot_count: cfg.snapshot_count,
        request_timeout: cfg.request_timeout,
        batch: BatchConfig { max_requests: cfg.max_batch_requests, ..BatchConfig::default() },
        share_read_index: cfg.share_read_index,
        max_append_bytes: cfg.max_append_bytes,
        max_payload_entries: cfg.max_payload_entries,
        snapshot_chunk_bytes: cfg.snapshot_chunk_bytes,
        lease_checkpoint_interval: cfg.lease_checkpoint_interval,
        lease_clock_rate: cfg.lease_clock_rate,
        #[cfg(feature = "planted-bugs")]
        planted: cfg.planted,
    };
    let node = Node::start(node_cfg, engine).await?;
    let cluster_id = node.cluster_id();

    // Peers first: other members may already be waiting for this one to vote.
    let peer_addrs = cfg.listen_peer_urls.iter().map(|u| parse_http_url(u)).collect::<Result<Vec<_>, _>>()?;
    let peer_listeners = Listeners::bind(&peer_addrs)
        .await
        .map_err(|source| ServerError::Io { context: format!("cannot listen for peers on {peer_addrs:?}"), source })?;
    let peer_router = crate::net::server()
        .http2_keepalive_interval(Some(PEER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(PEER_KEEPALIVE_TIMEOUT))
        .add_service(
            PeerServer::new(PeerService::new(node.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        );
    let (stop_peers, peers_stopped) = oneshot::channel::<()>();
    let peer_task = tokio::spawn(peer_listeners.serve(peer_router, async {
        let _ = peers_stopped.await;
    }));

    // On restart with data the cluster flags are ignored, as in etcd.
    if cfg.initial_cluster_state == ClusterState::New {
        node.bootstrap(cfg.initial_membership()?).await?;
    }

    let addrs = cfg.listen_client_urls.iter().map(|u| parse_http_url(u)).collect::<Result<Vec<_>, _>>()?;
    let listeners = Listeners::bind(&addrs)
        .await
        .map_err(|source| ServerError::Io { context: format!("cannot listen on {addrs:?}"), source })?;
    let bound = listeners
        .local_addrs()
        .map_err(|source| ServerError::Io { context: "cannot read listen address".into(), source })?;
    let bound_urls: Vec<String> = bound.iter().map(|a| format!("http://{a}")).collect();
    let client_urls =
        if cfg.advertise_client_urls.is_empty() { bound_urls.clone() } else { cfg.advertise_client_urls() };

    let limits = Limits { max_request_bytes: cfg.max_request_bytes, max_txn_ops: cfg.max_txn_ops };
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(Ctx { node: node.clone(), limits, cluster_id, alarms: Default::default(), closing });
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD;
    let router = crate::net::server()
        .add_service(KvServer::new(KvService::new(ctx.clone())).max_decoding_message_size(max_msg))
        .add_service(MaintenanceServer::new(MaintenanceService::new(ctx.clone())).max_decoding_message_size(max_msg))
        .add_service(ClusterServer::new(ClusterService::new(ctx.clone())).max_decoding_message_size(max_msg))
        .add_service(LeaseServer::new(LeaseService::new(ctx.clone())).max_decoding_message_size(max_msg))
        .add_service(LockServer::new(LockService::new(ctx.clone())).max_decoding_message_size(max_msg))
        .add_service(ElectionServer::new(ElectionService::new(ctx.clone())).max_decoding_message_size(max_msg))
        .add_service(
            WatchServer::new(WatchService::new(ctx.clone(), cfg.watch_progress_notify_interval))
                .max_decoding_message_size(max_msg),
        );

    let attrs = MemberAttrs { id: me.id, name: cfg.name.clone(), client_urls };
    let (stop_publish, publish_stopped) = oneshot::channel::<()>();
    let publisher = tokio::spawn(publish_attributes(node.clone(), attrs, publish_stopped));

    tracing::info!(
        member_id = format_args!("{:x}", me.id),
        cluster_id = format_args!("{cluster_id:x}"),
        data_dir = %cfg.data_dir.display(),
        "kv-server ready: serving clients on {}",
        bound_urls.join(",")
    );
    let (stop, stopped) = oneshot::channel::<()>();
    // In-flight requests end within the request timeout; a client that stops reading (a watch
    // it no longer drains) must not hold the member up for longer than that.
    let drain_bound = cfg.request_timeout + DRAIN_MARGIN;
    let mut draining = ctx.closing.clone();
    let failed_node = node.clone();
    let task = tokio::spawn(async move {
        let serve = listeners.serve(router, async move {
            let _ = stopped.await;
            // Watch streams end now; the drain then waits only for requests in flight.
            let _ = closing_tx.send(true);
        });
        let mut failure = None;
        let served = tokio::select! {
            served = serve => served,
            () = async {
                let _ = draining.wait_for(|c| *c).await;
                tokio::time::sleep(drain_bound).await;
            } => {
                tracing::warn!("clients still connected {drain_bound:?} into the drain: closing their connections");
                Ok(())
            }
            reason = failed_node.failed() => {
                tracing::error!("Raft stopped: {reason}; exiting");
                failure = Some(reason);
                Ok(())
            }
        };
        tracing::info!("client listener closed, stopping");
        let _ = stop_publish.send(());
        let _ = publisher.await;
        let shutdown = node.shutdown().await;
        let _ = stop_peers.send(());
        if let Ok(Err(e)) = peer_task.await {
            tracing::warn!("peer listener: {e}");
        }
        if let Some(reason) = failure {
            return Err(ServerError::Failed(reason));
        }
        shutdown?;
        tracing::info!("stopped cleanly");
        served.map_err(ServerError::from)
    });
    Ok((Running { client_urls: bound_urls, member_id: me.id, stop, task }, ctx))
}

/// Publishes this member's name and client URLs through Raft (retrying until a leader accepts),
/// unless the published attributes are already these.
async fn publish_attributes<E: Engine>(node: Node<E>, attrs: MemberAttrs, mut stop: oneshot::Receiver<()>) {
    loop {
        if node.store().members().is_ok_and(|m| m.contains(&attrs)) {
            return;
        }
        let attempt = node.write(WriteRequest::PublishMember(attrs.clone()));
        tokio::select! {
            _ = &mut stop => return,
            r = attempt => match r {
                Ok(_) => {
                    tracing::info!(name = %attrs.name, "published member attributes");
                    return;
                }
                Err(e) => tracing::debug!("publishing member attributes: {e}; retrying"),
            },
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
