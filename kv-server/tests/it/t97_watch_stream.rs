//! The parts of a watch stream's protocol that clients build on beyond plain events: a
//! progress request that waits for every watch of its stream (what Kubernetes' consistent
//! reads from its watch cache rely on), client-chosen watch ids and the duplicate-id refusal,
//! from-key watches, fragmented responses, and `WithRequireLeader` ending the stream when the
//! member loses its leader.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, DeleteOptions, WatchOptions, WatchResponse};

use crate::harness::{Cluster, Server, CALM};
use crate::t97_watch::{next, WAIT};

fn is_progress(r: &WatchResponse) -> bool {
    r.watch_id() == -1 && r.events().is_empty() && !r.created() && !r.canceled()
}

/// Puts `n` keys under `prefix` in transactions of 100, returning the last revision.
async fn fill(client: &mut Client, prefix: &str, n: usize) -> i64 {
    let mut revision = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops = chunk.iter().map(|i| etcd_client::TxnOp::put(format!("{prefix}{i:05}"), "v", None));
        let txn = etcd_client::Txn::new().and_then(ops.collect::<Vec<_>>());
        revision = client.txn(txn).await.unwrap().header().unwrap().revision();
    }
    revision
}

/// A progress request on a stream where one watch is still replaying history is answered only
/// once that watch has caught up: every event it owes comes before the progress response, whose
/// revision covers them. Answering at once would tell the client it has seen everything up to a
/// revision whose events are still on the way.
#[tokio::test]
async fn a_progress_request_waits_for_every_watch_of_its_stream() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    // 20 catch-up steps of history (a step reads at most 1,000 events).
    let last = fill(&mut client, "hist/", 20_000).await;

    let mut stream = client.watch("live", None).await.unwrap();
    let created = next(&mut stream).await;
    assert!(created.created());
    stream.watch("hist/", Some(WatchOptions::new().with_prefix().with_start_revision(1))).await.unwrap();
    stream.request_progress().await.unwrap();

    let mut replayed = 0;
    let mut replay_id = None;
    let progress = loop {
        let r = next(&mut stream).await;
        assert!(!r.canceled(), "{r:?}");
        if r.created() {
            replay_id = Some(r.watch_id());
            continue;
        }
        if is_progress(&r) {
            break r;
        }
        assert_eq!(Some(r.watch_id()), replay_id, "only the replaying watch has events");
        replayed += r.events().len();
    };
    assert_eq!(replayed, 20_000, "every replayed event came before the progress response");
    let at = progress.header().unwrap().revision();
    assert!(at >= last, "the progress revision {at} covers the history up to {last}");
}

/// A client may choose its watch ids; a second watch under an id in use on the stream is
/// refused (created and canceled at once, etcd's reason), and the first keeps working. A
/// from-key watch sees keys at and after its key only.
#[tokio::test]
async fn client_chosen_ids_and_from_key_watches() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut stream = client.watch("m", Some(WatchOptions::new().with_from_key().with_watch_id(7))).await.unwrap();
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled() && created.watch_id() == 7, "{created:?}");

    stream.watch("other", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    let refused = next(&mut stream).await;
    assert!(refused.created() && refused.canceled(), "{refused:?}");
    assert!(refused.cancel_reason().contains("duplicate watch ID"), "{}", refused.cancel_reason());

    client.put("a", "below", None).await.unwrap();
    client.put("m", "at", None).await.unwrap();
    client.put("z", "after", None).await.unwrap();
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let r = next(&mut stream).await;
        assert_eq!(r.watch_id(), 7, "{r:?}");
        keys.extend(r.events().iter().map(|e| String::from_utf8(e.kv().unwrap().key().to_vec()).unwrap()));
    }
    assert_eq!(keys, ["m", "z"]);
}

