//! A member whose disk fails, one process on lazyfs: it refuses the write it cannot make
//! durable, exits non-zero naming the cause (so a supervisor restarts it), and once the disk is
//! healed the restart holds every write it acknowledged, also after a power loss.
//!
//! Needs root and /dev/fuse, and the kv-server binary built beside this test's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kv_client::{Client, Get, Options, Put};
use lazyfs::{Fault, LazyFs};

/// The tests use the same ports; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const CLIENT_URL: &str = "http://127.0.0.1:23979";
const PEER_URL: &str = "http://127.0.0.1:23980";

fn kv_server() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_jepsen")).with_file_name("kv-server");
    assert!(bin.is_file(), "no kv-server at {} (cargo build --bin kv-server)", bin.display());
    bin
}

/// One member on `data`, its output in `log`.
fn start(data: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(kv_server())
        .env("RUST_LOG", "warn")
        .args(["--name", "solo", "--listen-client-urls", CLIENT_URL, "--listen-peer-urls", PEER_URL])
        .args(["--initial-cluster", &format!("solo={PEER_URL}")])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start kv-server")
}

/// A client once the member serves.
async fn client() -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = Client::connect(&[CLIENT_URL.to_string()], Options { timeout: Duration::from_secs(3) }).await {
            if c.put(Put::new("probe", "1")).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "the member did not serve within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `member` to exit on its own; its status.
fn exit_of(member: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = member.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = member.kill();
            panic!("the member kept running on a failed disk");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts keys until one fails; the keys acknowledged before it.
async fn put_until_refused(c: &Client, from: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for i in from..from + 10_000 {
        let key = format!("k{i:05}");
        match c.put(Put::new(key.clone(), vec![b'v'; 1024])).await {
            Ok(_) => acked.push(key),
            Err(_) => return acked,
        }
    }
    panic!("10,000 writes succeeded on a failed disk");
}

async fn assert_holds(c: &Client, keys: &[String]) {
    for key in keys {
        let r = c.range(Get::key(key.clone())).await.expect("read back");
        assert_eq!(r.kvs.len(), 1, "acknowledged write of {key} lost");
    }
}

/// `fault` on the disk of a member that has taken writes: the next write fails, the member exits
/// with status 1 and an `Error: ` line naming `cause`; healed (and, with `power_loss`, after
/// losing everything it had not synced), a restart holds every acknowledged write and takes new
/// ones.
fn a_failed_disk(fault: Fault, cause: &str, power_loss: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("member.log"));
    let mut disk = LazyFs::mount(&dir.path().join("disk"), &data).expect("mount lazyfs (root and /dev/fuse)");
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut member = start(&data, &log);
    let mut acked = rt.block_on(async {
        let c = client().await;
        let mut acked = Vec::new();
        for i in 0..50 {
            let key = format!("k{i:05}");
            c.put(Put::new(key.clone(), vec![b'v'; 1024])).await.expect("a healthy disk takes writes");
            acked.push(key);
        }
        disk.set_fault(fault);
        acked.extend(put_until_refused(&c, 50).await);
        acked
    });
    let status = exit_of(&mut member);
    let said = std::fs::read_to_string(&log).unwrap();
    let last = said.lines().rev().find(|l| l.starts_with("Error: ")).unwrap_or_default().to_string();
    assert_eq!(status.code(), Some(1), "exits with an error status: {status}\n{said}");
    assert!(last.contains("stopped serving") && last.contains(cause), "one line says why: {last:?}\n{said}");

    disk.set_fault(Fault::None);
    if power_loss {
        disk.power_loss::<rand::rngs::SmallRng>(None).expect("power loss");
    }
    let mut member = start(&data, &log);
    rt.block_on(async {
        let c = client().await;
        assert_holds(&c, &acked).await;
        let key = "after-heal".to_string();
        c.put(Put::new(key.clone(), "1")).await.expect("writes again once healed");
        acked.push(key);
        assert_holds(&c, &acked).await;
    });
    let _ = member.kill();
    let _ = member.wait();
    disk.unmount().expect("unmount");
}

#[test]
fn a_full_disk_stops_the_member_with_the_reason_and_loses_nothing() {
    a_failed_disk(Fault::DiskFull, "No space left on device", false);
}

#[test]
fn failing_syncs_stop_the_member_and_a_power_loss_after_them_loses_nothing_acknowledged() {
    a_failed_disk(Fault::SyncEio, "Input/output error", true);
}
