//! Watchers on nodes of their own, using kv-client's resuming watch (which moves to another
//! member when its stream breaks), on every key the workload writes: one replaying the whole
//! history from revision 1, one from the moment it starts. What each delivered is checked
//! against the audited history: every revision once, in order, with the right value and the
//! right previous value.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_client::{Client, ClientError, Options, Watch};
use madsim::runtime::Handle;
use madsim::task::JoinHandle;
use madsim::time::{sleep, Instant};

use crate::audit::Audit;
use crate::cluster::SimCluster;
use crate::workload::{parse_value, KEYS};

/// One delivered event: revision, key, value, and the previous value (None: none).
pub type Event = (i64, String, u64, Option<u64>);

/// What one watcher saw.
#[derive(Clone, Debug, Default)]
pub struct Delivered {
    /// The revision asked for (0: from creation).
    pub asked: i64,
    /// The first revision the watch covers (known once it was created).
    pub from: Option<i64>,
    pub events: Vec<Event>,
    /// A watch that ended for good (compaction, or an error the client cannot retry).
    pub ended: Option<String>,
}

/// The watchers of a run; they keep running until [`Watchers::stop`].
pub struct Watchers {
    seen: Vec<Arc<Mutex<Delivered>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The start revisions of the watchers: the whole history, and from creation on.
const STARTS: [i64; 2] = [1, 0];

/// How long the watchers get, after the members converged, to deliver the last revision.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(30);

/// Starts one watcher per entry of [`STARTS`], each on its own node.
pub fn start(c: &SimCluster) -> Watchers {
    let h = Handle::current();
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for (i, asked) in STARTS.into_iter().enumerate() {
        let log = Arc::new(Mutex::new(Delivered { asked, ..Delivered::default() }));
        let endpoints = c.endpoints.clone();
        let node = crate::clients::client_node(&h, "watcher", 2, i);
        let out = log.clone();
        tasks.push(node.spawn(async move { watch(endpoints, asked, out).await }));
        seen.push(log);
    }
    Watchers { seen, tasks }
}

/// Watches every key from `asked` on, forever, recording what it delivers. A watch that
/// cannot be opened or resumed (every member unreachable) is opened again from where it was.
async fn watch(endpoints: Vec<String>, asked: i64, out: Arc<Mutex<Delivered>>) {
    let range = Watch::range(KEYS[0], vec![0xff]).prev_kv();
    let mut next = asked;
    loop {
        let client = match Client::connect(&endpoints, Options { timeout: Duration::from_secs(1) }).await {
            Ok(client) => client,
            Err(_) => {
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut watcher = match client.watch(range.clone().from_revision(next)).await {
            Ok(w) => w,
            Err(ClientError::Compacted { compact_revision }) => {
                out.lock().unwrap().ended = Some(format!("compacted at {compact_revision}"));
                return;
            }
            Err(_) => {
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        out.lock().unwrap().from.get_or_insert(watcher.next_revision());
        loop {
            match watcher.next().await {
                Ok(events) => {
                    let mut out = out.lock().unwrap();
                    for e in events {
                        let kv = e.kv.unwrap_or_default();
                        let prev = e.prev_kv.map(|p| parse_value(&p.value));
                        out.events.push((
                            kv.mod_revision,
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            parse_value(&kv.value),
                            prev,
                        ));
                    }
                }
                Err(e) => {
                    next = watcher.next_revision();
                    if let ClientError::Compacted { .. } = e {
                        out.lock().unwrap().ended = Some(e.to_string());
                        return;
                    }
                    break;
                }
            }
        }
    }
}

impl Watchers {
    /// Waits until every watcher delivered `last` (or the time is up), then stops them and
    /// returns what each saw.
    pub async fn stop(self, last: i64) -> Vec<Delivered> {
        let deadline = Instant::now() + CATCH_UP_WITHIN;
        let done = |d: &Delivered| d.ended.is_some() || d.events.last().is_some_and(|e| e.0 >= last);
        while Instant::now() < deadline && !self.seen.iter().all(|s| done(&s.lock().unwrap())) {
            sleep(Duration::from_millis(100)).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        self.seen.iter().map(|s| s.lock().unwrap().clone()).collect()
    }
}

/// What is wrong with what the watchers delivered, against the audited history.
pub fn check(delivered: &[Delivered], audit: &Audit) -> Vec<String> {
    let mut problems = Vec::new();
    let last = audit.revisions.keys().next_back().copied().unwrap_or(1);
    for (i, d) in delivered.iter().enumerate() {
        let name = format!("watcher {i} (from revision {})", d.asked);
        if let Some(why) = &d.ended {
            problems.push(format!("{name} ended: {why}"));
            continue;
        }
        let Some(from) = d.from else {
            problems.push(format!("{name} was never created"));
            continue;
        };
        let revisions: Vec<i64> = d.events.iter().map(|e| e.0).collect();
        if let Some(w) = revisions.windows(2).find(|w| w[1] <= w[0]) {
            problems.push(format!("{name} delivered revision {} after {}", w[1], w[0]));
        }
        for (rev, key, value, prev) in &d.events {
            match audit.revisions.get(rev) {
                Some((k, v)) if k == key && v == value => {}
                other => problems.push(format!("{name} delivered {key}={value} at {rev}, the history has {other:?}")),
            }
            let before = audit.revisions.range(..*rev).rev().find(|(_, (k, _))| k == key).map(|(_, (_, v))| *v);
            if *prev != before {
                problems.push(format!("{name}: {key} at {rev} came with previous value {prev:?}, not {before:?}"));
            }
        }
        let delivered: std::collections::BTreeSet<i64> = revisions.into_iter().collect();
        let missing: Vec<i64> =
            audit.revisions.range(from..=last).map(|(r, _)| *r).filter(|r| !delivered.contains(r)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{name} missed {} revisions of {from}..={last}: {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
    }
    problems
}
