//! The lease workload: holders on nodes of their own grant short leases through random
//! members, attach a key to each, renew it for a random while and then abandon it, polling the
//! key until it is gone. Checked after the run:
//! - no key vanishes, and no renewal finds its lease gone, before the lease's deadline: TTL
//!   after the later of the grant and the last renewal acknowledged to the holder (both counted
//!   from when the holder sent them), shortened by the fastest lease clock the members may run
//!   ([`RATE_BOUND`]);
//! - every attached key is deleted exactly once (one DELETE event), and nothing else touches
//!   it;
//! - once the faults are healed, every lease is gone within [`SETTLE`].

use std::collections::BTreeMap;
use std::time::Duration;

use kv_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, PutRequest, RangeRequest};
use madsim::rand::{thread_rng, Rng};
use madsim::time::{sleep, timeout, Instant};

use crate::clients::{kv_client, lease_client, run_clients, since, CLIENT_TIMEOUT};
use crate::cluster::SimCluster;

/// Holders running at once, each on its own node.
const HOLDERS: u32 = 3;
/// The TTL asked for (raised by the members to their minimum, which the grant reports).
const TTL_SECS: i64 = 2;
/// How often a holder renews (well under a third of the TTL, as etcd's clients do).
const RENEW_EVERY: Duration = Duration::from_millis(600);
/// Longest a holder renews one lease before abandoning it.
const HOLD_AT_MOST: Duration = Duration::from_secs(4);
/// How often an abandoned lease's key is read.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long after the faults are healed every lease must be gone.
pub const SETTLE: Duration = Duration::from_secs(15);

/// The most a member's lease clock may run fast (or slow) against real time: the simulation
/// gives each member a rate within it, and the deadlines checked are shortened by it
/// (docs/coordination.md states the bound).
pub const RATE_BOUND: f64 = 1.25;

/// The key prefix of the workload, outside the keys of the other workloads and watchers.
pub const PREFIX: &str = "_lease/";

/// One request and when it was sent and answered (ns since the workload began).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Timed<T> {
    pub sent: i64,
    pub answered: Option<i64>,
    pub what: T,
}

/// What one holder did with one lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Held {
    pub id: i64,
    pub key: String,
    /// The grant (`Some(ttl)` once answered).
    pub grant: Option<Timed<Option<i64>>>,
    /// Whether the key was attached (the put was answered).
    pub attached: Option<Timed<bool>>,
    /// Each renewal: the TTL answered (0: the lease was gone).
    pub renewals: Vec<Timed<Option<i64>>>,
    /// Each read of the key once abandoned: whether it was there.
    pub polls: Vec<Timed<Option<bool>>>,
}

/// What the lease workload saw, for the checks and the digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeaseRun {
    pub held: Vec<Held>,
    /// Every event on [`PREFIX`] keys after the run: (revision, key, is a delete).
    pub events: Vec<(i64, String, bool)>,
    /// Leases still listed [`SETTLE`] after healing.
    pub left: Vec<i64>,
}

/// Runs the holders for `for_how_long` from `start`; returns what each did.
pub async fn run(c: &SimCluster, for_how_long: Duration, start: Instant) -> Vec<Held> {
    run_clients("holder", 4, HOLDERS, &c.endpoints, for_how_long, start, move |endpoints, holder, n| async move {
        Some(hold(&endpoints, holder, n, start).await)
    })
    .await
}

/// Sends `f` and times it; `None` when it failed or took too long.
async fn timed<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(start: Instant, f: F) -> Timed<Option<T>> {
    let sent = since(start);
    let got = timeout(CLIENT_TIMEOUT, f).await.ok().and_then(Result::ok);
    Timed { sent, answered: got.is_some().then(|| since(start)), what: got }
}

/// One lease from grant to the end of its key.
async fn hold(endpoints: &[String], holder: u32, n: i64, start: Instant) -> Held {
    // Chosen by the holder, so that a grant whose answer was lost is still known by its id.
    let id = i64::from(holder + 1) * 1_000_000 + n;
    let key = format!("{PREFIX}{holder}/{n}");
    let mut held = Held { id, key: key.clone(), ..Held::default() };
    let grant = timed(start, async {
        let r = lease_client(endpoints).await?.lease_grant(LeaseGrantRequest { ttl: TTL_SECS, id }).await?;
        Ok(r.into_inner().ttl)
    })
    .await;
    let granted = grant.what.is_some();
    held.grant = Some(Timed { sent: grant.sent, answered: grant.answered, what: grant.what });
    if !granted {
        sleep(Duration::from_millis(50)).await;
        return held;
    }
    let put = timed(start, async {
        let req = PutRequest { key: key.clone().into(), value: id.to_string().into(), lease: id, ..Default::default() };
        kv_client(endpoints).await?.put(req).await.map(|_| ())
    })
    .await;
    held.attached = Some(Timed { sent: put.sent, answered: put.answered, what: put.what.is_some() });
    let hold_for = Duration::from_millis(thread_rng().gen_range(0..HOLD_AT_MOST.as_millis() as u64));
    let until = start.elapsed() + hold_for;
    while start.elapsed() < until {
        sleep(RENEW_EVERY).await;
        let renewal = timed(start, async {
            let mut lease = lease_client(endpoints).await?;
            let requests = futures::stream::iter([LeaseKeepAliveRequest { id }]);
            let mut replies = lease.lease_keep_alive(requests).await?.into_inner();
            match replies.message().await? {
                Some(r) => Ok(r.ttl),
                None => Err(tonic::Status::unavailable("keep-alive stream ended")),
            }
        })
        .await;
        let lost = renewal.what == Some(0);
        held.renewals.push(renewal);
        if lost {
            break;
        }
    }
    // Abandoned: read the key until it is gone (or the run ends; the settle check covers it).
    let give_up = start.elapsed() + Duration::from_secs(8);
    while start.elapsed() < give_up {
        let poll = timed(start, async {
            let req = RangeRequest { key: key.clone().into(), ..Default::default() };
            Ok(kv_client(endpoints).await?.range(req).await?.into_inner().count > 0)
        })
        .await;
        let gone = poll.what == Some(false);
        held.polls.push(poll);
        if gone {
            break;
        }
        sleep(POLL_EVERY).await;
    }
    held
}

