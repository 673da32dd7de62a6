//! Clients on their own simulated nodes speaking the public gRPC API: puts of unique values,
//! compare-and-set transactions and reads at one consistency level per client, on a few shared
//! keys, through random members. What each client saw becomes [`Record`]s.

use std::time::Duration;

use kv_api::etcdserverpb::kv_client::KvClient;
use kv_check::requests;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;
use madsim::time::{sleep, timeout, Instant};
use tonic::transport::Channel;

use crate::cluster::SimCluster;
pub use kv_check::history::{parse_value, Level, Op, Record, STALENESS_BOUND};

/// The keys every client works on: few, so clients contend.
pub const KEYS: [&str; 3] = ["a", "b", "c"];

/// How long a client waits for an answer before it calls the outcome unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// One client per level, plus a second linearizable one.
pub const CLIENT_LEVELS: [Level; 6] =
    [Level::Linearizable, Level::Linearizable, Level::Lease, Level::Session, Level::Bounded, Level::Serializable];

/// Runs one client per entry of [`CLIENT_LEVELS`] for `for_how_long`; returns what they saw,
/// client by client, each in its own order.
pub async fn run(c: &SimCluster, for_how_long: Duration) -> Vec<Record> {
    let h = Handle::current();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, level) in CLIENT_LEVELS.into_iter().enumerate() {
        let endpoints = c.endpoints.clone();
        let node = crate::clients::client_node(&h, "client", 1, client);
        tasks.push(node.spawn(async move {
            let mut client = Client::new(client as u32, level, endpoints);
            while start.elapsed() < for_how_long {
                client.step(start).await;
            }
            client.out
        }));
    }
    let mut history = Vec::new();
    for t in tasks {
        history.extend(t.await.expect("client task"));
    }
    history
}

struct Client {
    id: u32,
    level: Level,
    endpoints: Vec<String>,
    /// Open connections per member; dropped after a failure so the next call reconnects.
    conns: Vec<Option<KvClient<Channel>>>,
    next: u64,
    /// The highest revision this client has seen (its session token).
    token: i64,
    /// What this client last knew of each key's value (its compare-and-set guess).
    known: Vec<Option<u64>>,
    out: Vec<Record>,
}

impl Client {
    fn new(id: u32, level: Level, endpoints: Vec<String>) -> Client {
        let conns = vec![None; endpoints.len()];
        Client { id, level, endpoints, conns, next: 0, token: 0, known: vec![None; KEYS.len()], out: Vec::new() }
    }

    async fn step(&mut self, start: Instant) {
        let (k, member, dice) = {
            let mut rng = thread_rng();
            (rng.gen_range(0..KEYS.len()), rng.gen_range(0..self.endpoints.len()), rng.gen_range(0..100))
        };
        let key = KEYS[k].to_string();
        let value = u64::from(self.id) * 1_000_000 + self.next;
        self.next += 1;
        let call = start.elapsed().as_nanos() as i64;
        let mut op = if dice < 50 {
            let min_revision = if self.level == Level::Session { self.token } else { 0 };
            Op::Get { seen: None, revision: 0, min_revision }
        } else if dice < 75 {
            Op::Put { value, revision: None }
        } else {
            Op::Cas { expect: self.known[k], value, outcome: None }
        };
        let answered = timeout(CLIENT_TIMEOUT, self.call(member, &key, &mut op)).await.ok().and_then(Result::ok);
        let ret = start.elapsed().as_nanos() as i64;
        if answered.is_none() {
            self.conns[member] = None;
            if let Op::Get { .. } = op {
                // A failed read says nothing; back off a little and go on.
                sleep(Duration::from_millis(20)).await;
                return;
            }
        }
        let revision = match &op {
            Op::Put { value, revision: Some(r) } => {
                self.known[k] = Some(*value);
                *r
            }
            Op::Cas { value, outcome: Some((ok, r)), .. } => {
                if *ok {
                    self.known[k] = Some(*value);
                }
                *r
            }
            Op::Get { seen, revision, .. } => {
                self.known[k] = seen.map(|(v, _)| v);
                *revision
            }
            _ => 0,
        };
        self.token = self.token.max(revision);
        self.out.push(Record {
            client: self.id,
            level: self.level,
            member,
            key,
            call,
            ret: answered.map(|()| ret),
            op,
        });
    }

    /// Sends `op` to member `member` and fills in its outcome.
    async fn call(&mut self, member: usize, key: &str, op: &mut Op) -> Result<(), tonic::Status> {
        if self.conns[member].is_none() {
            let kv = KvClient::connect(self.endpoints[member].clone())
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            self.conns[member] = Some(kv);
        }
        let kv = self.conns[member].as_mut().expect("connected above");
        match op {
            Op::Put { value, revision } => {
                let r = kv.put(requests::put(key, *value)).await?.into_inner();
                *revision = Some(requests::revision(r.header.as_ref()));
            }
            Op::Cas { expect, value, outcome } => {
                let r = kv.txn(requests::cas(key, *expect, *value)).await?.into_inner();
                *outcome = Some((r.succeeded, requests::revision(r.header.as_ref())));
            }
            Op::Get { seen, revision, min_revision } => {
                let r = kv.range(requests::get(key, self.level, *min_revision)).await?.into_inner();
                *revision = requests::revision(r.header.as_ref());
                *seen = requests::seen(&r);
            }
        }
        Ok(())
    }
}
