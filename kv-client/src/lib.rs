//! Rust client for raftkv (and any etcd v3 server), and the `kvctl` command-line tool.
//!
//! Layout:
//! - [`Client`]: a cluster client over an endpoint list, with leader discovery, failover, a
//!   per-call timeout, safe retries and automatic session tokens; it implements
//!   [`kv_api::KvApi`], as an embedded member does (`kv_server::Embedded`);
//! - [`request`]: builders for each request ([`Get`], [`Put`], [`Delete`], [`Txn`]);
//! - [`lock`]: locks with fencing tokens ([`Locked::guard`]); [`election`]: leader election;
//! - [`lease`]: leases, and [`KeepAlive`], which renews one in the background and reports its
//!   loss;
//! - [`watch`]: a watch ([`Watch`], [`Watcher`]) that resumes on another member when its
//!   stream breaks, so every event arrives once, in order;
//! - [`ClientError`]: what can go wrong, with etcd errors recognised by their exact text and
//!   writes whose outcome cannot be known reported as such.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kv_client::ClientError> {
//! use kv_client::{Client, Cmp, Get, Op, Options, Put, Txn, TxnOp};
//! use kv_client::kv_api::{Consistency, KvApi};
//!
//! let endpoints = ["http://127.0.0.1:2379".to_string(), "http://127.0.0.1:12379".to_string()];
//! let client = Client::connect(&endpoints, Options::default()).await?;
//! client.put(Put::new("greeting", "hello")).await?;
//! // Session reads see this client's own writes through any member.
//! let v = client.get("greeting", Consistency::Session).await?;
//! assert_eq!(v.as_deref(), Some(&b"hello"[..]));
//! // Everything under a prefix, served by whichever member answers, possibly stale.
//! let all = client.range(Get::prefix("app/").consistency(Consistency::Serializable)).await?;
//! // Create-if-absent.
//! let created = client
//!     .txn(Txn::new().when([Cmp::version("lock", Op::Equal, 0)]).and_then([TxnOp::Put(Put::new("lock", "me"))]))
//!     .await?
//!     .succeeded;
//! # let _ = (all, created);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::cluster_client::ClusterClient;
use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::lease_client::LeaseClient;
use kv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kv_api::etcdserverpb::watch_client::WatchClient;
use kv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, MemberListRequest,
    MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusRequest,
    StatusResponse, TxnRequest, TxnResponse, WatchCreateRequest,
};
use kv_api::v3electionpb::election_client::ElectionClient;
use kv_api::v3lockpb::lock_client::LockClient;
use kv_api::{Consistency, EtcdError, KvApi};
use tonic::transport::{Channel, Endpoint};

pub use kv_api;
pub use lease::{KeepAlive, LeaseLost, LeaseState};
pub use lock::Locked;
pub use request::{Cmp, Delete, Get, Op, Put, Txn, TxnOp};
pub use watch::{Watch, Watcher};

pub mod election;
pub mod lease;
pub mod lock;
pub mod request;
pub mod watch;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// An endpoint that is not a valid `http://host:port` URL.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// None of the endpoints could be reached.
    #[error("cannot connect to {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// The server answered with an etcd error.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A write reached a member but its fate is unknown (timeout, leader change, connection
    /// lost): it may or may not have been applied. Read before retrying a non-idempotent write.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A watch needs history that was compacted: read the current state and watch again from
    /// after it (etcd cancels such a watch with this revision).
    #[error("etcdserver: mvcc: required revision has been compacted (compacted up to {compact_revision})")]
    Compacted { compact_revision: i64 },
    /// The call failed with a status that is not an etcd error.
    #[error("{message} (gRPC {code:?})")]
    Rpc { code: tonic::Code, message: String },
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        match EtcdError::from_status(&s) {
            Some(e) => ClientError::Etcd(e),
            None => ClientError::Rpc { code: s.code(), message: s.message().to_string() },
        }
    }
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Connection settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Bound on each call, retries on other members included.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { timeout: Duration::from_secs(5) }
    }
}

/// Pause after every member refused a retriable call (an election takes a few hundred ms).
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// One endpoint's gRPC clients (they share one lazily connected channel).
#[derive(Clone)]
struct Member {
    url: String,
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
    watch: WatchClient<Channel>,
    lease: LeaseClient<Channel>,
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
}

/// Whether a call changes state: only a write's retry can do harm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// What to do after a failed attempt.
enum Next {
    /// Try another member (the request provably did nothing, or it is a read).
    Retry(ClientError),
    /// Stop with this error.
    Fail(ClientError),
}

