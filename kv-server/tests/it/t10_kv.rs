//! etcd KV semantics through the stock `etcd-client` crate against a real kv-server.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

use crate::harness::Server;

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("header").revision()
}

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn put_get_and_revisions_follow_etcd() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    // A fresh store is at revision 1; the member publishing its attributes does not touch kv.
    let r = c.get("k", None).await.unwrap();
    assert_eq!(r.count(), 0);
    let base = rev(r.header());
    let p = c.put("k", "v1", None).await.unwrap();
    assert_eq!(rev(p.header()), base + 1);
    let p2 = c.put("k", "v2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(rev(p2.header()), base + 2);
    let prev = p2.prev_key().expect("prev_kv");
    assert_eq!((prev.value(), prev.version(), prev.mod_revision()), (&b"v1"[..], 1, base + 1));
    let g = c.get("k", None).await.unwrap();
    let kv = &g.kvs()[0];
    assert_eq!(
        (kv.value(), kv.create_revision(), kv.mod_revision(), kv.version()),
        (&b"v2"[..], base + 1, base + 2, 2)
    );
    assert_eq!(rev(g.header()), base + 2, "a read does not bump the revision");
    // Reads at an older revision see the older value.
    let old = c.get("k", Some(GetOptions::new().with_revision(base + 1))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"v1");
    assert_eq!(rev(old.header()), base + 2, "header carries the current revision");
    // ignore_value keeps the value and still makes a new revision.
    let p3 = c.put("k", "", Some(PutOptions::new().with_ignore_value())).await.unwrap();
    assert_eq!(rev(p3.header()), base + 3);
    let g = c.get("k", None).await.unwrap();
    assert_eq!((g.kvs()[0].value(), g.kvs()[0].version()), (&b"v2"[..], 3));
    // Header identity is filled.
    let h = g.header().unwrap();
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    assert!(h.raft_term() >= 1);
}

