//! The responses a watch stream has made that its client has not taken yet, bounded in count
//! and in bytes: a client that stops reading holds at most [`QUEUED_BYTES`] (plus one response)
//! of its member's memory. A full outbox holds up the stream's task; the task gives up waiting
//! on a client that takes nothing for a while and serves it later from the stored versions.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kv_api::etcdserverpb::WatchResponse;
use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Responses queued per stream.
const QUEUED_RESPONSES: usize = 64;

/// Bytes of responses queued per stream (a larger response waits for an empty outbox). Small,
/// because a member may serve thousands of streams: the queue only has to cover the moment
/// between tonic taking one response and the next.
pub const QUEUED_BYTES: usize = 256 << 10;

/// The stream handed to tonic.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// The client is gone: nothing sent will be read.
pub struct Closed;

/// A queued response holds its share of the byte budget until tonic takes it.
struct Queued {
    item: Result<WatchResponse, Status>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The sending side, owned by the stream's task.
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
}

/// An empty outbox and the stream that drains it.
pub fn outbox() -> (Outbox, ResponseStream) {
    let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
    let drain = futures::stream::unfold(rx, |mut rx| async move {
        // The permit is released as the response leaves the queue.
        rx.recv().await.map(|queued: Queued| (queued.item, rx))
    });
    (Outbox { tx, bytes: Arc::new(Semaphore::new(QUEUED_BYTES)) }, Box::pin(drain))
}

impl Outbox {
    /// Queues `response`, waiting while the outbox is full.
    pub async fn send(&self, response: WatchResponse) -> Result<(), Closed> {
        let len = response.encoded_len().clamp(1, QUEUED_BYTES) as u32;
        let permit = self.bytes.clone().acquire_many_owned(len).await.map_err(|_| Closed)?;
        self.tx.send(Queued { item: Ok(response), _bytes: Some(permit) }).await.map_err(|_| Closed)
    }

    /// Resolves once at least half of the byte budget is free: a stream that is behind reads
    /// its next chunk from storage only then, so chunks are read as fast as the client takes
    /// them and never pile up in memory, while the half still queued keeps the connection busy.
    pub async fn has_room(&self) {
        let _ = self.bytes.acquire_many((QUEUED_BYTES / 2) as u32).await;
    }

    /// Ends the stream with `status`.
    pub async fn fail(&self, status: Status) {
        let _ = self.tx.send(Queued { item: Err(status), _bytes: None }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kv_api::mvccpb::{Event, KeyValue};
    use std::time::Duration;

    fn response(value_bytes: usize) -> WatchResponse {
        let kv = KeyValue { key: b"k".to_vec(), value: vec![0; value_bytes], ..Default::default() };
        WatchResponse {
            events: vec![Event::new(kv_api::mvccpb::event::EventType::Put, Some(kv), None)],
            ..Default::default()
        }
    }

    /// Whether `send` completes without the client reading.
    async fn fits(outbox: &Outbox, value_bytes: usize) -> bool {
        tokio::time::timeout(Duration::from_millis(50), outbox.send(response(value_bytes))).await.is_ok()
    }

    #[tokio::test]
    async fn an_unread_outbox_is_bounded_in_bytes_and_in_count() {
        let (outbox, mut drain) = outbox();
        let quarter = QUEUED_BYTES / 4;
        assert!(fits(&outbox, quarter).await && fits(&outbox, quarter).await && fits(&outbox, quarter).await);
        assert!(!fits(&outbox, quarter).await, "a fourth quarter and its framing do not fit");
        drain.next().await.unwrap().unwrap();
        assert!(fits(&outbox, quarter).await, "taking a response frees its bytes");

        let (outbox, _drain) = super::outbox();
        for _ in 0..QUEUED_RESPONSES {
            assert!(fits(&outbox, 1).await);
        }
        assert!(!fits(&outbox, 1).await, "small responses are bounded by count");
    }

    #[tokio::test]
    async fn a_response_over_the_budget_waits_for_an_empty_outbox() {
        let (outbox, mut drain) = outbox();
        assert!(fits(&outbox, 10).await);
        assert!(!fits(&outbox, 2 * QUEUED_BYTES).await);
        drain.next().await.unwrap().unwrap();
        assert!(fits(&outbox, 2 * QUEUED_BYTES).await);
    }

    #[tokio::test]
    async fn room_waits_for_half_the_budget() {
        let (outbox, mut drain) = outbox();
        let room = || tokio::time::timeout(Duration::from_millis(50), outbox.has_room());
        assert!(room().await.is_ok(), "an empty outbox has room");
        let third = QUEUED_BYTES / 3;
        assert!(fits(&outbox, third).await && fits(&outbox, third).await);
        assert!(room().await.is_err(), "two thirds are queued");
        drain.next().await.unwrap().unwrap();
        assert!(room().await.is_ok(), "one third is queued");
    }

    #[tokio::test]
    async fn a_closed_client_ends_sending() {
        let (outbox, drain) = outbox();
        drop(drain);
        assert!(outbox.send(response(1)).await.is_err());
    }
}
