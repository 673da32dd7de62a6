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

/// How long a request that only advances the follower's commit index is held back for the next
/// request to carry it instead. Once a write commits, openraft tells each follower at once in
/// an entry-less AppendEntries; a client that writes again soon makes the leader send the next
/// entry a fraction of a millisecond later, with the same commit index on it. Held, the two are
/// one message to write, read, decode and answer on both sides instead of two, and the
/// follower applies the committed entry while it syncs the next. With no request in that
/// time, it goes as it is: a follower learns of a commit at most this much later.
const COMMIT_HOLD: Duration = Duration::from_millis(1);

/// A request sent and not yet answered.
struct Sent {
    at: Instant,
    term: u64,
    leading: bool,
    /// Not sent: a commit-index request the next request took over (see [`COMMIT_HOLD`]); its
    /// answer is derived from that request's (the same log position, agreed by the follower).
    merged: Option<Option<crate::typ::LogId>>,
}

/// A commit-index request held back ([`COMMIT_HOLD`]).
struct Held {
    rpc: AppendEntriesRequest<TypeConfig>,
    until: Instant,
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
    held: Option<Held>,
    /// The highest commit index this session has sent (or merged into a sent request).
    commit_sent: Option<crate::typ::LogId>,
    /// Answers computed and not yet returned (a merged request's comes with the next one's).
    ready: VecDeque<Answer>,
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
            let session = Session {
                handle: self,
                input: Some(input),
                sent: VecDeque::new(),
                timeout,
                ended: false,
                held: None,
                commit_sent: None,
                ready: VecDeque::new(),
            };
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
        (request, Sent { at: Instant::now(), term, leading, merged: None })
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
            if let Some(answer) = self.ready.pop_front() {
                return Some(answer);
            }
            if self.ended {
                return None;
            }
            let target = self.handle.target;
            let can_send = self.sent.len() < IN_FLIGHT;
            let oldest = self.sent.iter().find(|s| s.merged.is_none()).map(|s| s.at + self.timeout);
            let done = self.input.is_none() && self.sent.is_empty() && self.held.is_none();
            let release = self.held.as_ref().map(|h| h.until);
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
                () = tokio::time::sleep_until(release.unwrap_or_else(Instant::now)), if release.is_some() => Step::Release,
                () = std::future::ready(()), if done => Step::Done,
            };
            let sent = match step {
                Step::Done => return None,
                Step::Reply(reply) => {
                    self.answer(reply);
                    continue;
                }
                Step::Release => self.release().await,
                Step::Input(None) => {
                    self.input = None;
                    self.release().await
                }
                Step::Input(Some(rpc)) => self.take(rpc).await,
            };
            if let Err(e) = sent {
                self.ready.push_back(Err(e));
                self.ended = true;
            }
        }
    }

    /// Takes a request from openraft: held if it only advances the commit index, sent
    /// otherwise (after a held one, unless it carries the held one's commit on).
    async fn take(&mut self, rpc: AppendEntriesRequest<TypeConfig>) -> Result<(), RPCError<TypeConfig>> {
        let mut until = Instant::now() + COMMIT_HOLD;
        if let Some(held) = self.held.take() {
            if takes_over(&held.rpc, &rpc) {
                // Never held longer than the first of them would have been alone.
                until = until.min(held.until);
                let merged = Some(held.rpc.prev_log_id);
                self.sent.push_back(Sent { at: Instant::now(), term: 0, leading: false, merged });
            } else {
                self.send(held.rpc).await?;
            }
        }
        // A session's first request (a probe, or the only one) is never held: openraft may be
        // waiting for its answer before it produces another.
        let commit_only = self.commit_sent.is_some()
            && rpc.entries.is_empty()
            && rpc.vote.is_committed()
            && rpc.leader_commit > self.commit_sent;
        if commit_only {
            self.commit_sent = rpc.leader_commit;
            self.held = Some(Held { rpc, until });
            return Ok(());
        }
        self.send(rpc).await
    }

    /// Sends the held request, if any.
    async fn release(&mut self) -> Result<(), RPCError<TypeConfig>> {
        match self.held.take() {
            Some(held) => self.send(held.rpc).await,
            None => Ok(()),
        }
    }

    /// Writes `rpc` to the stream, opened first if there is none.
    async fn send(&mut self, rpc: AppendEntriesRequest<TypeConfig>) -> Result<(), RPCError<TypeConfig>> {
        let target = self.handle.target;
        if self.handle.append.is_none() {
            match self.handle.open_append(self.timeout).await {
                Ok(conn) => self.handle.append = Some(conn),
                Err(e) => return Err(e),
            }
        }
        if rpc.leader_commit > self.commit_sent {
            self.commit_sent = rpc.leader_commit;
        }
        let (request, sent) = self.handle.envelope(&rpc);
        let conn = self.handle.append.as_mut().expect("checked above");
        if conn.requests.unbounded_send(request).is_err() {
            let reason = "the AppendEntries stream closed".to_string();
            return Err(self.fail(PeerError::Unreachable { target, reason }));
        }
        self.sent.push_back(sent);
        Ok(())
    }

    /// Queues the answer to the oldest sent request from `reply`, after the answers of the
    /// merged requests before it, recording the peer's acknowledgement.
    fn answer(&mut self, reply: Result<PeerReply, PeerError>) {
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let e = self.fail(e);
                self.ready.push_back(Err(e));
                return;
            }
        };
        let mut merged = Vec::new();
        while let Some(Sent { merged: Some(prev), .. }) = self.sent.front() {
            merged.push(*prev);
            self.sent.pop_front();
        }
        let sent = self.sent.pop_front().expect("an answer is awaited only for a request sent");
        let target = self.handle.target;
        let decoded: Result<Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>, _> =
            crate::codec::decode(&reply.payload);
        let result = match decoded {
            Err(e) => {
                let e = self.fail(PeerError::Failed { target, reason: format!("undecodable reply: {e}") });
                self.ready.push_back(Err(e));
                return;
            }
            // The peer's Raft stopped: a network failure to openraft, which retries later.
            Ok(Err(fatal)) => {
                self.close();
                self.ready.push_back(Err(RPCError::Network(NetworkError::new(&fatal))));
                return;
            }
            Ok(Ok(result)) => result,
        };
        // Any answer but a higher vote means the peer still accepts this leader's term.
        if sent.leading && !matches!(result, Err(StreamAppendError::HigherVote(_))) {
            let receipt = reply.receipt_us.zip(reply.receipt_epoch).map(|(us, epoch)| Stamp { epoch, us });
            self.handle.peers.record_ack(target, sent.term, sent.at, receipt);
        }
        // A merged request had the same previous entry as the one that carried it: accepted,
        // the follower holds that entry; refused, for the same reason.
        for prev in merged {
            self.ready.push_back(Ok(match &result {
                Ok(_) => Ok(prev),
                Err(e) => Err(e.clone()),
            }));
        }
        // The follower ends its side after a refusal.
        if result.is_err() {
            self.close();
        }
        self.ready.push_back(Ok(result));
    }

    /// Closes the stream after `e` and returns openraft's error for it.
    fn fail(&mut self, e: PeerError) -> RPCError<TypeConfig> {
        self.close();
        self.handle.rpc_error(e, RPCTypes::AppendEntries)
    }

    fn close(&mut self) {
        self.handle.append = None;
        self.sent.clear();
        self.held = None;
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
    Release,
    Done,
}

/// Whether `next` carries what the held commit-index request `held` says: the same leader, the
/// same previous entry, and a commit index at least as high.
fn takes_over(held: &AppendEntriesRequest<TypeConfig>, next: &AppendEntriesRequest<TypeConfig>) -> bool {
    held.vote == next.vote && held.prev_log_id == next.prev_log_id && next.leader_commit >= held.leader_commit
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
