//! The checks have teeth: members built with a planted bug make a run invalid, and the report
//! points at the failure (its key, its operations and the fault around them).
//!
//! Builds its own kv-server with the `planted-bugs` feature into `target/planted` (a target
//! directory of its own, so the shipped binary beside the other tests stays the real one).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Runs share the machine's namespaces and its two cores; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The kv-server with planted bugs (cargo builds it once; later calls find it up to date).
fn planted_kv_server() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let target = root.join("target").join("planted");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "kv-server", "--bin", "kv-server", "--features", "planted-bugs", "--target-dir"])
        .arg(&target)
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the planted kv-server: {status}");
    target.join("debug").join("kv-server")
}

/// A linearizable read served from the member's own state (no ReadIndex round): under a
/// partition of the leader, the deposed leader answers with what it had.
/// `jepsen run` with `args` against the planted kv-server, results in a directory of `name`.
fn run_planted(name: &str, args: &[&str]) -> Output {
    let kv_server = planted_kv_server();
    let results = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&results);
    Command::new(env!("CARGO_BIN_EXE_jepsen"))
        .env("RUST_LOG", "warn")
        .arg("run")
        .args(args)
        .arg("--kv-server")
        .arg(&kv_server)
        .arg("--results")
        .arg(&results)
        .output()
        .expect("run jepsen")
}

/// Runs `args` (space-separated) against the planted kv-server and asserts an invalid verdict;
/// returns the verdict line and what the run printed on stderr (one line per problem).
fn invalid_run(name: &str, args: &str) -> (String, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = run_planted(name, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}{stderr}");
    let verdict = stdout.lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "the run should be invalid: {verdict}");
    (verdict.to_string(), stderr)
}

#[test]
fn local_linearizable_reads_make_a_run_invalid_with_a_pointer() {
    let (verdict, _) = invalid_run(
        "teeth-register",
        "register --time 30s --interval 3s --quiet 3s --seed 3 --nemesis partition-leader \
         --planted local_linearizable_reads --prefix rkjt3 --subnet 80",
    );
    assert!(verdict.starts_with("invalid: "), "{verdict}");

    let page = PathBuf::from(verdict.rsplit("report: ").next().expect("report path"));
    let dir = page.parent().expect("run directory");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("verdict.json")).unwrap()).unwrap();
    let checkers = json["checkers"].as_array().expect("checkers");
    let linearizable = checkers.iter().find(|c| c["checker"] == "linearizable").expect("linearizable checker");
    assert_eq!(linearizable["validity"], "invalid", "{json:#}");

    // The pointer: a key, a handful of its operations, and the partition around them.
    let pointer = &json["linearizability"];
    let key = pointer["key"].as_str().expect("a key");
    assert!(["a", "b", "c"].contains(&key), "{pointer}");
    let ops = pointer["ops"].as_array().expect("ops");
    assert!(!ops.is_empty() && ops.len() < 100, "the failing run is cut short: {} operations", ops.len());
    let history: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).unwrap()).unwrap();
    for op in ops {
        assert_eq!(history[op.as_u64().unwrap() as usize]["key"], key, "every pointed operation is on the key");
    }
    let faults = pointer["faults"].as_array().expect("faults");
    assert!(faults.iter().any(|f| f["fault"] == "partition-leader"), "{pointer}");
    assert!(dir.join(pointer["page"].as_str().unwrap()).is_file(), "porcupine's page");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(&format!("Smallest failing history: key {key}")), "the page shows the failure");
}

/// A watch that has just caught up from the stored history skips the first revision it then
/// takes live: the watchers reopen every few seconds, so each crosses that switch again and
/// again, and one of them misses a change.
#[test]
fn a_watch_that_skips_at_the_switch_makes_a_run_invalid() {
    let (_, stderr) = invalid_run(
        "teeth-watch",
        "watch --time 20s --interval 3s --quiet 3s --seed 5 --nemesis kill,partition-halves \
         --planted watch_skip_at_switch --prefix rkjt5 --subnet 82",
    );
    assert!(stderr.contains("watch: watcher "), "a watcher is named: {stderr}");
}

/// Lease checkpoints that leave renewals out: a new leader counts each lease from what it had
/// left when granted, so after a leader kill a renewed lease's key goes before its deadline.
#[test]
fn leases_that_forget_renewals_make_a_run_invalid() {
    let (_, stderr) = invalid_run(
        "teeth-lease",
        "lease --time 25s --interval 3s --quiet 3s --seed 9 --nemesis kill-leader \
         --planted lease_forget_renewals --prefix rkjt6 --subnet 83",
    );
    assert!(stderr.contains("before the lease's deadline"), "a key gone early is named: {stderr}");
}

/// A lock granted once no key is left ahead of the waiter, without checking that its own key
/// and lease are still there (etcd issue 11456): a waiter whose lease ended while it waited is
/// granted a lock it does not hold.
#[test]
fn locks_granted_unchecked_make_a_run_invalid() {
    let (_, stderr) = invalid_run(
        "teeth-lock",
        "lock --time 25s --interval 3s --quiet 3s --seed 17 --nemesis pause \
         --planted lock_grant_unchecked --prefix rkjt8 --subnet 85",
    );
    assert!(stderr.contains("lock: client "), "the grant is named: {stderr}");
}

/// Log appends reported durable without an fsync: a kill -9 loses nothing (the page cache keeps
/// the writes), so a kill-all run on lazyfs stays valid; a power cut to every member at once
/// loses what they acknowledged.
#[test]
fn a_log_that_skips_its_fsync_loses_writes_to_power_loss_only() {
    let (verdict, stderr) = invalid_run(
        "teeth-power-loss",
        "register --time 20s --interval 3s --quiet 5s --seed 24 --nemesis power-loss-all \
         --planted skip_log_fsync --prefix rkjt10 --subnet 87",
    );
    assert!(
        stderr.contains("stored: acknowledged write") || stderr.contains("did not converge"),
        "acknowledged writes lost, or members left disagreeing: {verdict}\n{stderr}"
    );

    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let args = "register --time 20s --interval 3s --quiet 5s --seed 24 --nemesis kill-all --lazyfs \
                --planted skip_log_fsync --prefix rkjt10 --subnet 87";
    let out = run_planted("teeth-kill-all", &args.split_whitespace().collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kill -9 cannot show a missing fsync: {}", stdout.lines().last().unwrap_or_default());
}
