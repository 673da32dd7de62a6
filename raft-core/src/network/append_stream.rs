//! AppendEntries to one peer over one long-lived gRPC stream (`AppendStream`).
//!
//! openraft 0.10 replicates in sessions: each hands the network a stream of AppendEntries
//! (often one request: a write, a commit index, a heartbeat) and reads the answers in order.
//! A unary gRPC call per request costs an HTTP/2 stream of its own with headers and trailers
//! both ways; here every session of a peer writes its requests into the same open stream and
//! reads its answers from it, one message each, and the next request may go before the last
//! answer is back (openraft pipelines a session's requests).
//!
//! The stream is opened by the first request of a session that finds none open, and kept by the
//! peer's client. A session that stops before all its answers are read (openraft dropped it),
//! an answer that ends the follower's side (a conflict or a higher vote), or any transport error
//! closes it: the next session opens a new one, so answers are never matched to the wrong
//! requests.

use std::collections::VecDeque;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use kv_api::raftkvpb::peer_client::PeerClient;
use kv_api::raftkvpb::{PeerReply, PeerRequest};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{Fatal, NetworkError, RPCError};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendError, StreamAppendResult};
use openraft::RPCTypes;
use tokio::time::Instant;

use super::{classify, encode, PeerClientHandle, PeerError, Stamp, MAX_PEER_MESSAGE};
use crate::typ::TypeConfig;

/// Requests a session sends before it waits for the oldest answer.
const IN_FLIGHT: usize = 32;

/// How long a session waits for its oldest unanswered request before it gives the peer up as
/// unreachable (openraft then opens another session after its back-off). openraft asks for its
/// heartbeat interval, which suits a heartbeat, not a stream: a follower catching up appends
/// and syncs batches of hundreds of entries, and its answers queue behind one another. Given up
/// at the heartbeat interval, the leader sent the same batches again and again to a member that
/// was already behind, the very load that kept it slow, and slow to answer votes when the
/// leader then died. A peer that is gone breaks the connection, which ends a session at once;
/// only a peer that is stopped or cut off waits this out.
const REPLY_WAIT: Duration = Duration::from_secs(1);

/// The open stream to one peer.
pub(super) struct AppendConn {
    requests: mpsc::UnboundedSender<PeerRequest>,
    /// Only ever used through `&mut` (`get_mut`, no locking): the mutex makes the peer's client
    /// `Sync`, as openraft requires, where the simulation's `Streaming` is not.
    replies: parking_lot::Mutex<tonic::Streaming<PeerReply>>,
}

/// A request sent and not yet answered.
struct Sent {
    at: Instant,
    term: u64,
    leading: bool,
}

type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// One replication session on the peer's stream.
struct Session<'s, S> {
    handle: &'s mut PeerClientHandle,
    input: Option<S>,
    sent: VecDeque<Sent>,
    timeout: Duration,
    /// The stream was closed by an answer or an error: the session yields nothing more.
    ended: bool,
}

impl PeerClientHandle {
    /// openraft's `stream_append` over the peer's stream, opened if there is none.
    pub(super) fn stream_session<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Answer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let timeout = option.hard_ttl().max(REPLY_WAIT);
            // The stream is opened once the first request is drawn, not here: openraft waits out
            // its back-off after failures while producing a request, so a peer that is down is
            // retried at that pace. Opening here failed before any request was drawn, and the
            // next session came at once: thousands of connection attempts a second.
            let session = Session { handle: self, input: Some(input), sent: VecDeque::new(), timeout, ended: false };
            let answers: BoxStream<'s, Answer> = Box::pin(futures::stream::unfold(session, |mut s| async move {
                let answer = s.next_answer().await?;
                Some((answer, s))
            }));
            Ok(answers)
        })
    }

    async fn open_append(&self, timeout: Duration) -> Result<AppendConn, RPCError<TypeConfig>> {
        let channel =
            self.peers.channel(self.target, &self.node).map_err(|e| self.rpc_error(e, RPCTypes::AppendEntries))?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let (requests, rx) = mpsc::unbounded();
        let replies = match tokio::time::timeout(timeout, client.append_stream(rx)).await {
            Err(_) => {
                return Err(self.rpc_error(PeerError::Timeout { target: self.target, timeout }, RPCTypes::AppendEntries))
            }
            Ok(Err(status)) => return Err(self.rpc_error(classify(self.target, status), RPCTypes::AppendEntries)),
            Ok(Ok(r)) => r.into_inner(),
        };
        Ok(AppendConn { requests, replies: parking_lot::Mutex::new(replies) })
    }

    /// The envelope of one request, with the echo this leader owes the peer.
    fn envelope(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> (PeerRequest, Sent) {
        let term = rpc.vote.leader_id().term;
        let leading = rpc.vote.is_committed();
        let echo = if leading { self.peers.echo_for(self.target, term) } else { None };
        let request = PeerRequest {
            cluster_id: self.peers.inner.cluster_id,
            from: self.peers.inner.me,
            payload: encode(rpc),
            echo_us: echo.map(|e| e.stamp.us),
            echo_applied_index: echo.map(|e| e.applied_index),
            echo_epoch: echo.map(|e| e.stamp.epoch),
            ..Default::default()
        };
        (request, Sent { at: Instant::now(), term, leading })
    }
}

