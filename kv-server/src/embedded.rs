//! A member embedded in an application: the same services as the gRPC API, called in process
//! (no socket between the application and its member), through [`kv_api::KvApi`].
//!
//! The member still serves its peers and, on its client URLs, other clients: an embedded
//! member is a full member of its cluster.

use std::sync::Arc;

use futures::StreamExt;
use kv_api::etcdserverpb::kv_server::Kv;
use kv_api::etcdserverpb::lease_server::Lease;
use kv_api::etcdserverpb::maintenance_server::Maintenance;
use kv_api::etcdserverpb::watch_request::RequestUnion;
use kv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
use kv_api::mvccpb::Event;
use kv_api::{EtcdError, KvApi, WatchEvents};
use raft_core::engine::Engine;
use tokio::sync::mpsc;

use crate::config::ServerConfig;
use crate::server::{open_engine, start_member, Running, ServerError};
use crate::service::kv::KvService;
use crate::service::lease::LeaseService;
use crate::service::maintenance::MaintenanceService;
use crate::service::watch::{ResponseStream, WatchService};

/// A running member used in process. Dropping it does not stop the member; call
/// [`Embedded::stop`].
pub struct Embedded<E: Engine> {
    running: Running,
    kv: KvService<E>,
    maintenance: MaintenanceService<E>,
    watch: WatchService<E>,
    lease: LeaseService<E>,
}

/// Starts a member from `cfg` with the default engine and returns it for in-process use.
pub async fn embed(cfg: ServerConfig) -> Result<Embedded<impl Engine>, ServerError> {
    cfg.validate()?;
    let engine = open_engine(&cfg.data_dir)?;
    embed_with_engine(cfg, engine).await
}

/// [`embed`] on `engine`.
pub async fn embed_with_engine<E: Engine>(cfg: ServerConfig, engine: Arc<E>) -> Result<Embedded<E>, ServerError> {
    let progress_interval = cfg.watch_progress_notify_interval;
    let (running, ctx) = start_member(cfg, engine).await?;
    Ok(Embedded {
        running,
        kv: KvService::new(ctx.clone()),
        maintenance: MaintenanceService::new(ctx.clone()),
        lease: LeaseService::new(ctx.clone()),
        watch: WatchService::new(ctx, progress_interval),
    })
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
    type Watcher = EmbeddedWatcher;

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

    /// A watch of what this member applies. The caller is the member itself, so the watch
    /// does not end when the member loses its leader (a remote client's does, to move on).
    async fn watch(&self, req: WatchCreateRequest) -> Result<EmbeddedWatcher, EtcdError> {
        let start = req.start_revision;
        let create = kv_api::api::watch_request(req);
        let (tx, rx) = mpsc::channel(1);
        let request = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
        tx.send(request).await.map_err(|_| EtcdError::ServerStopped)?;
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        let mut w = EmbeddedWatcher { _requests: tx, responses: self.watch.open(requests, false), next: start };
        let created = w.response().await?;
        if start == 0 {
            w.next = created.header.map_or(0, |h| h.revision) + 1;
        }
        Ok(w)
    }

    async fn lease_grant(&self, req: LeaseGrantRequest) -> Result<LeaseGrantResponse, EtcdError> {
        self.lease_call(self.lease.lease_grant(tonic::Request::new(req))).await
    }

    async fn lease_revoke(&self, req: LeaseRevokeRequest) -> Result<LeaseRevokeResponse, EtcdError> {
        self.lease_call(self.lease.lease_revoke(tonic::Request::new(req))).await
    }

    async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, EtcdError> {
        self.lease.keep_alive_once(id).await.map(|r| r.ttl).map_err(etcd)
    }

    async fn lease_time_to_live(&self, req: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        self.lease_call(self.lease.lease_time_to_live(tonic::Request::new(req))).await
    }

    async fn leases(&self) -> Result<LeaseLeasesResponse, EtcdError> {
        self.lease_call(self.lease.lease_leases(tonic::Request::new(LeaseLeasesRequest {}))).await
    }
}

/// The embedded member's Lease calls go through the Lease service, as a client's would.
impl<E: Engine> Embedded<E> {
    async fn lease_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        call.await.map(tonic::Response::into_inner).map_err(etcd)
    }
}

/// A watch on the embedded member: the same stream task as a gRPC client's, fed by a channel.
pub struct EmbeddedWatcher {
    /// Kept open: the stream ends when its requests end.
    _requests: mpsc::Sender<WatchRequest>,
    responses: ResponseStream,
    /// The first revision not delivered yet.
    next: i64,
}

impl EmbeddedWatcher {
    /// The next response; a canceled watch or an ended stream is an error.
    async fn response(&mut self) -> Result<WatchResponse, EtcdError> {
        match self.responses.next().await {
            Some(Ok(r)) if r.canceled && r.compact_revision > 0 => Err(EtcdError::Compacted),
            Some(Ok(r)) if r.canceled => Err(EtcdError::Other(r.cancel_reason)),
            Some(Ok(r)) => Ok(r),
            Some(Err(status)) => Err(etcd(status)),
            None => Err(EtcdError::ServerStopped),
        }
    }
}

impl WatchEvents for EmbeddedWatcher {
    type Error = EtcdError;

    async fn next(&mut self) -> Result<Vec<Event>, EtcdError> {
        loop {
            let r = self.response().await?;
            // Progress responses carry no events. The service encodes events once for all
            // watchers; here nothing decodes them on the way, so their fields are restored.
            let events: Vec<Event> = r.events.into_iter().map(Event::unshared).collect();
            if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
                self.next = last.mod_revision + 1;
                return Ok(events);
            }
        }
    }

    fn next_revision(&self) -> i64 {
        self.next
    }
}
