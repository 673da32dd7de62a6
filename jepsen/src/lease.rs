//! The lease workload: four clients each grant a short lease, put a key on it, renew it zero to
//! three times half a second apart and abandon it, over and over; an observer lists the keys
//! under [`PREFIX`] every 50 ms (linearizable) and notes, per key, the last listing that had it
//! and the first that did not. kv-check's [`lease::check`](kv_check::lease::check) judges: no
//! key gone before its lease's deadline, no lease renewed after it was gone, every abandoned
//! lease expired by the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kv_check::lease::{LeaseRecord, Renewal};
use kv_client::{Client, Get, Options, Put};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::register::Outcomes;

/// Where the leased keys live.
pub const PREFIX: &str = "lease/";
const CLIENTS: u32 = 4;
/// The TTL asked for, seconds (the server may raise it to its minimum).
const TTL: i64 = 2;
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long past its latest possible deadline an abandoned lease may take to expire: lease
/// checkpoints, elections and restarts of the leader stretch it (docs/coordination.md).
pub const SLACK: Duration = Duration::from_secs(8);

/// What the observer knows of each key: when it was registered (its put acknowledged), the
/// last listing with it and the first without it after that.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    since: i64,
    last_present: Option<(i64, i64)>,
    first_absent: Option<(i64, i64)>,
}

type Registry = Arc<Mutex<HashMap<String, Seen>>>;

/// The running clients and observer.
pub struct Running {
    clients: Vec<JoinHandle<(Vec<LeaseRecord>, Outcomes)>>,
    observer: JoinHandle<()>,
    observe: watch::Sender<bool>,
    registry: Registry,
}

/// Starts the lease clients (until `stop`) and the observer (until [`Running::finish`]).
pub fn start(endpoints: Vec<String>, start: Instant, seed: u64, stop: watch::Receiver<bool>) -> Running {
    let endpoints = Arc::new(endpoints);
    let registry: Registry = Arc::default();
    let clients = (0..CLIENTS)
        .map(|id| tokio::spawn(client(endpoints.clone(), id, start, seed, stop.clone(), registry.clone())))
        .collect();
    let (observe, observing) = watch::channel(false);
    let observer = tokio::spawn(observer(endpoints, start, observing, registry.clone()));
    Running { clients, observer, observe, registry }
}

impl Running {
    /// Collects the clients (stopped by then), lets the observer go on until every lease is
    /// past the latest it could last plus [`SLACK`] (at most 20 s more), and merges what it
    /// saw into the leases.
    pub async fn finish(self, start: Instant) -> (Vec<LeaseRecord>, Outcomes) {
        let mut leases = Vec::new();
        let mut outcomes = Outcomes::default();
        for c in self.clients {
            let (l, o) = c.await.expect("lease client task");
            leases.extend(l);
            outcomes.ok += o.ok;
            outcomes.fail += o.fail;
            outcomes.unknown += o.unknown;
        }
        let now = start.elapsed().as_nanos() as i64;
        let slack = SLACK.as_nanos() as i64;
        let until = leases.iter().filter(|l| l.put.is_some()).map(|l| l.latest_end(slack)).max().unwrap_or(now);
        let wait = until.min(now + 20_000_000_000) - now;
        if wait > 0 {
            tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
        }
        let _ = self.observe.send(true);
        let _ = self.observer.await;
        let seen = self.registry.lock().clone();
        for l in &mut leases {
            if let Some(s) = seen.get(&l.key) {
                l.last_present = s.last_present;
                l.first_absent = s.first_absent;
            }
        }
        leases.sort_by_key(|l| l.grant_call);
        (leases, outcomes)
    }
}

async fn connect(endpoints: &[String], stop: &watch::Receiver<bool>) -> Option<Client> {
    while !*stop.borrow() {
        if let Ok(c) = Client::connect(endpoints, Options { timeout: TIMEOUT }).await {
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn client(
    endpoints: Arc<Vec<String>>,
    id: u32,
    start: Instant,
    seed: u64,
    stop: watch::Receiver<bool>,
    registry: Registry,
) -> (Vec<LeaseRecord>, Outcomes) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0x1ea5e);
    let (mut out, mut outcomes) = (Vec::new(), Outcomes::default());
    let now = || start.elapsed().as_nanos() as i64;
    let Some(c) = connect(&endpoints, &stop).await else { return (out, outcomes) };
    let mut n = 0u64;
    while !*stop.borrow() {
        let grant_call = now();
        let granted = match c.lease_grant(TTL, 0).await {
            Ok(g) => g,
            Err(_) => {
                outcomes.unknown += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        outcomes.ok += 1;
        let mut l = LeaseRecord {
            client: id,
            key: format!("{PREFIX}{id}/{n}"),
            lease: granted.id,
            ttl: granted.ttl,
            grant_call,
            grant_ret: now(),
            ..LeaseRecord::default()
        };
        n += 1;
        let put_call = now();
        match c.put(Put::new(l.key.clone(), "1").lease(l.lease)).await {
            Ok(_) => {
                outcomes.ok += 1;
                let ret = now();
                l.put = Some((put_call, ret));
                registry.lock().insert(l.key.clone(), Seen { since: ret, ..Seen::default() });
            }
            Err(_) => outcomes.unknown += 1,
        }
        for _ in 0..rng.gen_range(0..=3) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(400..700))).await;
            let call = now();
            let renewed = c.lease_keep_alive_once(l.lease).await;
            let ret = now();
            match renewed {
                Ok(ttl) => {
                    outcomes.ok += 1;
                    l.renewals.push(Renewal { call, ret: Some(ret), ttl: Some(ttl) });
                    if ttl <= 0 {
                        break;
                    }
                }
                Err(_) => {
                    outcomes.unknown += 1;
                    l.renewals.push(Renewal { call, ret: None, ttl: None });
                }
            }
        }
        out.push(l);
    }
    (out, outcomes)
}

/// Lists the keys every 50 ms until told to stop, noting per registered key what it saw.
async fn observer(endpoints: Arc<Vec<String>>, start: Instant, mut stop: watch::Receiver<bool>, registry: Registry) {
    let now = || start.elapsed().as_nanos() as i64;
    let Some(c) = connect(&endpoints, &stop).await else { return };
    while !*stop.borrow() {
        let call = now();
        if let Ok(r) = c.range(Get::prefix(PREFIX).keys_only()).await {
            let ret = now();
            let present: std::collections::HashSet<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
            for (key, seen) in registry.lock().iter_mut() {
                if call <= seen.since {
                    continue;
                }
                if present.contains(&key.as_bytes()) {
                    seen.last_present = Some((call, ret));
                } else if seen.first_absent.is_none() {
                    seen.first_absent = Some((call, ret));
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), stop.changed()).await;
    }
}

/// The keys under [`PREFIX`] once the members converged.
pub async fn remaining(endpoints: &[String]) -> Result<Vec<String>, String> {
    let c = Client::connect(endpoints, Options { timeout: TIMEOUT }).await.map_err(|e| format!("connecting: {e}"))?;
    let r = c.range(Get::prefix(PREFIX).keys_only()).await.map_err(|e| format!("listing {PREFIX}: {e}"))?;
    Ok(r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect())
}
