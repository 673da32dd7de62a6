//! One test run: the network and members up, the workload's clients and the nemesis running
//! side by side for the run's time, every fault healed, a quiet period in which the cluster
//! must recover, then the audit, the checks and the results directory.
//!
//! The clients, the status queries and the audit run on a tokio runtime whose threads live in
//! the clients' namespace; members run in theirs. Ctrl-C ends the run early: everything is
//! torn down the same way, and the verdict is `unknown`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use crate::members::Members;
use crate::nemesis::{self, Fault, Window};
use crate::net::Net;
use crate::register::{self, Outcomes};
use crate::HarnessError;

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub workload: Workload,
    pub faults: Vec<Fault>,
    /// How long the clients run under faults.
    pub time: Duration,
    /// How long each fault lasts, and each pause between faults.
    pub interval: Duration,
    /// After the last heal: clients go on, the cluster must recover.
    pub quiet: Duration,
    pub members: usize,
    pub seed: u64,
    pub kv_server: PathBuf,
    /// Planted bugs the members run with (comma-separated names; teeth for the checks).
    pub planted: Option<String>,
    /// The members' data on lazyfs mounts even without disk faults (they always are with
    /// them): a kill -9 run to hold up against a power-loss run on the same footing.
    pub lazyfs: bool,
    /// Where this run's directory is created.
    pub results: PathBuf,
    /// Names of the namespaces (`{prefix}-*`).
    pub prefix: String,
    /// The second octet of the run's subnet, 10.x.0.0/24.
    pub subnet: u8,
    /// Set by SIGINT or SIGTERM (see `main`): the run ends early, torn down as usual.
    pub interrupt: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Per-key registers: put, compare-and-set and reads at every consistency level.
    Register,
    /// A set grown one element (key) at a time and read whole, through the etcd-client crate.
    Set,
    /// Writers and watchers that reopen their watches: every change seen once, in order.
    Watch,
    /// Leases granted, renewed and abandoned, their keys watched: none gone early or kept.
    Lease,
    /// One lock taken in turn, the resource written under fencing tokens, through etcd-client.
    Lock,
}

/// What the clients saw, per workload.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum History {
    Register(Vec<kv_check::history::Record>),
    Set(Vec<kv_check::set::SetRecord>),
    Watch(crate::watch::WatchHistory),
    Lease(Vec<kv_check::lease::LeaseRecord>),
    Lock(Vec<kv_check::lock::LockRecord>),
}

impl History {
    pub fn len(&self) -> usize {
        match self {
            History::Register(h) => h.len(),
            History::Set(h) => h.len(),
            History::Watch(h) => h.writes.len() + h.watchers.iter().map(|w| w.events.len()).sum::<usize>(),
            History::Lease(h) => h.iter().map(|l| 2 + l.renewals.len()).sum(),
            History::Lock(h) => h.iter().map(|a| 1 + a.writes.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each operation's call and return (None: no answer), in ns since the workload began.
    pub fn times(&self) -> Vec<(i64, Option<i64>)> {
        match self {
            History::Register(h) => h.iter().map(|r| (r.call, r.ret)).collect(),
            History::Set(h) => h.iter().map(|r| (r.call, r.ret)).collect(),
            History::Watch(h) => h.writes.iter().map(|w| (w.call, w.ret)).collect(),
            History::Lease(h) => h
                .iter()
                .flat_map(|l| {
                    let put = l.put.map_or((l.grant_ret, None), |(call, ret)| (call, Some(ret)));
                    [(l.grant_call, Some(l.grant_ret)), put]
                        .into_iter()
                        .chain(l.renewals.iter().map(|r| (r.call, r.ret)))
                })
                .collect(),
            History::Lock(h) => h
                .iter()
                .flat_map(|a| {
                    let granted = [(a.call, a.granted.as_ref().map(|g| g.at))];
                    granted.into_iter().chain(a.writes.iter().map(|w| (w.call, w.ret)))
                })
                .collect(),
        }
    }
}

/// The verdict of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Invalid,
    /// The run could not decide (interrupted, or a checker ran out of time).
    Unknown,
}

impl std::fmt::Display for Validity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Validity::Valid => "valid",
            Validity::Invalid => "invalid",
            Validity::Unknown => "unknown",
        })
    }
}

