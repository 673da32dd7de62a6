//! What the client workloads share: clients on nodes of their own, repeating a step until the
//! workload's time is up, and connections to a random member.

use std::future::Future;
use std::time::Duration;

use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::lease_client::LeaseClient;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;
use madsim::time::{sleep, Instant};
use tonic::transport::Channel;

/// A request's answer is awaited this long; then its outcome is unknown.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Nanoseconds since `start`.
pub fn since(start: Instant) -> i64 {
    start.elapsed().as_nanos() as i64
}

/// A random member's endpoint.
pub fn pick(endpoints: &[String]) -> String {
    endpoints[thread_rng().gen_range(0..endpoints.len())].clone()
}

pub async fn lease_client(endpoints: &[String]) -> Result<LeaseClient<Channel>, tonic::Status> {
    LeaseClient::connect(pick(endpoints)).await.map_err(|e| tonic::Status::unavailable(e.to_string()))
}

pub async fn kv_client(endpoints: &[String]) -> Result<KvClient<Channel>, tonic::Status> {
    KvClient::connect(pick(endpoints)).await.map_err(|e| tonic::Status::unavailable(e.to_string()))
}

/// Runs `count` clients, client `i` on a node of its own named `{name}{i}` at
/// `10.0.{subnet}.{i + 1}`, each calling `step(endpoints, i, n)` for n = 1, 2, ... until
/// `for_how_long` has passed since `start`; a step that did nothing (`None`) is followed by a
/// 50 ms pause. Returns what the steps returned, client by client.
pub async fn run_clients<T, F, Fut>(
    name: &str,
    subnet: u8,
    count: u32,
    endpoints: &[String],
    for_how_long: Duration,
    start: Instant,
    step: F,
) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Vec<String>, u32, i64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<T>> + Send,
{
    let h = Handle::current();
    let mut tasks = Vec::new();
    for i in 0..count {
        let (endpoints, step) = (endpoints.to_vec(), step.clone());
        let node = client_node(&h, name, subnet, i as usize);
        tasks.push(node.spawn(async move {
            let mut out = Vec::new();
            let mut n = 0;
            while start.elapsed() < for_how_long {
                n += 1;
                match step(endpoints.clone(), i, n).await {
                    Some(t) => out.push(t),
                    None => sleep(Duration::from_millis(50)).await,
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("{name} task: {e}")));
    }
    all
}

/// The simulated machine of client `i` of a kind: named `{name}{i}`, at 10.0.`subnet`.`i + 1`
/// (each kind of client on a subnet of its own).
pub fn client_node(h: &Handle, name: &str, subnet: u8, i: usize) -> madsim::runtime::NodeHandle {
    h.create_node().name(format!("{name}{i}")).ip(format!("10.0.{subnet}.{}", i + 1).parse().unwrap()).build()
}
