//! The whole history of a key prefix after a run, read back through kv-client's watch from
//! revision 1, and a lock's or an election's queue replayed from it: who was first at each
//! revision. The lease, lock and election checks judge what their clients were told by it.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_api::etcdserverpb::RangeRequest;
use kv_client::{Client, Options, Watch};
use madsim::time::{sleep, timeout};

use crate::clients::{kv_client, CLIENT_TIMEOUT};

/// One change of a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ev {
    pub revision: i64,
    pub key: String,
    pub delete: bool,
    pub create_revision: i64,
    pub value: String,
}

/// Every change of keys under `prefix` up to the current revision, in order.
pub async fn read(endpoints: &[String], prefix: &str) -> Vec<Ev> {
    let mut events = Vec::new();
    for _ in 0..10 {
        let Ok(client) = Client::connect(endpoints, Options { timeout: CLIENT_TIMEOUT }).await else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(mut kv) = kv_client(endpoints).await else { continue };
        let Ok(Ok(now)) =
            timeout(CLIENT_TIMEOUT, kv.range(RangeRequest { key: b"/".to_vec(), ..Default::default() })).await
        else {
            continue;
        };
        let last = now.into_inner().header.map_or(0, |h| h.revision);
        let end = kv_client::prefix_end(prefix.as_bytes());
        let Ok(mut watcher) = client.watch(Watch::range(prefix, end).from_revision(1)).await else { continue };
        events.clear();
        let complete = loop {
            if events.last().is_some_and(|e: &Ev| e.revision >= last) || last <= 1 {
                break true;
            }
            match timeout(Duration::from_secs(2), watcher.next()).await {
                Ok(Ok(batch)) => events.extend(batch.into_iter().map(|e| {
                    let kv = e.kv.unwrap_or_default();
                    Ev {
                        revision: kv.mod_revision,
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        delete: e.r#type == 1,
                        create_revision: kv.create_revision,
                        value: String::from_utf8_lossy(&kv.value).into_owned(),
                    }
                })),
                // No event up to `last` came: the last revisions were not under the prefix.
                Err(_) => break true,
                Ok(Err(_)) => break false,
            }
        };
        if complete {
            return events;
        }
    }
    events
}

/// The first key of a queue (a lock's holder, an election's leader) as the history has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub key: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub value: String,
}

/// A queue's head after every revision that changed the queue.
#[derive(Debug, Default)]
pub struct Heads {
    pub after: BTreeMap<i64, Option<Head>>,
}

impl Heads {
    /// Replays the changes of keys under `queue` (a prefix ending in `/`) from `events`.
    pub fn replay(events: &[Ev], queue: &str) -> Heads {
        let mut keys: BTreeMap<i64, Head> = BTreeMap::new();
        let mut heads = Heads::default();
        for e in events.iter().filter(|e| e.key.starts_with(queue)) {
            keys.retain(|_, h| h.key != e.key);
            if !e.delete {
                let head = Head {
                    key: e.key.clone(),
                    create_revision: e.create_revision,
                    mod_revision: e.revision,
                    value: e.value.clone(),
                };
                keys.insert(e.create_revision, head);
            }
            heads.after.insert(e.revision, keys.values().next().cloned());
        }
        heads
    }

    /// The head at `revision`.
    pub fn at(&self, revision: i64) -> Option<&Head> {
        self.after.range(..=revision).next_back().and_then(|(_, h)| h.as_ref())
    }

    /// Every head in turn (a new key or a new value of the first key), as an observer of every
    /// revision would be told of them.
    pub fn sequence(&self) -> Vec<Head> {
        let mut out: Vec<Head> = Vec::new();
        for h in self.after.values().flatten() {
            if out.last().is_none_or(|l| (&l.key, l.mod_revision) != (&h.key, h.mod_revision)) {
                out.push(h.clone());
            }
        }
        out
    }
}
