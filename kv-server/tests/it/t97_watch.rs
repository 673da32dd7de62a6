//! The Watch service through every member of a 3-member cluster, driven by the `etcd-client`
//! crate: a key, a prefix, replay from a start revision, prev_kv, filters, a transaction's
//! events in one response, progress requests and notifications, cancel, and a start in
//! compacted history; stock etcdctl's `watch` (3.4 and 3.5) with an `http://` endpoint; and
//! a member with a watch open still shuts down cleanly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

use crate::harness::{Cluster, CALM};
use crate::t96_etcdctl::{etcdctl_34, etcdctl_35};

/// Longest wait for one watch response; a response that does not come fails the test.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch response within the wait")
        .expect("the watch stream works")
        .expect("the watch stream stays open")
}

/// The next response that carries events (progress and control responses are skipped).
async fn events(stream: &mut WatchStream) -> Vec<(EventType, String, String, i64, Option<String>)> {
    loop {
        let r = next(stream).await;
        assert!(!r.canceled(), "the watch was canceled: {}", r.cancel_reason());
        if r.events().is_empty() {
            continue;
        }
        return r
            .events()
            .iter()
            .map(|e| {
                let kv = e.kv().unwrap();
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (
                    e.event_type(),
                    text(kv.key()),
                    text(kv.value()),
                    kv.mod_revision(),
                    e.prev_kv().map(|p| text(p.value())),
                )
            })
            .collect();
    }
}

async fn created(stream: &mut WatchStream) -> i64 {
    let r = next(stream).await;
    assert!(r.created() && !r.canceled(), "a created response: {r:?}");
    r.watch_id()
}

