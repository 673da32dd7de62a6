//! etcd's Watch service: one bidirectional stream per call, carrying many watches, each served
//! by this member from its own applied state.
//!
//! Each stream is one task ([`stream`]) that subscribes to the state machine's apply event seam
//! and serves every watch of the stream from it while the watch is caught up, and from the
//! stored versions while it is behind (it started in the past, or the stream fell behind the
//! seam). Nothing a slow client does grows memory without bound: the seam is a bounded ring, a
//! stream that falls behind it reads the stored versions instead, and the responses waiting for
//! the client are a bounded queue. [`watcher`] holds one watch's state and how its events are
//! filtered and encoded.

mod stream;
mod watcher;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kv_api::etcdserverpb::watch_server::Watch;
use kv_api::etcdserverpb::{WatchRequest, WatchResponse};
use raft_core::engine::Engine;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::Ctx;

/// How often an idle watch that asked for progress notifications gets one (etcd's default).
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// Responses queued for a client that reads slowly, per stream. When full, the stream stops
/// taking changes from the seam and later serves them from the stored versions.
const QUEUED_RESPONSES: usize = 64;

/// The Watch service over a node.
pub struct WatchService<E: Engine> {
    ctx: Arc<Ctx<E>>,
    progress_interval: Duration,
}

impl<E: Engine> WatchService<E> {
    pub fn new(ctx: Arc<Ctx<E>>, progress_interval: Duration) -> Self {
        WatchService { ctx, progress_interval }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<E: Engine> Watch for WatchService<E> {
    type WatchStream = ResponseStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<ResponseStream>, Status> {
        // etcd's clients send this with `WithRequireLeader`: the stream ends when the member
        // loses its leader, so the client moves to a member that has one.
        let require_leader = request.metadata().get("hasleader").is_some_and(|v| v.as_bytes() == b"true");
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let task = stream::WatchStream::new(self.ctx.clone(), tx, require_leader, self.progress_interval);
        tokio::spawn(task.run(request.into_inner()));
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Response::new(Box::pin(out)))
    }
}
