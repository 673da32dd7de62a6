//! Random operation sequences against a real server, and against a 3-member cluster with each
//! operation sent to a random member, agree with a model: a BTreeMap of every key's history
//! with etcd's revision rules and compaction.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use proptest::prelude::*;

use crate::harness::{Cluster, Server, CALM};

const KEYS: [&str; 4] = ["a", "ab", "b", "c"];

#[derive(Clone, Debug)]
enum Sel {
    One(usize),
    Prefix(usize),
    All,
}

#[derive(Clone, Debug)]
enum Op {
    Put(usize, u8),
    Get(Sel, RevSel),
    Delete(Sel),
    /// if value(k) == expect then put(k, new) else get(k)
    Cas(usize, u8, u8),
    Compact(RevSel),
}

/// Which revision to ask for: latest, `back` revisions ago, or one past the current (future).
#[derive(Clone, Copy, Debug)]
enum RevSel {
    Latest,
    Back(i64),
    Future,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Ver {
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
}

#[derive(Default)]
struct Model {
    rev: i64,
    compacted: i64,
    /// Per key: (revision, version or None for a delete).
    hist: BTreeMap<String, Vec<(i64, Option<Ver>)>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Kvs { rev: i64, kvs: Vec<(String, Ver)>, count: i64 },
    Rev(i64),
    Deleted { rev: i64, n: i64 },
    Txn { rev: i64, ok: bool },
    Compacted,
    Future,
}

impl Model {
    fn at(&self, key: &str, rev: i64) -> Option<Ver> {
        self.hist.get(key)?.iter().rev().find(|(r, _)| *r <= rev).and_then(|(_, v)| v.clone())
    }

