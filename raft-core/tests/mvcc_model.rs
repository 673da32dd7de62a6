//! Model check of the MVCC store where it lives: random sequences of etcd requests run against
//! `KvStore` on the in-memory engine, and every answer must equal what a model gives, a
//! BTreeMap of every key's whole history under etcd's revision rules (one revision per request
//! that changes something, a tombstone per deleted key, reads at any revision from the
//! compacted one up to the current one, compaction that only forbids reads below it).
//!
//! Why here and not only through servers (kv-server's `t20_model`): a server-level case costs
//! process starts, so that check runs a few dozen cases; this one runs thousands per
//! `cargo xtask test`, fast enough to reach the rare shapes a mistake in the index hides in
//! (a compaction, then a delete and a re-put, then a read at an old revision after a restart).
//!
//! Writes go through openraft's `RaftStateMachine::apply` as Raft entries, one batch of
//! requests per entry and sometimes several entries per call, so the real apply path runs
//! (the overlay, revision accounting per request, a failed request alone in its batch). Reads
//! go through `range` and `read_txn`, at the latest revision, at old ones, at the compacted
//! one and below it, and in the future. Between them the store is restarted: reopened after a
//! clean flush (the index rebuilt from the versions), crashed and re-applied from the log
//! after its stored snapshot, snapshotted, or moved to a fresh engine by installing its
//! snapshot; after each of those, and at the end of every case (then once more after a clean
//! restart), every key is read at every revision, from the current-key table and, inside a
//! read-only txn, from the index.
//!
//! Leases are generated too: grants and revokes of three lease ids, and puts (alone and in
//! txns) attached to them, granted or not; after restarts and at the end the lease table and
//! the index of keys by lease must equal the model's.
//!
//! Not generated: lease checkpoints (they change no key; `mvcc/lease.rs` tests them), nested txns (raft-core evaluates a nested txn's compares after the enclosing
//! branch's earlier writes, etcd evaluates every compare before any write) and sorts on
//! targets other than the key (etcd leaves the order of ties open). A nested response's
//! header inside a writing txn is not compared.
//!
//! A failure prints proptest's shrunk sequence of steps (each step resolves its revisions
//! against the model, so `run(&[...])` on the printed steps replays it) and the concrete
//! request that disagreed; proptest also saves its seed in `mvcc_model.proptest-regressions`
//! beside this file and runs it first next time. `PROPTEST_CASES` raises the number of cases
//! (default 2,000).
#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::executor::block_on;
use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::range_request::SortOrder;
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::response_op::Response;
use kv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use kv_api::mvccpb::KeyValue;
use kv_api::EtcdError;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, Membership, RaftSnapshotBuilder};
use proptest::prelude::*;
use raft_core::engine::MemEngine;
use raft_core::mvcc::MvccError;
use raft_core::request::{RequestBatch, ResponseBatch};
use raft_core::snapshot_data::SnapshotData;
use raft_core::typ::{Entry, LogId};
use raft_core::{KvStore, WriteRequest, WriteResponse};

/// The keys every request picks from: prefixes of each other, one with a zero byte (the index
/// escapes it), so prefix and interval ranges catch neighbours.
const KEYS: [&[u8]; 6] = [b"a", b"a\0", b"ab", b"abc", b"b", b"c"];

/// Cases per run unless `PROPTEST_CASES` asks for more.
const CASES: u32 = 2_000;

// ---------------------------------------------------------------------------------------------
// The model: etcd's rules over every key's full history.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Model {
    /// etcd's current revision; a fresh store is at 1.
    rev: i64,
    /// Highest compacted revision, 0 before the first compaction.
    compacted: i64,
    /// Every key ever written: (revision, the key's version then, `None` after a delete).
    /// Compaction removes nothing here; it only makes reads below it fail.
    hist: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    /// Leases granted and not revoked: id -> TTL.
    leases: BTreeMap<i64, i64>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

/// etcd's key/range_end rules: empty end = the key alone, `"\0"` = every key from it on.
fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

impl Model {
    fn new() -> Model {
        Model { rev: 1, compacted: 0, hist: BTreeMap::new(), leases: BTreeMap::new() }
    }

