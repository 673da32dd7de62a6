//! One watch: the keys it covers, its filters, and the next revision it is owed; how its events
//! are made from applied changes, and how a response over the message limit is split.

use std::sync::OnceLock;

use kv_api::etcdserverpb::watch_create_request::FilterType;
use kv_api::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use kv_api::mvccpb::event::EventType;
use kv_api::mvccpb::{Event, KeyValue};
use prost::Message;
use raft_core::mvcc::read::KeyRange;
use raft_core::mvcc::write::Change;
use raft_core::state_machine::events::Derived;

/// A watch of a stream.
pub struct Watcher {
    pub id: i64,
    pub range: KeyRange,
    /// The first revision whose events this watch has not been given yet.
    pub next: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// A response went out since the last progress tick (then no notification is due).
    pub sent_since_tick: bool,
}

impl Watcher {
    /// A watch for `req`, owed the events from revision `next` on.
    pub fn new(id: i64, req: &WatchCreateRequest, next: i64) -> Watcher {
        let filters = |f: FilterType| req.filters.contains(&(f as i32));
        Watcher {
            id,
            range: watched_range(&req.key, &req.range_end),
            next,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            sent_since_tick: false,
        }
    }

    /// Whether the watch wants previous versions (reading them back costs an index lookup).
    pub fn wants_prev(&self) -> bool {
        self.prev_kv
    }

    /// Whether the watch is owed `change`: its keys, at or after `next`, not filtered out.
    fn owed(&self, c: &Change) -> bool {
        c.version.mod_revision >= self.next
            && self.range.contains(&c.key)
            && if c.is_delete() { !self.no_delete } else { !self.no_put }
    }

    /// The events of `changes` this watch is owed. `changes` are in revision order.
    pub fn events<'c>(&self, changes: impl IntoIterator<Item = &'c Change>) -> Vec<Event> {
        changes.into_iter().filter(|c| self.owed(c)).map(|c| event(c, self.prev_kv)).collect()
    }

    /// [`Watcher::events`] of one apply's changes, as events encoded once for every watcher.
    pub fn shared_events(&self, changes: &[Change], shared: &SharedEvents) -> Vec<Event> {
        let owed = changes.iter().enumerate().filter(|(_, c)| self.owed(c));
        owed.map(|(i, c)| shared.event(i, c, self.prev_kv)).collect()
    }
}

/// One apply's changes as events, each encoded at most once with and once without its
/// previous version, whichever watchers ask for (kept in the apply's [`Derived`] slot).
///
/// In simulation, messages pass between nodes without being encoded, so there the events are
/// sent whole; this sharing is exercised by the tests of real processes.
pub struct SharedEvents {
    /// Per change: [without previous version, with].
    events: Vec<[OnceLock<Event>; 2]>,
}

impl SharedEvents {
    /// The shared events of an apply's `changes`, made by the first watcher that needs them.
    pub fn of<'d>(changes: &[Change], derived: &'d Derived) -> &'d SharedEvents {
        let made = derived.get_or_init(|| {
            let events = changes.iter().map(|_| [OnceLock::new(), OnceLock::new()]).collect();
            Box::new(SharedEvents { events })
        });
        made.downcast_ref().expect("only the Watch service derives from applies")
    }

    fn event(&self, i: usize, change: &Change, prev_kv: bool) -> Event {
        let slot = &self.events[i][usize::from(prev_kv)];
        slot.get_or_init(|| {
            let whole = event(change, prev_kv);
            if cfg!(madsim) {
                whole
            } else {
                whole.shared()
            }
        })
        .clone()
    }
}

/// The keys a create request names. etcd treats an empty key as "\0" (from the first key).
pub fn watched_range(key: &[u8], range_end: &[u8]) -> KeyRange {
    let key = if key.is_empty() { &[0u8][..] } else { key };
    KeyRange::new(key, range_end)
}

/// Whether a create request's range holds no key at all (etcd refuses such a watch).
pub fn is_empty_range(key: &[u8], range_end: &[u8]) -> bool {
    let key = if key.is_empty() { &[0u8][..] } else { key };
    !range_end.is_empty() && range_end != [0] && key >= range_end
}

/// The etcd event of one change: a put carries the key as written, a delete the key with its
/// deletion revision.
fn event(change: &Change, prev_kv: bool) -> Event {
    let (kind, kv) = if change.is_delete() {
        let kv = KeyValue { key: change.key.clone(), mod_revision: change.version.mod_revision, ..Default::default() };
        (EventType::Delete, kv)
    } else {
        (EventType::Put, change.version.to_kv(&change.key, false))
    };
    let prev_kv = if prev_kv { change.prev.as_ref().map(|p| p.to_kv(&change.key, false)) } else { None };
    Event::new(kind, Some(kv), prev_kv)
}