/// Classifies a failed attempt of a call of `kind`.
fn next_step(kind: Kind, s: tonic::Status) -> Next {
    if kv_api::error::never_reached(&s) {
        return Next::Retry(s.into());
    }
    match (kind, EtcdError::from_status(&s)) {
        // Refused before anything was proposed: safe anywhere.
        (_, Some(EtcdError::NoLeader)) => Next::Retry(EtcdError::NoLeader.into()),
        // Any other unavailability: a read is simply asked elsewhere...
        (Kind::Read, _) if s.code() == tonic::Code::Unavailable => Next::Retry(s.into()),
        // ...a write may have happened.
        (Kind::Write, Some(e @ (EtcdError::LeaderChanged | EtcdError::Timeout | EtcdError::ServerStopped))) => {
            Next::Fail(ClientError::OutcomeUnknown(e.to_string()))
        }
        (Kind::Write, None)
            if matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) =>
        {
            Next::Fail(ClientError::OutcomeUnknown(format!("{} (gRPC {:?})", s.message(), s.code())))
        }
        _ => Next::Fail(s.into()),
    }
}

/// A client of a raftkv (or etcd) cluster. Cheap to clone; clones share the session token.
#[derive(Clone)]
pub struct Client {
    members: Arc<Vec<Member>>,
    /// Index of the member calls go to first (the leader, when known).
    current: Arc<AtomicUsize>,
    /// The highest revision seen in any response: the session token sent by session reads.
    seen: Arc<AtomicI64>,
    opts: Options,
}

impl Client {
    /// A client of the cluster reachable at `endpoints`. It asks each endpoint for its status
    /// and prefers the leader (writes then skip a forwarding hop); it fails only if none answers.
    pub async fn connect(endpoints: &[String], opts: Options) -> Result<Client> {
        let mut members = Vec::new();
        for ep in endpoints {
            let endpoint = Endpoint::from_shared(ep.clone())
                .map_err(|e| ClientError::InvalidEndpoint { endpoint: ep.clone(), reason: e.to_string() })?
                .connect_timeout(opts.timeout)
                .timeout(opts.timeout);
            let ch = endpoint.connect_lazy();
            members.push(Member {
                url: ep.clone(),
                kv: KvClient::new(ch.clone()).max_decoding_message_size(usize::MAX),
                maintenance: MaintenanceClient::new(ch.clone()),
                cluster: ClusterClient::new(ch.clone()),
                lease: LeaseClient::new(ch.clone()),
                lock: LockClient::new(ch.clone()),
                election: ElectionClient::new(ch.clone()),
                watch: WatchClient::new(ch).max_decoding_message_size(usize::MAX),
            });
        }
        if members.is_empty() {
            return Err(ClientError::Unreachable { endpoints: String::new(), reason: "no endpoint given".into() });
        }
        let mut last = String::new();
        let mut first_ok = None;
        for (i, m) in members.iter_mut().enumerate() {
            match m.maintenance.status(StatusRequest {}).await {
                Ok(st) => {
                    let st = st.into_inner();
                    let me = st.header.as_ref().map_or(0, |h| h.member_id);
                    if st.leader != 0 && st.leader == me {
                        first_ok = Some(i);
                        break;
                    }
                    first_ok.get_or_insert(i);
                }
                Err(e) => last = format!("{}: {}", m.url, ClientError::from(e)),
            }
        }
        let Some(current) = first_ok else {
            return Err(ClientError::Unreachable { endpoints: endpoints.join(","), reason: last });
        };
        Ok(Client {
            members: Arc::new(members),
            current: Arc::new(AtomicUsize::new(current)),
            seen: Arc::new(AtomicI64::new(0)),
            opts,
        })
    }