/// What one checker found.
#[derive(Debug, Serialize)]
pub struct Checked {
    pub checker: String,
    pub validity: Validity,
    /// The first problem it found, in words ("" when valid).
    pub detail: String,
}

/// What a run found; written to `verdict.json` in its directory.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub validity: Validity,
    /// One line per problem found, each naming its checker.
    pub problems: Vec<String>,
    pub checkers: Vec<Checked>,
    /// For a history that is not linearizable: where the smallest failure sits.
    pub linearizability: Option<crate::report::Pointer>,
    /// The report's page.
    pub report: PathBuf,
    pub dir: PathBuf,
    pub workload: Workload,
    pub seed: u64,
    pub time_s: f64,
    pub ops: usize,
    pub outcomes: Outcomes,
    pub faults: usize,
    pub converged_after_ms: Option<u64>,
}

/// Runs `plan`; `Err` only when the harness itself could not set up or tear down.
pub fn run(plan: &Plan) -> Result<Verdict, HarnessError> {
    crate::net::ensure_tools()?;
    if !plan.kv_server.is_file() {
        return Err(HarnessError::Setup(format!(
            "no kv-server at {} (build it first: cargo build --release --bin kv-server)",
            plan.kv_server.display()
        )));
    }
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    let dir = plan.results.join(format!("{}-{stamp}-{}", workload_name(plan.workload), plan.seed));
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Setup(format!("creating {}: {e}", dir.display())))?;
    let dir = dir.canonicalize().map_err(|e| HarnessError::Setup(format!("{}: {e}", dir.display())))?;

    let net = Net::create(&plan.prefix, plan.members, plan.subnet)?;
    let lazyfs = plan.lazyfs || plan.faults.iter().any(|f| f.needs_lazyfs());
    let members = Members::start(&plan.kv_server, plan.planted.clone(), &net, &dir, lazyfs)?;
    // The runtime's threads are born in the clients' namespace: everything that speaks to the
    // members runs there. Members and network are torn down when this returns, whatever happens.
    let plan2 = plan.clone();
    let dir2 = dir.clone();
    let outcome = std::thread::scope(|s| {
        s.spawn(|| -> Result<Verdict, HarnessError> {
            net.enter_client_ns()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| HarnessError::Setup(format!("tokio runtime: {e}")))?;
            rt.block_on(drive(&plan2, &dir2, &net, members))
        })
        .join()
        .map_err(|_| HarnessError::Setup("the run's thread panicked".into()))?
    });
    drop(net);
    let verdict = outcome?;
    write_json(&dir.join("verdict.json"), &verdict)?;
    Ok(verdict)
}

fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Register => "register",
        Workload::Set => "set",
        Workload::Watch => "watch",
        Workload::Lease => "lease",
        Workload::Lock => "lock",
    }
}

/// The workload's clients while they run.
enum Clients {
    /// Clients that stop when told and hand back their history.
    Done(tokio::task::JoinHandle<Result<(History, Outcomes), tokio::task::JoinError>>),
    Watch(crate::watch::Running),
    Lease(crate::lease::Running),
}

