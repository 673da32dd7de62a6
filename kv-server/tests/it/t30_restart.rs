//! Restarts under a write load: after SIGTERM and after kill -9, every acknowledged write is
//! read back and revisions continue from where they were.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::Server;

const WRITERS: usize = 8;

/// An acknowledged put: key, value and the revision the server gave it.
type Acked = Arc<Mutex<Vec<(String, String, i64)>>>;

/// Starts `WRITERS` tasks putting unique keys until their first error (the server went away;
/// that write's outcome is unknown and it is not counted).
async fn start_load(s: &Server) -> (Acked, Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = s.client().await;
        let (acked, count) = (acked.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let (k, v) = (format!("load/{w}/{i:06}"), format!("value-{w}-{i}"));
                match c.put(k.as_str(), v.as_str(), None).await {
                    Ok(r) => {
                        acked.lock().unwrap().push((k, v, r.header().unwrap().revision()));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    (acked, count, tasks)
}

async fn wait_for(count: &AtomicUsize, n: usize) {
    while count.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn check_after_restart(s: &mut Server, acked: &Acked, how: &str) {
    s.restart();
    let mut c = s.client().await;
    let acked = acked.lock().unwrap().clone();
    let mut lost = 0;
    let mut max_rev = 0;
    for (k, v, rev) in &acked {
        max_rev = max_rev.max(*rev);
        let got = c.get(k.as_str(), None).await.unwrap();
        match got.kvs().first() {
            Some(kv) if kv.value_str().unwrap() == v && kv.mod_revision() == *rev => {}
            other => {
                lost += 1;
                eprintln!("lost {k} (rev {rev}): got {other:?}");
            }
        }
    }
    println!("{how}: checked {} acknowledged writes, lost {lost}", acked.len());
    assert_eq!(lost, 0);
    let next = c.put("after-restart", "x", None).await.unwrap().header().unwrap().revision();
    assert!(next > max_rev, "revision went back: {next} <= {max_rev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_keeps_every_acknowledged_write() {
    let mut s = Server::start(&[]);
    let (acked, count, tasks) = start_load(&s).await;
    wait_for(&count, 300).await;
    let status = s.terminate();
    assert!(status.success(), "SIGTERM must exit cleanly, got {status:?}");
    for t in tasks {
        t.await.unwrap();
    }
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.contains("stopped cleanly"), "no clean stop in log:\n{log}");
    check_after_restart(&mut s, &acked, "SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_keeps_every_acknowledged_write() {
    let mut s = Server::start(&[]);
    let (acked, count, tasks) = start_load(&s).await;
    wait_for(&count, 300).await;
    s.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    check_after_restart(&mut s, &acked, "kill -9").await;
}
