//! Every kvctl verb against a 3-member cluster (three members started in this process on free
//! ports), by running the binary: output formats, levels, and the error cases.
#![cfg(not(madsim))]

use std::io::Write;
use std::process::{Output, Stdio};

use kv_server::{Running, ServerConfig};

/// A 3-member cluster in this process; the members and their data dirs.
async fn cluster() -> (Vec<Running>, Vec<tempfile::TempDir>) {
    let ports = kv_server::net::unused_loopback_ports(3).expect("three unused loopback ports");
    let initial = (0..3).map(|i| format!("m{i}=http://127.0.0.1:{}", ports[i])).collect::<Vec<_>>().join(",");
    let mut starts = Vec::new();
    let mut dirs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig {
            name: format!("m{i}"),
            data_dir: dir.path().join("data"),
            listen_client_urls: vec!["http://127.0.0.1:0".into()],
            listen_peer_urls: vec![format!("http://127.0.0.1:{port}")],
            initial_cluster: Some(initial.clone()),
            heartbeat_interval: 100,
            election_timeout: 1000,
            ..ServerConfig::default()
        };
        dirs.push(dir);
        starts.push(tokio::spawn(kv_server::start(cfg)));
    }
    let mut members = Vec::new();
    for s in starts {
        members.push(s.await.unwrap().expect("member starts"));
    }
    // Started members may still be electing (split votes can take several election timeouts,
    // longer than kvctl's 5 s), and each publishes its name through Raft once there is a
    // leader: the verbs are tested once every member knows a leader and every name is out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for m in &members {
        loop {
            let client = kv_client::Client::connect(&m.client_urls, kv_client::Options::default()).await;
            if let Ok(status) = match client {
                Ok(c) => c.status().await,
                Err(e) => Err(e),
            } {
                let client = kv_client::Client::connect(&m.client_urls, kv_client::Options::default()).await;
                let named = match client {
                    Ok(c) => c.member_list().await.is_ok_and(|l| l.members.iter().all(|m| !m.name.is_empty())),
                    Err(_) => false,
                };
                if status.leader != 0 && named {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no leader, or names unpublished, within 60 s");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    (members, dirs)
}

async fn kvctl_with(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--endpoints").arg(endpoints).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let input = stdin.map(str::to_string);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("run kvctl");
        if let Some(input) = input {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "kvctl failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected a failure, got {}", String::from_utf8_lossy(&o.stdout));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

/// Runs `kvctl watch` (which runs until stopped) and returns its first `n` lines of output,
/// then stops it; fails the test if they do not come within 20 s.
async fn watch_lines(endpoints: &str, args: &[&str], n: usize) -> Vec<String> {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--endpoints").arg(endpoints).arg("watch").args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("run kvctl watch");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut lines = Vec::new();
        while lines.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(lines.len(), n, "kvctl watch printed only {lines:?}");
        lines
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_against_three_members() {
    let (members, _dirs) = cluster().await;
    let urls: Vec<String> = members.iter().map(|m| m.client_urls[0].clone()).collect();
    let all = urls.join(",");
    let one = |i: usize| urls[i].clone();

    // Writes through the whole list, reads through each member at each level.
    assert_eq!(ok(&kvctl_with(&all, &["put", "app/a", "1"], None).await), "OK\n");
    assert_eq!(ok(&kvctl_with(&one(1), &["put", "app/b", "2"], None).await), "OK\n");
    assert_eq!(ok(&kvctl_with(&one(2), &["put", "app/a", "3", "--prev-kv"], None).await), "OK\napp/a\n1\n");
    for i in 0..3 {
        for level in ["l", "s", "lease", "session"] {
            let out = ok(&kvctl_with(&one(i), &["get", "app/", "--prefix", "--consistency", level], None).await);
            if level != "s" {
                assert_eq!(out, "app/a\n3\napp/b\n2\n", "member {i} at {level}");
            }
        }
        let bounded = ["get", "app/a", "--consistency", "bounded", "--max-staleness", "10s"];
        assert_eq!(ok(&kvctl_with(&one(i), &bounded, None).await), "app/a\n3\n");
    }
    assert_eq!(ok(&kvctl_with(&all, &["get", "app/", "--prefix", "--keys-only"], None).await), "app/a\napp/b\n");
    assert_eq!(ok(&kvctl_with(&all, &["get", "app/", "--prefix", "--count-only"], None).await), "2\n");
    assert_eq!(ok(&kvctl_with(&all, &["get", "app/", "--prefix", "--limit", "1"], None).await), "app/a\n3\n");
    assert_eq!(ok(&kvctl_with(&all, &["get", "app/a", "--rev", "2"], None).await), "app/a\n1\n");
    let table = ok(&kvctl_with(&all, &["get", "app/", "--prefix", "-w", "table"], None).await);
    assert!(table.contains("| KEY   | VALUE |") && table.contains("| app/b | 2     |"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&kvctl_with(&all, &["get", "app/a", "-w", "json"], None).await)).unwrap();
    assert_eq!((json["kvs"][0]["value"].as_str(), json["count"].as_i64()), (Some("3"), Some(1)));
    let session = ["get", "app/a", "--consistency", "session", "--min-revision", "4"];
    assert_eq!(ok(&kvctl_with(&one(1), &session, None).await), "app/a\n3\n");
    assert_eq!(ok(&kvctl_with(&all, &["get", "missing"], None).await), "", "a missing key prints nothing");

    // Txn from stdin, etcdctl's syntax: both branches.
    let txn = "value(\"app/a\") = \"3\"\n\nput app/a \"four 4\"\nget app/b\n\nput app/a never\n";
    assert_eq!(ok(&kvctl_with(&one(1), &["txn"], Some(txn)).await), "SUCCESS\n\nOK\n\napp/b\n2\n");
    assert_eq!(ok(&kvctl_with(&one(2), &["txn"], Some(txn)).await), "FAILURE\n\nOK\n");
    assert_eq!(ok(&kvctl_with(&all, &["get", "app/a"], None).await), "app/a\nnever\n");
    let prompted = ok(&kvctl_with(&all, &["txn", "--interactive"], Some("\nget app/b\n")).await);
    assert!(prompted.starts_with("compares:\nsuccess requests (get, put, del):\nfailure requests"), "{prompted}");

    // Delete, compaction.
    assert_eq!(ok(&kvctl_with(&one(2), &["del", "app/", "--prefix"], None).await), "2\n");
    assert_eq!(ok(&kvctl_with(&all, &["compaction", "3"], None).await), "compacted revision 3\n");
    one_line_error(
        &kvctl_with(&all, &["get", "app/a", "--rev", "2"], None).await,
        "required revision has been compacted",
    );

    // Endpoint status and health of every endpoint; member list.
    let status = ok(&kvctl_with(&all, &["endpoint", "status"], None).await);
    let rows: Vec<&str> = status.lines().collect();
    assert_eq!(rows.len(), 3, "{status}");
    assert_eq!(rows.iter().filter(|r| r.split(", ").nth(4) == Some("true")).count(), 1, "one leader: {status}");
    let table = ok(&kvctl_with(&all, &["endpoint", "status", "-w", "table"], None).await);
    assert!(table.contains("| ENDPOINT") && table.contains("IS LEADER"), "{table}");
    let health = ok(&kvctl_with(&all, &["endpoint", "health"], None).await);
    assert_eq!(health.lines().filter(|l| l.contains("is healthy")).count(), 3, "{health}");
    let list = ok(&kvctl_with(&all, &["member", "list"], None).await);
    let mut names: Vec<&str> = list.lines().map(|l| l.split(", ").nth(2).unwrap()).collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"], "{list}");
    for u in &urls {
        assert!(list.contains(u.as_str()), "member list shows client URL {u}: {list}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&kvctl_with(&all, &["member", "list", "-w", "json"], None).await)).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let completion = ok(&kvctl_with(&all, &["completion", "bash"], None).await);
    assert!(completion.contains("kvctl") && completion.contains("compaction"));

    // Watch: the history replayed from a revision, with previous values, through one member;
    // as JSON; and a command run per event with the event in its environment.
    let first = ok(&kvctl_with(&all, &["put", "w/a", "1"], None).await);
    assert_eq!(first, "OK\n");
    let rev = {
        let out = ok(&kvctl_with(&all, &["get", "w/a", "-w", "json"], None).await);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["kvs"][0]["mod_revision"].as_i64().unwrap()
    };
    ok(&kvctl_with(&all, &["put", "w/a", "2"], None).await);
    ok(&kvctl_with(&all, &["del", "w/a"], None).await);
    let lines = watch_lines(&one(2), &["w/", "--prefix", "--rev", &rev.to_string(), "--prev-kv"], 11).await;
    assert_eq!(lines, ["PUT", "w/a", "1", "PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2"]);
    let json = watch_lines(&all, &["w/a", "--rev", &rev.to_string(), "-w", "json"], 1).await;
    let v: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!((v["type"].as_str(), v["kv"]["value"].as_str()), (Some("PUT"), Some("1")));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events");
    let script =
        format!("echo \"$ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE\" >> {}; echo ran", log.display());
    let ran = watch_lines(&all, &["w/a", "--rev", &rev.to_string(), "--", "sh", "-c", &script], 3).await;
    assert_eq!(ran, ["ran", "ran", "ran"]);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged, "PUT w/a 1\nPUT w/a 2\nDELETE w/a \n");

    // Errors: one line, non-zero exit, and the cluster keeps serving.
    let dead = "http://127.0.0.1:1";
    one_line_error(&kvctl_with(dead, &["get", "k"], None).await, "cannot connect to http://127.0.0.1:1");
    let with_dead = format!("{all},{dead}");
    let health = kvctl_with(&with_dead, &["endpoint", "health"], None).await;
    one_line_error(&health, "http://127.0.0.1:1");
    assert_eq!(String::from_utf8_lossy(&health.stdout).lines().filter(|l| l.contains("is healthy")).count(), 3);
    one_line_error(&kvctl_with(&all, &["get", "k", "--consistency", "bounded"], None).await, "needs --max-staleness");
    one_line_error(
        &kvctl_with(&all, &["watch", "k", "--rev", "2"], None).await,
        "required revision has been compacted",
    );
    one_line_error(&kvctl_with(&all, &["txn"], Some("colour(\"k\") = \"1\"\n\n\n")).await, "bad compare");
    let bad = kvctl_with(&all, &["get", "k", "--no-such-flag"], None).await;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));
    assert_eq!(ok(&kvctl_with(&all, &["put", "still", "serving"], None).await), "OK\n");

    for m in members {
        m.stop().await.unwrap();
    }
}