async fn drive(plan: &Plan, dir: &Path, net: &Net, mut members: Members) -> Result<Verdict, HarnessError> {
    let urls = members.client_urls();
    let begin = Instant::now();
    let mut problems = Vec::new();
    let mut interrupted = false;

    // A leader first, so faults start on a working cluster.
    let mut ready = false;
    while begin.elapsed() < Duration::from_secs(30) && !plan.interrupt.load(Ordering::Relaxed) {
        if crate::audit::leader(&urls).await.is_some() {
            ready = true;
            break;
        }
        sleep(Duration::from_millis(200)).await;
    }
    if !ready && !plan.interrupt.load(Ordering::Relaxed) {
        return Err(HarnessError::Setup("no leader 30 s after the members started: see their logs".into()));
    }
    println!(
        "jepsen: running {} for {:?} with {} in {}",
        workload_name(plan.workload),
        plan.time,
        names(&plan.faults),
        dir.display()
    );

    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients = match plan.workload {
        Workload::Register => {
            let c = tokio::spawn(register::run(urls.clone(), start, plan.seed, stop_rx));
            Clients::Done(tokio::spawn(async move { c.await.map(|(h, o)| (History::Register(h), o)) }))
        }
        Workload::Set => {
            let c = tokio::spawn(crate::set::run(urls.clone(), start, plan.seed, stop_rx));
            Clients::Done(tokio::spawn(async move { c.await.map(|(h, o)| (History::Set(h), o)) }))
        }
        Workload::Watch => Clients::Watch(crate::watch::start(urls.clone(), start, plan.seed, stop_rx)),
        Workload::Lease => Clients::Lease(crate::lease::start(urls.clone(), start, plan.seed, stop_rx)),
        Workload::Lock => {
            let c = tokio::spawn(crate::lock::run(urls.clone(), start, plan.seed, stop_rx));
            Clients::Done(tokio::spawn(async move { c.await.map(|(h, o)| (History::Lock(h), o)) }))
        }
    };

    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let mut timeline: Vec<Window> = Vec::new();
    let ms = |at: Instant| at.duration_since(start).as_millis() as u64;
    let ctrl_c = until_interrupted(plan.interrupt.clone());
    tokio::pin!(ctrl_c);
    // Faults, each followed by its heal, until the time is up.
    let mut faulted = false;
    while start.elapsed() < plan.time && !interrupted {
        let pause = if faulted { plan.interval } else { plan.interval / 2 };
        tokio::select! {
            () = &mut ctrl_c => { interrupted = true; break; }
            r = supervised(&mut members, pause.min(plan.time.saturating_sub(start.elapsed()))) => r?,
        }
        if start.elapsed() >= plan.time || plan.faults.is_empty() {
            continue;
        }
        let fault = *plan.faults.choose(&mut rng).expect("not empty");
        let leader = if fault.targets_leader() { crate::audit::leader(&urls).await } else { None };
        let at = Instant::now();
        let detail = nemesis::apply(fault, &mut members, net, leader, &mut rng)?;
        timeline.push(Window { fault: fault.name().into(), detail, start_ms: ms(at), end_ms: None });
        let hold = plan.interval + Duration::from_millis(rng.gen_range(0..=plan.interval.as_millis() as u64 / 2));
        tokio::select! {
            () = &mut ctrl_c => { interrupted = true; }
            r = supervised(&mut members, hold) => r?,
        }
        nemesis::heal(&mut members, net)?;
        if let Some(w) = timeline.last_mut() {
            w.end_ms = Some(ms(Instant::now()));
        }
        faulted = true;
    }
    nemesis::heal(&mut members, net)?;
    if !interrupted {
        tokio::select! {
            () = &mut ctrl_c => { interrupted = true; }
            r = supervised(&mut members, plan.quiet) => r?,
        }
    }
    let _ = stop_tx.send(true);
    // The watch workload's watchers go on until they reach the revision the members converge on.
    let mut converged_early = None;
    let (history, outcomes) = match clients {
        Clients::Done(c) => c
            .await
            .map_err(|e| HarnessError::Setup(format!("clients: {e}")))?
            .map_err(|e| HarnessError::Setup(format!("clients: {e}")))?,
        Clients::Watch(running) => {
            let converged = if interrupted { None } else { Some(crate::audit::converge(&urls).await) };
            let last = converged.as_ref().and_then(|c| c.as_ref().ok()).map(|(_, rev)| *rev);
            converged_early = converged;
            let (h, o) = running.finish(last).await;
            (History::Watch(h), o)
        }
        // The observer goes on until every abandoned lease should have expired.
        Clients::Lease(running) => {
            let (h, o) = running.finish(start).await;
            (History::Lease(h), o)
        }
    };
    let time_s = start.elapsed().as_secs_f64();
    write_json(&dir.join("history.json"), &history)?;
    write_json(&dir.join("timeline.json"), &timeline)?;

    members.reap();
    let mut exits: Vec<String> = members
        .exits
        .iter()
        .map(|(i, status)| {
            format!("member {} exited on its own ({status}): see {}.log", members.name(*i), members.name(*i))
        })
        .collect();
    for e in &members.fault_exits {
        let name = members.name(e.member);
        println!("jepsen: {name} exited after a disk fault ({}): {}", e.status, e.last_words);
        // The answer to a failed disk: exit non-zero, saying why (a supervisor restarts it).
        let said_why = e.last_words.starts_with("Error: ");
        if e.status.success() || e.status.code().is_none() || !said_why {
            exits.push(format!(
                "member {name} exited after a disk fault without an error exit and its reason ({}): see {name}.log",
                e.status
            ));
        }
    }
    problems.extend(exits.iter().map(|e| format!("liveness: {e}")));
    let mut checkers = vec![checked("liveness", exits.first().cloned().map_or(Ok(()), Err))];
    let mut converged_after_ms = None;
    let mut linearizability = None;
    if interrupted {
        problems.push("interrupted: no verdict".into());
    } else {
        match &history {
            History::Register(records) => {
                let audit = crate::audit::audit(&urls).await;
                converged_after_ms = audit.converged_after.map(|d| d.as_millis() as u64);
                checkers.push(checked("audit", audit.problems.first().cloned().map_or(Ok(()), Err)));
                problems.extend(audit.problems.iter().map(|p| format!("audit: {p}")));
                if let Some(first) = audit.unreadable.first() {
                    // Without every revision's write, a lost write and an unread one look alike.
                    let gap = format!(
                        "could not decide: {} revisions could not be read back (first: {first})",
                        audit.unreadable.len()
                    );
                    problems.push(format!("revisions: {gap}"));
                    checkers.push(checked("revisions", Err(gap)));
                } else if audit.converged_after.is_some() {
                    let (history2, timeline2, dir2) = (records.clone(), timeline.clone(), dir.to_path_buf());
                    let revisions = audit.revisions.clone();
                    let (results, pointer) =
                        tokio::task::spawn_blocking(move || check(&history2, &revisions, &timeline2, &dir2))
                            .await
                            .map_err(|e| HarnessError::Setup(format!("checker: {e}")))?;
                    linearizability = pointer.transpose()?;
                    for (name, result) in results {
                        if let Err(e) = &result {
                            problems.push(format!("{name}: {e}"));
                        }
                        checkers.push(checked(name, result));
                    }
                    if let Some(p) = &linearizability {
                        problems.push(format!("linearizable: {}", p.summary()));
                    }
                }
            }
            History::Watch(seen) => {
                let converged = converged_early.take().unwrap_or_else(|| Err("no convergence attempted".into()));
                converged_after_ms = record_convergence(&converged, &mut checkers, &mut problems);
                if let Ok((_, last)) = converged {
                    let found = match crate::watch::stored(&urls, last).await {
                        Ok(changes) => kv_check::watch::check(&seen.writes, &seen.watchers, &changes),
                        Err(e) => vec![e],
                    };
                    record("watch", found, &mut checkers, &mut problems);
                }
            }
            History::Lease(leases) => {
                let converged = crate::audit::converge(&urls).await;
                converged_after_ms = record_convergence(&converged, &mut checkers, &mut problems);
                if converged.is_ok() {
                    let final_read = start.elapsed().as_nanos() as i64;
                    let slack = crate::lease::SLACK.as_nanos() as i64;
                    let found = match crate::lease::remaining(&urls).await {
                        Ok(keys) => kv_check::lease::check(leases, &keys, final_read, slack),
                        Err(e) => vec![e],
                    };
                    record("lease", found, &mut checkers, &mut problems);
                }
            }
            History::Lock(attempts) => {
                let converged = crate::audit::converge(&urls).await;
                converged_after_ms = record_convergence(&converged, &mut checkers, &mut problems);
                if converged.is_ok() {
                    let found = match crate::lock::keys_at_grants(&urls, attempts).await {
                        Ok(keys) => kv_check::lock::check(attempts, &keys),
                        Err(e) => vec![e],
                    };
                    record("lock", found, &mut checkers, &mut problems);
                }
            }
            History::Set(records) => {
                let converged = crate::audit::converge(&urls).await;
                converged_after_ms = record_convergence(&converged, &mut checkers, &mut problems);
                if converged.is_ok() {
                    let names: Vec<String> = (0..urls.len()).map(|i| members.name(i).to_string()).collect();
                    let found = match crate::set::finals(&urls, &names).await {
                        Ok(finals) => kv_check::set::check(records, &finals),
                        Err(e) => vec![e],
                    };
                    record("set", found, &mut checkers, &mut problems);
                }
            }
        }
    }
    let validity = if interrupted || checkers.iter().any(|c| c.validity == Validity::Unknown) {
        Validity::Unknown
    } else if problems.is_empty() {
        Validity::Valid
    } else {
        Validity::Invalid
    };
    let mut verdict = Verdict {
        validity,
        problems,
        checkers,
        linearizability,
        report: dir.join("index.html"),
        dir: dir.to_path_buf(),
        workload: plan.workload,
        seed: plan.seed,
        time_s,
        ops: history.len(),
        outcomes,
        faults: timeline.len(),
        converged_after_ms,
    };
    verdict.report = crate::report::write(&verdict, &history, &timeline)?;
    Ok(verdict)
}

