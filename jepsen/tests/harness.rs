//! The harness end to end, as root: a short run under faults ends valid with its report, and
//! neither a finished run nor one interrupted with SIGINT leaves a namespace, an iptables rule
//! or a process behind.
//!
//! Needs the kv-server binary built beside this test's (`cargo test --workspace` builds it) and
//! root; iptables is installed by the harness if missing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Runs share the machine's namespaces; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn jepsen() -> Command {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_jepsen"));
    let kv_server = bin.with_file_name("kv-server");
    assert!(kv_server.is_file(), "no kv-server at {} (cargo build --bin kv-server)", kv_server.display());
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn results_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// What the harness of `prefix` left: namespaces of that prefix, iptables rules in the host's
/// tables naming its subnet (the harness puts its rules inside the members' namespaces, never
/// here), and kv-server processes whose data lives under `results`.
fn leftovers(prefix: &str, subnet: u8, results: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(rules) = Command::new("iptables-save").output() {
        for line in String::from_utf8_lossy(&rules.stdout).lines() {
            if line.contains(&format!("10.{subnet}.")) {
                found.push(format!("host iptables rule {line}"));
            }
        }
    }
    let listed = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        if line.starts_with(&format!("{prefix}-")) {
            found.push(format!("namespace {line}"));
        }
    }
    let needle = results.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in mounts.lines().filter(|l| l.contains(&needle)) {
        found.push(format!("mount {line}"));
    }
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("kv-server") && cmdline.contains(&needle) {
            found.push(format!("process {}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn a_short_run_under_faults_is_valid_and_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let results = results_dir("short-run");
    let out = jepsen()
        .args(["run", "register", "--time", "20s", "--interval", "3s", "--quiet", "5s", "--seed", "7"])
        .args(["--nemesis", "kill,kill-leader,pause,partition-leader,partition-halves,partition-one-way"])
        .args(["--prefix", "rkjt1", "--subnet", "78"])
        .arg("--results")
        .arg(&results)
        .output()
        .expect("run jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(out.status.success(), "the run was not valid: {verdict}\n{stderr}");
    assert!(verdict.starts_with("valid: "), "{verdict}");
    let page = std::path::Path::new(verdict.rsplit("report: ").next().expect("report path"));
    let dir = page.parent().expect("the run's directory");
    for file in
        ["index.html", "history.json", "timeline.json", "verdict.json", "throughput.svg", "latency.svg", "n1.log"]
    {
        assert!(dir.join(file).is_file(), "{file} missing in {}", dir.display());
    }
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("<span class=\"valid\">valid</span>"), "the page gives the verdict");
    let timeline = std::fs::read_to_string(dir.join("timeline.json")).unwrap();
    assert!(timeline.contains("\"end_ms\""), "no fault in the timeline: {timeline}");
    assert_eq!(leftovers("rkjt1", 78, &results), Vec::<String>::new());
}

#[test]
fn an_interrupted_run_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let results = results_dir("interrupted-run");
    let mut child = jepsen()
        .args(["run", "register", "--time", "120s", "--interval", "2s", "--nemesis", "partition-halves,pause"])
        .args(["--prefix", "rkjt2", "--subnet", "79"])
        .arg("--results")
        .arg(&results)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run jepsen");
    // Interrupt once it runs, while a fault may be in place.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let running = lines.next().expect("a line").expect("stdout");
    assert!(running.starts_with("jepsen: running"), "{running}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(!leftovers("rkjt2", 79, &results).is_empty(), "the run made nothing to clean up");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT");
    let began = Instant::now();
    let status = child.wait().expect("wait");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    println!("exit {status} after {:?}: {rest:?}", began.elapsed());
    assert_eq!(status.code(), Some(2), "an interrupted run has no verdict");
    assert!(rest.last().is_some_and(|l| l.starts_with("unknown: ")), "{rest:?}");
    assert_eq!(leftovers("rkjt2", 79, &results), Vec::<String>::new());
}

/// Runs `jepsen run` with `args` (space-separated) into a results directory of `name`, as
/// `prefix` on `10.subnet.0.0/24`; asserts a valid verdict that checker `checker` agrees with
/// and that nothing is left behind. Returns the verdict and the history.
fn valid_run(
    name: &str,
    args: &str,
    prefix: &str,
    subnet: u8,
    checker: &str,
) -> (serde_json::Value, serde_json::Value) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let results = results_dir(name);
    let out = jepsen()
        .arg("run")
        .args(args.split_whitespace())
        .args(["--prefix", prefix, "--subnet", &subnet.to_string()])
        .arg("--results")
        .arg(&results)
        .output()
        .expect("run jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    let verdict = stdout.lines().last().unwrap_or_default();
    assert!(out.status.success(), "the run was not valid: {verdict}\n{stderr}");
    let dir =
        std::path::Path::new(verdict.rsplit("report: ").next().expect("report path")).parent().unwrap().to_owned();
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
    };
    let (json, history) = (read("verdict.json"), read("history.json"));
    let found = json["checkers"].as_array().unwrap().iter().find(|c| c["checker"] == checker);
    assert_eq!(found.expect("the workload's checker ran")["validity"], "valid", "{json:#}");
    assert_eq!(leftovers(prefix, subnet, &results), Vec::<String>::new());
    (json, history)
}

