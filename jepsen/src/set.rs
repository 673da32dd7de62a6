//! The set workload, driven through the etcd-client crate (a client raftkv did not write):
//! clients add elements, each its own key under [`PREFIX`], and now and then read the whole
//! set; after healing, every member's set is read on its own. kv-check's [`set::check`] judges.
//!
//! Every add is a put of a new key, so an add that failed without an answer (timeout, lost
//! connection) is unknown: it may be in the set or not. A read without an answer says nothing.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use kv_check::set::{self, Element, Ranges, SetOp, SetRecord};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::register::Outcomes;

/// Where the elements live.
pub const PREFIX: &str = "set/";

const CLIENTS: u32 = 4;
/// How long a request may take before its outcome is unknown.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Keys per page of a read; later pages are read at the first page's revision.
const PAGE: i64 = 5_000;

fn options() -> ConnectOptions {
    ConnectOptions::new().with_timeout(TIMEOUT).with_connect_timeout(Duration::from_millis(500))
}

/// Runs the clients until `stop` turns true; returns what they saw and the count of outcomes.
pub async fn run(
    endpoints: Vec<String>,
    start: Instant,
    seed: u64,
    stop: watch::Receiver<bool>,
) -> (Vec<SetRecord>, Outcomes) {
    let endpoints = Arc::new(endpoints);
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let endpoints = endpoints.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0x5e7);
            let (mut out, mut outcomes, mut next) = (Vec::new(), Outcomes::default(), 0u64);
            let mut client = None;
            while !*stop.borrow() {
                let Some(c) = client.as_mut() else {
                    // etcd-client balances over every endpoint and moves past one that fails.
                    client = Client::connect(endpoints.as_slice(), Some(options())).await.ok();
                    if client.is_none() {
                        let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
                    }
                    continue;
                };
                let call = start.elapsed().as_nanos() as i64;
                let (op, answered) = if rng.gen_range(0..100) < 90 {
                    let seq = next;
                    next += 1;
                    let answered = c.put(set::key(PREFIX, (id, seq)), "1", None).await.is_ok();
                    (SetOp::Add { seq }, answered)
                } else {
                    match read(c, false).await {
                        Ok(seen) => (SetOp::Read { seen }, true),
                        Err(_) => {
                            outcomes.fail += 1;
                            continue;
                        }
                    }
                };
                let ret = start.elapsed().as_nanos() as i64;
                if answered {
                    outcomes.ok += 1;
                } else {
                    outcomes.unknown += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                out.push(SetRecord { client: id, call, ret: answered.then_some(ret), op });
            }
            (out, outcomes)
        }));
    }
    let mut history = Vec::new();
    let mut outcomes = Outcomes::default();
    for t in tasks {
        let (h, o) = t.await.expect("set client task");
        history.extend(h);
        outcomes.ok += o.ok;
        outcomes.fail += o.fail;
        outcomes.unknown += o.unknown;
    }
    history.sort_by_key(|r| r.call);
    (history, outcomes)
}

/// The whole set: linearizable, or with `serializable` from the member asked alone.
async fn read(client: &mut Client, serializable: bool) -> Result<Ranges, etcd_client::Error> {
    let end = {
        let mut e = PREFIX.as_bytes().to_vec();
        *e.last_mut().expect("prefix") += 1;
        e
    };
    let mut from = PREFIX.as_bytes().to_vec();
    let mut revision = 0;
    let mut elements: Vec<Element> = Vec::new();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_keys_only().with_limit(PAGE);
        if serializable {
            opts = opts.with_serializable();
        }
        if revision != 0 {
            opts = opts.with_revision(revision);
        }
        let r = client.get(from.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = r.header().map_or(0, |h| h.revision());
        }
        for kv in r.kvs() {
            if let Some(e) = kv.key_str().ok().and_then(|k| set::element(PREFIX, k)) {
                elements.push(e);
            }
        }
        match (r.more(), r.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(Ranges::from_elements(elements)),
        }
    }
}

/// Each member's set, read from that member alone once the members have converged.
pub async fn finals(endpoints: &[String], names: &[String]) -> Result<Vec<(String, Ranges)>, String> {
    let mut out = Vec::new();
    for (url, name) in endpoints.iter().zip(names) {
        let mut c = Client::connect([url.as_str()], Some(options())).await.map_err(|e| format!("{name}: {e}"))?;
        let set = read(&mut c, true).await.map_err(|e| format!("{name}: reading the set: {e}"))?;
        out.push((name.clone(), set));
    }
    Ok(out)
}
