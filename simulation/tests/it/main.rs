//! Seeded simulation scenarios: one run per seed, each printing `sim-digest <scenario>
//! seed=<S> <hex>`; a failure prints the command that replays it.
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim MADSIM_TEST_SEED=<S> MADSIM_TEST_NUM=<N>
//! cargo test -p simulation --release`
#![cfg(madsim)]

use std::future::Future;
use std::time::Duration;

use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::{PutRequest, RangeRequest};
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;
use madsim::time::{sleep, Instant};
use simulation::cluster::SimCluster;
use simulation::history::{check_linearizable, digest, Kind, Record};

const KEYS: [&str; 2] = ["a", "b"];

/// Runs `scenario` once per seed of MADSIM_TEST_SEED..+MADSIM_TEST_NUM and checks each history.
fn run_seeds<F, Fut>(name: &str, scenario: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Vec<Record>, String)>,
{
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (base, num) = (env("MADSIM_TEST_SEED", 1), env("MADSIM_TEST_NUM", 1));
    for seed in base..base + num {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let (history, final_state) = rt.block_on(scenario());
        let answered = history.iter().filter(|r| r.ret.is_some()).count();
        println!(
            "sim-digest {name} seed={seed} {} ({} operations, {answered} answered)",
            digest(&history, &final_state),
            history.len()
        );
        if let Err(e) = check_linearizable(&history) {
            panic!(
                "{name} seed={seed}: {e}\nreplay: RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim \
                 MADSIM_TEST_SEED={seed} MADSIM_TEST_NUM=1 cargo test -p simulation --release -- {name}"
            );
        }
    }
}

/// `clients` clients doing puts of unique values and linearizable gets on KEYS, through random
/// members, for `for_how_long`; returns what they saw.
async fn workload(c: &SimCluster, clients: u32, for_how_long: Duration) -> Vec<Record> {
    let h = Handle::current();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let endpoints = c.endpoints.clone();
        let node = h
            .create_node()
            .name(format!("client{client}"))
            .ip(format!("10.0.1.{}", client + 1).parse().unwrap())
            .build();
        tasks.push(node.spawn(async move {
            let mut out = Vec::new();
            let mut next = 0u64;
            while start.elapsed() < for_how_long {
                let (key, member, put) = {
                    let mut rng = thread_rng();
                    (
                        KEYS[rng.gen_range(0..KEYS.len())].to_string(),
                        rng.gen_range(0..endpoints.len()),
                        rng.gen_bool(0.5),
                    )
                };
                let call = start.elapsed().as_nanos() as i64;
                let value = u64::from(client) * 1_000_000 + next;
                next += 1;
                let outcome = madsim::time::timeout(Duration::from_secs(1), async {
                    let mut kv = KvClient::connect(endpoints[member].clone()).await.ok()?;
                    if put {
                        let req = PutRequest {
                            key: key.clone().into(),
                            value: value.to_string().into(),
                            ..Default::default()
                        };
                        kv.put(req).await.ok().map(|_| Kind::Put(value))
                    } else {
                        let r = kv.range(RangeRequest { key: key.clone().into(), ..Default::default() }).await.ok()?;
                        let seen =
                            r.into_inner().kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap());
                        Some(Kind::Get(seen))
                    }
                })
                .await
                .ok()
                .flatten();
                let ret = start.elapsed().as_nanos() as i64;
                match outcome {
                    Some(kind) => out.push(Record { client, key, call, ret: Some(ret), kind }),
                    // A put without an answer may still happen; a failed get says nothing.
                    None if put => out.push(Record { client, key, call, ret: None, kind: Kind::Put(value) }),
                    None => sleep(Duration::from_millis(20)).await,
                }
            }
            out
        }));
    }
    let mut history = Vec::new();
    for t in tasks {
        history.extend(t.await.expect("client task"));
    }
    history
}

/// Every member's value of every key, read locally once the cluster has healed and settled.
async fn final_state(c: &SimCluster) -> String {
    sleep(Duration::from_secs(3)).await;
    let endpoints = c.endpoints.clone();
    let node = Handle::current().create_node().name("auditor").ip("10.0.2.1".parse().unwrap()).build();
    node.spawn(async move {
        let mut out = String::new();
        for ep in endpoints {
            let Ok(mut kv) = KvClient::connect(ep.clone()).await else { continue };
            for key in KEYS {
                let req = RangeRequest { key: key.into(), serializable: true, ..Default::default() };
                let v = kv.range(req).await.ok().and_then(|r| r.into_inner().kvs.first().map(|kv| kv.value.clone()));
                out.push_str(&format!("{ep} {key}={:?}\n", v.map(|v| String::from_utf8_lossy(&v).into_owned())));
            }
        }
        out
    })
    .await
    .expect("auditor")
}

/// The leader's node is cut off for a while, then a random member crashes and restarts.
async fn isolate_then_crash() -> (Vec<Record>, String) {
    let c = SimCluster::start(3);
    sleep(Duration::from_secs(2)).await;
    let workload = {
        let c2 = c.clone();
        madsim::task::spawn(async move { workload(&c2, 3, Duration::from_secs(12)).await })
    };
    let victim = thread_rng().gen_range(0..3);
    sleep(Duration::from_secs(2)).await;
    c.isolate(victim);
    sleep(Duration::from_secs(3)).await;
    c.heal(victim);
    let crashed = thread_rng().gen_range(0..3);
    sleep(Duration::from_secs(1)).await;
    c.crash(crashed);
    sleep(Duration::from_secs(2)).await;
    c.restart(crashed);
    let history = workload.await.expect("workload");
    let state = final_state(&c).await;
    (history, state)
}

/// For 12 s, rounds of random faults: a random member cut off for a random while, and now and
/// then a random member crashed (losing its unflushed writes) and restarted.
async fn random_faults() -> (Vec<Record>, String) {
    let c = SimCluster::start(3);
    sleep(Duration::from_secs(2)).await;
    let workload = {
        let c2 = c.clone();
        madsim::task::spawn(async move { workload(&c2, 3, Duration::from_secs(12)).await })
    };
    let until = Instant::now() + Duration::from_secs(11);
    while Instant::now() < until {
        let (victim, pause, crash) = {
            let mut rng = thread_rng();
            (rng.gen_range(0..3), Duration::from_millis(rng.gen_range(100..2000)), rng.gen_bool(0.3))
        };
        if crash {
            c.crash(victim);
            sleep(pause).await;
            c.restart(victim);
        } else {
            c.isolate(victim);
            sleep(pause).await;
            c.heal(victim);
        }
        sleep(Duration::from_millis(thread_rng().gen_range(100..1000))).await;
    }
    let history = workload.await.expect("workload");
    let state = final_state(&c).await;
    (history, state)
}

#[test]
fn isolate_then_crash_is_linearizable() {
    run_seeds("isolate_then_crash", isolate_then_crash);
}

#[test]
fn random_faults_are_linearizable() {
    run_seeds("random_faults", random_faults);
}
