//! The watch workload: two writers put unique values to a few keys under [`PREFIX`]; three
//! watchers watch the prefix from the first revision, each closing its watch every few seconds
//! and opening it again from the revision after its last event (as a restarting application
//! does, which replays the stored history before the watch goes live again). Two watchers use
//! kv-client's [`Watcher`](kv_client::Watcher), which moves to another member when its stream
//! breaks; one uses the etcd-client crate and resumes by itself. kv-check's
//! [`watch::check`](kv_check::watch::check) judges.
//!
//! After the writers stop and the members converge, the watchers are given the store's last
//! revision and must reach it.

use std::sync::Arc;
use std::time::Duration;

use kv_check::history::parse_value;
use kv_check::watch::{Change, Watcher as Seen, Write};
use kv_client::{Client, Options, Watch};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::register::Outcomes;

/// Where the watched keys live.
pub const PREFIX: &str = "watch/";
const KEYS: u64 = 4;
const WRITERS: u32 = 2;
/// kv-client watchers; one more uses etcd-client.
const KV_CLIENT_WATCHERS: u32 = 2;
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long watchers may take to reach the last revision once given it.
const CATCH_UP: Duration = Duration::from_secs(20);

/// Everything the workload saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WatchHistory {
    pub writes: Vec<Write>,
    pub watchers: Vec<Seen>,
}

/// The running clients.
pub struct Running {
    writers: Vec<JoinHandle<(Vec<Write>, Outcomes)>>,
    watchers: Vec<JoinHandle<Seen>>,
    /// The revision watchers must reach; set once the members have converged.
    target: watch::Sender<Option<i64>>,
}

/// Starts writers (until `stop`) and watchers (until told the last revision and reaching it).
pub fn start(endpoints: Vec<String>, start: Instant, seed: u64, stop: watch::Receiver<bool>) -> Running {
    let endpoints = Arc::new(endpoints);
    let (target, target_rx) = watch::channel(None);
    let writers =
        (0..WRITERS).map(|id| tokio::spawn(writer(endpoints.clone(), id, start, seed, stop.clone()))).collect();
    let mut watchers: Vec<JoinHandle<Seen>> = (0..KV_CLIENT_WATCHERS)
        .map(|id| tokio::spawn(kv_client_watcher(endpoints.clone(), id, seed, target_rx.clone())))
        .collect();
    watchers.push(tokio::spawn(etcd_client_watcher(endpoints.clone(), KV_CLIENT_WATCHERS, seed, target_rx)));
    Running { writers, watchers, target }
}

impl Running {
    /// Waits for the writers (stopped by then), tells the watchers `last` and collects them.
    pub async fn finish(self, last: Option<i64>) -> (WatchHistory, Outcomes) {
        let mut out = WatchHistory::default();
        let mut outcomes = Outcomes::default();
        for w in self.writers {
            let (writes, o) = w.await.expect("writer task");
            out.writes.extend(writes);
            outcomes.ok += o.ok;
            outcomes.fail += o.fail;
            outcomes.unknown += o.unknown;
        }
        // Without a converged revision, the watchers stop where they are.
        let _ = self.target.send(Some(last.unwrap_or(0)));
        for w in self.watchers {
            out.watchers.push(w.await.expect("watcher task"));
        }
        (out, outcomes)
    }
}

async fn writer(
    endpoints: Arc<Vec<String>>,
    id: u32,
    start: Instant,
    seed: u64,
    stop: watch::Receiver<bool>,
) -> (Vec<Write>, Outcomes) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0x3a7c);
    let (mut out, mut outcomes) = (Vec::new(), Outcomes::default());
    let mut client = None;
    let mut seq = 0;
    while !*stop.borrow() {
        let Some(c) = client.as_ref() else {
            client = Client::connect(&endpoints, Options { timeout: TIMEOUT }).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let key = format!("{PREFIX}{}", rng.gen_range(0..KEYS));
        let value = u64::from(id) * 1_000_000 + seq;
        seq += 1;
        let call = start.elapsed().as_nanos() as i64;
        let answer = c.put(kv_check::requests::put(&key, value)).await;
        let ret = start.elapsed().as_nanos() as i64;
        let revision = match answer {
            Ok(r) => {
                outcomes.ok += 1;
                Some(kv_check::requests::revision(r.header.as_ref()))
            }
            Err(_) => {
                outcomes.unknown += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                None
            }
        };
        out.push(Write { client: id, key, value, call, ret: revision.map(|_| ret), revision });
        // Writes at a pace watchers can follow while members fail: this tests delivery, not
        // throughput.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..4))).await;
    }
    (out, outcomes)
}

/// Whether the watcher is done: told the last revision and past it, or out of time for it.
fn done(target: &watch::Receiver<Option<i64>>, next: i64, told_at: &mut Option<Instant>) -> bool {
    match *target.borrow() {
        None => false,
        Some(last) => {
            let since = *told_at.get_or_insert_with(Instant::now);
            next > last || since.elapsed() > CATCH_UP
        }
    }
}

fn change(revision: i64, key: &[u8], value: Option<&[u8]>) -> Change {
    Change { revision, key: String::from_utf8_lossy(key).into_owned(), value: value.map(parse_value) }
}

