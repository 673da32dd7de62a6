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

/// What a run found; written to `verdict.json` in its directory.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub validity: Validity,
    /// One line per problem found, each naming its checker.
    pub problems: Vec<String>,
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
    let members = Members::start(&plan.kv_server, plan.planted.clone(), &net, &dir)?;
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
    }
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
    let clients = tokio::spawn(register::run(urls.clone(), start, plan.seed, stop_rx));

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
            () = sleep(pause.min(plan.time.saturating_sub(start.elapsed()))) => {}
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
            () = sleep(hold) => {}
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
            () = sleep(plan.quiet) => {}
        }
    }
    let _ = stop_tx.send(true);
    let (history, outcomes) = clients.await.map_err(|e| HarnessError::Setup(format!("clients: {e}")))?;
    let time_s = start.elapsed().as_secs_f64();
    write_json(&dir.join("history.json"), &history)?;
    write_json(&dir.join("timeline.json"), &timeline)?;

    members.reap();
    for (i, status) in &members.exits {
        problems.push(format!(
            "liveness: member {} exited on its own ({status}): see {}.log",
            members.name(*i),
            members.name(*i)
        ));
    }
    let mut converged_after_ms = None;
    let mut validity = Validity::Valid;
    if interrupted {
        validity = Validity::Unknown;
        problems.push("interrupted: no verdict".into());
    } else {
        let audit = crate::audit::audit(&urls).await;
        converged_after_ms = audit.converged_after.map(|d| d.as_millis() as u64);
        problems.extend(audit.problems.iter().map(|p| format!("audit: {p}")));
        if audit.converged_after.is_some() {
            problems.extend(
                kv_check::checks::stored(&history, &audit.revisions).into_iter().map(|p| format!("stored: {p}")),
            );
            let history2 = history.clone();
            let revisions = audit.revisions.clone();
            let checked = tokio::task::spawn_blocking(move || kv_check::checks::check_all(&history2, &revisions))
                .await
                .map_err(|e| HarnessError::Setup(format!("checker: {e}")))?;
            if let Err(e) = checked {
                if e.contains("could not decide") {
                    validity = Validity::Unknown;
                }
                problems.push(format!("checks: {e}"));
            }
        }
        if !problems.is_empty() && validity == Validity::Valid {
            validity = Validity::Invalid;
        }
    }
    Ok(Verdict {
        validity,
        problems,
        dir: dir.to_path_buf(),
        workload: plan.workload,
        seed: plan.seed,
        time_s,
        ops: history.len(),
        outcomes,
        faults: timeline.len(),
        converged_after_ms,
    })
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