#[test]
fn a_set_run_through_etcd_client_under_faults_is_valid() {
    let args = "set --time 20s --interval 3s --quiet 5s --seed 11 --nemesis kill-leader,kill-majority,partition-halves,pause-leader";
    let (json, _) = valid_run("set-run", args, "rkjt4", 81, "set");
    assert!(json["outcomes"]["ok"].as_u64().unwrap() > 100, "the clients did work: {json:#}");
}

#[test]
fn a_lease_run_under_leader_kills_and_partitions_is_valid() {
    let args =
        "lease --time 20s --interval 3s --quiet 3s --seed 13 --nemesis kill-leader,partition-leader,pause-leader";
    let (json, history) = valid_run("lease-run", args, "rkjt7", 84, "lease");
    let expired = history.as_array().unwrap().iter().filter(|l| !l["first_absent"].is_null()).count();
    assert!(expired > 20, "leases came and went: {expired} keys seen to expire\n{json:#}");
}

#[test]
fn a_lock_run_through_etcd_client_under_faults_is_valid() {
    let args = "lock --time 20s --interval 3s --quiet 3s --seed 19 --nemesis kill-leader,pause,partition-halves";
    let (_, history) = valid_run("lock-run", args, "rkjt9", 86, "lock");
    let granted = history.as_array().unwrap().iter().filter(|a| !a["granted"].is_null()).count();
    assert!(granted > 5, "the lock changed hands: {granted} grants");
}

/// Power cuts to one member, a majority and all at once, on the members' lazyfs disks: nothing
/// acknowledged is lost, and no mount is left.
#[test]
fn a_power_loss_run_is_valid_and_leaves_no_mount() {
    let args = "register --time 20s --interval 3s --quiet 5s --seed 25 --nemesis power-loss,power-loss-majority,power-loss-all";
    let (json, _) = valid_run("power-loss-run", args, "rkjt11", 88, "stored");
    assert!(json["faults"].as_u64().unwrap() >= 3, "power was cut: {json:#}");
}

/// A member whose disk fills up or fails its syncs exits, saying why; the harness restarts it
/// once the disk is healed, and the run is valid: nothing acknowledged is lost.
#[test]
fn a_disk_fault_run_restarts_the_members_that_exit_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let results = results_dir("disk-fault-run");
    let out = jepsen()
        .args(["run", "set", "--time", "24s", "--interval", "3s", "--quiet", "5s", "--seed", "2"])
        .args(["--nemesis", "disk-full,disk-eio", "--prefix", "rkjt12", "--subnet", "89", "--results"])
        .arg(&results)
        .output()
        .expect("run jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the run was not valid: {}", stdout.lines().last().unwrap_or_default());
    assert!(
        stdout.contains("exited after a disk fault (exit status: 1): Error: kv-server: stopped serving"),
        "{stdout}"
    );
    assert_eq!(leftovers("rkjt12", 89, &results), Vec::<String>::new());
}