/// The responses that carry `events` for watch `id`: one, or, when the watch allows it and one
/// response would be over `limit` bytes, several, all but the last marked `fragment`.
pub fn responses(
    id: i64,
    header: ResponseHeader,
    events: Vec<Event>,
    fragment: bool,
    limit: usize,
) -> Vec<WatchResponse> {
    let whole = WatchResponse { header: Some(header), watch_id: id, events, ..Default::default() };
    if !fragment || whole.encoded_len() <= limit {
        return vec![whole];
    }
    let mut parts = Vec::new();
    let mut part = WatchResponse { header: Some(header), watch_id: id, fragment: true, ..Default::default() };
    let mut size = part.encoded_len();
    for event in whole.events {
        let len = event.encoded_len() + 8;
        if !part.events.is_empty() && size + len > limit {
            let next = WatchResponse { header: Some(header), watch_id: id, fragment: true, ..Default::default() };
            size = next.encoded_len();
            parts.push(std::mem::replace(&mut part, next));
        }
        size += len;
        part.events.push(event);
    }
    part.fragment = false;
    parts.push(part);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::mvcc::keys::Record;

    fn put(key: &str, rev: i64, version: i64) -> Change {
        let record = Record {
            create_revision: rev - version + 1,
            mod_revision: rev,
            sub: 0,
            version,
            lease: 0,
            value: vec![b'v'; 100],
        };
        Change { key: key.into(), version: record, prev: None }
    }

    fn delete(key: &str, rev: i64) -> Change {
        Change {
            key: key.into(),
            version: Record { mod_revision: rev, ..Record::default() },
            prev: Some(put(key, rev - 1, 1).version),
        }
    }

    #[test]
    fn a_watch_takes_its_keys_from_its_revision_minus_its_filters() {
        let changes = [put("a", 5, 1), put("ab", 6, 1), delete("a", 7), put("b", 8, 1)];
        let req = |filters: Vec<i32>| WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            filters,
            prev_kv: true,
            ..Default::default()
        };
        let w = Watcher::new(1, &req(vec![]), 6);
        let got: Vec<(String, i64, i32)> = w
            .events(&changes)
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision, e.r#type)
            })
            .collect();
        assert_eq!(got, [("ab".into(), 6, 0), ("a".into(), 7, 1)]);
        assert_eq!(w.events(&changes)[1].prev_kv.as_ref().unwrap().mod_revision, 6);
        assert_eq!(Watcher::new(1, &req(vec![0]), 0).events(&changes).len(), 1, "no puts");
        assert_eq!(Watcher::new(1, &req(vec![1]), 0).events(&changes).len(), 2, "no deletes");
    }

    /// Live events are encoded once per change and variant, whoever watches: every watcher's
    /// events are the shared encodings, identical on the wire to its own events.
    #[test]
    fn watchers_of_one_apply_share_its_encoded_events() {
        let changes = [put("a", 5, 1), put("ab", 6, 1), delete("a", 7), put("b", 8, 1)];
        let derived = Derived::new();
        let req = |prev_kv: bool, filters: Vec<i32>| WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            prev_kv,
            filters,
            ..Default::default()
        };
        for (prev_kv, filters) in [(false, vec![]), (true, vec![]), (true, vec![0]), (false, vec![1])] {
            let w = Watcher::new(1, &req(prev_kv, filters), 6);
            let shared = w.shared_events(&changes, SharedEvents::of(&changes, &derived));
            assert!(shared.iter().all(Event::is_shared));
            assert_eq!(shared, w.events(&changes));
            let whole = |e: &[Event]| WatchResponse { events: e.to_vec(), ..Default::default() }.encode_to_vec();
            assert_eq!(whole(&shared), whole(&w.events(&changes)));
        }
        let first = SharedEvents::of(&changes, &derived) as *const SharedEvents;
        assert_eq!(first, SharedEvents::of(&changes, &derived) as *const _, "made once per apply");
    }

    #[test]
    fn ranges_as_etcd_reads_them() {
        assert!(watched_range(b"", b"\0").contains(b"anything"));
        assert!(watched_range(b"", b"").contains(b"\0"));
        assert!(is_empty_range(b"b", b"a"));
        assert!(!is_empty_range(b"a", b"b") && !is_empty_range(b"a", b"\0") && !is_empty_range(b"a", b""));
    }

    #[test]
    fn large_responses_split_only_when_allowed() {
        let events: Vec<Event> = (0..100).map(|i| event(&put("k", i + 2, 1), false)).collect();
        let header = ResponseHeader::default();
        assert_eq!(responses(3, header, events.clone(), false, 1000).len(), 1);
        let parts = responses(3, header, events, true, 1000);
        assert!(parts.len() > 10);
        assert!(parts.iter().all(|p| p.encoded_len() <= 1000 && p.watch_id == 3));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment) && !parts.last().unwrap().fragment);
        assert_eq!(parts.iter().map(|p| p.events.len()).sum::<usize>(), 100);
    }
}
