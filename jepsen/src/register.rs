//! The register workload: clients at every read level doing puts of unique values,
//! compare-and-set transactions and reads on a few shared keys, through kv-client (which moves
//! to another member after an error, as an application would). What each saw becomes
//! kv-check [`Record`]s, checked for each level's promise by kv-check.
//!
//! Outcomes: an answered call is ok (a compare-and-set that did not hold is ok too: it says
//! so); a write that failed without an answer is unknown, never failed: it may have taken
//! effect, and the checks resolve it from what the members store.

use std::sync::Arc;
use std::time::Duration;

use kv_check::history::{Level, Op, Record};
use kv_check::requests;
use kv_client::{Client, ClientError, Options};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

/// The keys every client works on: few, so clients contend.
pub const KEYS: [&str; 3] = ["a", "b", "c"];

/// One client per level, plus a second linearizable one.
pub const CLIENT_LEVELS: [Level; 6] =
    [Level::Linearizable, Level::Linearizable, Level::Lease, Level::Session, Level::Bounded, Level::Serializable];

/// How long a client waits for an answer, retries included, before the outcome is unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Counts of outcomes, for the report.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Outcomes {
    pub ok: u64,
    /// Refused for sure (nothing was proposed), or a read that got no answer.
    pub fail: u64,
    pub unknown: u64,
}

/// Runs one client per entry of [`CLIENT_LEVELS`] until `stop` turns true; returns what they
/// saw and the count of outcomes.
pub async fn run(
    endpoints: Vec<String>,
    start: Instant,
    seed: u64,
    stop: watch::Receiver<bool>,
) -> (Vec<Record>, Outcomes) {
    let endpoints = Arc::new(endpoints);
    let mut tasks = Vec::new();
    for (id, level) in CLIENT_LEVELS.into_iter().enumerate() {
        let endpoints = endpoints.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Worker::new(id as u32, level, seed);
            while !*stop.borrow() {
                match &c.client {
                    Some(_) => c.step(&endpoints, start).await,
                    None => {
                        // Connecting asks every member for its status; none may answer now.
                        c.client = Client::connect(&endpoints, Options { timeout: CLIENT_TIMEOUT }).await.ok();
                        if c.client.is_none() {
                            let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
                        }
                    }
                }
            }
            (c.out, c.outcomes)
        }));
    }
    let mut history = Vec::new();
    let mut outcomes = Outcomes::default();
    for t in tasks {
        let (h, o) = t.await.expect("register client task");
        history.extend(h);
        outcomes.ok += o.ok;
        outcomes.fail += o.fail;
        outcomes.unknown += o.unknown;
    }
    (history, outcomes)
}

struct Worker {
    id: u32,
    level: Level,
    client: Option<Client>,
    rng: SmallRng,
    next: u64,
    /// What this client last knew of each key's value (its compare-and-set guess).
    known: Vec<Option<u64>>,
    out: Vec<Record>,
    outcomes: Outcomes,
}

impl Worker {
    fn new(id: u32, level: Level, seed: u64) -> Worker {
        Worker {
            id,
            level,
            client: None,
            rng: SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32)),
            next: 0,
            known: vec![None; KEYS.len()],
            out: Vec::new(),
            outcomes: Outcomes::default(),
        }
    }

    async fn step(&mut self, endpoints: &[String], start: Instant) {
        let client = self.client.clone().expect("connected");
        let (k, dice) = (self.rng.gen_range(0..KEYS.len()), self.rng.gen_range(0..100));
        let key = KEYS[k].to_string();
        let value = u64::from(self.id) * 1_000_000 + self.next;
        self.next += 1;
        let member = endpoints.iter().position(|e| e == client.endpoint()).unwrap_or(0);
        let call = start.elapsed().as_nanos() as i64;
        let mut op = if dice < 50 {
            Op::Get { seen: None, revision: 0, min_revision: 0 }
        } else if dice < 75 {
            Op::Put { value, revision: None }
        } else {
            Op::Cas { expect: self.known[k], value, outcome: None }
        };
        let result = self.call(&client, &key, &mut op).await;
        let ret = start.elapsed().as_nanos() as i64;
        match result {
            Ok(()) => {
                self.outcomes.ok += 1;
                self.known[k] = match &op {
                    Op::Put { value, .. } | Op::Cas { value, outcome: Some((true, _)), .. } => Some(*value),
                    Op::Cas { .. } => self.known[k],
                    Op::Get { seen, .. } => seen.map(|(v, _)| v),
                };
            }
            Err(e) => {
                let read = matches!(op, Op::Get { .. });
                match e {
                    ClientError::OutcomeUnknown(_) if !read => self.outcomes.unknown += 1,
                    // A read without an answer says nothing. A write refused before anything
                    // was proposed failed; the checks still treat it as unknown (it is not in
                    // the store, so they leave it out).
                    _ => self.outcomes.fail += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                if read {
                    return;
                }
            }
        }
        let answered =
            matches!(op, Op::Put { revision: Some(_), .. } | Op::Cas { outcome: Some(_), .. } | Op::Get { .. });
        self.out.push(Record {
            client: self.id,
            level: self.level,
            member,
            key,
            call,
            ret: answered.then_some(ret),
            op,
        });
    }

    /// Sends `op` and fills in its outcome.
    async fn call(&mut self, client: &Client, key: &str, op: &mut Op) -> Result<(), ClientError> {
        match op {
            Op::Put { value, revision } => {
                let r = client.put(requests::put(key, *value)).await?;
                *revision = Some(requests::revision(r.header.as_ref()));
            }
            Op::Cas { expect, value, outcome } => {
                let r = client.txn(requests::cas(key, *expect, *value)).await?;
                *outcome = Some((r.succeeded, requests::revision(r.header.as_ref())));
            }
            Op::Get { seen, revision, min_revision } => {
                if self.level == Level::Session {
                    *min_revision = client.session_revision();
                }
                let r = client.range(requests::get(key, self.level, *min_revision)).await?;
                *revision = requests::revision(r.header.as_ref());
                *seen = requests::seen(&r);
            }
        }
        Ok(())
    }
}