    /// This client with another bound on each call (retries included); it shares the session
    /// token and the preferred member with this one.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client { opts: Options { timeout }, ..self.clone() }
    }

    /// The endpoint calls go to first.
    pub fn endpoint(&self) -> &str {
        &self.members[self.current.load(Ordering::Relaxed) % self.members.len()].url
    }

    /// The highest revision this client (and its clones) has seen: its session token.
    pub fn session_revision(&self) -> i64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Continues a session begun elsewhere (another client or process): session reads will see
    /// at least revision `revision`.
    pub fn continue_session(&self, revision: i64) {
        self.seen.fetch_max(revision, Ordering::Relaxed);
    }

    fn observe(&self, h: &Option<ResponseHeader>) {
        if let Some(h) = h {
            self.seen.fetch_max(h.revision, Ordering::Relaxed);
        }
    }

    /// Runs `call` on the current member, moving on to the next ones while the failure allows
    /// a retry, until the call's time is up.
    async fn call<T, F, Fut>(&self, kind: Kind, call: F) -> Result<T>
    where
        F: Fn(Member) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.opts.timeout;
        let n = self.members.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0.. {
            let i = (start + attempt) % n;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let outcome = tokio::time::timeout(left, call(self.members[i].clone())).await;
            let status = match outcome {
                Ok(Ok(resp)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                Ok(Err(s)) => s,
                Err(_) if kind == Kind::Write => {
                    return Err(ClientError::OutcomeUnknown(format!("no answer within {:?}", self.opts.timeout)))
                }
                Err(_) => break,
            };
            match next_step(kind, status) {
                Next::Retry(e) => last = Some(e),
                Next::Fail(e) => return Err(e),
            }
            if (attempt + 1) % n == 0 {
                // Every member was tried: give an election a moment before the next pass.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(RETRY_PAUSE.min(left)).await;
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Timeout.into()))
    }

    /// etcd Range. A session read (`consistency` SESSION) without `min_revision` gets this
    /// client's session token.
    pub async fn range(&self, req: impl Into<RangeRequest>) -> Result<RangeResponse> {
        let mut req = req.into();
        if req.consistency == Consistency::Session as i32 && req.min_revision == 0 {
            req.min_revision = self.session_revision();
        }
        let resp = self
            .call(Kind::Read, |mut m| {
                let req = req.clone();
                async move { m.kv.range(req).await }
            })
            .await?;
        self.observe(&resp.header);
        Ok(resp)
    }

    pub async fn put(&self, req: impl Into<PutRequest>) -> Result<PutResponse> {
        let req = req.into();
        let resp = self
            .call(Kind::Write, |mut m| {
                let req = req.clone();
                async move { m.kv.put(req).await }
            })
            .await?;
        self.observe(&resp.header);
        Ok(resp)
    }

    pub async fn delete_range(&self, req: impl Into<DeleteRangeRequest>) -> Result<DeleteRangeResponse> {
        let req = req.into();
        let resp = self
            .call(Kind::Write, |mut m| {
                let req = req.clone();
                async move { m.kv.delete_range(req).await }
            })
            .await?;
        self.observe(&resp.header);
        Ok(resp)
    }

    /// etcd Txn. A txn with any write is a write (its outcome may be unknown); a read-only one
    /// is retried like a read.
    pub async fn txn(&self, req: impl Into<TxnRequest>) -> Result<TxnResponse> {
        let req = req.into();
        let kind = if txn_writes(&req) { Kind::Write } else { Kind::Read };
        let resp = self
            .call(kind, |mut m| {
                let req = req.clone();
                async move { m.kv.txn(req).await }
            })
            .await?;
        self.observe(&resp.header);
        Ok(resp)
    }

    /// etcd Compact (idempotent: retried like a read).
    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        let resp = self.call(Kind::Read, |mut m| async move { m.kv.compact(req).await }).await?;
        self.observe(&resp.header);
        Ok(resp)
    }

    /// The status of the member calls currently go to.
    pub async fn status(&self) -> Result<StatusResponse> {
        self.call(Kind::Read, |mut m| async move { m.maintenance.status(StatusRequest {}).await }).await
    }

    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.call(
            Kind::Read,
            |mut m| async move { m.cluster.member_list(MemberListRequest { linearizable: false }).await },
        )
        .await
    }
}

/// Whether a txn has any write in either branch (nested txns included).
fn txn_writes(t: &TxnRequest) -> bool {
    use kv_api::etcdserverpb::request_op::Request;
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestRange(_)) | None => false,
        Some(Request::RequestTxn(inner)) => txn_writes(inner),
        _ => true,
    })
}

impl KvApi for Client {
    type Error = ClientError;
    type Watcher = Watcher;

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        Client::range(self, req).await
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        Client::put(self, req).await
    }

    async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        Client::delete_range(self, req).await
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        Client::txn(self, req).await
    }

    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        Client::compact(self, req).await
    }

    async fn status(&self) -> Result<StatusResponse> {
        Client::status(self).await
    }

    /// [`Client::watch`]: the watch resumes on another member when its member fails.
    async fn watch(&self, req: WatchCreateRequest) -> Result<Watcher> {
        Client::watch(self, Watch::from(req)).await
    }

    async fn lease_grant(
        &self,
        req: kv_api::etcdserverpb::LeaseGrantRequest,
    ) -> Result<kv_api::etcdserverpb::LeaseGrantResponse> {
        Client::lease_grant(self, req.ttl, req.id).await
    }

    async fn lease_revoke(
        &self,
        req: kv_api::etcdserverpb::LeaseRevokeRequest,
    ) -> Result<kv_api::etcdserverpb::LeaseRevokeResponse> {
        Client::lease_revoke(self, req.id).await
    }

    async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        Client::lease_keep_alive_once(self, id).await
    }

    async fn lease_time_to_live(
        &self,
        req: kv_api::etcdserverpb::LeaseTimeToLiveRequest,
    ) -> Result<kv_api::etcdserverpb::LeaseTimeToLiveResponse> {
        Client::lease_time_to_live(self, req.id, req.keys).await
    }

    async fn leases(&self) -> Result<kv_api::etcdserverpb::LeaseLeasesResponse> {
        Client::leases(self).await
    }
}

/// The range end that selects every key with `prefix` (etcd's rule, `"\0"` for all-0xff).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(super::prefix_end(b"a/"), b"a0");
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b"\xff"), b"\0");
        assert_eq!(super::prefix_end(b""), b"\0");
    }
}
