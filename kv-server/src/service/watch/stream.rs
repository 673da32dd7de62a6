//! One watch stream: the task that reads the client's requests and serves every watch of the
//! stream, live from the apply event seam while a watch is caught up, and from the stored
//! versions while it is behind.
//!
//! The stream's position is `seen`: every change up to that revision has either come through
//! the seam or, when the stream missed some (it lagged, a snapshot replaced the state, a change
//! was not recorded), is to be read from storage. A watch owed revision `next` is caught up
//! when `next > seen` and then takes the seam's changes; otherwise it reads its range from the
//! stored versions, a bounded chunk per step, until it is caught up. Both paths deliver a
//! revision only once: a watch moves `next` past whatever it was given.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kv_api::etcdserverpb::watch_request::RequestUnion;
use kv_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use kv_api::EtcdError;
use raft_core::engine::Engine;
use raft_core::mvcc::changes::ChunkLimit;
use raft_core::mvcc::MvccError;
use raft_core::state_machine::events::Applied;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use super::outbox::Outbox;
use super::watcher::{is_empty_range, responses, SharedEvents, Watcher};
use crate::error;
use crate::service::Ctx;

/// What one catch-up step reads at most (a revision's events are never split): well under the
/// room a step waits for (half the outbox), so its responses are queued without waiting.
const CATCH_UP: ChunkLimit = ChunkLimit { events: 1000, bytes: 64 << 10 };

/// Longest a live event waits for its client to make room in the outbox. A client that takes
/// nothing for this long has stalled: its stream stops taking from the apply event seam (a
/// subscriber that stops reading would hold the seam's whole ring of applies in memory) and
/// serves what it missed from storage once the client reads again.
const LIVE_WAIT: Duration = Duration::from_secs(1);

/// How often a stream that requires a leader checks that its member has one.
const LEADER_CHECK: Duration = Duration::from_millis(500);

/// Bytes over the request limit a response may reach before it is split (etcd's margin).
const FRAGMENT_MARGIN: usize = 512 * 1024;

/// A subscription to the apply event seam.
type Seam = tokio::sync::broadcast::Receiver<Arc<Applied>>;