    /// `key`'s live version at `rev`, if any.
    fn at(&self, key: &[u8], rev: i64) -> Option<&KeyValue> {
        self.hist.get(key)?.iter().rev().find(|(r, _)| *r <= rev).and_then(|(_, v)| v.as_ref())
    }

    /// Live versions at `rev` of the keys in `[key, end)`, in key order.
    fn live(&self, key: &[u8], end: &[u8], rev: i64) -> Vec<KeyValue> {
        self.hist.keys().filter(|k| in_range(k, key, end)).filter_map(|k| self.at(k, rev).cloned()).collect()
    }

    /// The revision the request being applied writes at. Writes of an unfinished txn are
    /// stored at it already, so reads "at the latest" inside a txn see them.
    fn next(&self) -> i64 {
        self.rev + 1
    }

    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        if r.revision > self.rev {
            return Err(EtcdError::FutureRevision);
        }
        if r.revision > 0 && r.revision < self.compacted {
            return Err(EtcdError::Compacted);
        }
        let at = if r.revision > 0 { r.revision } else { self.next() };
        let mut kvs = self.live(&r.key, &r.range_end, at);
        let count = kvs.len() as i64;
        if r.count_only {
            return Ok(RangeResponse { header: header(self.rev), kvs: vec![], more: false, count });
        }
        let ok = |min: i64, max: i64, v: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
        kvs.retain(|kv| {
            ok(r.min_mod_revision, r.max_mod_revision, kv.mod_revision)
                && ok(r.min_create_revision, r.max_create_revision, kv.create_revision)
        });
        if r.sort_order == SortOrder::Descend as i32 {
            kvs.reverse();
        }
        let more = r.limit > 0 && kvs.len() as i64 > r.limit;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResponse { header: header(self.rev), kvs, more, count })
    }

    /// A put at [`Model::next`]; the caller moves the revision.
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, EtcdError> {
        let next = self.next();
        let prev = self.at(&p.key, next).cloned();
        if p.ignore_value && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(next, |p| p.create_revision),
            mod_revision: next,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: match &prev {
                Some(prev) if p.ignore_value => prev.value.clone(),
                _ => p.value.clone(),
            },
            lease: p.lease,
        };
        self.hist.entry(p.key.clone()).or_default().push((next, Some(kv)));
        Ok(PutResponse { header: None, prev_kv: if p.prev_kv { prev } else { None } })
    }

    /// A delete at [`Model::next`]; the caller moves the revision if it deleted anything.
    fn delete(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let next = self.next();
        let victims = self.live(&d.key, &d.range_end, next);
        for kv in &victims {
            self.hist.get_mut(&kv.key).expect("a live key has a history").push((next, None));
        }
        DeleteRangeResponse {
            header: None,
            deleted: victims.len() as i64,
            prev_kvs: if d.prev_kv { victims } else { vec![] },
        }
    }

    /// Grants a lease; takes no revision.
    fn grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, EtcdError> {
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExists);
        }
        self.leases.insert(id, ttl);
        Ok(LeaseGrantResponse { header: header(self.rev), id, ttl, error: String::new() })
    }

    /// Revokes a lease: its live keys are deleted in one revision (none: no revision).
    fn revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, EtcdError> {
        if self.leases.remove(&id).is_none() {
            return Err(EtcdError::LeaseNotFound);
        }
        let next = self.next();
        let victims: Vec<Vec<u8>> =
            self.live(&[0], &[0], self.rev).into_iter().filter(|kv| kv.lease == id).map(|kv| kv.key).collect();
        for key in &victims {
            self.hist.get_mut(key).expect("a live key has a history").push((next, None));
        }
        if !victims.is_empty() {
            self.rev += 1;
        }
        Ok(LeaseRevokeResponse { header: header(self.rev) })
    }

    /// The live keys attached to lease `id`, in key order.
    fn attached(&self, id: i64) -> Vec<Vec<u8>> {
        self.live(&[0], &[0], self.rev).into_iter().filter(|kv| kv.lease == id).map(|kv| kv.key).collect()
    }

    /// etcd's compare: every live key in the range must pass; with none, a VALUE compare fails
    /// and the others compare against zero.
    fn compare(&self, c: &Compare) -> bool {
        let target = CompareTarget::try_from(c.target).expect("generated targets are valid");
        let result = CompareResult::try_from(c.result).expect("generated results are valid");
        let found = self.live(&c.key, &c.range_end, self.next());
        if found.is_empty() && target == CompareTarget::Value {
            return false;
        }
        let one = |kv: &KeyValue| {
            let ord = match (target, &c.target_union) {
                (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.cmp(v),
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv.version.cmp(v),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
                other => panic!("not generated: {other:?}"),
            };
            match result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => ord.is_ne(),
            }
        };
        if found.is_empty() {
            one(&KeyValue::default())
        } else {
            found.iter().all(one)
        }
    }

    /// A txn: compares on the state before it, then one branch's ops in order, each seeing
    /// the earlier ones; all its writes share one revision; an error undoes the whole txn.
    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let before = self.clone();
        let succeeded = t.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut wrote = false;
        let mut responses = Vec::new();
        for op in ops {
            let response = match op.request.as_ref().expect("generated ops have a request") {
                Request::RequestRange(r) => self.range(r).map(Response::ResponseRange),
                Request::RequestPut(p) => {
                    wrote = true;
                    self.put(p).map(Response::ResponsePut)
                }
                Request::RequestDeleteRange(d) => {
                    let resp = self.delete(d);
                    wrote |= resp.deleted > 0;
                    Ok(Response::ResponseDeleteRange(resp))
                }
                Request::RequestTxn(_) => panic!("nested txns are not generated"),
            };
            match response {
                Ok(r) => responses.push(ResponseOp { response: Some(r) }),
                Err(e) => {
                    *self = before;
                    return Err(e);
                }
            }
        }
        if wrote {
            self.rev += 1;
        }
        Ok(TxnResponse { header: header(self.rev), succeeded, responses })
    }

    fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, EtcdError> {
        if c.revision <= self.compacted {
            return Err(EtcdError::Compacted);
        }
        if c.revision > self.rev {
            return Err(EtcdError::FutureRevision);
        }
        self.compacted = c.revision;
        Ok(CompactionResponse { header: header(self.rev) })
    }

    /// One request of an entry, as apply runs it.
    fn apply(&mut self, req: &WriteRequest) -> Result<WriteResponse, EtcdError> {
        match req {
            WriteRequest::Put(p) => {
                let mut resp = self.put(p)?;
                self.rev += 1;
                resp.header = header(self.rev);
                Ok(WriteResponse::Put(resp))
            }
            WriteRequest::DeleteRange(d) => {
                let mut resp = self.delete(d);
                if resp.deleted > 0 {
                    self.rev += 1;
                }
                resp.header = header(self.rev);
                Ok(WriteResponse::DeleteRange(resp))
            }
            WriteRequest::Txn(t) => self.txn(t).map(WriteResponse::Txn),
            WriteRequest::Compact(c) => self.compact(c).map(WriteResponse::Compact),
            WriteRequest::LeaseGrant { id, ttl } => self.grant(*id, *ttl).map(WriteResponse::LeaseGrant),
            WriteRequest::LeaseRevoke { id } => self.revoke(*id).map(WriteResponse::LeaseRevoke),
            // Checkpoints change no key and no revision (mvcc/lease.rs tests them).
            WriteRequest::PublishMember(_) | WriteRequest::LeaseCheckpoint { .. } => panic!("not generated"),
        }
    }

    /// A read-only txn, served without Raft.
    fn read_txn(&self, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.clone().txn(t)
    }
}