#[tokio::test]
async fn watches_through_every_member() {
    let mut flags = CALM.to_vec();
    flags.extend(["--watch-progress-notify-interval", "300ms"]);
    let mut cluster = Cluster::start(&flags).await;
    let mut writer = cluster.members[0].client().await;
    for (i, member) in cluster.members.iter().enumerate() {
        let mut client = member.client().await;
        let p = format!("w{i}/");

        // One key, live.
        let mut key = client.watch(format!("{p}k"), None).await.unwrap();
        let key_id = created(&mut key).await;
        let put = writer.put(format!("{p}k"), "v1", None).await.unwrap();
        let rev = put.header().unwrap().revision();
        assert_eq!(events(&mut key).await, [(EventType::Put, format!("{p}k"), "v1".into(), rev, None)]);

        // A prefix with previous values; writes to other keys are not seen.
        let mut prefix =
            client.watch(format!("{p}p/"), Some(WatchOptions::new().with_prefix().with_prev_key())).await.unwrap();
        created(&mut prefix).await;
        let start = writer.put(format!("{p}p/a"), "1", None).await.unwrap().header().unwrap().revision();
        writer.put(format!("{p}other"), "x", None).await.unwrap();
        writer.put(format!("{p}p/a"), "2", None).await.unwrap();
        writer.delete(format!("{p}p/a"), None).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(events(&mut prefix).await);
        }
        let kinds: Vec<_> = got.iter().map(|e| (e.0, e.2.clone(), e.4.clone())).collect();
        assert_eq!(
            kinds,
            [
                (EventType::Put, "1".into(), None),
                (EventType::Put, "2".into(), Some("1".into())),
                (EventType::Delete, String::new(), Some("2".into()))
            ]
        );
        assert!(got.windows(2).all(|w| w[0].3 < w[1].3), "in revision order: {got:?}");

        // Replay from a start revision: the same three events, from the stored history.
        let opts = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut replay = client.watch(format!("{p}p/"), Some(opts)).await.unwrap();
        created(&mut replay).await;
        let mut again = Vec::new();
        while again.len() < 3 {
            again.extend(events(&mut replay).await);
        }
        let revs =
            |v: &[(EventType, String, String, i64, Option<String>)]| v.iter().map(|e| (e.0, e.3)).collect::<Vec<_>>();
        assert_eq!(revs(&again), revs(&got));

        // Filters: a no-put watch sees only the delete, a no-delete watch only the put.
        let no_put = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let mut deletes = client.watch(format!("{p}f"), Some(no_put)).await.unwrap();
        created(&mut deletes).await;
        let no_delete = WatchOptions::new().with_filters([WatchFilterType::NoDelete]);
        let mut puts = client.watch(format!("{p}f"), Some(no_delete)).await.unwrap();
        created(&mut puts).await;
        writer.put(format!("{p}f"), "x", None).await.unwrap();
        writer.delete(format!("{p}f"), None).await.unwrap();
        assert_eq!(events(&mut deletes).await[0].0, EventType::Delete);
        assert_eq!(events(&mut puts).await[0].0, EventType::Put);

        // A transaction's writes share a revision and arrive in one response.
        let txn =
            Txn::new().and_then([TxnOp::put(format!("{p}p/x"), "1", None), TxnOp::put(format!("{p}p/y"), "1", None)]);
        writer.txn(txn).await.unwrap();
        let both = events(&mut prefix).await;
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(both[0].3, both[1].3);

        // A progress request is answered for the whole stream, at a revision that covers
        // every write made so far.
        let last = writer.put(format!("{p}k"), "v2", None).await.unwrap().header().unwrap().revision();
        events(&mut key).await;
        key.request_progress().await.unwrap();
        let progress = loop {
            let r = next(&mut key).await;
            if r.events().is_empty() && !r.created() && !r.canceled() {
                break r;
            }
        };
        assert_eq!(progress.watch_id(), -1);
        assert!(progress.header().unwrap().revision() >= last);

        // An idle watch that asked for progress notifications gets one per interval, for
        // itself, at the member's revision.
        let notify = WatchOptions::new().with_progress_notify();
        let mut idle = client.watch(format!("{p}idle"), Some(notify)).await.unwrap();
        let idle_id = created(&mut idle).await;
        let r = next(&mut idle).await;
        assert!(r.events().is_empty() && !r.created() && !r.canceled(), "{r:?}");
        assert_eq!(r.watch_id(), idle_id);
        assert!(r.header().unwrap().revision() >= last);
        drop(idle);

        // Cancel: answered, and nothing more for that watch.
        let id = key_id;
        key.cancel(id).await.unwrap();
        let r = next(&mut key).await;
        assert!(r.canceled() && r.watch_id() == id, "{r:?}");
        drop((key, prefix, replay, deletes, puts));
    }

    // History compacted away: the watch is created, then canceled with the compacted revision.
    let now = writer.put("compact-me", "x", None).await.unwrap().header().unwrap().revision();
    writer.compact(now, None).await.unwrap();
    for member in &cluster.members {
        let mut client = member.client().await;
        let mut old = client.watch("compact-me", Some(WatchOptions::new().with_start_revision(2))).await.unwrap();
        let first = next(&mut old).await;
        assert!(first.created(), "{first:?}");
        let r = if first.canceled() { first } else { next(&mut old).await };
        assert!(r.canceled(), "{r:?}");
        assert_eq!(r.compact_revision(), now);
    }
    for etcdctl in [etcdctl_34(), etcdctl_35()] {
        etcdctl_watch(&cluster, &mut writer, &etcdctl.path).await;
    }

    // SIGTERM drains and exits even with a watch open: the stream ends, and the client would
    // resume elsewhere.
    let mut open = cluster.members[2].client().await.watch("k", None).await.unwrap();
    created(&mut open).await;
    assert!(cluster.members[2].terminate().success(), "the member exits cleanly");
    let ended = tokio::time::timeout(WAIT, open.message()).await.expect("the stream ends");
    assert!(!matches!(ended, Ok(Some(_))), "no more responses after shutdown: {ended:?}");
}

/// Stock etcdctl's `watch` with an `http://` endpoint prints a put made elsewhere.
async fn etcdctl_watch(cluster: &Cluster, writer: &mut Client, etcdctl: &Path) {
    let endpoint = cluster.members[1].endpoint.clone();
    let mut child = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "watch", "from-etcdctl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", etcdctl.display()));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The watch is created when etcdctl connects; keep writing until it reports one.
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !lines.iter().any(|l: &String| l == "hello") {
        assert!(std::time::Instant::now() < deadline, "etcdctl watch printed {lines:?}");
        writer.put("from-etcdctl", "hello", None).await.unwrap();
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            lines.push(line);
        }
    }
    assert!(lines.iter().any(|l| l == "PUT") && lines.iter().any(|l| l == "from-etcdctl"), "{lines:?}");
    let _ = child.kill();
    let _ = child.wait();
}
