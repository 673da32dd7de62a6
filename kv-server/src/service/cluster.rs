//! etcd's Cluster service (MemberList for now). Peer URLs come from the Raft membership; names
//! and client URLs from the attributes each member publishes after it starts.

use std::sync::Arc;

use kv_api::etcdserverpb::cluster_server::Cluster;
use kv_api::etcdserverpb::{Member, MemberListRequest, MemberListResponse};
use raft_core::engine::Engine;
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::error;

pub struct ClusterService<E: Engine> {
    ctx: Arc<Ctx<E>>,
}

impl<E: Engine> ClusterService<E> {
    pub fn new(ctx: Arc<Ctx<E>>) -> Self {
        ClusterService { ctx }
    }
}

#[tonic::async_trait]
impl<E: Engine> Cluster for ClusterService<E> {
    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let node = &self.ctx.node;
        if request.get_ref().linearizable {
            node.read_barrier(raft_core::ReadRequirement::level(kv_api::Consistency::Linearizable))
                .await
                .map_err(error::node)?;
        }
        let metrics = node.metrics();
        let membership = metrics.membership_config.membership();
        let attrs = node.store().members().map_err(|e| error::node(raft_core::NodeError::Fatal(e.to_string())))?;
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, peer)| {
                let a = attrs.iter().find(|a| a.id == *id);
                Member {
                    id: *id,
                    name: a.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: peer.peer_urls.clone(),
                    client_ur_ls: a.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect();
        Ok(Response::new(MemberListResponse { header: Some(self.ctx.header(0, None)), members }))
    }
}