    fn keys(sel: &Sel) -> Vec<String> {
        match sel {
            Sel::One(i) => vec![KEYS[*i].to_string()],
            Sel::Prefix(i) => KEYS.iter().filter(|k| k.starts_with(KEYS[*i])).map(|k| k.to_string()).collect(),
            Sel::All => KEYS.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn resolve(&self, r: RevSel) -> i64 {
        match r {
            RevSel::Latest => 0,
            RevSel::Back(b) => (self.rev - b).max(1),
            RevSel::Future => self.rev + 1,
        }
    }

    fn put(&mut self, key: &str, value: Vec<u8>, rev: i64) {
        let prev = self.at(key, self.rev);
        let v = Ver {
            value,
            create: prev.as_ref().map_or(rev, |p| p.create),
            modr: rev,
            version: prev.map_or(1, |p| p.version + 1),
        };
        self.hist.entry(key.to_string()).or_default().push((rev, Some(v)));
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Put(k, v) => {
                self.rev += 1;
                self.put(KEYS[*k], vec![*v], self.rev);
                Outcome::Rev(self.rev)
            }
            Op::Get(sel, r) => {
                let rev = self.resolve(*r);
                if rev > self.rev {
                    return Outcome::Future;
                }
                if rev > 0 && rev < self.compacted {
                    return Outcome::Compacted;
                }
                let at = if rev == 0 { self.rev } else { rev };
                let kvs: Vec<_> = Self::keys(sel).into_iter().filter_map(|k| self.at(&k, at).map(|v| (k, v))).collect();
                Outcome::Kvs { rev: self.rev, count: kvs.len() as i64, kvs }
            }
            Op::Delete(sel) => {
                let live: Vec<String> =
                    Self::keys(sel).into_iter().filter(|k| self.at(k, self.rev).is_some()).collect();
                if !live.is_empty() {
                    self.rev += 1;
                    for k in &live {
                        self.hist.entry(k.clone()).or_default().push((self.rev, None));
                    }
                }
                Outcome::Deleted { rev: self.rev, n: live.len() as i64 }
            }
            Op::Cas(k, expect, new) => {
                let key = KEYS[*k];
                let ok = self.at(key, self.rev).is_some_and(|v| v.value == vec![*expect]);
                if ok {
                    self.rev += 1;
                    self.put(key, vec![*new], self.rev);
                }
                Outcome::Txn { rev: self.rev, ok }
            }
            Op::Compact(r) => {
                let rev = self.resolve(*r);
                let rev = if rev == 0 { self.rev } else { rev };
                if rev <= self.compacted {
                    Outcome::Compacted
                } else if rev > self.rev {
                    Outcome::Future
                } else {
                    self.compacted = rev;
                    Outcome::Rev(self.rev)
                }
            }
        }
    }
}

fn classify(e: etcd_client::Error) -> Outcome {
    let s = e.to_string();
    if s.contains("required revision has been compacted") {
        Outcome::Compacted
    } else if s.contains("required revision is a future revision") {
        Outcome::Future
    } else {
        panic!("unexpected error: {s}")
    }
}

fn get_opts(sel: &Sel, rev: i64) -> (String, GetOptions) {
    let o = GetOptions::new().with_revision(rev);
    match sel {
        Sel::One(i) => (KEYS[*i].to_string(), o),
        Sel::Prefix(i) => (KEYS[*i].to_string(), o.with_prefix()),
        Sel::All => ("\0".to_string(), o.with_all_keys()),
    }
}

async fn run(c: &mut Client, m: &Model, op: &Op) -> Outcome {
    match op {
        Op::Put(k, v) => Outcome::Rev(c.put(KEYS[*k], vec![*v], None).await.unwrap().header().unwrap().revision()),
        Op::Get(sel, r) => {
            let (key, o) = get_opts(sel, m.resolve(*r));
            match c.get(key, Some(o)).await {
                Ok(g) => Outcome::Kvs {
                    rev: g.header().unwrap().revision(),
                    count: g.count(),
                    kvs: g
                        .kvs()
                        .iter()
                        .map(|kv| {
                            (
                                kv.key_str().unwrap().to_string(),
                                Ver {
                                    value: kv.value().to_vec(),
                                    create: kv.create_revision(),
                                    modr: kv.mod_revision(),
                                    version: kv.version(),
                                },
                            )
                        })
                        .collect(),
                },
                Err(e) => classify(e),
            }
        }
        Op::Delete(sel) => {
            let (key, o) = match sel {
                Sel::One(i) => (KEYS[*i].to_string(), DeleteOptions::new()),
                Sel::Prefix(i) => (KEYS[*i].to_string(), DeleteOptions::new().with_prefix()),
                Sel::All => ("\0".to_string(), DeleteOptions::new().with_all_keys()),
            };
            let d = c.delete(key, Some(o)).await.unwrap();
            Outcome::Deleted { rev: d.header().unwrap().revision(), n: d.deleted() }
        }
        Op::Cas(k, expect, new) => {
            let key = KEYS[*k];
            let t = Txn::new()
                .when([Compare::value(key, CompareOp::Equal, vec![*expect])])
                .and_then([TxnOp::put(key, vec![*new], None)])
                .or_else([TxnOp::get(key, None)]);
            let r = c.txn(t).await.unwrap();
            Outcome::Txn { rev: r.header().unwrap().revision(), ok: r.succeeded() }
        }
        Op::Compact(r) => {
            let rev = m.resolve(*r);
            let rev = if rev == 0 { m.rev } else { rev };
            match c.compact(rev, None).await {
                Ok(resp) => Outcome::Rev(resp.header().unwrap().revision()),
                Err(e) => classify(e),
            }
        }
    }
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![(0..KEYS.len()).prop_map(Sel::One), (0..KEYS.len()).prop_map(Sel::Prefix), Just(Sel::All)]
}

fn rev_sel() -> impl Strategy<Value = RevSel> {
    prop_oneof![3 => Just(RevSel::Latest), 3 => (0i64..6).prop_map(RevSel::Back), 1 => Just(RevSel::Future)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS.len(), 0u8..3).prop_map(|(k, v)| Op::Put(k, v)),
        4 => (sel(), rev_sel()).prop_map(|(s, r)| Op::Get(s, r)),
        2 => sel().prop_map(Op::Delete),
        2 => (0..KEYS.len(), 0u8..3, 0u8..3).prop_map(|(k, e, n)| Op::Cas(k, e, n)),
        1 => rev_sel().prop_map(Op::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_agree_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = Server::start(&[]);
            let mut c = s.client().await;
            let mut m = Model { rev: c.get("x", None).await.unwrap().header().unwrap().revision(), ..Model::default() };
            for (i, op) in ops.iter().enumerate() {
                let got = run(&mut c, &m, op).await;
                let want = m.apply(op);
                prop_assert_eq!(got, want, "op #{} {:?}", i, op);
            }
            Ok(())
        })?;
    }
}

proptest! {
    // Each case starts its own cluster, so fewer cases; each op goes to a random member.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_through_any_member_agree_with_the_model(
        ops in proptest::collection::vec((op(), 0usize..3), 1..60),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let cluster = Cluster::start(&CALM).await;
            let mut clients = Vec::new();
            for m in &cluster.members {
                clients.push(m.client().await);
            }
            let rev = clients[0].get("x", None).await.unwrap().header().unwrap().revision();
            let mut m = Model { rev, ..Model::default() };
            for (i, (op, member)) in ops.iter().enumerate() {
                let got = run(&mut clients[*member], &m, op).await;
                let want = m.apply(op);
                prop_assert_eq!(got, want, "op #{} {:?} through member {}", i, op, member);
            }
            Ok(())
        })?;
    }
}
