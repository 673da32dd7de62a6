//! A member embedded in an application: the same services as the gRPC API, called in process
//! (no socket between the application and its member), through [`kv_api::KvApi`].
//!
//! The member still serves its peers and, on its client URLs, other clients: an embedded
//! member is a full member of its cluster.

use std::sync::Arc;

use kv_api::etcdserverpb::kv_server::Kv;
use kv_api::etcdserverpb::maintenance_server::Maintenance;
use kv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use kv_api::{EtcdError, KvApi};
use raft_core::engine::Engine;

use crate::config::ServerConfig;
use crate::server::{open_engine, start_member, Running, ServerError};
use crate::service::kv::KvService;
use crate::service::maintenance::MaintenanceService;

/// A running member used in process. Dropping it does not stop the member; call
/// [`Embedded::stop`].
pub struct Embedded<E: Engine> {
    running: Running,
    kv: KvService<E>,
    maintenance: MaintenanceService<E>,
}

/// Starts a member from `cfg` with the default engine and returns it for in-process use.
pub async fn embed(cfg: ServerConfig) -> Result<Embedded<impl Engine>, ServerError> {
    cfg.validate()?;
    let engine = open_engine(&cfg.data_dir)?;
    embed_with_engine(cfg, engine).await
}

/// [`embed`] on `engine`.
pub async fn embed_with_engine<E: Engine>(cfg: ServerConfig, engine: Arc<E>) -> Result<Embedded<E>, ServerError> {
    let (running, ctx) = start_member(cfg, engine).await?;
    Ok(Embedded { running, kv: KvService::new(ctx.clone()), maintenance: MaintenanceService::new(ctx) })
}

impl<E: Engine> Embedded<E> {
    /// The client URLs the member serves other clients on.
    pub fn client_urls(&self) -> &[String] {
        &self.running.client_urls
    }

    /// Drains, stops Raft and flushes storage.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.running.stop().await
    }
}

/// A status from the services, as the etcd error it carries.
fn etcd(s: tonic::Status) -> EtcdError {
    EtcdError::from_status(&s).unwrap_or_else(|| match s.code() {
        tonic::Code::Unavailable => EtcdError::Unavailable(s.message().trim_start_matches("raftkv: ").to_string()),
        tonic::Code::InvalidArgument => {
            EtcdError::InvalidArgument(s.message().trim_start_matches("raftkv: ").to_string())
        }
        _ => EtcdError::Other(s.message().to_string()),
    })
}

impl<E: Engine> KvApi for Embedded<E> {
    /// etcd's errors, exactly as a remote client would see them; a timeout
    /// ([`EtcdError::Timeout`]) leaves a write's outcome unknown.
    type Error = EtcdError;

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.kv.range(tonic::Request::new(req)).await.map(tonic::Response::into_inner).map_err(etcd)
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse, EtcdError> {
        self.kv.put(tonic::Request::new(req)).await.map(tonic::Response::into_inner).map_err(etcd)
    }

    async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, EtcdError> {
        self.kv.delete_range(tonic::Request::new(req)).await.map(tonic::Response::into_inner).map_err(etcd)
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.kv.txn(tonic::Request::new(req)).await.map(tonic::Response::into_inner).map_err(etcd)
    }

    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        self.kv.compact(tonic::Request::new(req)).await.map(tonic::Response::into_inner).map_err(etcd)
    }

    async fn status(&self) -> Result<StatusResponse, EtcdError> {
        self.maintenance
            .status(tonic::Request::new(StatusRequest {}))
            .await
            .map(tonic::Response::into_inner)
            .map_err(etcd)
    }
}
