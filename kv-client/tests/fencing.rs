//! Fencing tokens against a real pause: a lock holder in a process of its own is stopped
//! (SIGSTOP) while it holds the lock, past its lease's TTL. Four clients then contend for the
//! lock and take it in turn, each writing the shared resource with a write guarded by its
//! token. When the paused holder is resumed (SIGCONT) it writes as if it still held the lock,
//! guarded by its old token: the write must be refused, and the resource's history must show
//! the tokens only growing.
//!
//! The holder is this test binary run again with `FENCING_HOLDER_ENDPOINT` set.
#![cfg(not(madsim))]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use kv_client::{Client, Get, Options, Put, Txn, TxnOp, Watch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const HOLDER_ENDPOINT: &str = "FENCING_HOLDER_ENDPOINT";
const LOCK: &str = "fenced";
const RESOURCE: &str = "fenced-resource";
const CONTENDERS: usize = 4;

/// Writes `value` to the resource if `locked` still holds the lock; whether it was written.
async fn guarded_put(client: &Client, locked: &kv_client::Locked, value: String) -> bool {
    let txn = Txn::new().when([locked.guard()]).and_then([TxnOp::Put(Put::new(RESOURCE, value))]);
    client.txn(txn).await.expect("the guarded write is answered").succeeded
}

/// The holder's side, in its own process: takes the lock, writes once, says so, and after a
/// line on stdin writes again as if it still held the lock.
async fn holder(endpoint: String) {
    let client = Client::connect(&[endpoint], Options::default()).await.unwrap();
    let lease = client.lease_grant(2, 0).await.unwrap().id;
    let _kept = client.keep_alive(lease).await.unwrap();
    let locked = client.lock(LOCK, lease, Duration::from_secs(10)).await.unwrap();
    assert!(guarded_put(&client, &locked, locked.token.to_string()).await);
    println!("HOLDING {}", locked.token);
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let wrote = guarded_put(&client, &locked, format!("stale {}", locked.token)).await;
    println!("{}", if wrote { "WROTE" } else { "REFUSED" });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_is_fenced_off() {
    if let Ok(endpoint) = std::env::var(HOLDER_ENDPOINT) {
        return holder(endpoint).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let srv = common::one_member(&dir).await;
    let endpoint = srv.client_urls[0].clone();
    let mut paused = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_holder_paused_past_its_lease_is_fenced_off", "--nocapture", "-q"])
        .env(HOLDER_ENDPOINT, &endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(paused.stdout.take().unwrap());
    let first: i64 = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the holder ended before taking the lock");
        if let Some(t) = line.trim().strip_prefix("HOLDING ") {
            break t.parse().unwrap();
        }
    };
    let pid = Pid::from_raw(paused.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();

    // The contenders wait for the paused holder's lease to run out, then take turns.
    let client = Client::connect(std::slice::from_ref(&endpoint), Options::default()).await.unwrap();
    let mut contenders = Vec::new();
    for _ in 0..CONTENDERS {
        let client = client.clone();
        contenders.push(tokio::spawn(async move {
            let lease = client.lease_grant(2, 0).await.unwrap().id;
            let kept = client.keep_alive(lease).await.unwrap();
            let locked = client.lock(LOCK, lease, Duration::from_secs(60)).await.unwrap();
            assert!(guarded_put(&client, &locked, locked.token.to_string()).await, "a holder's write was refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.unlock(&locked).await.unwrap();
            drop(kept);
            client.lease_revoke(lease).await.unwrap();
            locked.token
        }));
    }
    let mut tokens = Vec::new();
    for c in contenders {
        tokens.push(c.await.unwrap());
    }

    kill(pid, Signal::SIGCONT).unwrap();
    paused.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut verdict = String::new();
    out.read_line(&mut verdict).unwrap();
    assert_eq!(verdict.trim(), "REFUSED", "the paused holder's stale write was let through");
    assert!(paused.wait().unwrap().success());

    // The resource saw the paused holder's token first, then each contender's, only growing.
    let mut watch = client.watch(Watch::key(RESOURCE).from_revision(1)).await.unwrap();
    let mut written = Vec::new();
    while written.len() < 1 + CONTENDERS {
        let batch = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap();
        written.extend(batch.into_iter().map(|e| String::from_utf8(e.kv.unwrap().value).unwrap()));
    }
    let written: Vec<i64> = written.iter().map(|v| v.parse().expect("only tokens were written")).collect();
    assert_eq!(written[0], first);
    assert!(written.windows(2).all(|w| w[0] < w[1]), "tokens written out of order: {written:?}");
    tokens.sort();
    assert_eq!(written[1..], tokens[..]);
    let now = client.range(Get::key(RESOURCE)).await.unwrap();
    assert_eq!(now.kvs[0].value, tokens.last().unwrap().to_string().into_bytes());
    srv.stop().await.unwrap();
}
