//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases.
//!
//! Grants and revocations are writes through the log; renewals and time-to-live go to the
//! leader's lease clock (forwarded by a follower); the list is a linearizable read of the lease
//! table. See raft-core's `node::leases` for the rules.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kv_api::etcdserverpb::lease_server::Lease;
use kv_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use raft_core::engine::Engine;
use tonic::{Request, Response, Status, Streaming};

use super::Ctx;
use crate::error;

/// Renewals of one keep-alive stream handled at once: a client that keeps many leases alive on
/// one stream (etcd's clients do) is not held to one round trip to the leader per lease.
const RENEWALS_IN_FLIGHT: usize = 128;

/// The Lease service over a node.
pub struct LeaseService<E: Engine> {
    ctx: Arc<Ctx<E>>,
}

impl<E: Engine> LeaseService<E> {
    pub fn new(ctx: Arc<Ctx<E>>) -> Self {
        LeaseService { ctx }
    }

    /// One renewal, as one request of a keep-alive stream (the embedded member's).
    pub async fn keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        renew(&self.ctx, id).await
    }
}

/// One renewal: the granted TTL, or 0 for a lease that does not exist or expired (etcd answers
/// so rather than with an error).
async fn renew<E: Engine>(ctx: &Ctx<E>, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let ttl = ctx.node.lease_renew(id).await.map_err(error::node)?;
    Ok(LeaseKeepAliveResponse { header: Some(ctx.header(0, None)), id, ttl })
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<E: Engine> Lease for LeaseService<E> {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        let mut resp = self.ctx.node.lease_grant(req.id, req.ttl).await.map_err(error::node)?;
        self.ctx.fill(&mut resp.header, None);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let mut resp = self.ctx.node.lease_revoke(req.into_inner().id).await.map_err(error::node)?;
        self.ctx.fill(&mut resp.header, None);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let ctx = self.ctx.clone();
        let mut closing = ctx.closing.clone();
        // The stream ends when the member starts to shut down, or the drain would wait for it.
        let closed = async move {
            let _ = closing.wait_for(|c| *c).await;
        };
        let renewals = req
            .into_inner()
            .take_until(closed)
            .map(move |r| {
                let ctx = ctx.clone();
                async move {
                    match r {
                        Ok(r) => renew(&ctx, r.id).await,
                        Err(status) => Err(status),
                    }
                }
            })
            .buffer_unordered(RENEWALS_IN_FLIGHT);
        Ok(Response::new(Box::pin(renewals)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let status = self.ctx.node.lease_time_to_live(req.id, req.keys).await.map_err(error::node)?;
        let header = Some(self.ctx.header(0, None));
        let resp = match status {
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse { header, id: req.id, ttl: -1, ..Default::default() },
            Some(s) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: s.remaining_secs,
                granted_ttl: s.granted_ttl,
                keys: s.keys,
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(&self, _req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        let ids = self.ctx.node.lease_list().await.map_err(error::node)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.ctx.header(0, None)),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}
