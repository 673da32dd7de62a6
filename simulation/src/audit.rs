//! After the faults are healed and the clients are done: do all members converge, what is the
//! order of every write that took effect, and does every acknowledged write sit at its
//! revision?

use std::collections::BTreeMap;
use std::time::Duration;

use kv_api::etcdserverpb::kv_client::KvClient;
use kv_check::requests;
use madsim::time::{sleep, timeout, Instant};
use tonic::transport::Channel;

use crate::cluster::SimCluster;
use crate::workload::{Record, KEYS};

/// How long healed members may take to agree.
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

/// What the audit found.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Every member's final state (part of the run's digest).
    pub final_state: String,
    /// The write of each revision, as the converged members store it: key and value.
    pub revisions: BTreeMap<i64, (String, u64)>,
    pub problems: Vec<String>,
}

/// Waits for the members to agree, compares their state, reads the write of every revision
/// (round robin over the members) and checks every acknowledged write against it.
/// `others`: revisions written by other workloads (leases), which change none of the keys
/// audited here.
pub async fn audit(c: &SimCluster, history: &[Record], others: &std::collections::BTreeSet<i64>) -> Audit {
    let mut out = Audit::default();
    let deadline = Instant::now() + CONVERGE_WITHIN;
    // A write whose client gave up may still commit after the clients stop: the members must
    // agree, and still agree a second later, before their state is compared.
    let mut previous = None;
    let (agreed, revision) = loop {
        let applied = applied(c).await;
        if let Some(Some(first)) = applied.first().copied().filter(|_| applied.iter().all(|a| *a == applied[0])) {
            if previous == Some(first) {
                break (format!("applied index {} at revision {}", first.0, first.1), first.1);
            }
            previous = Some(first);
        } else {
            previous = None;
        }
        if Instant::now() > deadline {
            out.problems
                .push(format!("members did not converge within {CONVERGE_WITHIN:?}: applied/revision {applied:?}"));
            return out;
        }
        sleep(Duration::from_secs(1)).await;
    };
    let endpoints = c.endpoints.clone();
    let (states, revisions) = c
        .control
        .spawn(async move {
            let mut conns = Vec::new();
            for ep in &endpoints {
                conns.push(KvClient::connect(ep.clone()).await.ok());
            }
            let mut states = Vec::new();
            for (ep, kv) in endpoints.iter().zip(conns.iter_mut()) {
                states.push((ep.clone(), format!("{:?}", read_all(kv, 0).await)));
            }
            let mut revisions = BTreeMap::new();
            for rev in 2..=revision {
                let kv = &mut conns[rev as usize % endpoints.len()];
                let changed = read_all(kv, rev).await.map(|kvs| kvs.into_iter().find(|(_, _, m)| *m == rev));
                revisions.insert(rev, changed);
            }
            (states, revisions)
        })
        .await
        .expect("audit task");
    let after = applied(c).await;
    if after.iter().any(|a| a.map(|a| a.1) != Some(revision)) {
        out.problems
            .push(format!("members changed during the audit, after a second at revision {revision}: {after:?}"));
    }
    let states: Vec<String> = if states.iter().all(|(_, s)| *s == states[0].1) {
        vec![format!("all members: {}", states[0].1)]
    } else {
        let each: Vec<String> = states.iter().map(|(ep, s)| format!("{ep}: {s}")).collect();
        out.problems.push(format!("members differ after healing: {}", each.join(" | ")));
        each
    };
    out.final_state = format!("{agreed}\n{}", states.join("\n"));
    for (rev, changed) in revisions {
        match changed {
            Ok(Some((key, value, _))) => {
                out.revisions.insert(rev, (key, value));
            }
            Ok(None) if others.contains(&rev) => {}
            Ok(None) => out.problems.push(format!("revision {rev} changed none of the keys")),
            Err(e) => out.problems.push(format!("reading revision {rev}: {e}")),
        }
    }
    out.problems.extend(kv_check::checks::stored(history, &out.revisions));
    out.problems.truncate(5);
    out
}

/// Each member's applied index and revision (None: no answer).
async fn applied(c: &SimCluster) -> Vec<Option<(u64, i64)>> {
    let statuses = c.statuses().await;
    statuses
        .iter()
        .map(|s| s.as_ref().map(|s| (s.raft_applied_index, s.header.as_ref().map_or(0, |h| h.revision))))
        .collect()
}

/// A member's keys with value and mod revision (at `revision`, 0 for the latest), read locally.
async fn read_all(kv: &mut Option<KvClient<Channel>>, revision: i64) -> Result<Vec<(String, u64, i64)>, String> {
    let kv = kv.as_mut().ok_or("no connection")?;
    let r = timeout(Duration::from_secs(2), kv.range(requests::all_keys(KEYS[0], revision)))
        .await
        .map_err(|_| "timed out".to_string())?;
    Ok(requests::keys_of(&r.map_err(|s| s.message().to_string())?.into_inner()))
}
