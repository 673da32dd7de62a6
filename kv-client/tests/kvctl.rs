//! kvctl against a real one-member server started in-process on a free port.
#![cfg(not(madsim))]

use std::process::Output;

mod common;

use common::one_member as server;

async fn kvctl(endpoint: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--endpoints").arg(endpoint).args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run kvctl")).await.unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "kvctl failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_del_and_endpoint_status() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir).await;
    let ep = srv.client_urls[0].clone();
    assert_eq!(stdout(&kvctl(&ep, &["put", "app/a", "1"]).await), "OK\n");
    assert_eq!(stdout(&kvctl(&ep, &["put", "app/b", "2"]).await), "OK\n");
    assert_eq!(stdout(&kvctl(&ep, &["put", "app/a", "3", "--prev-kv"]).await), "OK\napp/a\n1\n");
    assert_eq!(stdout(&kvctl(&ep, &["get", "app/a"]).await), "app/a\n3\n");
    assert_eq!(stdout(&kvctl(&ep, &["get", "app/", "--prefix"]).await), "app/a\n3\napp/b\n2\n");
    assert_eq!(stdout(&kvctl(&ep, &["get", "app/", "--prefix", "--count-only"]).await), "2\n");
    assert_eq!(
        stdout(&kvctl(&ep, &["get", "app/", "--prefix", "--limit", "1", "--consistency", "s"]).await),
        "app/a\n3\n"
    );
    assert_eq!(stdout(&kvctl(&ep, &["get", "app/a", "--rev", "2"]).await), "app/a\n1\n");
    assert_eq!(stdout(&kvctl(&ep, &["get", "missing"]).await), "", "a missing key prints nothing, like etcdctl");
    assert_eq!(stdout(&kvctl(&ep, &["del", "app/", "--prefix"]).await), "2\n");
    let status = stdout(&kvctl(&ep, &["endpoint", "status"]).await);
    let fields: Vec<&str> = status.trim().split(", ").collect();
    assert_eq!(fields[0], ep);
    assert_eq!(fields[2], "3.5.16");
    assert_eq!(fields[4], "true", "the only member is the leader: {status}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir).await;
    let ep = srv.client_urls[0].clone();
    let one_line_error = |o: &Output, needle: &str| {
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    };
    // A server error keeps etcd's text.
    one_line_error(&kvctl(&ep, &["get", "k", "--rev", "99999"]).await, "required revision is a future revision");
    one_line_error(&kvctl(&ep, &["get", "k", "--prefix", "--from-key"]).await, "only one of");
    // A dead endpoint: nothing listens on port 1.
    one_line_error(&kvctl("http://127.0.0.1:1", &["get", "k"]).await, "cannot connect to http://127.0.0.1:1");
    one_line_error(&kvctl("not a url", &["get", "k"]).await, "invalid endpoint");
    // A bad flag is refused by the parser with a non-zero exit.
    let bad = kvctl(&ep, &["get", "k", "--no-such-flag"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_verbs_print_what_etcdctl_prints() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir).await;
    let ep = srv.client_urls[0].clone();
    let granted = stdout(&kvctl(&ep, &["lease", "grant", "60", "--id", "abc"]).await);
    assert_eq!(granted, "lease 0000000000000abc granted with TTL(60s)\n");
    assert_eq!(stdout(&kvctl(&ep, &["put", "svc/a", "up", "--lease", "abc"]).await), "OK\n");
    let ttl = stdout(&kvctl(&ep, &["lease", "timetolive", "abc", "--keys"]).await);
    assert!(
        ttl.starts_with("lease 0000000000000abc granted with TTL(60s), remaining(")
            && ttl.ends_with("attached keys([svc/a])\n"),
        "{ttl}"
    );
    let kept = stdout(&kvctl(&ep, &["lease", "keep-alive", "--once", "abc"]).await);
    assert_eq!(kept, "lease 0000000000000abc keepalived with TTL(60)\n");
    assert_eq!(stdout(&kvctl(&ep, &["lease", "list"]).await), "found 1 leases\n0000000000000abc\n");
    let json = stdout(&kvctl(&ep, &["-w", "json", "lease", "timetolive", "abc"]).await);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["ID"].as_i64(), v["granted-ttl"].as_i64()), (Some(0xabc), Some(60)));
    assert_eq!(stdout(&kvctl(&ep, &["lease", "revoke", "abc"]).await), "lease 0000000000000abc revoked\n");
    assert_eq!(stdout(&kvctl(&ep, &["get", "svc/a"]).await), "", "the key went with its lease");
    assert_eq!(stdout(&kvctl(&ep, &["lease", "timetolive", "abc"]).await), "lease 0000000000000abc already expired\n");

    let one_line_error = |o: &Output, needle: &str| {
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    };
    one_line_error(&kvctl(&ep, &["lease", "revoke", "abc"]).await, "etcdserver: requested lease not found");
    one_line_error(&kvctl(&ep, &["lease", "keep-alive", "abc"]).await, "lease 0000000000000abc lost");
    one_line_error(&kvctl(&ep, &["lease", "keep-alive", "--once", "abc"]).await, "expired or revoked");
    one_line_error(&kvctl(&ep, &["put", "k", "v", "--lease", "abc"]).await, "etcdserver: requested lease not found");
    let bad = kvctl(&ep, &["lease", "revoke", "xyz"]).await;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("bad lease id"));
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_runs_a_command_with_the_fencing_token() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir).await;
    let ep = srv.client_urls[0].clone();
    let script = "echo \"$KVCTL_LOCK_KEY $KVCTL_LOCK_TOKEN\"";
    let first = stdout(&kvctl(&ep, &["lock", "jobs", "--", "sh", "-c", script]).await);
    let second = stdout(&kvctl(&ep, &["lock", "jobs", "--", "sh", "-c", script]).await);
    let parse = |line: &str| {
        let (key, token) = line.trim().split_once(' ').unwrap();
        assert!(key.starts_with("jobs/"), "{line}");
        token.parse::<i64>().unwrap()
    };
    assert!(parse(&second) > parse(&first), "fencing tokens grow: {first} then {second}");
    assert_eq!(stdout(&kvctl(&ep, &["get", "jobs/", "--prefix"]).await), "", "each lock was released");
    let failed = kvctl(&ep, &["lock", "jobs", "--", "false"]).await;
    assert!(!failed.status.success(), "the command's failure is kvctl's");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_campaigns_and_listen_sees_the_leader() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir).await;
    let ep = srv.client_urls[0].clone();
    let spawn = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .arg("--endpoints")
            .arg(&ep)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run kvctl")
    };
    let mut candidate = spawn(&["elect", "primary", "node-a"]);
    let mut out = std::io::BufReader::new(candidate.stdout.take().unwrap()).lines();
    let key = tokio::task::spawn_blocking(move || out.next().unwrap().unwrap()).await.unwrap();
    assert!(key.starts_with("primary/"), "{key}");
    let mut listener = spawn(&["elect", "--listen", "primary"]);
    let mut heard = std::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    let seen: Vec<String> =
        tokio::task::spawn_blocking(move || heard.by_ref().take(2).map(Result::unwrap).collect()).await.unwrap();
    assert_eq!(seen, [key, "node-a".to_string()]);
    let _ = (listener.kill(), candidate.kill());
    let _ = (listener.wait(), candidate.wait());
    let bad = kvctl(&ep, &["elect", "primary"]).await;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("a proposal is needed"));
    srv.stop().await.unwrap();
}

/// `kvctl watch k | head -1`: once the reader closes kvctl's stdout, the next print ends kvctl
/// quietly by SIGPIPE, as it ends other Unix tools, rather than with a panic and a backtrace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_kvctl_quietly() {
    use std::io::{BufRead, Read};
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir).await;
    let ep = srv.client_urls[0].clone();
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--endpoints")
        .arg(&ep)
        .args(["watch", "k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kvctl");
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let line = lines.next();
        drop(lines); // the reader goes away, as head does
        line
    });
    // The watch is created when kvctl connects; write until it has printed something.
    while !first.is_finished() {
        stdout(&kvctl(&ep, &["put", "k", "v"]).await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(first.await.unwrap().unwrap().unwrap(), "PUT");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "kvctl still runs with its stdout closed");
        stdout(&kvctl(&ep, &["put", "k", "again"]).await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    watch.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.signal(), Some(13), "ended by SIGPIPE: {status:?}");
    srv.stop().await.unwrap();
}