// ---------------------------------------------------------------------------------------------
// What proptest generates: requests whose revisions and compare operands are relative to the
// model's state, resolved into concrete requests when the step runs.
// ---------------------------------------------------------------------------------------------

/// Which keys a request names.
#[derive(Clone, Copy, Debug)]
enum Sel {
    One(usize),
    Prefix(usize),
    /// Every key from this one on (`range_end = "\0"`).
    From(usize),
    /// `[KEYS[i], KEYS[j])`, empty when `j <= i`.
    Between(usize, usize),
    All,
}

impl Sel {
    fn key_end(self) -> (Vec<u8>, Vec<u8>) {
        let prefix_end = |k: &[u8]| {
            let mut end = k.to_vec();
            while let Some(last) = end.pop() {
                if last < 0xff {
                    end.push(last + 1);
                    return end;
                }
            }
            vec![0]
        };
        match self {
            Sel::One(i) => (KEYS[i].to_vec(), vec![]),
            Sel::Prefix(i) => (KEYS[i].to_vec(), prefix_end(KEYS[i])),
            Sel::From(i) => (KEYS[i].to_vec(), vec![0]),
            Sel::Between(i, j) => (KEYS[i].to_vec(), KEYS[j].to_vec()),
            Sel::All => (vec![0], vec![0]),
        }
    }
}

