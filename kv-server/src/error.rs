//! Conversion of every internal failure into the gRPC status a client sees. The etcd text and
//! code of each error live in `kv_api::error`; this module decides which one an internal
//! failure is, and logs what the client must not see.

use kv_api::EtcdError;
use raft_core::mvcc::MvccError;
use raft_core::NodeError;
use tonic::Status;

/// Status for a node failure. Fatal failures are logged and reported as "server stopped".
pub fn node(e: NodeError) -> Status {
    if let NodeError::Fatal(msg) = &e {
        tracing::error!("fatal node error: {msg}");
    }
    EtcdError::from(e).to_status()
}

/// Status for a local MVCC read failure. Storage faults go out as code Unknown, as etcd does
/// with errors it has no mapping for.
pub fn mvcc(e: MvccError) -> Status {
    match e {
        MvccError::Etcd(e) => e.to_status(),
        other => {
            tracing::error!("storage error while reading: {other}");
            EtcdError::Other(format!("raftkv: storage error: {other}")).to_status()
        }
    }
}

/// Status for an etcd error found while checking a request.
pub fn invalid(e: EtcdError) -> Status {
    e.to_status()
}

/// The text grpc-go (and so etcd) gives a request body that is not the expected protobuf.
const GRPC_GO_UNMARSHAL: &str = "grpc: error unmarshalling request: ";
/// The prefix of the text tonic's protobuf codec gives the same failure.
const TONIC_DECODE: &str = "failed to decode Protobuf message";

/// A layer on the client port that gives gRPC-level failures etcd's texts where tonic's differ
/// (today: an undecodable request body). Such failures happen inside the generated code,
/// before any handler runs, so this is the one place that can see them. Under simulation the
/// layer is accepted and ignored: simulated messages are never encoded.
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdTexts;

impl<S> tower_layer::Layer<S> for EtcdTexts {
    type Service = EtcdTextsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EtcdTextsService(inner)
    }
}

/// The service [`EtcdTexts`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct EtcdTextsService<S>(S);

impl<S, Req, B> tower_service::Service<Req> for EtcdTextsService<S>
where
    S: tower_service::Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(http::Response<B>) -> http::Response<B>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        use futures::TryFutureExt;
        self.0.call(req).map_ok(etcd_texts as fn(http::Response<B>) -> http::Response<B>)
    }
}

/// Rewrites a trailers-only error response whose message is tonic's decode failure.
fn etcd_texts<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(resp.headers()) else { return resp };
    if status.code() != tonic::Code::Internal || !status.message().starts_with(TONIC_DECODE) {
        return resp;
    }
    let text = format!("{GRPC_GO_UNMARSHAL}{}", status.message());
    if let Err(e) = Status::internal(text).add_header(resp.headers_mut()) {
        tracing::debug!("could not rewrite a decode failure's text: {e}");
    }
    resp
}
