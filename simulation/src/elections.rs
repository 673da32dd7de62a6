//! The election workload: candidates on nodes of their own campaign through random members,
//! each on a lease of its own ([`Session`], sometimes abandoned while campaigning or leading);
//! a leader proclaims twice and resigns. Observers on nodes of their own follow the election
//! through random members, opening a new stream when one fails or stays silent. Checked
//! against the history after the run:
//! - every campaign won was won by the queue's head at the answer's revision, so there is at
//!   most one leader at any revision, and a candidate whose lease went is never elected;
//! - every acknowledged proclamation was made while its leadership lasted;
//! - every observer stream told of a run of leaders (and proclamations) exactly as the history
//!   has them, in order, none skipped: all observers see the same sequence.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_api::v3electionpb::election_client::ElectionClient;
use kv_api::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest};
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, NodeHandle};
use madsim::time::{sleep, timeout, Instant};
use tonic::transport::Channel;

use crate::clients::{pick, run_clients, CLIENT_TIMEOUT};
use crate::history::{Ev, Head, Heads};
use crate::session::Session;

/// Candidates running at once, each on its own node.
const CANDIDATES: u32 = 3;
/// Observers, each on its own node.
const OBSERVERS: u32 = 2;
/// The key prefix of the workload (outside every other workload's keys).
pub const PREFIX: &str = "_elect/";
/// The election's name; its candidates are the keys under `NAME/`.
const NAME: &str = "_elect/e";
/// Longest wait to be elected; then the campaign's outcome is unknown.
const WAIT: Duration = Duration::from_secs(6);
/// Proclamations per leadership.
const PROCLAIMS: usize = 2;
/// An observer stream silent this long is replaced by one through another member.
const SILENT: Duration = Duration::from_secs(3);

/// What an observer was told of one leader: key, mod revision, value.
pub type Told = (String, i64, String);

/// What a proclamation came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proclaimed {
    At(i64),
    /// "election: not leader".
    Refused,
    Unknown,
}

/// One candidate's one campaign.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Campaign {
    pub lease: i64,
    pub abandoned: Option<i64>,
    /// The leadership won and the revision of the answer's header.
    pub elected: Option<(String, i64, i64)>,
    pub proclaimed: Vec<(String, Proclaimed)>,
}

/// What the election workload saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ElectionRun {
    pub campaigns: Vec<Campaign>,
    /// What each observer stream told, stream by stream: (key, mod revision, value).
    pub observed: Vec<Vec<Told>>,
    pub events: Vec<Ev>,
}

/// The running observers.
pub struct Observers {
    streams: Arc<Mutex<Vec<Vec<Told>>>>,
    tasks: Vec<madsim::task::JoinHandle<()>>,
}

async fn election(endpoints: &[String]) -> Result<ElectionClient<Channel>, tonic::Status> {
    ElectionClient::connect(pick(endpoints)).await.map_err(|e| tonic::Status::unavailable(e.to_string()))
}

