//! One benchmark operation and how it goes over the wire. Keys are `key-<n>` padded to 16
//! bytes, spread over a key space; values are a fixed size.

use std::str::FromStr;

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{Compare, Consistency, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

use crate::BenchError;

/// What the load does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of random keys at a level; `Plain` is a stock etcd get (linearizable on etcd and
    /// raftkv alike) and the only read etcd understands.
    Get(ReadLevel),
    /// A compare-and-set transaction: if the key's version is what this client last saw, put.
    TxnCas,
    /// A range of 10 consecutive keys, linearizable.
    Range,
    /// Gets (plain) with the given percentage, puts otherwise.
    Mixed { read_percent: u8 },
}

/// A read's consistency: the etcd flag, or raftkv's extension levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadLevel {
    Plain,
    Serializable,
    Linearizable,
    Lease,
    Session,
    Bounded,
}

impl FromStr for Workload {
    type Err = BenchError;

    /// `put`, `get`, `get-serializable`, `get-lease`, `get-session`, `get-bounded`,
    /// `get-linearizable`, `txn`, `range`, `mixed-<read percent>`.
    fn from_str(s: &str) -> Result<Workload, BenchError> {
        Ok(match s {
            "put" => Workload::Put,
            "get" => Workload::Get(ReadLevel::Plain),
            "get-serializable" => Workload::Get(ReadLevel::Serializable),
            "get-linearizable" => Workload::Get(ReadLevel::Linearizable),
            "get-lease" => Workload::Get(ReadLevel::Lease),
            "get-session" => Workload::Get(ReadLevel::Session),
            "get-bounded" => Workload::Get(ReadLevel::Bounded),
            "txn" => Workload::TxnCas,
            "range" => Workload::Range,
            _ => match s.strip_prefix("mixed-").map(str::parse::<u8>) {
                Some(Ok(p)) if p <= 100 => Workload::Mixed { read_percent: p },
                _ => {
                    return Err(BenchError::Invalid(format!(
                        "unknown workload {s:?} (put, get, get-serializable, get-linearizable, get-lease, \
                         get-session, get-bounded, txn, range, mixed-<read %>)"
                    )))
                }
            },
        })
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workload::Put => write!(f, "put"),
            Workload::Get(ReadLevel::Plain) => write!(f, "get"),
            Workload::Get(l) => write!(f, "get-{}", format!("{l:?}").to_lowercase()),
            Workload::TxnCas => write!(f, "txn"),
            Workload::Range => write!(f, "range"),
            Workload::Mixed { read_percent } => write!(f, "mixed-{read_percent}"),
        }
    }
}

/// The bound of `get-bounded` reads.
const BOUNDED_MS: i64 = 500;

/// The key of index `n`: 16 bytes, like etcd's benchmark keys.
pub fn key(n: u64) -> Vec<u8> {
    format!("key-{n:012}").into_bytes()
}

/// The range end that selects every key starting with `prefix` (a non-empty prefix whose last
/// byte is below 0xff, as every prefix the benchmarks use).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    end
}

/// One operation as sent (a mix resolved to its read or write).
enum Kind {
    Put,
    Get(ReadLevel),
    Txn,
    Range,
}

/// One client's view: its connection, its random stream and what it last saw.
pub struct Op {
    pub kv: KvClient<Channel>,
    pub workload: Workload,
    pub key_space: u64,
    pub value: Vec<u8>,
    /// xorshift state: cheap, and distinct per client.
    rng: u64,
    /// The highest revision seen (session reads), and the version last seen per CAS attempt.
    revision: i64,
}

impl Op {
    pub fn new(kv: KvClient<Channel>, workload: Workload, key_space: u64, value_size: usize, seed: u64) -> Op {
        Op { kv, workload, key_space, value: vec![b'v'; value_size], rng: seed | 1, revision: 0 }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Sends one operation and waits for its answer.
    pub async fn once(&mut self) -> Result<(), tonic::Status> {
        let k = key(self.next() % self.key_space.max(1));
        let workload = self.workload;
        let kind = match workload {
            Workload::Put => Kind::Put,
            Workload::Get(level) => Kind::Get(level),
            Workload::TxnCas => Kind::Txn,
            Workload::Range => Kind::Range,
            Workload::Mixed { read_percent } if self.next() % 100 < u64::from(read_percent) => {
                Kind::Get(ReadLevel::Plain)
            }
            Workload::Mixed { .. } => Kind::Put,
        };
        match kind {
            Kind::Put => {
                let r = self.kv.put(PutRequest { key: k, value: self.value.clone(), ..Default::default() }).await?;
                self.seen(r.into_inner().header.map(|h| h.revision));
            }
            Kind::Get(level) => {
                let mut req = RangeRequest { key: k, ..Default::default() };
                match level {
                    ReadLevel::Plain => {}
                    ReadLevel::Serializable => req.serializable = true,
                    ReadLevel::Linearizable => req.consistency = Consistency::Linearizable as i32,
                    ReadLevel::Lease => req.consistency = Consistency::Lease as i32,
                    ReadLevel::Session => {
                        req.consistency = Consistency::Session as i32;
                        req.min_revision = self.revision;
                    }
                    ReadLevel::Bounded => {
                        req.consistency = Consistency::Bounded as i32;
                        req.max_staleness_ms = BOUNDED_MS;
                    }
                }
                let r = self.kv.range(req).await?;
                self.seen(r.into_inner().header.map(|h| h.revision));
            }
            Kind::Txn => {
                // Compare on the mod revision last seen for this key space (0: absent); a miss
                // still costs a full round, as in etcd's benchmark.
                let compare = Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: k.clone(),
                    target_union: Some(TargetUnion::ModRevision(self.revision)),
                    ..Default::default()
                };
                let put = PutRequest { key: k, value: self.value.clone(), ..Default::default() };
                let req = TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp { request: Some(Request::RequestPut(put)) }],
                    failure: vec![],
                };
                let r = self.kv.txn(req).await?;
                self.seen(r.into_inner().header.map(|h| h.revision));
            }
            Kind::Range => {
                // The 10 keys from the drawn one on (fewer near the end of the key space).
                let start = self.next() % self.key_space.max(1);
                let k = key(start);
                let end = key(start + 10);
                let r = self.kv.range(RangeRequest { key: k, range_end: end, ..Default::default() }).await?;
                self.seen(r.into_inner().header.map(|h| h.revision));
            }
        }
        Ok(())
    }

    fn seen(&mut self, revision: Option<i64>) {
        self.revision = self.revision.max(revision.unwrap_or(0));
    }
}
