//! The lock workload: lockers on nodes of their own take one lock through random members, each
//! on a lease of its own ([`Session`], sometimes abandoned while waiting or holding), read the
//! fencing token (the lock key's create revision), write a shared resource twice with writes
//! guarded by the token (a Txn comparing the lock key's create revision), then unlock. Checked
//! against the history after the run:
//! - every grant was of the queue's head at the grant's revision (a waiter whose key went with
//!   its lease is never granted; etcd issue 11456);
//! - every guarded write that succeeded was made while its token's key held the lock, so no
//!   two holders' writes interleave, and a stale token's write was refused;
//! - the tokens written to the resource only grow, and every acknowledged write is there.

use std::time::Duration;

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::request_op::Request as Op;
use kv_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use kv_api::v3lockpb::lock_client::LockClient;
use kv_api::v3lockpb::{LockRequest, UnlockRequest};
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::NodeHandle;
use madsim::time::{sleep, timeout, Instant};

use crate::clients::{kv_client, pick, run_clients, CLIENT_TIMEOUT};
use crate::history::{Ev, Heads};
use crate::session::Session;

/// Lockers running at once, each on its own node.
const LOCKERS: u32 = 3;
/// The key prefix of the workload (outside every other workload's keys).
pub const PREFIX: &str = "_lock/";
/// The lock's name; its queue is the keys under `NAME/`.
const NAME: &str = "_lock/q";
/// The resource the holders write, guarded by their tokens.
const RESOURCE: &str = "_lock/resource";
/// Longest wait for the lock; then the outcome of the Lock call is unknown.
const WAIT: Duration = Duration::from_secs(6);
/// Guarded writes per critical section.
const WRITES: usize = 2;

/// What a guarded write came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wrote {
    /// Acknowledged, at this revision.
    At(i64),
    /// The compare failed: the lock was no longer this holder's.
    Refused,
    /// No answer.
    Unknown,
}

/// One locker's one attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attempt {
    pub lease: i64,
    /// The lock key the attempt waits with (`NAME/<lease in hex>`).
    pub key: String,
    /// When the locker abandoned its lease, if it did (ns since the workload began).
    pub abandoned: Option<i64>,
    /// The revision of the Lock response's header, if the lock was granted.
    pub granted: Option<i64>,
    /// The fencing token read after the grant.
    pub token: Option<i64>,
    /// The guarded writes: value written and outcome.
    pub writes: Vec<(String, Wrote)>,
}

/// What the lock workload saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LockRun {
    pub attempts: Vec<Attempt>,
    /// Every change under [`PREFIX`] after the run.
    pub events: Vec<Ev>,
}

/// Runs the lockers for `for_how_long` from `start`.
pub async fn run(endpoints: &[String], for_how_long: Duration, start: Instant) -> Vec<Attempt> {
    run_clients("locker", 5, LOCKERS, endpoints, for_how_long, start, move |endpoints, locker, n| async move {
        // Lease ids of their own, apart from the lease workload's.
        attempt(&endpoints, i64::from(locker + 11) * 1_000_000 + n, start).await
    })
    .await
}