/// A revision relative to the model's state when the step runs.
#[derive(Clone, Copy, Debug)]
enum At {
    /// 0: the latest (for a compaction: the current revision).
    Latest,
    /// `back` revisions before the current one (at least 1).
    Back(i64),
    /// The compacted revision itself (the oldest readable one).
    Compacted,
    /// One below the compacted revision.
    BelowCompacted,
    /// One past the current revision.
    Future,
}

impl At {
    fn resolve(self, m: &Model, latest: i64) -> i64 {
        match self {
            At::Latest => latest,
            At::Back(b) => (m.rev - b).max(1),
            At::Compacted => m.compacted,
            At::BelowCompacted => (m.compacted - 1).max(1),
            At::Future => m.rev + 1,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Filter {
    MinMod,
    MaxMod,
    MinCreate,
    MaxCreate,
}

#[derive(Clone, Copy, Debug)]
struct Read {
    sel: Sel,
    at: At,
    limit: i64,
    count_only: bool,
    keys_only: bool,
    descend: bool,
    /// A revision filter at `back` revisions before the current one.
    filter: Option<(Filter, i64)>,
}

impl Read {
    fn resolve(self, m: &Model) -> RangeRequest {
        let (key, range_end) = self.sel.key_end();
        let mut r = RangeRequest {
            key,
            range_end,
            revision: self.at.resolve(m, 0),
            limit: self.limit,
            count_only: self.count_only,
            keys_only: self.keys_only,
            sort_order: if self.descend { SortOrder::Descend } else { SortOrder::None } as i32,
            ..Default::default()
        };
        if let Some((f, back)) = self.filter {
            let rev = (m.rev - back).max(1);
            match f {
                Filter::MinMod => r.min_mod_revision = rev,
                Filter::MaxMod => r.max_mod_revision = rev,
                Filter::MinCreate => r.min_create_revision = rev,
                Filter::MaxCreate => r.max_create_revision = rev,
            }
        }
        r
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Value,
    Version,
    Create,
    Mod,
}

#[derive(Clone, Copy, Debug)]
struct Cmp {
    sel: Sel,
    target: Target,
    /// Equal, Greater, Less, NotEqual.
    result: i32,
    /// Compare with the first live key's own field plus this (a value: its own value when 0,
    /// else `value(delta)`), so both branches are taken often.
    delta: i64,
}

impl Cmp {
    fn resolve(self, m: &Model) -> Compare {
        let (key, range_end) = self.sel.key_end();
        let first = m.live(&key, &range_end, m.rev).into_iter().next().unwrap_or_default();
        let (target, union) = match self.target {
            Target::Value => {
                let v = if self.delta == 0 { first.value } else { value(self.delta.unsigned_abs() as u8) };
                (CompareTarget::Value, TargetUnion::Value(v))
            }
            Target::Version => (CompareTarget::Version, TargetUnion::Version(first.version + self.delta)),
            Target::Create => (CompareTarget::Create, TargetUnion::CreateRevision(first.create_revision + self.delta)),
            Target::Mod => (CompareTarget::Mod, TargetUnion::ModRevision(first.mod_revision + self.delta)),
        };
        Compare { result: self.result, target: target as i32, key, range_end, target_union: Some(union) }
    }
}

/// A value from a small set, the empty value included.
fn value(v: u8) -> Vec<u8> {
    if v == 0 {
        vec![]
    } else {
        vec![b'0' + v]
    }
}

#[derive(Clone, Copy, Debug)]
enum PutKind {
    Plain,
    /// Keeps the old value (fails on a missing key).
    IgnoreValue,
    /// Lease 1, 2 or 3, granted or not (a put with an unknown lease fails).
    Lease(i64),
}

#[derive(Clone, Copy, Debug)]
struct Put {
    key: usize,
    value: u8,
    prev_kv: bool,
    kind: PutKind,
}

impl Put {
    fn resolve(self) -> PutRequest {
        let mut p = PutRequest {
            key: KEYS[self.key].to_vec(),
            value: value(self.value),
            prev_kv: self.prev_kv,
            ..Default::default()
        };
        match self.kind {
            PutKind::Plain => {}
            PutKind::IgnoreValue => {
                p.ignore_value = true;
                p.value.clear();
            }
            PutKind::Lease(id) => p.lease = id,
        }
        p
    }
}

#[derive(Clone, Copy, Debug)]
enum TxnOp {
    Put(Put),
    Delete(Sel, bool),
    Range(Read),
}

#[derive(Clone, Debug)]
enum Write {
    Put(Put),
    /// Delete the keys of `Sel`, asking for the previous values when `bool`.
    Delete(Sel, bool),
    Txn(Vec<Cmp>, Vec<TxnOp>, Vec<TxnOp>),
    Compact(At),
    /// Grant lease 1, 2 or 3 (TTL 10).
    Grant(i64),
    /// Revoke lease 1, 2 or 3.
    Revoke(i64),
}

/// One branch of a txn as etcd accepts it: no key put twice, no put inside a deleted range
/// (etcd refuses those before proposing, so apply never sees them); offending puts are dropped.
fn branch(ops: &[TxnOp], m: &Model) -> Vec<RequestOp> {
    let deleted: Vec<(Vec<u8>, Vec<u8>)> =
        ops.iter().filter_map(|op| if let TxnOp::Delete(s, _) = op { Some(s.key_end()) } else { None }).collect();
    let mut put = Vec::new();
    let mut out = Vec::new();
    for op in ops {
        let request = match *op {
            TxnOp::Put(p) => {
                let key = KEYS[p.key];
                if put.contains(&key) || deleted.iter().any(|(k, e)| in_range(key, k, e)) {
                    continue;
                }
                put.push(key);
                Request::RequestPut(p.resolve())
            }
            TxnOp::Delete(s, prev_kv) => Request::RequestDeleteRange(delete(s, prev_kv)),
            TxnOp::Range(r) => Request::RequestRange(r.resolve(m)),
        };
        out.push(RequestOp { request: Some(request) });
    }
    out
}

fn delete(s: Sel, prev_kv: bool) -> DeleteRangeRequest {
    let (key, range_end) = s.key_end();
    DeleteRangeRequest { key, range_end, prev_kv }
}

fn txn(m: &Model, cmps: &[Cmp], success: &[TxnOp], failure: &[TxnOp]) -> TxnRequest {
    TxnRequest {
        compare: cmps.iter().map(|c| c.resolve(m)).collect(),
        success: branch(success, m),
        failure: branch(failure, m),
    }
}

impl Write {
    /// The concrete request, resolved against the model as it stands before the request (the
    /// earlier requests of the same entry included).
    fn resolve(&self, m: &Model) -> WriteRequest {
        match self {
            Write::Put(p) => WriteRequest::Put(p.resolve()),
            Write::Delete(s, prev_kv) => WriteRequest::DeleteRange(delete(*s, *prev_kv)),
            Write::Txn(c, s, f) => WriteRequest::Txn(txn(m, c, s, f)),
            Write::Compact(at) => {
                WriteRequest::Compact(CompactionRequest { revision: at.resolve(m, m.rev), physical: false })
            }
            Write::Grant(id) => WriteRequest::LeaseGrant { id: *id, ttl: 10 },
            Write::Revoke(id) => WriteRequest::LeaseRevoke { id: *id },
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// One `apply` call: entries, each a batch of requests.
    Apply(Vec<Vec<Write>>),
    Range(Read),
    /// A read-only txn through `read_txn`.
    ReadTxn(Vec<Cmp>, Vec<Read>, Vec<Read>),
    /// A clean shutdown (`flush_whole`) and a start on the same engine.
    Reopen,
    /// A snapshot built and stored.
    Snapshot,
    /// Power loss, a start, and the log applied again after what the start kept.
    Crash,
    /// The store's snapshot installed on a fresh engine, which carries on.
    Install,
}

// ---------------------------------------------------------------------------------------------
// The store under test.
// ---------------------------------------------------------------------------------------------

fn log_id(index: u64) -> LogId {
    raft_core::typ::log_id(1, 1, index)
}

struct Store {
    engine: Arc<MemEngine>,
    sm: KvStore<MemEngine>,
    /// Every entry applied so far, with the answers it got, to apply again after a crash.
    log: Vec<(Entry, ResponseBatch)>,
}

impl Store {
    fn new() -> Store {
        let engine = Arc::new(MemEngine::new());
        let sm = KvStore::open(engine.clone()).expect("open");
        let mut s = Store { engine, sm, log: Vec::new() };
        let m = Membership::new_with_defaults(vec![[1u64].into_iter().collect()], []);
        s.apply(vec![EntryPayload::Membership(m)]);
        s
    }

    /// Applies `payloads` as the next entries of the log, in one `apply` call.
    fn apply(&mut self, payloads: Vec<raft_core::typ::EntryPayload>) -> Vec<ResponseBatch> {
        let first = self.log.len() as u64 + 1;
        let entries: Vec<Entry> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Entry { log_id: log_id(first + i as u64), payload })
            .collect();
        let replies = block_on(self.sm.apply(entries.clone())).expect("apply");
        assert_eq!(replies.len(), entries.len());
        self.log.extend(entries.into_iter().zip(replies.iter().cloned()));
        replies
    }

    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.sm.range(r).map_err(etcd)
    }

    fn reopen(&mut self) {
        self.sm.flush_whole().expect("flush");
        self.sm = KvStore::open(self.engine.clone()).expect("reopen");
    }

    fn crash(&mut self) {
        self.engine.crash();
        self.sm = KvStore::open(self.engine.clone()).expect("open after a crash");
        let kept = self.sm.last_applied().map_or(0, |l| l.index) as usize;
        let again: Vec<_> = self.log[kept..].to_vec();
        if again.is_empty() {
            return;
        }
        let (entries, answered): (Vec<Entry>, Vec<ResponseBatch>) = again.into_iter().unzip();
        let replies = block_on(self.sm.apply(entries)).expect("apply again");
        assert_eq!(replies, answered, "the log applied again after a crash answers as the first time");
    }

    fn snapshot(&mut self) {
        block_on(self.sm.build_snapshot()).expect("build a snapshot");
    }

    fn install(&mut self) {
        let built = block_on(self.sm.build_snapshot()).expect("build a snapshot");
        let mut current = block_on(self.sm.get_current_snapshot()).expect("current snapshot").expect("just built");
        let data = current.snapshot.read_all().expect("snapshot data");
        let engine = Arc::new(MemEngine::new());
        let mut sm = KvStore::open(engine.clone()).expect("open a fresh store");
        block_on(sm.install_snapshot(&built.meta, SnapshotData::from_bytes(data))).expect("install");
        self.engine = engine;
        self.sm = sm;
    }
}

fn etcd(e: MvccError) -> EtcdError {
    match e {
        MvccError::Etcd(e) => e,
        other => panic!("the store failed: {other}"),
    }
}

/// Drops the headers of the responses inside a writing txn: not compared (see the file doc).
fn without_inner_headers(r: Result<WriteResponse, EtcdError>) -> Result<WriteResponse, EtcdError> {
    r.map(|resp| match resp {
        WriteResponse::Txn(mut t) => {
            for op in &mut t.responses {
                match op.response.as_mut() {
                    Some(Response::ResponseRange(r)) => r.header = None,
                    Some(Response::ResponsePut(r)) => r.header = None,
                    Some(Response::ResponseDeleteRange(r)) => r.header = None,
                    Some(Response::ResponseTxn(r)) => r.header = None,
                    None => {}
                }
            }
            WriteResponse::Txn(t)
        }
        other => other,
    })
}

/// The store's revisions and every key at every readable revision (and one on each side)
/// agree with the model, read whole and key by key, from the current-key table and from the
/// index.
fn check_everything(s: &Store, m: &Model, when: &str) -> Result<(), TestCaseError> {
    let meta = s.sm.meta();
    prop_assert_eq!((meta.revision, meta.compacted), (m.rev, m.compacted), "revisions {}", when);
    for revision in (m.compacted - 1).max(0)..=m.rev + 1 {
        let all = RangeRequest { key: vec![0], range_end: vec![0], revision, ..Default::default() };
        prop_assert_eq!(s.range(&all), m.range(&all), "every key at {} {}", revision, when);
        for key in KEYS {
            let one = RangeRequest { key: key.to_vec(), revision, ..Default::default() };
            prop_assert_eq!(s.range(&one), m.range(&one), "{:?} at {} {}", key, revision, when);
        }
    }
    // A read at the current revision is served from the current-key table; inside a txn it
    // is served from the index, which must agree.
    let at_current = |key: &[u8], range_end: &[u8]| RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            revision: m.rev,
            ..Default::default()
        })),
    };
    let mut success = vec![at_current(&[0], &[0])];
    success.extend(KEYS.iter().map(|k| at_current(k, &[])));
    let t = TxnRequest { compare: vec![], success, failure: vec![] };
    prop_assert_eq!(s.sm.read_txn(&t).map_err(etcd), m.read_txn(&t), "the index at the current revision {}", when);
    // The lease table, and the index of keys by lease.
    for id in 1..4 {
        let got = s.sm.lease(id).map_err(etcd)?.map(|(record, keys)| (record.ttl, keys));
        let want = m.leases.get(&id).map(|ttl| (*ttl, m.attached(id)));
        prop_assert_eq!(got, want, "lease {} {}", id, when);
    }
    Ok(())
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut s = Store::new();
    let mut m = Model::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Apply(entries) => {
                let mut batches = Vec::new();
                let mut expected = Vec::new();
                for writes in entries {
                    let mut requests = Vec::new();
                    let mut results = Vec::new();
                    for w in writes {
                        let req = w.resolve(&m);
                        results.push(m.apply(&req));
                        requests.push(req);
                    }
                    batches.push(EntryPayload::Normal(RequestBatch::new(&requests)));
                    expected.push((requests, results));
                }
                let replies = s.apply(batches);
                for ((requests, want), got) in expected.into_iter().zip(replies) {
                    for ((req, want), got) in requests.iter().zip(want).zip(got.results) {
                        prop_assert_eq!(
                            without_inner_headers(got),
                            without_inner_headers(want),
                            "step #{} {:?}: request {:?}",
                            i,
                            step,
                            req
                        );
                    }
                }
            }
            Step::Range(r) => {
                let req = r.resolve(&m);
                prop_assert_eq!(s.range(&req), m.range(&req), "step #{} {:?}: {:?}", i, step, req);
            }
            Step::ReadTxn(cmps, success, failure) => {
                let ranges = |rs: &[Read]| rs.iter().map(|r| TxnOp::Range(*r)).collect::<Vec<_>>();
                let req = txn(&m, cmps, &ranges(success), &ranges(failure));
                let got = s.sm.read_txn(&req).map_err(etcd);
                prop_assert_eq!(got, m.read_txn(&req), "step #{} {:?}: {:?}", i, step, req);
            }
            Step::Reopen => s.reopen(),
            Step::Snapshot => s.snapshot(),
            Step::Crash => s.crash(),
            Step::Install => s.install(),
        }
        if matches!(step, Step::Reopen | Step::Crash | Step::Install) {
            check_everything(&s, &m, &format!("after step #{i} {step:?}"))?;
        } else {
            let meta = s.sm.meta();
            prop_assert_eq!((meta.revision, meta.compacted), (m.rev, m.compacted), "after step #{} {:?}", i, step);
        }
    }
    check_everything(&s, &m, "at the end")?;
    // The state a clean restart rebuilds is the same.
    s.reopen();
    check_everything(&s, &m, "after a final reopen")
}

