//! etcd's Maintenance service (Status for now).

use std::sync::Arc;

use kv_api::etcdserverpb::maintenance_server::Maintenance;
use kv_api::etcdserverpb::{StatusRequest, StatusResponse};
use kv_api::EtcdError;
use raft_core::engine::Engine;
use tonic::{Request, Response, Status};

use super::Ctx;

/// The etcd API version raftkv implements. Clients such as etcd's own check this field, so it
/// carries the etcd version whose API we match rather than raftkv's crate version.
pub const API_VERSION: &str = "3.5.0";

pub struct MaintenanceService<E: Engine> {
    ctx: Arc<Ctx<E>>,
}

impl<E: Engine> MaintenanceService<E> {
    pub fn new(ctx: Arc<Ctx<E>>) -> Self {
        MaintenanceService { ctx }
    }
}

#[tonic::async_trait]
impl<E: Engine> Maintenance for MaintenanceService<E> {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.ctx.node;
        let metrics = node.metrics();
        let size = node.store().engine().size_on_disk() as i64;
        let leader = metrics.current_leader.unwrap_or(0);
        let errors = if leader == 0 { vec![EtcdError::NoLeader.to_string()] } else { vec![] };
        let learner = !metrics.membership_config.membership().voter_ids().any(|id| id == node.id());
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(0, None)),
            version: API_VERSION.to_string(),
            db_size: size,
            leader,
            raft_index: node.committed_index().await,
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: size,
            is_learner: learner,
            read_index_rounds: node.read_index_rounds(),
            snapshots_installed: node.snapshots_installed(),
            receiving_snapshot: node.catching_up(),
        }))
    }
}