#[tokio::test]
async fn ranges_prefix_fromkey_limit_sort_and_filters() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    for (k, v) in [("a/1", "z"), ("a/2", "y"), ("a/3", "x"), ("b/1", "w"), ("c", "v")] {
        c.put(k, v, None).await.unwrap();
    }
    c.put("a/2", "y2", None).await.unwrap(); // a/2 has version 2 and the highest mod revision
    let prefix = c.get("a/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(keys(&prefix), ["a/1", "a/2", "a/3"]);
    assert_eq!(prefix.count(), 3);
    let from = c.get("b", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(keys(&from), ["b/1", "c"]);
    let all = c.get("\0", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(all.count(), 5);
    let range = c.get("a/2", Some(GetOptions::new().with_range("b/1"))).await.unwrap();
    assert_eq!(keys(&range), ["a/2", "a/3"]);
    let limited = c.get("a/", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!((keys(&limited), limited.more(), limited.count()), (vec!["a/1".to_string(), "a/2".into()], true, 3));
    let exact = c.get("a/", Some(GetOptions::new().with_prefix().with_limit(3))).await.unwrap();
    assert!(!exact.more());
    let ko = c.get("a/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    assert!(ko.kvs().iter().all(|kv| kv.value().is_empty()) && ko.kvs().len() == 3);
    assert_eq!(ko.kvs()[1].version(), 2, "keys_only keeps the other fields");
    let co = c.get("a/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert_eq!((co.kvs().len(), co.count()), (0, 3));
    let by = |t, o| GetOptions::new().with_prefix().with_sort(t, o);
    let desc = c.get("a/", Some(by(SortTarget::Key, SortOrder::Descend))).await.unwrap();
    assert_eq!(keys(&desc), ["a/3", "a/2", "a/1"]);
    let val = c.get("a/", Some(by(SortTarget::Value, SortOrder::Ascend))).await.unwrap();
    assert_eq!(keys(&val), ["a/3", "a/2", "a/1"], "x < y2 < z");
    // keys_only drops values only after sorting by them.
    let ko_val =
        c.get("a/", Some(by(SortTarget::Value, SortOrder::Ascend).with_keys_only().with_limit(1))).await.unwrap();
    assert_eq!(keys(&ko_val), ["a/3"]);
    assert!(ko_val.kvs()[0].value().is_empty());
    let modr = c.get("a/", Some(by(SortTarget::Mod, SortOrder::Descend))).await.unwrap();
    assert_eq!(keys(&modr)[0], "a/2");
    let ver = c.get("a/", Some(by(SortTarget::Version, SortOrder::Descend))).await.unwrap();
    assert_eq!(keys(&ver)[0], "a/2");
    let create = c
        .get("\0", Some(GetOptions::new().with_all_keys().with_sort(SortTarget::Create, SortOrder::Ascend)))
        .await
        .unwrap();
    assert_eq!(keys(&create), ["a/1", "a/2", "a/3", "b/1", "c"]);
    // Sort then limit: the two newest by mod revision.
    let newest =
        c.get("\0", Some(by(SortTarget::Mod, SortOrder::Descend).with_all_keys().with_limit(2))).await.unwrap();
    assert_eq!(keys(&newest), ["a/2", "c"]);
    assert!(newest.more());
    // Filters on mod revision drop kvs but not the count.
    let a2_mod = modr.kvs()[0].mod_revision();
    let filtered = c.get("a/", Some(GetOptions::new().with_prefix().with_min_mod_revision(a2_mod))).await.unwrap();
    assert_eq!((keys(&filtered), filtered.count()), (vec!["a/2".to_string()], 3));
    // A range at an old revision sees the keys that existed then.
    let first_rev = c.get("a/1", None).await.unwrap().kvs()[0].mod_revision();
    let then = c.get("\0", Some(GetOptions::new().with_all_keys().with_revision(first_rev))).await.unwrap();
    assert_eq!(keys(&then), ["a/1"]);
    let serial = c.get("a/", Some(GetOptions::new().with_prefix().with_serializable())).await.unwrap();
    assert_eq!(keys(&serial), keys(&prefix));
}

#[tokio::test]
async fn delete_tombstones_and_generations() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    c.put("d/1", "a", None).await.unwrap();
    c.put("d/2", "b", None).await.unwrap();
    let before = rev(c.put("k", "v", None).await.unwrap().header());
    let none = c.delete("nothing", None).await.unwrap();
    assert_eq!((none.deleted(), rev(none.header())), (0, before), "deleting nothing does not bump");
    let d = c.delete("d/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.unwrap();
    assert_eq!(d.deleted(), 2);
    assert_eq!(rev(d.header()), before + 1, "one revision for the whole delete");
    let mut prev: Vec<_> = d.prev_kvs().iter().map(|kv| kv.value_str().unwrap().to_string()).collect();
    prev.sort();
    assert_eq!(prev, ["a", "b"]);
    assert_eq!(c.get("d/", Some(GetOptions::new().with_prefix())).await.unwrap().count(), 0);
    // Before the delete the keys are still visible.
    let old = c.get("d/", Some(GetOptions::new().with_prefix().with_revision(before))).await.unwrap();
    assert_eq!(old.count(), 2);
    // A put after a delete starts a new generation.
    let first = c.get("d/1", Some(GetOptions::new().with_revision(before))).await.unwrap().kvs()[0].clone();
    let p = c.put("d/1", "again", None).await.unwrap();
    let now = c.get("d/1", None).await.unwrap().kvs()[0].clone();
    assert_eq!((now.version(), now.create_revision()), (1, rev(p.header())));
    assert_ne!(now.create_revision(), first.create_revision());
}

#[tokio::test]
async fn txn_compares_branches_and_nesting() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let r1 = rev(c.put("t", "1", None).await.unwrap().header());
    // Success branch: put and read back within the same txn (later ops see earlier writes).
    let txn = Txn::new()
        .when([Compare::value("t", CompareOp::Equal, "1"), Compare::version("t", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("t", "2", None), TxnOp::put("u", "x", None), TxnOp::get("t", None)])
        .or_else([TxnOp::get("t", None)]);
    let r = c.txn(txn).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(rev(r.header()), r1 + 1, "one revision for the whole txn");
    match &r.op_responses()[2] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"2"),
        other => panic!("{other:?}"),
    }
    let u = c.get("u", None).await.unwrap();
    assert_eq!(u.kvs()[0].mod_revision(), r1 + 1);
    // Inside a write txn, a get at an explicit revision reads that revision, not the txn's
    // own earlier writes; a plain get sees them.
    let txn = Txn::new().and_then([
        TxnOp::put("t", "3", None),
        TxnOp::get("t", Some(GetOptions::new().with_revision(r1 + 1))),
        TxnOp::get("t", None),
    ]);
    let r = c.txn(txn).await.unwrap();
    let value = |i: usize| match &r.op_responses()[i] {
        TxnOpResponse::Get(g) => g.kvs()[0].value().to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!((value(1), value(2)), (b"2".to_vec(), b"3".to_vec()));
    let r1 = r1 + 1; // the txn above took a revision
                     // Failure branch; a txn that only reads does not bump the revision.
    let txn = Txn::new()
        .when([Compare::mod_revision("t", CompareOp::Less, r1)])
        .and_then([TxnOp::delete("t", None)])
        .or_else([TxnOp::get("t", None)]);
    let r = c.txn(txn).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(rev(r.header()), r1 + 1);
    // create_revision == 0 means "absent"; a compare over a range needs every key to satisfy it.
    let create_if_absent = |k: &str| {
        Txn::new().when([Compare::create_revision(k, CompareOp::Equal, 0)]).and_then([TxnOp::put(k, "new", None)])
    };
    assert!(c.txn(create_if_absent("fresh")).await.unwrap().succeeded());
    assert!(!c.txn(create_if_absent("fresh")).await.unwrap().succeeded());
    let range_cmp = Txn::new().when([Compare::version("t", CompareOp::Greater, 0).with_range("v")]);
    assert!(c.txn(range_cmp).await.unwrap().succeeded());
    let missing_value = Txn::new().when([Compare::value("missing", CompareOp::NotEqual, "x")]);
    assert!(!c.txn(missing_value).await.unwrap().succeeded(), "VALUE on a missing key compares false");
    // Nested txn.
    let inner =
        Txn::new().when([Compare::value("t", CompareOp::Equal, "3")]).and_then([TxnOp::put("nested", "yes", None)]);
    let outer = Txn::new().and_then([TxnOp::txn(inner), TxnOp::put("outer", "yes", None)]);
    let r = c.txn(outer).await.unwrap();
    match &r.op_responses()[0] {
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("{other:?}"),
    }
    let n = c.get("nested", None).await.unwrap();
    let o = c.get("outer", None).await.unwrap();
    assert_eq!(n.kvs()[0].mod_revision(), o.kvs()[0].mod_revision());
}

#[tokio::test]
async fn compact_removes_history_but_not_the_present() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    let r1 = rev(c.put("c", "1", None).await.unwrap().header());
    let r2 = rev(c.put("c", "2", None).await.unwrap().header());
    c.put("gone", "x", None).await.unwrap();
    let r4 = rev(c.delete("gone", None).await.unwrap().header());
    let r5 = rev(c.put("c", "3", None).await.unwrap().header());
    let resp = c.compact(r4, Some(etcd_client::CompactionOptions::new().with_physical())).await.unwrap();
    assert_eq!(rev(resp.header()), r5, "compaction does not create a revision");
    let err = c.get("c", Some(GetOptions::new().with_revision(r1))).await.unwrap_err();
    assert!(err.to_string().contains("required revision has been compacted"), "{err}");
    // At the compact revision itself, the latest version at or below it is still readable.
    let at = c.get("c", Some(GetOptions::new().with_revision(r4))).await.unwrap();
    assert_eq!((at.kvs()[0].value(), at.kvs()[0].mod_revision()), (&b"2"[..], r2));
    assert_eq!(c.get("gone", Some(GetOptions::new().with_revision(r4))).await.unwrap().count(), 0);
    assert_eq!(c.get("c", None).await.unwrap().kvs()[0].value(), b"3");
    let again = c.compact(r4, None).await.unwrap_err();
    assert!(again.to_string().contains("required revision has been compacted"), "{again}");
    let future = c.compact(r5 + 10, None).await.unwrap_err();
    assert!(future.to_string().contains("required revision is a future revision"), "{future}");
}