/// After the run (faults healed): waits until no lease is left, up to [`SETTLE`], and reads
/// every event on the workload's keys from revision 1 to `last`.
pub async fn settle(c: &SimCluster, held: Vec<Held>) -> LeaseRun {
    let endpoints = c.endpoints.clone();
    c.control
        .spawn(async move {
            let deadline = Instant::now() + SETTLE;
            let mut left = Vec::new();
            while Instant::now() < deadline {
                let listed = async {
                    let r = lease_client(&endpoints).await?.lease_leases(LeaseLeasesRequest {}).await?;
                    Ok::<_, tonic::Status>(r.into_inner().leases.into_iter().map(|l| l.id).collect::<Vec<_>>())
                };
                if let Ok(Ok(ids)) = timeout(CLIENT_TIMEOUT, listed).await {
                    left = ids;
                    if left.is_empty() {
                        break;
                    }
                }
                sleep(Duration::from_millis(200)).await;
            }
            let events = history(&endpoints).await;
            LeaseRun { held, events, left }
        })
        .await
        .expect("lease settle task")
}

/// Every event on [`PREFIX`] keys up to the current revision.
async fn history(endpoints: &[String]) -> Vec<(i64, String, bool)> {
    crate::history::read(endpoints, PREFIX).await.into_iter().map(|e| (e.revision, e.key, e.delete)).collect()
}

/// The revisions the lease workload wrote (the audit does not expect them to change the other
/// workloads' keys).
pub fn revisions(run: &LeaseRun) -> std::collections::BTreeSet<i64> {
    run.events.iter().map(|e| e.0).collect()
}

/// What is wrong with what the holders saw.
pub fn check(run: &LeaseRun) -> Vec<String> {
    let mut problems = Vec::new();
    let ms = |ns: i64| ns / 1_000_000;
    let mut events_by_key: BTreeMap<&str, Vec<(i64, bool)>> = BTreeMap::new();
    for (rev, key, delete) in &run.events {
        events_by_key.entry(key.as_str()).or_default().push((*rev, *delete));
    }
    for h in &run.held {
        let Some(grant) = &h.grant else { continue };
        let (Some(ttl), Some(_)) = (grant.what, grant.answered) else { continue };
        let shortest = |from: i64| from + (Duration::from_secs(ttl as u64).as_nanos() as f64 / RATE_BOUND) as i64;
        // The deadline as the holder knows it, moved by every renewal it was told of.
        let mut deadline = shortest(grant.sent);
        for r in &h.renewals {
            match (r.what, r.answered) {
                (Some(0), Some(at)) if at < deadline => problems.push(format!(
                    "lease {} (TTL {ttl} s) was gone at a renewal answered at {} ms, before its deadline at {} ms",
                    h.id,
                    ms(at),
                    ms(deadline)
                )),
                (Some(t), Some(_)) if t > 0 => deadline = deadline.max(shortest(r.sent)),
                _ => {}
            }
        }
        let attached = h.attached.as_ref().is_some_and(|a| a.what);
        for p in &h.polls {
            if let (Some(false), Some(at), true) = (p.what, p.answered, attached) {
                if at < deadline {
                    problems.push(format!(
                        "{} of lease {} (TTL {ttl} s) was gone at a read answered at {} ms, before the lease's \
                         deadline at {} ms",
                        h.key,
                        h.id,
                        ms(at),
                        ms(deadline)
                    ));
                }
            }
        }
        let events = events_by_key.get(h.key.as_str()).map(Vec::as_slice).unwrap_or_default();
        let deletes = events.iter().filter(|e| e.1).count();
        let puts = events.iter().filter(|e| !e.1).count();
        if puts > 1 || deletes != puts || events.first().is_some_and(|e| e.1) {
            problems.push(format!("{} of lease {}: events {events:?}, not one put then one delete", h.key, h.id));
        }
        if attached && puts == 0 {
            problems.push(format!("{} of lease {}: attached, but no put in the history", h.key, h.id));
        }
    }
    if !run.left.is_empty() {
        problems.push(format!("leases still there {SETTLE:?} after the faults were healed: {:?}", run.left));
    }
    problems
}