/// One attempt, from its lease to the unlock; `None` when no lease was granted.
async fn attempt(endpoints: &[String], lease: i64, start: Instant) -> Option<Attempt> {
    let session = Session::grant(endpoints, lease, start).await?;
    let key = format!("{NAME}/{lease:x}");
    let mut a = Attempt { lease, key: key.clone(), ..Attempt::default() };
    let granted = timeout(WAIT, async {
        let mut lock =
            LockClient::connect(pick(endpoints)).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        lock.lock(LockRequest { name: NAME.into(), lease }).await
    })
    .await;
    if let Ok(Ok(resp)) = granted {
        let resp = resp.into_inner();
        a.granted = Some(resp.header.map_or(0, |h| h.revision));
        let read = timeout(CLIENT_TIMEOUT, async {
            kv_client(endpoints).await?.range(RangeRequest { key: key.clone().into(), ..Default::default() }).await
        })
        .await;
        a.token = match read {
            Ok(Ok(r)) => r.into_inner().kvs.first().map(|kv| kv.create_revision),
            _ => None,
        };
        if let Some(token) = a.token {
            for i in 0..WRITES {
                sleep(Duration::from_millis(thread_rng().gen_range(0..300))).await;
                let value = format!("{token} {lease} {i}");
                let wrote = guarded_write(endpoints, &key, token, &value).await;
                a.writes.push((value, wrote));
            }
        }
        let _ = timeout(CLIENT_TIMEOUT, async {
            let mut lock =
                LockClient::connect(pick(endpoints)).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            lock.unlock(UnlockRequest { key: key.clone().into() }).await
        })
        .await;
    }
    a.abandoned = session.abandoned();
    session.end().await;
    Some(a)
}

/// Writes `value` to the resource only if `key` still has create revision `token`.
async fn guarded_write(endpoints: &[String], key: &str, token: i64, value: &str) -> Wrote {
    let guard = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.into(),
        target_union: Some(TargetUnion::CreateRevision(token)),
        ..Default::default()
    };
    let put = PutRequest { key: RESOURCE.into(), value: value.into(), ..Default::default() };
    let txn = TxnRequest {
        compare: vec![guard],
        success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
        failure: vec![],
    };
    match timeout(CLIENT_TIMEOUT, async { kv_client(endpoints).await?.txn(txn).await }).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.succeeded {
                Wrote::At(r.header.map_or(0, |h| h.revision))
            } else {
                Wrote::Refused
            }
        }
        _ => Wrote::Unknown,
    }
}

/// After the run: every change under [`PREFIX`], read from the `control` node.
pub async fn settle(control: &NodeHandle, endpoints: &[String], attempts: Vec<Attempt>) -> LockRun {
    let endpoints = endpoints.to_vec();
    let events = control.spawn(async move { crate::history::read(&endpoints, PREFIX).await }).await;
    LockRun { events: events.expect("lock history task"), attempts }
}

/// What is wrong with what the lockers were told.
pub fn check(run: &LockRun) -> Vec<String> {
    let mut problems = Vec::new();
    let heads = Heads::replay(&run.events, &format!("{NAME}/"));
    for a in &run.attempts {
        if let Some(at) = a.granted {
            let head = heads.at(at);
            if head.is_none_or(|h| h.key != a.key) {
                problems.push(format!(
                    "lock granted to {} (lease {}, abandoned at {:?} ns) at revision {at}, where the holder was {head:?}",
                    a.key, a.lease, a.abandoned
                ));
            }
        }
        for (value, wrote) in &a.writes {
            let Wrote::At(at) = wrote else { continue };
            let head = heads.at(*at);
            if head.is_none_or(|h| Some(h.create_revision) != a.token) {
                problems.push(format!(
                    "{}'s write {value:?} guarded by token {:?} succeeded at revision {at}, where the holder was {head:?}",
                    a.key, a.token
                ));
            }
            let stored = run.events.iter().find(|e| e.revision == *at && e.key == RESOURCE);
            if stored.is_none_or(|e| e.value != *value) {
                problems.push(format!("acknowledged write {value:?} at revision {at} is not there: {stored:?}"));
            }
        }
    }
    let tokens: Vec<(i64, i64)> = run
        .events
        .iter()
        .filter(|e| e.key == RESOURCE && !e.delete)
        .map(|e| (e.revision, e.value.split(' ').next().and_then(|t| t.parse().ok()).unwrap_or(-1)))
        .collect();
    if let Some(w) = tokens.windows(2).find(|w| w[1].1 < w[0].1) {
        problems.push(format!(
            "fencing token {} was written at revision {} after token {} at {}",
            w[1].1, w[1].0, w[0].1, w[0].0
        ));
    }
    problems
}