// ---------------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------------

fn key() -> impl Strategy<Value = usize> {
    0..KEYS.len()
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        4 => key().prop_map(Sel::One),
        2 => key().prop_map(Sel::Prefix),
        1 => key().prop_map(Sel::From),
        1 => (key(), key()).prop_map(|(i, j)| Sel::Between(i, j)),
        1 => Just(Sel::All),
    ]
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        4 => Just(At::Latest),
        5 => (0i64..10).prop_map(At::Back),
        1 => Just(At::Compacted),
        1 => Just(At::BelowCompacted),
        1 => Just(At::Future),
    ]
}

fn read() -> impl Strategy<Value = Read> {
    let filter =
        prop_oneof![Just(Filter::MinMod), Just(Filter::MaxMod), Just(Filter::MinCreate), Just(Filter::MaxCreate)];
    (
        sel(),
        at(),
        prop_oneof![3 => Just(0i64), 1 => 1i64..3],
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.15, (filter, 0i64..8)),
    )
        .prop_map(|(sel, at, limit, count_only, keys_only, descend, filter)| Read {
            sel,
            at,
            limit,
            count_only,
            keys_only,
            descend,
            filter,
        })
}

fn put() -> impl Strategy<Value = Put> {
    let kind = prop_oneof![
        12 => Just(PutKind::Plain),
        2 => Just(PutKind::IgnoreValue),
        3 => (1i64..4).prop_map(PutKind::Lease)
    ];
    (key(), 0u8..4, prop::bool::weighted(0.3), kind).prop_map(|(key, value, prev_kv, kind)| Put {
        key,
        value,
        prev_kv,
        kind,
    })
}

