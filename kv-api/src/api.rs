//! [`KvApi`]: the operations every way of using raftkv offers, so application code can be
//! written once and run against a remote cluster (kv-client) or an embedded member (kv-server);
//! [`WatchEvents`]: the watch that [`KvApi::watch`] opens.

use std::future::Future;

use crate::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, StatusResponse, TxnRequest,
    TxnResponse, WatchCreateRequest,
};
use crate::mvccpb::Event;
use crate::Consistency;

/// etcd's KV operations plus Status, Watch and Lease, with etcd's request and response messages. A
/// Range picks its read consistency with the raftkv extension fields (see
/// [`RangeRequest::consistency`]); [`KvApi::get`] is the short form.
pub trait KvApi: Send + Sync {
    /// What a call can fail with.
    type Error: std::error::Error + Send + Sync + 'static;
    /// The watch [`KvApi::watch`] opens.
    type Watcher: WatchEvents<Error = Self::Error>;

    fn range(&self, req: RangeRequest) -> impl Future<Output = Result<RangeResponse, Self::Error>> + Send;
    fn put(&self, req: PutRequest) -> impl Future<Output = Result<PutResponse, Self::Error>> + Send;
    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> impl Future<Output = Result<DeleteRangeResponse, Self::Error>> + Send;
    fn txn(&self, req: TxnRequest) -> impl Future<Output = Result<TxnResponse, Self::Error>> + Send;
    fn compact(&self, req: CompactionRequest) -> impl Future<Output = Result<CompactionResponse, Self::Error>> + Send;
    /// This member's status (the one the call reached).
    fn status(&self) -> impl Future<Output = Result<StatusResponse, Self::Error>> + Send;
    /// Opens a watch of the keys of `req` (etcd's create request: key and range end, start
    /// revision, prev_kv, filters; the stream options do not apply). It returns once the watch
    /// is created: a watch without a start revision covers every change after the call returns.
    fn watch(&self, req: WatchCreateRequest) -> impl Future<Output = Result<Self::Watcher, Self::Error>> + Send;
    /// Grants a lease of `ttl` seconds (raised to the store's minimum), with `id`, or with one
    /// the store picks when `id` is 0.
    fn lease_grant(
        &self,
        req: LeaseGrantRequest,
    ) -> impl Future<Output = Result<LeaseGrantResponse, Self::Error>> + Send;
    /// Revokes a lease, deleting the keys attached to it.
    fn lease_revoke(
        &self,
        req: LeaseRevokeRequest,
    ) -> impl Future<Output = Result<LeaseRevokeResponse, Self::Error>> + Send;
    /// Renews lease `id` once: its granted TTL, or 0 if it no longer exists.
    fn lease_keep_alive_once(&self, id: i64) -> impl Future<Output = Result<i64, Self::Error>> + Send;
    /// What a lease has left (TTL -1: no such lease), its granted TTL and, if asked, its keys.
    fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> impl Future<Output = Result<LeaseTimeToLiveResponse, Self::Error>> + Send;
    /// Every lease.
    fn leases(&self) -> impl Future<Output = Result<LeaseLeasesResponse, Self::Error>> + Send;

    /// The value of `key` read at `consistency`, if the key exists.
    fn get(
        &self,
        key: impl Into<Vec<u8>> + Send,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, Self::Error>> + Send {
        let req = RangeRequest { key: key.into(), consistency: consistency as i32, ..Default::default() };
        async move { Ok(self.range(req).await?.kvs.into_iter().next().map(|kv| kv.value)) }
    }
}

/// What of `req` a [`KvApi::watch`] honours: the keys, the start and what events carry. The
/// watch id and the stream options (progress notifications, fragments) are the watcher's own.
pub fn watch_request(req: WatchCreateRequest) -> WatchCreateRequest {
    WatchCreateRequest { watch_id: 0, progress_notify: false, fragment: false, ..req }
}

/// An open watch: the events of its keys, each once, in revision order.
pub trait WatchEvents: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The next events (at least one; every event of a revision together). Waits as long as it
    /// takes. A watch whose history was compacted before it was delivered ends with an error
    /// that says so; the caller reads the current state and watches again from there.
    fn next(&mut self) -> impl Future<Output = Result<Vec<Event>, Self::Error>> + Send;

    /// The first revision not delivered yet: where a new watch would resume.
    fn next_revision(&self) -> i64;
}