/// A kv-client watcher: reopens from its next revision every 2–5 s.
async fn kv_client_watcher(
    endpoints: Arc<Vec<String>>,
    id: u32,
    seed: u64,
    mut target: watch::Receiver<Option<i64>>,
) -> Seen {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 40) ^ 0x3a7c);
    let mut seen = Seen { watcher: id, from_revision: 1, ..Seen::default() };
    let mut next = 1;
    let mut told_at = None;
    'open: while !done(&target, next, &mut told_at) {
        let Ok(client) = Client::connect(&endpoints, Options { timeout: TIMEOUT }).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(mut w) = client.watch(Watch::prefix(PREFIX).from_revision(next)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if next > 1 {
            seen.reopens.push(next);
        }
        let close_at = Instant::now() + Duration::from_millis(rng.gen_range(2_000..5_000));
        loop {
            tokio::select! {
                got = w.next() => match got {
                    Ok(events) => {
                        for e in events {
                            let Some(kv) = e.kv else { continue };
                            let deleted = e.r#type == kv_api::mvccpb::event::EventType::Delete as i32;
                            seen.events.push(change(kv.mod_revision, &kv.key, (!deleted).then_some(&kv.value[..])));
                        }
                        next = w.next_revision();
                    }
                    Err(kv_client::ClientError::Compacted { compact_revision }) => {
                        seen.ended = Some(format!("compacted at {compact_revision}"));
                        return seen;
                    }
                    Err(_) => continue 'open,
                },
                () = tokio::time::sleep_until(close_at) => continue 'open,
                _ = target.changed() => {}
            }
            if done(&target, next, &mut told_at) {
                break 'open;
            }
        }
    }
    seen
}

/// An etcd-client watcher: reopens from the revision after its last event every 2–5 s and
/// whenever its stream breaks, with nothing between it and what the server sends.
async fn etcd_client_watcher(
    endpoints: Arc<Vec<String>>,
    id: u32,
    seed: u64,
    mut target: watch::Receiver<Option<i64>>,
) -> Seen {
    use etcd_client::{EventType, WatchOptions};
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 40) ^ 0x3a7c);
    let mut seen = Seen { watcher: id, from_revision: 1, ..Seen::default() };
    let mut next = 1;
    let mut told_at = None;
    let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
    'open: while !done(&target, next, &mut told_at) {
        let opened = async {
            let mut c = etcd_client::Client::connect(endpoints.as_slice(), Some(options.clone())).await?;
            c.watch(PREFIX, Some(WatchOptions::new().with_prefix().with_start_revision(next))).await
        };
        let Ok(Ok(mut stream)) = tokio::time::timeout(TIMEOUT, opened).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if next > 1 {
            seen.reopens.push(next);
        }
        let close_at = Instant::now() + Duration::from_millis(rng.gen_range(2_000..5_000));
        loop {
            tokio::select! {
                got = stream.message() => match got {
                    Ok(Some(r)) if r.canceled() && r.compact_revision() > 0 => {
                        seen.ended = Some(format!("compacted at {}", r.compact_revision()));
                        return seen;
                    }
                    Ok(Some(r)) if r.canceled() => continue 'open,
                    Ok(Some(r)) => {
                        for e in r.events() {
                            let Some(kv) = e.kv() else { continue };
                            let deleted = e.event_type() == EventType::Delete;
                            seen.events.push(change(kv.mod_revision(), kv.key(), (!deleted).then_some(kv.value())));
                            next = next.max(kv.mod_revision() + 1);
                        }
                    }
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'open;
                    }
                },
                () = tokio::time::sleep_until(close_at) => continue 'open,
                _ = target.changed() => {}
            }
            if done(&target, next, &mut told_at) {
                break 'open;
            }
        }
    }
    seen
}

/// The store's changes of the watched keys, revisions 2 to `last` (revision 1 is the empty
/// store), read revision by revision from the converged members, several reads at a time.
pub async fn stored(urls: &[String], last: i64) -> Result<Vec<Change>, String> {
    use kv_api::etcdserverpb::kv_client::KvClient;
    const READERS: i64 = 16;
    let mut tasks = Vec::new();
    for reader in 0..READERS {
        let url = urls[reader as usize % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::new(crate::audit::channel(&url).ok_or(format!("bad url {url}"))?);
            let mut out = Vec::new();
            let mut rev = 2 + reader;
            while rev <= last {
                let read = tokio::time::timeout(TIMEOUT * 2, kv.range(kv_check::requests::all_keys(PREFIX, rev)))
                    .await
                    .map_err(|_| format!("{url}: reading revision {rev} timed out"))?
                    .map_err(|s| format!("{url}: reading revision {rev}: {}", s.message()))?
                    .into_inner();
                match read.kvs.iter().find(|kv| kv.mod_revision == rev) {
                    Some(kv) => out.push(change(rev, &kv.key, Some(&kv.value))),
                    None => return Err(format!("revision {rev} changed none of the watched keys")),
                }
                rev += READERS;
            }
            Ok::<_, String>(out)
        }));
    }
    let mut changes = Vec::new();
    for t in tasks {
        changes.extend(t.await.map_err(|e| format!("reader task: {e}"))??);
    }
    changes.sort_by_key(|c| c.revision);
    Ok(changes)
}
