//! Rust client for raftkv (and any etcd v3 server), and the `kvctl` command-line tool.
//!
//! Layout:
//! - [`Client`]: a connection to one member with typed KV and Maintenance calls;
//! - [`ClientError`]: what can go wrong, with etcd errors recognised by their exact text.
//!
//! This first cut talks to one endpoint at a time (the first of the list that accepts a
//! connection); leader discovery, failover and session tokens build on it.

use std::time::Duration;

use kv_api::etcdserverpb::cluster_client::ClusterClient;
use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kv_api::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, MemberListRequest, MemberListResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, StatusRequest, StatusResponse,
};
use kv_api::EtcdError;
use tonic::transport::{Channel, Endpoint};

pub use kv_api;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// An endpoint that is not a valid `http://host:port` URL.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// None of the endpoints accepted a connection.
    #[error("cannot connect to {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// The server answered with an etcd error.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The call failed with a status that is not an etcd error (transport, deadline, ...).
    /// Timed-out writes land here: their outcome is unknown.
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
    /// Bound on connecting and on each call.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { timeout: Duration::from_secs(5) }
    }
}

/// A connection to one member.
#[derive(Clone)]
pub struct Client {
    endpoint: String,
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
}

impl Client {
    /// Connects to the first endpoint of `endpoints` that accepts a connection.
    pub async fn connect(endpoints: &[String], opts: Options) -> Result<Client> {
        let mut last = String::from("no endpoint given");
        for ep in endpoints {
            let endpoint = Endpoint::from_shared(ep.clone())
                .map_err(|e| ClientError::InvalidEndpoint { endpoint: ep.clone(), reason: e.to_string() })?
                .connect_timeout(opts.timeout)
                .timeout(opts.timeout);
            match endpoint.connect().await {
                Ok(ch) => {
                    return Ok(Client {
                        endpoint: ep.clone(),
                        kv: KvClient::new(ch.clone()).max_decoding_message_size(usize::MAX),
                        maintenance: MaintenanceClient::new(ch.clone()),
                        cluster: ClusterClient::new(ch),
                    })
                }
                Err(e) => last = format!("{e}: {}", source_chain(&e)),
            }
        }
        Err(ClientError::Unreachable { endpoints: endpoints.join(","), reason: last })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn put(&mut self, req: PutRequest) -> Result<PutResponse> {
        Ok(self.kv.put(req).await?.into_inner())
    }

    pub async fn range(&mut self, req: RangeRequest) -> Result<RangeResponse> {
        Ok(self.kv.range(req).await?.into_inner())
    }

    pub async fn delete_range(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        Ok(self.kv.delete_range(req).await?.into_inner())
    }

    pub async fn status(&mut self) -> Result<StatusResponse> {
        Ok(self.maintenance.status(StatusRequest {}).await?.into_inner())
    }

    pub async fn member_list(&mut self) -> Result<MemberListResponse> {
        Ok(self.cluster.member_list(MemberListRequest { linearizable: false }).await?.into_inner())
    }
}

/// The innermost cause of a transport error, which is where the useful text is.
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
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
