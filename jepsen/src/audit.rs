//! The cluster seen from the clients' namespace: who leads, and after the faults are healed,
//! whether every member converges to the same state, and the write of every revision as they
//! store it (what kv-check resolves unknown writes and lost acknowledgements against).

use std::collections::BTreeMap;
use std::time::Duration;

use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kv_api::etcdserverpb::{StatusRequest, StatusResponse};
use kv_check::requests;
use tokio::time::{sleep, timeout, Instant};
use tonic::transport::{Channel, Endpoint};

use crate::register::KEYS;

/// Revisions read at once by the audit.
const PARALLEL_READS: usize = 16;

/// How long healed members may take to agree.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

pub(crate) fn channel(url: &str) -> Option<Channel> {
    Some(Endpoint::from_shared(url.to_string()).ok()?.connect_timeout(Duration::from_millis(500)).connect_lazy())
}

/// Each member's status, or None when it did not answer within 500 ms.
pub async fn statuses(urls: &[String]) -> Vec<Option<StatusResponse>> {
    let mut out = Vec::new();
    for url in urls {
        let status = async {
            let mut m = MaintenanceClient::new(channel(url)?);
            timeout(Duration::from_millis(500), m.status(StatusRequest {})).await.ok()?.ok().map(|r| r.into_inner())
        };
        out.push(status.await);
    }
    out
}

/// The member that leads, if the members that answer agree on one.
pub async fn leader(urls: &[String]) -> Option<usize> {
    let statuses = statuses(urls).await;
    let ids: Vec<Option<u64>> =
        statuses.iter().map(|s| s.as_ref().and_then(|s| s.header.as_ref()).map(|h| h.member_id)).collect();
    let leader = statuses.iter().flatten().map(|s| s.leader).find(|l| *l != 0)?;
    ids.iter().position(|id| *id == Some(leader))
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct Audit {
    /// The write of each revision, as the converged members store it: key and value.
    pub revisions: BTreeMap<i64, (String, u64)>,
    /// Liveness and agreement problems (the store's state checks are kv-check's).
    pub problems: Vec<String>,
    /// Revisions whose write could not be read: the checks that resolve writes against
    /// [`Audit::revisions`] cannot decide without them.
    pub unreadable: Vec<String>,
    /// How long after the audit began the members agreed.
    pub converged_after: Option<Duration>,
}

/// Waits until every member answers with the same applied index and revision twice a second
/// apart; returns how long that took and the revision they agree on.
pub async fn converge(urls: &[String]) -> Result<(Duration, i64), String> {
    let begin = Instant::now();
    let mut previous = None;
    loop {
        let now: Vec<Option<(u64, i64)>> = statuses(urls)
            .await
            .iter()
            .map(|s| s.as_ref().map(|s| (s.raft_applied_index, s.header.as_ref().map_or(0, |h| h.revision))))
            .collect();
        if let Some(Some(first)) = now.first().copied().filter(|_| now.iter().all(|a| *a == now[0])) {
            if previous == Some(first) {
                return Ok((begin.elapsed(), first.1));
            }
            previous = Some(first);
        } else {
            previous = None;
        }
        if begin.elapsed() > CONVERGE_WITHIN {
            return Err(format!(
                "the members did not converge within {CONVERGE_WITHIN:?} of healing: applied index/revision {now:?}"
            ));
        }
        sleep(Duration::from_secs(1)).await;
    }
}

/// Once the members converge ([`converge`]), compares their register keys and reads the write
/// of every revision.
pub async fn audit(urls: &[String]) -> Audit {
    let mut out = Audit::default();
    let revision = match converge(urls).await {
        Ok((after, revision)) => {
            out.converged_after = Some(after);
            revision
        }
        Err(e) => {
            out.problems.push(e);
            return out;
        }
    };
    let mut conns: Vec<Option<KvClient<Channel>>> = urls.iter().map(|u| channel(u).map(KvClient::new)).collect();
    let mut states = Vec::new();
    for (url, kv) in urls.iter().zip(conns.iter_mut()) {
        states.push((url.clone(), read_all(kv, 0).await));
    }
    if states.iter().any(|(_, s)| *s != states[0].1) {
        let each: Vec<String> = states.iter().map(|(u, s)| format!("{u}: {s:?}")).collect();
        out.problems.push(format!("members differ after healing: {}", each.join(" | ")));
    }
    // Every revision, a few at a time, spread over the members (thousands after a long run).
    let mut reads = tokio::task::JoinSet::new();
    let mut next = 2;
    while next <= revision || !reads.is_empty() {
        while next <= revision && reads.len() < PARALLEL_READS {
            let (rev, mut kv) = (next, conns[next as usize % urls.len()].clone());
            reads.spawn(async move { (rev, read_all(&mut kv, rev).await) });
            next += 1;
        }
        let (rev, read) = match reads.join_next().await {
            Some(Ok(done)) => done,
            Some(Err(e)) => {
                out.unreadable.push(format!("a read task ended: {e}"));
                continue;
            }
            None => continue,
        };
        match read {
            Ok(kvs) => match kvs.into_iter().find(|(_, _, m)| *m == rev) {
                Some((key, value, _)) => {
                    out.revisions.insert(rev, (key, value));
                }
                None => out.problems.push(format!("revision {rev} changed none of the register keys")),
            },
            Err(e) => out.unreadable.push(format!("revision {rev}: {e}")),
        }
    }
    out.unreadable.sort();
    out.problems.truncate(5);
    out
}

/// A member's register keys with value and mod revision (at `revision`, 0 for the latest),
/// read locally.
async fn read_all(kv: &mut Option<KvClient<Channel>>, revision: i64) -> Result<Vec<(String, u64, i64)>, String> {
    let kv = kv.as_mut().ok_or("no connection")?;
    let r = timeout(Duration::from_secs(5), kv.range(requests::all_keys(KEYS[0], revision)))
        .await
        .map_err(|_| "timed out".to_string())?;
    Ok(requests::keys_of(&r.map_err(|s| s.message().to_string())?.into_inner()))
}