/// Every checker over the history: (name, first problem). For a linearizability failure, also
/// where its smallest instance sits (porcupine's page written into `dir`).
type Results = Vec<(&'static str, Result<(), String>)>;

fn check(
    history: &[kv_check::history::Record],
    revisions: &std::collections::BTreeMap<i64, (String, u64)>,
    timeline: &[Window],
    dir: &Path,
) -> (Results, Option<Result<crate::report::Pointer, HarnessError>>) {
    use kv_check::checks;
    let lost = checks::stored(history, revisions);
    let linearizable = checks::linearizable(history, revisions);
    let pointer = if linearizable.as_ref().is_err_and(|e| !e.contains("could not decide")) {
        kv_check::explain::linearizability_failure(history, revisions)
            .map(|f| crate::report::Pointer::new(&f, history, timeline, dir))
    } else {
        None
    };
    let results = vec![
        ("stored", if lost.is_empty() { Ok(()) } else { Err(lost.join("; ")) }),
        ("values", checks::only_written_values(history)),
        ("session", checks::session(history)),
        ("bounded", checks::bounded(history)),
        ("linearizable", linearizable),
    ];
    (results, pointer)
}

/// Records the members' convergence as the `audit` checker; returns how long it took.
fn record_convergence(
    converged: &Result<(Duration, i64), String>,
    checkers: &mut Vec<Checked>,
    problems: &mut Vec<String>,
) -> Option<u64> {
    if let Err(e) = converged {
        problems.push(format!("audit: {e}"));
    }
    checkers.push(checked("audit", converged.as_ref().map(|_| ()).map_err(Clone::clone)));
    converged.as_ref().ok().map(|(d, _)| d.as_millis() as u64)
}

/// Records what checker `name` found: each problem, and its verdict (by the first).
fn record(name: &str, found: Vec<String>, checkers: &mut Vec<Checked>, problems: &mut Vec<String>) {
    problems.extend(found.iter().map(|p| format!("{name}: {p}")));
    checkers.push(checked(name, found.into_iter().next().map_or(Ok(()), Err)));
}

fn checked(name: &str, result: Result<(), String>) -> Checked {
    let validity = match &result {
        Ok(()) => Validity::Valid,
        Err(e) if e.contains("could not decide") => Validity::Unknown,
        Err(_) => Validity::Invalid,
    };
    Checked { checker: name.into(), validity, detail: result.err().unwrap_or_default() }
}

/// Waits `time`, restarting the members that exited on a disk fault once it is healed, as a
/// supervisor would.
async fn supervised(members: &mut Members, time: Duration) -> Result<(), HarnessError> {
    let until = Instant::now() + time;
    loop {
        members.supervise()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        sleep(left.min(Duration::from_millis(250))).await;
    }
}

/// Resolves once the run is interrupted.
async fn until_interrupted(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(100)).await;
    }
}

fn names(faults: &[Fault]) -> String {
    if faults.is_empty() {
        return "no faults".into();
    }
    faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), HarnessError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| HarnessError::Setup(format!("{}: {e}", path.display())))?;
    std::fs::write(path, text).map_err(|e| HarnessError::Setup(format!("writing {}: {e}", path.display())))
}
