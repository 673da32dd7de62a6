//! A follower's calls to the leader (forwarded writes, read-index and lease questions) over one
//! long-lived gRPC stream per peer (`Calls`), many in flight at once: each request carries an
//! id, each answer the id of its request, in the order they complete.
//!
//! A unary call costs an HTTP/2 stream of its own, headers and trailers both ways; a write that
//! reaches a follower paid that once on each member on its way to the leader and back.
//!
//! The failures mean what they meant for unary calls, so the callers' handling of them is the
//! same: a stream that cannot be opened, or a request that could not be queued on it, never
//! reached the peer (`NotConnected`); a stream that ends or breaks with calls in flight leaves
//! their fate unknown (`Unreachable`); a call not answered in time is a `Timeout`; an answer
//! with an error status is classified as that status would be.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::channel::mpsc;
use kv_api::raftkvpb::peer_client::PeerClient;
use kv_api::raftkvpb::{CallKind, PeerReply, PeerRequest};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{classify, PeerError, Peers, MAX_PEER_MESSAGE};
use crate::typ::{NodeId, PeerNode};

type Waiter = oneshot::Sender<Result<PeerReply, PeerError>>;

/// The open Calls stream to one peer.
pub(super) struct CallConn {
    requests: mpsc::UnboundedSender<PeerRequest>,
    /// Calls sent and not yet answered, by id.
    waiting: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
}

impl Peers {
    /// Sends `payload` as a call of `kind` to `target` on its Calls stream (opened if there is
    /// none) and waits at most `timeout` for the answer.
    pub(super) async fn call_streamed(
        &self,
        target: NodeId,
        node: &PeerNode,
        kind: CallKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<PeerReply, PeerError> {
        let started = tokio::time::Instant::now();
        let conn = self.call_conn(target, node, timeout).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.waiting.lock().insert(id, tx);
        let request = PeerRequest {
            cluster_id: self.inner.cluster_id,
            from: self.inner.me,
            payload,
            call_id: Some(id),
            call: kind as i32,
            ..Default::default()
        };
        if conn.requests.unbounded_send(request).is_err() {
            conn.waiting.lock().remove(&id);
            self.forget_calls(target, &conn);
            let reason = "the Calls stream closed before the request was sent".to_string();
            return Err(PeerError::NotConnected { target, reason });
        }
        let left = timeout.saturating_sub(started.elapsed());
        let reply = match tokio::time::timeout(left, rx).await {
            Err(_) => {
                conn.waiting.lock().remove(&id);
                return Err(PeerError::Timeout { target, timeout });
            }
            Ok(Err(_)) => {
                let reason = "the Calls stream was dropped with the call in flight".to_string();
                return Err(PeerError::Unreachable { target, reason });
            }
            Ok(Ok(reply)) => reply?,
        };
        match reply.error_code {
            None => Ok(reply),
            Some(code) => Err(classify(target, tonic::Status::new(tonic::Code::from(code), reply.error_message))),
        }
    }

    /// The open Calls stream to `target`, or a new one.
    async fn call_conn(&self, target: NodeId, node: &PeerNode, timeout: Duration) -> Result<Arc<CallConn>, PeerError> {
        if let Some(conn) = self.inner.calls.lock().get(&target) {
            return Ok(conn.clone());
        }
        let channel = self.channel(target, node)?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let (requests, rx) = mpsc::unbounded();
        let replies = match tokio::time::timeout(timeout, client.calls(rx)).await {
            Err(_) => return Err(PeerError::Timeout { target, timeout }),
            Ok(Err(status)) => return Err(classify(target, status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let conn = Arc::new(CallConn { requests, waiting: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1) });
        // Two callers may open one each at once; the first kept serves later calls, and the
        // other serves its own until its stream ends.
        let kept = self.inner.calls.lock().entry(target).or_insert_with(|| conn.clone()).clone();
        tokio::spawn(read_answers(self.clone(), target, Arc::downgrade(&conn), replies));
        Ok(if Arc::ptr_eq(&kept, &conn) { kept } else { conn })
    }

    /// Forgets `conn` as the stream to `target` (if it still is), so the next call opens another.
    fn forget_calls(&self, target: NodeId, conn: &Arc<CallConn>) {
        let mut calls = self.inner.calls.lock();
        if calls.get(&target).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            calls.remove(&target);
        }
    }
}

/// Hands each answer on `replies` to its waiting call. When the stream ends or breaks, every
/// call still waiting learns that its fate is unknown, and the stream is forgotten.
async fn read_answers(peers: Peers, target: NodeId, conn: Weak<CallConn>, mut replies: tonic::Streaming<PeerReply>) {
    let reason = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let Some(conn) = conn.upgrade() else { return };
                let waiter = conn.waiting.lock().remove(&reply.call_id.unwrap_or(0));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(reply));
                }
            }
            Ok(None) => break "the Calls stream ended".to_string(),
            Err(status) => break format!("the Calls stream broke: {:?}: {}", status.code(), status.message()),
        }
    };
    let Some(conn) = conn.upgrade() else { return };
    peers.forget_calls(target, &conn);
    let waiting: Vec<Waiter> = conn.waiting.lock().drain().map(|(_, w)| w).collect();
    for waiter in waiting {
        let _ = waiter.send(Err(PeerError::Unreachable { target, reason: reason.clone() }));
    }
}
