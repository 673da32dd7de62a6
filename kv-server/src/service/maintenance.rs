//! etcd's Maintenance service: Status, Alarm and HashKV.

use std::sync::Arc;

use kv_api::etcdserverpb::alarm_request::AlarmAction;
use kv_api::etcdserverpb::maintenance_server::Maintenance;
use kv_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, HashKvRequest, HashKvResponse, StatusRequest, StatusResponse,
};
use kv_api::EtcdError;
use raft_core::engine::Engine;
use tonic::{Request, Response, Status};

use crate::error;

use super::Ctx;

/// The etcd version whose client-visible behaviour raftkv matches. Clients turn features on by
/// this field (Kubernetes sends watch progress requests for consistent reads from its cache
/// only to etcd 3.4.31+ or 3.5.13+, whose progress responses wait for every watch of the
/// stream to catch up, as ours do), so it carries that version, not raftkv's crate version.
/// 3.5.16 is the etcdctl the tests drive raftkv with.
pub const API_VERSION: &str = "3.5.16";

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
        let mut errors = if leader == 0 { vec![EtcdError::NoLeader.to_string()] } else { vec![] };
        errors.extend(self.ctx.alarms.descriptions());
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

    /// etcd's Alarm: GET lists the active alarms of a type (NONE = all); ACTIVATE and
    /// DEACTIVATE answer with the alarm only when its state changed. Alarms are this member's
    /// own (see [`crate::service::alarms`]).
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        // Unknown enum values are treated as etcd's zero values, as a Go server decodes them.
        let alarm = AlarmType::try_from(req.alarm).unwrap_or(AlarmType::None);
        let alarms = &self.ctx.alarms;
        let changed = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => alarms.get(alarm),
            Ok(AlarmAction::Activate) => alarms.activate(req.member_id, alarm).into_iter().collect(),
            Ok(AlarmAction::Deactivate) => alarms.deactivate(req.member_id, alarm).into_iter().collect(),
            Err(_) => vec![],
        };
        Ok(Response::new(AlarmResponse { header: Some(self.ctx.header(0, None)), alarms: changed }))
    }

    /// etcd's HashKV, from this member's local state (like etcd, no quorum round): members at
    /// the same revision answer the same hash.
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let (h, current) = self
            .ctx
            .node
            .store()
            .with_history(|engine, revs| {
                raft_core::mvcc::hash::hash_kv(engine, revision, revs).map(|h| (h, revs.current))
            })
            .map_err(error::mvcc)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.header(current, None)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }
}
