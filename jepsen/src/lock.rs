//! The lock workload, through the etcd-client crate: four clients take the lock [`NAME`] in
//! turn, each with a lease of its own (2 s, renewed every 500 ms by a task of its own), write
//! the resource [`RESOURCE`] twice guarded by their fencing token (the holder key's create
//! revision) 0.1 to 0.8 s apart, and unlock. One attempt in four stops renewing its lease before asking, as a
//! client that was paused would: its lease ends while it waits, and the lock must not be
//! granted to it then.
//!
//! After the members converge, the lock's keys are read at the revision of every grant;
//! kv-check's [`lock::check`](kv_check::lock::check) judges.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, LockOptions, Txn, TxnOp};
use kv_check::lock::{FencedWrite, Grant, LockRecord};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::register::Outcomes;

/// The lock's name: holders' keys are `NAME/<lease>`.
pub const NAME: &str = "jepsen-lock";
/// The resource the holders write.
pub const RESOURCE: &str = "jepsen-lock-resource";
const CLIENTS: u32 = 4;
const TTL: i64 = 2;
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits for the lock before it gives up on the attempt.
const LOCK_WAIT: Duration = Duration::from_secs(6);

/// No request timeout on the connection: a Lock call waits as long as the queue ahead of it
/// takes ([`LOCK_WAIT`] at most). Every other call is bounded by [`TIMEOUT`] where it is made.
fn options() -> ConnectOptions {
    ConnectOptions::new().with_connect_timeout(Duration::from_millis(500))
}

/// `call` bounded by [`TIMEOUT`]; `None` when no answer came in time.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Option<Result<T, etcd_client::Error>> {
    tokio::time::timeout(TIMEOUT, call).await.ok()
}

/// Runs the clients until `stop` turns true.
pub async fn run(
    endpoints: Vec<String>,
    start: Instant,
    seed: u64,
    stop: watch::Receiver<bool>,
) -> (Vec<LockRecord>, Outcomes) {
    let endpoints = Arc::new(endpoints);
    let tasks: Vec<_> =
        (0..CLIENTS).map(|id| tokio::spawn(client(endpoints.clone(), id, start, seed, stop.clone()))).collect();
    let mut attempts = Vec::new();
    let mut outcomes = Outcomes::default();
    for t in tasks {
        let (a, o) = t.await.expect("lock client task");
        attempts.extend(a);
        outcomes.ok += o.ok;
        outcomes.fail += o.fail;
        outcomes.unknown += o.unknown;
    }
    attempts.sort_by_key(|a| a.call);
    (attempts, outcomes)
}

async fn client(
    endpoints: Arc<Vec<String>>,
    id: u32,
    start: Instant,
    seed: u64,
    stop: watch::Receiver<bool>,
) -> (Vec<LockRecord>, Outcomes) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0x10c4);
    let now = || start.elapsed().as_nanos() as i64;
    let (mut out, mut outcomes) = (Vec::new(), Outcomes::default());
    let mut conn: Option<Client> = None;
    while !*stop.borrow() {
        let Some(c) = conn.as_mut() else {
            conn = Client::connect(endpoints.as_slice(), Some(options())).await.ok();
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let lease = match bounded(c.lease_grant(TTL, None)).await {
            Some(Ok(g)) => g.id(),
            _ => {
                outcomes.unknown += 1;
                conn = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stalled = rng.gen_range(0..4) == 0;
        // Renewals on a task of their own while the attempt lasts (none for a stalled client).
        let (renewing, renewer) = watch::channel(true);
        if !stalled {
            tokio::spawn(renew(c.clone(), lease, renewer));
        }
        let mut attempt = LockRecord { client: id, lease, stalled, call: now(), ..LockRecord::default() };
        let locked = tokio::time::timeout(LOCK_WAIT, c.lock(NAME, Some(LockOptions::new().with_lease(lease)))).await;
        match locked {
            Ok(Ok(r)) => {
                outcomes.ok += 1;
                let key = r.key().to_vec();
                let mut grant = Grant {
                    at: now(),
                    key: String::from_utf8_lossy(&key).into_owned(),
                    revision: r.header().map_or(0, |h| h.revision()),
                    token: None,
                };
                if let Some(Ok(read)) = bounded(c.get(key.clone(), None::<GetOptions>)).await {
                    grant.token = read.kvs().first().map(|kv| kv.create_revision());
                }
                if let Some(token) = grant.token {
                    for n in 0..2 {
                        attempt.writes.push(fenced_write(c, &key, token, id, n, now).await);
                        // Held long enough that waiters queue past a stalled lease's end.
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
                    }
                }
                attempt.granted = Some(grant);
                if !matches!(bounded(c.unlock(key)).await, Some(Ok(_))) {
                    outcomes.unknown += 1;
                }
            }
            // Refused (the lease ended while waiting) or no answer: either way not held.
            Ok(Err(_)) => outcomes.fail += 1,
            Err(_) => outcomes.unknown += 1,
        }
        let _ = renewing.send(false);
        let _ = bounded(c.lease_revoke(lease)).await;
        out.push(attempt);
    }
    (out, outcomes)
}

/// One write of the resource, made only while `token` still holds the lock.
async fn fenced_write(
    c: &mut Client,
    key: &[u8],
    token: i64,
    client: u32,
    n: u32,
    now: impl Fn() -> i64,
) -> FencedWrite {
    let txn = Txn::new()
        .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, token)])
        .and_then([TxnOp::put(RESOURCE, format!("{client}:{token}:{n}"), None)]);
    let call = now();
    match bounded(c.txn(txn)).await {
        Some(Ok(r)) => FencedWrite {
            token,
            call,
            ret: Some(now()),
            succeeded: Some(r.succeeded()),
            revision: r.header().map(|h| h.revision()),
        },
        // Refused for sure (an error status) is no write either; both leave nothing to check.
        _ => FencedWrite { token, call, ret: None, succeeded: None, revision: None },
    }
}

/// Renews `lease` every 500 ms until `renewing` turns false.
async fn renew(mut c: Client, lease: i64, mut renewing: watch::Receiver<bool>) {
    let Some(Ok((mut keeper, mut replies))) = bounded(c.lease_keep_alive(lease)).await else { return };
    while *renewing.borrow() {
        if keeper.keep_alive().await.is_err() || !matches!(bounded(replies.message()).await, Some(Ok(_))) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), renewing.changed()).await;
    }
}

/// The lock's keys and their create revisions at the revision of each attempt's grant (empty
/// for attempts not granted), read once the members converged.
pub async fn keys_at_grants(endpoints: &[String], attempts: &[LockRecord]) -> Result<Vec<Vec<(String, i64)>>, String> {
    let mut c = Client::connect(endpoints, Some(options())).await.map_err(|e| format!("connecting: {e}"))?;
    let mut out = Vec::new();
    for a in attempts {
        let Some(g) = &a.granted else {
            out.push(Vec::new());
            continue;
        };
        let prefix = format!("{NAME}/");
        let read = bounded(c.get(prefix, Some(GetOptions::new().with_prefix().with_revision(g.revision))))
            .await
            .ok_or(format!("reading the lock's keys at revision {}: no answer", g.revision))?
            .map_err(|e| format!("reading the lock's keys at revision {}: {e}", g.revision))?;
        out.push(
            read.kvs()
                .iter()
                .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.create_revision()))
                .collect(),
        );
    }
    Ok(out)
}
