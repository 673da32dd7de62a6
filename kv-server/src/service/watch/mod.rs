//! etcd's Watch service: one bidirectional stream per call, carrying many watches, each served
//! by this member from its own applied state.
//!
//! Each stream is one task ([`stream`]) that subscribes to the state machine's apply event seam
//! and serves every watch of the stream from it while the watch is caught up, and from the
//! stored versions while it is behind (it started in the past, or the stream fell behind the
//! seam). Nothing a slow client does grows memory without bound: the seam is a bounded ring, a
//! stream that falls behind it reads the stored versions instead, a bounded chunk at a time,
//! and the responses waiting for the client are bounded in count and bytes ([`outbox`]).
//! [`watcher`] holds one watch's state and how its events are filtered and encoded.

mod outbox;
mod stream;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kv_api::etcdserverpb::watch_server::Watch;
use kv_api::etcdserverpb::WatchRequest;
use raft_core::engine::Engine;
use tonic::{Request, Response, Status, Streaming};

pub use outbox::ResponseStream;

use super::Ctx;

/// The Watch service over a node.
pub struct WatchService<E: Engine> {
    ctx: Arc<Ctx<E>>,
    progress_interval: Duration,
}

impl<E: Engine> WatchService<E> {
    pub fn new(ctx: Arc<Ctx<E>>, progress_interval: Duration) -> Self {
        WatchService { ctx, progress_interval }
    }

    /// Starts the task that serves one stream of `requests`; returns its responses.
    pub(crate) fn open(
        &self,
        requests: impl Stream<Item = Result<WatchRequest, Status>> + Unpin + Send + 'static,
        require_leader: bool,
    ) -> ResponseStream {
        let (outbox, responses) = outbox::outbox();
        let task = stream::WatchStream::new(self.ctx.clone(), outbox, require_leader, self.progress_interval);
        tokio::spawn(task.run(requests));
        responses
    }
}

#[tonic::async_trait]
impl<E: Engine> Watch for WatchService<E> {
    type WatchStream = ResponseStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<ResponseStream>, Status> {
        // etcd's clients send this with `WithRequireLeader`: the stream ends when the member
        // loses its leader, so the client moves to a member that has one.
        let require_leader = request.metadata().get("hasleader").is_some_and(|v| v.as_bytes() == b"true");
        Ok(Response::new(self.open(request.into_inner(), require_leader)))
    }
}