/// One revision whose events exceed the response limit (a prefix delete of 3 MB with previous
/// values) arrives in parts to a watch that allows fragments: every part but the last is marked,
/// all share the revision, and together they hold every event. A watch that does not allow
/// fragments gets the revision whole. (etcd-client does not expose the fragment flag, so this
/// speaks our own stubs.)
#[tokio::test]
async fn a_large_revision_arrives_in_fragments_when_allowed() {
    use kv_api::etcdserverpb::watch_client::WatchClient;
    use kv_api::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
    use tokio_stream::StreamExt;

    let server = Server::start(&[]);
    let mut client = server.client().await;
    let value = "x".repeat(100_000);
    for i in 0..30 {
        client.put(format!("big/{i:02}"), value.clone(), None).await.unwrap();
    }
    let mut raw = WatchClient::connect(server.endpoint.clone()).await.unwrap().max_decoding_message_size(64 << 20);
    let create = |fragment| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            prev_kv: true,
            fragment,
            ..Default::default()
        })),
    };
    let mut parts =
        raw.watch(tokio_stream::iter([create(true)]).chain(tokio_stream::pending())).await.unwrap().into_inner();
    let mut whole =
        raw.watch(tokio_stream::iter([create(false)]).chain(tokio_stream::pending())).await.unwrap().into_inner();
    for stream in [&mut parts, &mut whole] {
        let r = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
        assert!(r.created, "{r:?}");
    }

    let revision = client
        .delete("big/", Some(DeleteOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let mut got = Vec::new();
    loop {
        let r = tokio::time::timeout(WAIT, parts.message()).await.unwrap().unwrap().unwrap();
        assert!(!r.events.is_empty(), "{:?}", r.header);
        assert!(r.events.iter().all(|e| e.kv.as_ref().unwrap().mod_revision == revision));
        got.push((r.events.len(), r.fragment));
        if !r.fragment {
            break;
        }
    }
    assert!(got.len() >= 2, "3 MB of events over a 2 MB limit come in parts: {got:?}");
    assert_eq!(got.iter().map(|g| g.0).sum::<usize>(), 30, "{got:?}");

    let r = tokio::time::timeout(WAIT, whole.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((r.events.len(), r.fragment), (30, false));
    assert!(r.events.iter().all(|e| e.prev_kv.as_ref().unwrap().value.len() == 100_000));
}

/// etcd's clients send `hasleader` (`WithRequireLeader`) to hear when the member they watch
/// through can no longer see a leader, so they move to another member instead of waiting on a
/// stream that cannot get new events. Killing the other two members must end such a stream,
/// whether it is open on a follower or on the leader, with "etcdserver: no leader"; a stream
/// that did not ask stays open.
#[tokio::test]
async fn a_stream_that_requires_a_leader_ends_when_its_member_loses_quorum() {
    for on_leader in [false, true] {
        let mut cluster = Cluster::start(&CALM).await;
        let leader = cluster.leader().await;
        let watched = if on_leader { leader } else { (leader + 1) % 3 };
        let endpoint = cluster.members[watched].endpoint.clone();
        let options = ConnectOptions::new().with_require_leader(true);
        let mut requiring = Client::connect([endpoint.as_str()], Some(options)).await.unwrap();
        let mut strict = requiring.watch("k", None).await.unwrap();
        assert!(next(&mut strict).await.created());
        let mut plain = Client::connect([endpoint.as_str()], None).await.unwrap().watch("k", None).await.unwrap();
        assert!(next(&mut plain).await.created());

        for i in 0..3 {
            if i != watched {
                cluster.members[i].kill9();
            }
        }
        let ended = tokio::time::timeout(WAIT, strict.message())
            .await
            .unwrap_or_else(|_| panic!("on_leader={on_leader}: the stream ends without a leader"));
        let status = match ended {
            Err(etcd_client::Error::GRpcStatus(s)) => s,
            other => panic!("on_leader={on_leader}: the stream ends with a status, got {other:?}"),
        };
        assert_eq!(status.message(), "etcdserver: no leader", "on_leader={on_leader}");
        let still = tokio::time::timeout(Duration::from_secs(1), plain.message()).await;
        assert!(still.is_err(), "on_leader={on_leader}: a stream that did not ask stays open: {still:?}");
    }
}