/// Starts the observers.
pub fn observe(endpoints: &[String]) -> Observers {
    let h = Handle::current();
    let streams = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for o in 0..OBSERVERS {
        let (endpoints, streams) = (endpoints.to_vec(), streams.clone());
        let node = crate::clients::client_node(&h, "observer", 7, o as usize);
        tasks.push(node.spawn(async move {
            loop {
                let opened = timeout(CLIENT_TIMEOUT, async {
                    election(&endpoints).await?.observe(LeaderRequest { name: NAME.into() }).await
                })
                .await;
                let Ok(Ok(stream)) = opened else {
                    sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut stream = stream.into_inner();
                let i = {
                    let mut all = streams.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                while let Ok(Ok(Some(r))) = timeout(SILENT, stream.message()).await {
                    let kv = r.kv.unwrap_or_default();
                    let seen = (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        kv.mod_revision,
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    );
                    streams.lock().unwrap()[i].push(seen);
                }
            }
        }));
    }
    Observers { streams, tasks }
}

impl Observers {
    /// Stops the observers; what each stream told.
    pub fn stop(self) -> Vec<Vec<Told>> {
        for t in &self.tasks {
            t.abort();
        }
        let mut all = self.streams.lock().unwrap().clone();
        all.retain(|s| !s.is_empty());
        all
    }
}

/// Runs the candidates for `for_how_long` from `start`.
pub async fn run(endpoints: &[String], for_how_long: Duration, start: Instant) -> Vec<Campaign> {
    run_clients("candidate", 6, CANDIDATES, endpoints, for_how_long, start, move |endpoints, cand, n| async move {
        campaign(&endpoints, i64::from(cand + 21) * 1_000_000 + n, start).await
    })
    .await
}

/// One campaign, from its lease to the resignation; `None` when no lease was granted.
async fn campaign(endpoints: &[String], lease: i64, start: Instant) -> Option<Campaign> {
    let session = Session::grant(endpoints, lease, start).await?;
    let mut c = Campaign { lease, ..Campaign::default() };
    let value = format!("{lease}");
    let won = timeout(WAIT, async {
        election(endpoints).await?.campaign(CampaignRequest { name: NAME.into(), lease, value: value.into() }).await
    })
    .await;
    if let Ok(Ok(resp)) = won {
        let resp = resp.into_inner();
        let leader = resp.leader.unwrap_or_default();
        let key = String::from_utf8_lossy(&leader.key).into_owned();
        c.elected = Some((key, leader.rev, resp.header.map_or(0, |h| h.revision)));
        for i in 0..PROCLAIMS {
            sleep(Duration::from_millis(thread_rng().gen_range(0..300))).await;
            let value = format!("{lease} p{i}");
            c.proclaimed.push((value.clone(), proclaim(endpoints, &leader, &value).await));
        }
        let _ = timeout(CLIENT_TIMEOUT, async {
            election(endpoints).await?.resign(ResignRequest { leader: Some(leader.clone()) }).await
        })
        .await;
    }
    c.abandoned = session.abandoned();
    session.end().await;
    Some(c)
}

async fn proclaim(endpoints: &[String], leader: &LeaderKey, value: &str) -> Proclaimed {
    let asked = timeout(CLIENT_TIMEOUT, async {
        let req = ProclaimRequest { leader: Some(leader.clone()), value: value.into() };
        election(endpoints).await?.proclaim(req).await
    })
    .await;
    match asked {
        Ok(Ok(r)) => Proclaimed::At(r.into_inner().header.map_or(0, |h| h.revision)),
        Ok(Err(s)) if s.message().contains("election: not leader") => Proclaimed::Refused,
        _ => Proclaimed::Unknown,
    }
}

/// After the run: every change under [`PREFIX`], read from the `control` node.
pub async fn settle(
    control: &NodeHandle,
    endpoints: &[String],
    campaigns: Vec<Campaign>,
    observed: Vec<Vec<Told>>,
) -> ElectionRun {
    let endpoints = endpoints.to_vec();
    let events = control.spawn(async move { crate::history::read(&endpoints, PREFIX).await }).await;
    ElectionRun { events: events.expect("election history task"), campaigns, observed }
}

/// What is wrong with what the candidates and observers were told.
pub fn check(run: &ElectionRun) -> Vec<String> {
    let mut problems = Vec::new();
    let heads = Heads::replay(&run.events, &format!("{NAME}/"));
    let leads = |h: Option<&Head>, key: &str, rev: i64| h.is_some_and(|h| h.key == key && h.create_revision == rev);
    for c in &run.campaigns {
        let Some((key, rev, at)) = &c.elected else { continue };
        if !leads(heads.at(*at), key, *rev) {
            problems.push(format!(
                "{key} (lease {}, abandoned at {:?} ns) was elected at revision {at}, where the leader was {:?}",
                c.lease,
                c.abandoned,
                heads.at(*at)
            ));
        }
        for (value, p) in &c.proclaimed {
            let Proclaimed::At(at) = p else { continue };
            let head = heads.at(*at);
            if !leads(head, key, *rev) || head.is_some_and(|h| h.value != *value) {
                problems.push(format!("{key} proclaimed {value:?} at revision {at}, where the leader was {head:?}"));
            }
        }
    }
    let sequence: Vec<Told> = heads.sequence().into_iter().map(|h| (h.key, h.mod_revision, h.value)).collect();
    for (i, told) in run.observed.iter().enumerate() {
        let Some(first) = sequence.iter().position(|s| *s == told[0]) else {
            problems.push(format!("observer stream {i} began with {:?}, never a leader", told[0]));
            continue;
        };
        let run_of = &sequence[first..(first + told.len()).min(sequence.len())];
        if run_of != told.as_slice() {
            let at = told.iter().zip(run_of).position(|(a, b)| a != b).unwrap_or(run_of.len());
            problems.push(format!(
                "observer stream {i} told {:?} after {:?}; the history has {:?}",
                told.get(at),
                &told[..at].last(),
                run_of.get(at)
            ));
        }
    }
    problems
}
