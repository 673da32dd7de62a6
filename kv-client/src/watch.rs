//! A watch that survives its member: [`Watch`] says what to watch, [`Client::watch`] opens it,
//! and [`Watcher::next`] hands out the events in order. When the stream breaks (the member
//! died, lost its leader, or the connection failed), the watcher opens a new one on another
//! member from the revision after the last one it delivered, so the caller sees every event of
//! its keys once, in revision order, across failover. The one thing it cannot survive is
//! compaction of the history it still needs: then [`ClientError::Compacted`] says from which
//! revision the caller must read the current state and watch again.

use std::time::Duration;

use kv_api::etcdserverpb::watch_create_request::FilterType;
use kv_api::etcdserverpb::watch_request::RequestUnion;
use kv_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use kv_api::mvccpb::Event;
use kv_api::EtcdError;
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::{prefix_end, Client, ClientError, Result};

/// Pause before opening a watch stream again on the next member.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);

/// What to watch: keys, where to start, and what each event carries.
#[derive(Clone, Debug, Default)]
pub struct Watch(WatchCreateRequest);

impl Watch {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Watch {
        Watch(WatchCreateRequest { key: key.into(), ..Default::default() })
    }
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Watch {
        let key = prefix.into();
        Watch(WatchCreateRequest { range_end: prefix_end(&key), key, ..Default::default() })
    }
    /// Keys in [`from`, `to`).
    pub fn range(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) -> Watch {
        Watch(WatchCreateRequest { key: from.into(), range_end: to.into(), ..Default::default() })
    }
    /// Events from `revision` on (replayed from the history); by default, those after the
    /// watch is created.
    pub fn from_revision(mut self, revision: i64) -> Watch {
        self.0.start_revision = revision;
        self
    }
    /// Each event carries the key's previous version.
    pub fn prev_kv(mut self) -> Watch {
        self.0.prev_kv = true;
        self
    }
    /// Leave out puts.
    pub fn no_put(mut self) -> Watch {
        self.0.filters.push(FilterType::Noput as i32);
        self
    }
    /// Leave out deletes.
    pub fn no_delete(mut self) -> Watch {
        self.0.filters.push(FilterType::Nodelete as i32);
        self
    }
}

/// etcd's create request, as [`kv_api::api::watch_request`] says.
impl From<WatchCreateRequest> for Watch {
    fn from(req: WatchCreateRequest) -> Watch {
        Watch(kv_api::api::watch_request(req))
    }
}

/// An open watch stream on one member.
struct Open {
    /// Kept open: the server ends a stream whose requests end.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

/// A watch that resumes on another member when its stream breaks (see the module doc).
pub struct Watcher {
    client: Client,
    spec: WatchCreateRequest,
    /// The first revision not delivered yet (0 until the first stream says where "now" is).
    next: i64,
    /// The member the next stream is opened on.
    member: usize,
    open: Option<Open>,
    /// Events that arrived before the created response was seen (none from raftkv or etcd,
    /// which send created first; kept rather than lost).
    early: Vec<Event>,
}

impl Client {
    /// Opens a watch of `watch` that follows the cluster across member failures. It returns
    /// once a member has created the watch, so a watch "from now" covers every change after
    /// this call returns ([`Watcher::next_revision`] says from where).
    pub async fn watch(&self, watch: Watch) -> Result<Watcher> {
        let member = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let next = watch.0.start_revision;
        let mut w = Watcher { client: self.clone(), spec: watch.0, next, member, open: None, early: Vec::new() };
        w.created().await?;
        Ok(w)
    }
}

impl Watcher {
    /// The first revision this watcher has not delivered: where it resumes.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// The next response of the watch's stream, reopening the stream on the next member when
    /// it breaks (the member is gone or lost its leader). A canceled watch is an error.
    async fn message(&mut self) -> Result<WatchResponse> {
        loop {
            if self.open.is_none() {
                self.reopen().await?;
            }
            let open = self.open.as_mut().expect("opened above");
            match open.responses.message().await {
                Ok(Some(r)) if r.canceled && r.compact_revision > 0 => {
                    return Err(ClientError::Compacted { compact_revision: r.compact_revision })
                }
                Ok(Some(r)) if r.canceled => return Err(EtcdError::Other(r.cancel_reason).into()),
                Ok(Some(r)) => return Ok(r),
                Ok(None) | Err(_) => self.broken().await,
            }
        }
    }

    /// Notes a created response: a watch "from now" starts after its revision.
    fn note_created(&mut self, r: &WatchResponse) {
        if self.next == 0 {
            self.next = r.header.as_ref().map_or(0, |h| h.revision) + 1;
        }
    }

    /// The events at or after the next revision owed (earlier ones were delivered before the
    /// stream was reopened), moving the next revision past them; `None` if there are none.
    fn owed(&mut self, events: Vec<Event>) -> Option<Vec<Event>> {
        let next = self.next;
        let events: Vec<Event> =
            events.into_iter().filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= next)).collect();
        self.next = events.last().and_then(|e| e.kv.as_ref())?.mod_revision + 1;
        Some(events)
    }

    /// Opens streams until one member answers with the watch created.
    async fn created(&mut self) -> Result<()> {
        loop {
            let r = self.message().await?;
            if r.created {
                self.note_created(&r);
                return Ok(());
            }
            self.early.extend(r.events);
        }
    }

    /// The next events of the watched keys, in revision order (all of one revision together).
    /// Waits as long as it takes; a broken stream is reopened on the next member.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        let early = std::mem::take(&mut self.early);
        if let Some(events) = self.owed(early) {
            return Ok(events);
        }
        loop {
            let r = self.message().await?;
            if r.created {
                self.note_created(&r);
                continue;
            }
            let revision = r.header.as_ref().map_or(0, |h| h.revision);
            let progress = r.events.is_empty();
            match self.owed(r.events) {
                Some(events) => return Ok(events),
                // A progress report: everything up to its revision was delivered.
                None if progress => self.next = self.next.max(revision + 1),
                // Events delivered before the stream was reopened.
                None => {}
            }
        }
    }

    /// Drops the broken stream; the next one goes to the next member after a pause.
    async fn broken(&mut self) {
        self.open = None;
        self.member += 1;
        tokio::time::sleep(REOPEN_PAUSE).await;
    }

    /// Opens a stream on the current member from the next revision owed, trying the members
    /// in turn until one accepts it.
    async fn reopen(&mut self) -> Result<()> {
        let members = self.client.members.clone();
        let mut last = None;
        for _ in 0..members.len() * 4 {
            let member = &members[self.member % members.len()];
            let (tx, rx) = mpsc::channel(4);
            let mut create = self.spec.clone();
            create.start_revision = self.next;
            let request = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
            tx.send(request).await.expect("the receiver is held below");
            let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
            let mut call = tonic::Request::new(stream);
            // A member that loses its leader ends the stream, so the watcher moves on instead
            // of waiting on a member cut off from the cluster.
            call.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
            match member.watch.clone().watch(call).await {
                Ok(responses) => {
                    self.open = Some(Open { _requests: tx, responses: responses.into_inner() });
                    return Ok(());
                }
                Err(status) => {
                    last = Some(ClientError::from(status));
                    self.member += 1;
                    tokio::time::sleep(REOPEN_PAUSE).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Timeout.into()))
    }
}

impl kv_api::WatchEvents for Watcher {
    type Error = ClientError;

    async fn next(&mut self) -> Result<Vec<Event>> {
        Watcher::next(self).await
    }

    fn next_revision(&self) -> i64 {
        Watcher::next_revision(self)
    }
}