fn cmp() -> impl Strategy<Value = Cmp> {
    let target = prop_oneof![Just(Target::Value), Just(Target::Version), Just(Target::Create), Just(Target::Mod)];
    let sel = prop_oneof![6 => key().prop_map(Sel::One), 1 => key().prop_map(Sel::Prefix), 1 => Just(Sel::All)];
    (sel, target, 0i32..4, prop_oneof![3 => Just(0i64), 2 => -2i64..3]).prop_map(|(sel, target, result, delta)| Cmp {
        sel,
        target,
        result,
        delta,
    })
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        3 => put().prop_map(TxnOp::Put),
        2 => (sel(), any::<bool>()).prop_map(|(s, p)| TxnOp::Delete(s, p)),
        2 => read().prop_map(TxnOp::Range),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    let ops = || prop::collection::vec(txn_op(), 0..4);
    prop_oneof![
        6 => put().prop_map(Write::Put),
        2 => (sel(), prop::bool::weighted(0.3)).prop_map(|(s, p)| Write::Delete(s, p)),
        3 => (prop::collection::vec(cmp(), 0..3), ops(), ops()).prop_map(|(c, s, f)| Write::Txn(c, s, f)),
        1 => at().prop_map(Write::Compact),
        1 => (1i64..4).prop_map(Write::Grant),
        1 => (1i64..4).prop_map(Write::Revoke),
    ]
}

fn entry() -> impl Strategy<Value = Vec<Write>> {
    prop_oneof![3 => prop::collection::vec(write(), 1..2), 1 => prop::collection::vec(write(), 2..5)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => prop_oneof![4 => prop::collection::vec(entry(), 1..2), 1 => prop::collection::vec(entry(), 2..4)]
            .prop_map(Step::Apply),
        6 => read().prop_map(Step::Range),
        1 => (prop::collection::vec(cmp(), 0..3), prop::collection::vec(read(), 0..3), prop::collection::vec(read(), 0..3))
            .prop_map(|(c, s, f)| Step::ReadTxn(c, s, f)),
        1 => Just(Step::Reopen),
        1 => Just(Step::Snapshot),
        1 => Just(Step::Crash),
        1 => Just(Step::Install),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES).max(CASES)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn kv_store_agrees_with_the_mvcc_model(steps in prop::collection::vec(step(), 1..70)) {
        run(&steps)?;
    }
}