/// The next message of the seam; never resolves without a subscription.
async fn next_applied(seam: &mut Option<Seam>) -> Result<Arc<Applied>, RecvError> {
    match seam {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the member starts to shut down (or its context is gone).
async fn closed(closing: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// The stream ends: the client went away, or the stream failed with a status already sent.
struct Ended;

type Step = Result<(), Ended>;

pub struct WatchStream<E: Engine> {
    ctx: Arc<Ctx<E>>,
    outbox: Outbox,
    require_leader: bool,
    progress_interval: Duration,
    watchers: BTreeMap<i64, Watcher>,
    /// The next id the server hands out.
    next_id: i64,
    /// See the module doc.
    seen: i64,
    /// A progress request waits for every watch of the stream to catch up.
    progress_pending: bool,
    /// The client took nothing for [`LIVE_WAIT`]: the stream leaves the seam until it has
    /// caught up from storage.
    stalled: bool,
    /// The last leader check found no leader.
    leaderless: bool,
}

impl<E: Engine> WatchStream<E> {
    pub fn new(ctx: Arc<Ctx<E>>, outbox: Outbox, require_leader: bool, progress_interval: Duration) -> Self {
        WatchStream {
            ctx,
            outbox,
            require_leader,
            progress_interval,
            watchers: BTreeMap::new(),
            next_id: 0,
            seen: 0,
            progress_pending: false,
            stalled: false,
            leaderless: false,
        }
    }

    /// Serves the stream until the client ends it or goes away. The stream subscribes to the
    /// seam only while it has watches: a subscription makes every apply record its changes.
    pub async fn run(mut self, mut incoming: impl Stream<Item = Result<WatchRequest, Status>> + Unpin) {
        let mut seam: Option<Seam> = None;
        let start = tokio::time::Instant::now();
        let mut progress = tokio::time::interval_at(start + self.progress_interval, self.progress_interval);
        let mut leader = tokio::time::interval_at(start + LEADER_CHECK, LEADER_CHECK);
        let mut closing = self.ctx.closing.clone();
        loop {
            let behind = self.behind();
            let step = tokio::select! {
                biased;
                // The member is shutting down: the client resumes elsewhere.
                () = closed(&mut closing) => self.fail(EtcdError::ServerStopped.to_status()).await,
                request = incoming.next() => match request {
                    Some(Ok(request)) => self.request(request).await,
                    // The client closed its side, or the connection failed.
                    None | Some(Err(_)) => Err(Ended),
                },
                // Storage is read only as fast as the client takes what was read.
                () = self.outbox.has_room(), if behind => self.catch_up().await,
                applied = next_applied(&mut seam) => self.applied(applied).await,
                _ = progress.tick() => self.progress_tick().await,
                _ = leader.tick(), if self.require_leader => self.check_leader().await,
            };
            if step.is_err() {
                return;
            }
            if seam.is_some() && (self.watchers.is_empty() || self.stalled) {
                seam = None;
            } else if seam.is_none() && !self.watchers.is_empty() && !self.behind() {
                // Changes up to the subscription's revision are in storage: a watch owed them
                // is behind and reads them there.
                let (rx, revision) = self.ctx.node.store().subscribe();
                self.seen = self.seen.max(revision);
                self.stalled = false;
                seam = Some(rx);
            }
        }
    }

    /// Whether some watch is behind the seam and reads from storage.
    fn behind(&self) -> bool {
        self.watchers.values().any(|w| w.next <= self.seen)
    }

    fn header(&self, revision: i64) -> kv_api::etcdserverpb::ResponseHeader {
        self.ctx.header(revision, None)
    }

    async fn send(&self, response: WatchResponse) -> Step {
        self.outbox.send(response).await.map_err(|_| Ended)
    }

    /// Ends the stream with `status`.
    async fn fail(&self, status: Status) -> Step {
        self.outbox.fail(status).await;
        Err(Ended)
    }

    async fn request(&mut self, request: WatchRequest) -> Step {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_none() {
                    return Ok(());
                }
                let header = self.header(0);
                self.send(WatchResponse {
                    header: Some(header),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                self.progress_if_caught_up().await
            }
            None => Ok(()),
        }
    }

    /// A refused create: etcd answers created and canceled at once, with watch id -1.
    async fn refuse(&self, reason: String) -> Step {
        let header = self.header(0);
        self.send(WatchResponse {
            header: Some(header),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Step {
        if create.start_revision < 0 {
            return self.refuse(EtcdError::Compacted.to_string()).await;
        }
        if is_empty_range(&create.key, &create.range_end) {
            return self.refuse("mvcc: watcher range is empty".into()).await;
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                return self.refuse("mvcc: duplicate watch ID provided on the WatchStream".into()).await;
            }
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let meta = self.ctx.node.store().meta();
        let next = if create.start_revision == 0 { meta.revision + 1 } else { create.start_revision };
        let header = self.header(meta.revision);
        self.send(WatchResponse { header: Some(header), watch_id: id, created: true, ..Default::default() }).await?;
        if meta.compacted > 0 && next <= meta.compacted {
            return self.compacted(id, meta.compacted).await;
        }
        self.watchers.insert(id, Watcher::new(id, &create, next));
        Ok(())
    }

    /// Ends watch `id`, which needs history that compaction removed.
    async fn compacted(&mut self, id: i64, compacted: i64) -> Step {
        self.watchers.remove(&id);
        let header = self.header(0);
        self.send(WatchResponse {
            header: Some(header),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            cancel_reason: EtcdError::Compacted.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Sends `events` to the watch `id` (a no-op when there are none), waiting for room.
    async fn deliver(&mut self, id: i64, revision: i64, events: Vec<kv_api::mvccpb::Event>) -> Step {
        for response in self.responses(id, revision, events) {
            self.send(response).await?;
        }
        Ok(())
    }

    /// Sends live `events` to the watch `id`, waiting at most [`LIVE_WAIT`] for the client to
    /// make room (not at all once the stream is stalled); returns whether they went (nothing
    /// to send counts as sent). A watch whose events did not go stays owed them and reads them
    /// from storage later. The parts of a fragmented response after the first always wait:
    /// a response must not be sent in part.
    async fn deliver_live(
        &mut self,
        id: i64,
        revision: i64,
        events: Vec<kv_api::mvccpb::Event>,
    ) -> Result<bool, Ended> {
        let mut parts = self.responses(id, revision, events).into_iter();
        let Some(first) = parts.next() else { return Ok(true) };
        let wait = if self.stalled { Duration::ZERO } else { LIVE_WAIT };
        match tokio::time::timeout(wait, self.send(first)).await {
            Ok(sent) => sent?,
            Err(_) => {
                self.stalled = true;
                return Ok(false);
            }
        }
        for part in parts {
            self.send(part).await?;
        }
        Ok(true)
    }

    /// The responses that carry `events` to the watch `id` (none if there are no events).
    fn responses(&mut self, id: i64, revision: i64, events: Vec<kv_api::mvccpb::Event>) -> Vec<WatchResponse> {
        if events.is_empty() {
            return Vec::new();
        }
        let header = self.header(revision);
        let Some(w) = self.watchers.get_mut(&id) else { return Vec::new() };
        w.sent_since_tick = true;
        let limit = self.ctx.limits.max_request_bytes + FRAGMENT_MARGIN;
        responses(id, header, events, w.fragment, limit)
    }

    /// One message of the seam.
    async fn applied(&mut self, applied: Result<Arc<Applied>, RecvError>) -> Step {
        let applied = match applied {
            Ok(applied) => applied,
            // Changes were dropped from the ring before this stream took them: everything up
            // to the current revision is read from storage instead.
            Err(RecvError::Lagged(_)) => {
                self.seen = self.seen.max(self.ctx.node.store().revision());
                return Ok(());
            }
            Err(RecvError::Closed) => return self.fail(EtcdError::ServerStopped.to_status()).await,
        };
        match &*applied {
            Applied::Changes { after, revision, changes, derived } => {
                // Revisions the stream never saw come from storage.
                self.seen = self.seen.max(*after);
                let live: Vec<i64> = self
                    .watchers
                    .values()
                    .filter(|w| w.next > self.seen && w.next <= *revision)
                    .map(|w| w.id)
                    .collect();
                if !live.is_empty() {
                    let shared = SharedEvents::of(changes, derived);
                    for id in live {
                        let events = self.watchers[&id].shared_events(changes, shared);
                        // Not sent: the watch stays owed this revision and catches up later.
                        if self.deliver_live(id, *revision, events).await? {
                            if let Some(w) = self.watchers.get_mut(&id) {
                                w.next = revision + 1;
                            }
                        }
                    }
                }
                self.seen = self.seen.max(*revision);
            }
            Applied::Unrecorded { upto, .. } => self.seen = self.seen.max(*upto),
            Applied::Replaced { revision } => self.seen = self.seen.max(*revision),
        }
        self.progress_if_caught_up().await
    }

    /// Serves the watch that is furthest behind one chunk of its changes from storage.
    async fn catch_up(&mut self) -> Step {
        let Some(w) = self.watchers.values().filter(|w| w.next <= self.seen).min_by_key(|w| w.next) else {
            return Ok(());
        };
        let (id, range, from, prev) = (w.id, w.range.clone(), w.next, w.wants_prev());
        let read = self.ctx.node.store().changes(&range, from, self.seen, prev, CATCH_UP);
        let read = match read {
            Ok(read) => read,
            Err(MvccError::Etcd(EtcdError::Compacted)) => {
                let compacted = self.ctx.node.store().meta().compacted;
                return self.compacted(id, compacted).await;
            }
            Err(e) => return self.fail(error::mvcc(e)).await,
        };
        let events = self.watchers[&id].events(&read.changes);
        let revision = read.changes.last().map_or(self.seen, |c| c.version.mod_revision);
        self.deliver(id, revision, events).await?;
        if let Some(w) = self.watchers.get_mut(&id) {
            w.next = read.next;
            #[cfg(feature = "planted-bugs")]
            if self.ctx.node.planted().watch_skip_at_switch && w.next > self.seen {
                // Planted bug: the first revision after the switch to live events is skipped.
                w.next += 1;
            }
        }
        self.progress_if_caught_up().await
    }

    /// Answers a pending progress request once every watch is caught up: every event up to
    /// the revision in its header has been sent.
    async fn progress_if_caught_up(&mut self) -> Step {
        if !self.progress_pending || self.behind() {
            return Ok(());
        }
        self.progress_pending = false;
        let header = self.header(self.seen);
        self.send(WatchResponse { header: Some(header), watch_id: -1, ..Default::default() }).await
    }

    /// The periodic progress notification of every caught-up watch that asked for one and was
    /// sent nothing since the last tick.
    async fn progress_tick(&mut self) -> Step {
        let due: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.progress_notify && !w.sent_since_tick && w.next > self.seen)
            .map(|w| w.id)
            .collect();
        for w in self.watchers.values_mut() {
            w.sent_since_tick = false;
        }
        for id in due {
            let header = self.header(self.seen);
            self.send(WatchResponse { header: Some(header), watch_id: id, ..Default::default() }).await?;
        }
        Ok(())
    }

    /// Ends the stream when the member has had no leader at two checks in a row and the client
    /// asked for one (a leader just elected is confirmed by a quorum within a heartbeat; one
    /// check may fall before that).
    async fn check_leader(&mut self) -> Step {
        if self.ctx.node.has_leader() {
            self.leaderless = false;
            return Ok(());
        }
        if !std::mem::replace(&mut self.leaderless, true) {
            return Ok(());
        }
        self.fail(EtcdError::NoLeader.to_status()).await
    }
}