impl<S> Session<'_, S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    /// Sends what the session has ready (up to [`IN_FLIGHT`] unanswered), then the next
    /// answer, in order; None once every request is answered and the input is done.
    async fn next_answer(&mut self) -> Option<Answer> {
        loop {
            if self.ended {
                return None;
            }
            let target = self.handle.target;
            let can_send = self.sent.len() < IN_FLIGHT;
            let oldest = self.sent.front().map(|s| s.at + self.timeout);
            let done = self.input.is_none() && self.sent.is_empty();
            let input = &mut self.input;
            let conn = self.handle.append.as_mut();
            // Nothing awaits an answer without a stream: one is open while requests are in flight.
            let awaiting = oldest.is_some() && conn.is_some();
            let step = tokio::select! {
                biased;
                next = async { input.as_mut().expect("guarded").next().await }, if input.is_some() && can_send => {
                    Step::Input(next)
                }
                reply = reply_by(conn, target, oldest, self.timeout), if awaiting => Step::Reply(reply),
                () = std::future::ready(()), if done => Step::Done,
            };
            match step {
                Step::Done => return None,
                Step::Reply(reply) => return Some(self.answer(reply)),
                Step::Input(None) => self.input = None,
                Step::Input(Some(rpc)) => {
                    if self.handle.append.is_none() {
                        match self.handle.open_append(self.timeout).await {
                            Ok(conn) => self.handle.append = Some(conn),
                            Err(e) => {
                                self.ended = true;
                                return Some(Err(e));
                            }
                        }
                    }
                    let (request, sent) = self.handle.envelope(&rpc);
                    let conn = self.handle.append.as_mut().expect("opened above");
                    if conn.requests.unbounded_send(request).is_err() {
                        let reason = "the AppendEntries stream closed".to_string();
                        return Some(Err(self.fail(PeerError::Unreachable { target, reason })));
                    }
                    self.sent.push_back(sent);
                }
            }
        }
    }

    /// The answer to the oldest request from `reply`, recording the peer's acknowledgement.
    fn answer(&mut self, reply: Result<PeerReply, PeerError>) -> Answer {
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e)),
        };
        let sent = self.sent.pop_front().expect("an answer is awaited only for a request sent");
        let target = self.handle.target;
        let decoded: Result<Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>, _> =
            crate::codec::decode(&reply.payload);
        let result = match decoded {
            Err(e) => return Err(self.fail(PeerError::Failed { target, reason: format!("undecodable reply: {e}") })),
            // The peer's Raft stopped: a network failure to openraft, which retries later.
            Ok(Err(fatal)) => {
                self.close();
                return Err(RPCError::Network(NetworkError::new(&fatal)));
            }
            Ok(Ok(result)) => result,
        };
        // Any answer but a higher vote means the peer still accepts this leader's term.
        if sent.leading && !matches!(result, Err(StreamAppendError::HigherVote(_))) {
            let receipt = reply.receipt_us.zip(reply.receipt_epoch).map(|(us, epoch)| Stamp { epoch, us });
            self.handle.peers.record_ack(target, sent.term, sent.at, receipt);
        }
        // The follower ends its side after a refusal.
        if result.is_err() {
            self.close();
        }
        Ok(result)
    }

    /// Closes the stream after `e` and returns openraft's error for it.
    fn fail(&mut self, e: PeerError) -> RPCError<TypeConfig> {
        self.close();
        self.handle.rpc_error(e, RPCTypes::AppendEntries)
    }

    fn close(&mut self) {
        self.handle.append = None;
        self.sent.clear();
        self.ended = true;
    }
}

impl<S> Drop for Session<'_, S> {
    /// A session dropped with answers outstanding leaves them on the stream, where the next
    /// session would take them for its own: the stream is closed instead.
    fn drop(&mut self) {
        if !self.sent.is_empty() {
            self.handle.append = None;
        }
    }
}

/// What a session does next.
enum Step {
    Input(Option<AppendEntriesRequest<TypeConfig>>),
    Reply(Result<PeerReply, PeerError>),
    Done,
}

/// The next reply on `conn` to `target`, waiting no later than `deadline` (a request sent
/// `timeout` before it).
async fn reply_by(
    conn: Option<&mut AppendConn>,
    target: crate::typ::NodeId,
    deadline: Option<Instant>,
    timeout: Duration,
) -> Result<PeerReply, PeerError> {
    let (conn, deadline) = (conn.expect("guarded"), deadline.expect("guarded"));
    let wait = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(wait, conn.replies.get_mut().message()).await {
        Err(_) => Err(PeerError::Timeout { target, timeout }),
        Ok(Err(status)) => Err(classify(target, status)),
        Ok(Ok(None)) => Err(PeerError::Unreachable { target, reason: "the AppendEntries stream ended".into() }),
        Ok(Ok(Some(reply))) => Ok(reply),
    }
}
