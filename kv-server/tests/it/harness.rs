//! Starts and stops real `kv-server` processes, alone or as a 3-member cluster. Each server gets
//! its own temp data dir and a client port picked by the OS (port 0); the harness learns the
//! port from the server's ready line. Peer ports of a cluster must be known before any member
//! starts, so they are picked below the ephemeral range, where no outgoing connection takes
//! them. Waits are condition-based with a generous hang guard, never fixed sleeps.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Longest a server may take to come up before the test is declared hung.
const HANG_GUARD: Duration = Duration::from_secs(60);

pub struct Server {
    dir: TempDir,
    pub name: String,
    extra: Vec<String>,
    child: Option<Child>,
    pub endpoint: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a fresh one-member server with extra flags (any free peer port: nobody dials it).
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["--listen-peer-urls", "http://127.0.0.1:0"];
        args.extend_from_slice(extra);
        Server::start_named("t1", &args)
    }

    /// Starts a server named `name` with the given flags (besides name, data dir and client URL).
    pub fn start_named(name: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            dir,
            name: name.to_string(),
            extra: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            endpoint: String::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv-server"));
        cmd.envs(env.iter().copied());
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg("http://127.0.0.1:0")
            .args(&self.extra)
            // KV_TEST_LOG overrides the members' log filter, to debug a test.
            .env("RUST_LOG", std::env::var("KV_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kv-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving clients on ").nth(1) {
                    let url = rest.split([' ', ',']).next().unwrap_or_default().to_string();
                    let _ = tx.send(url);
                }
                log.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(HANG_GUARD) {
            Ok(url) => self.endpoint = url,
            Err(_) => panic!("kv-server did not become ready; log:\n{}", self.log.lock().unwrap().join("\n")),
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// A connected etcd client; waits until the member has a leader and serves linearizable reads.
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Ok(mut c) = Client::connect([self.endpoint.as_str()], None).await {
                if c.get("readiness-probe", None).await.is_ok() {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "kv-server never served a linearizable read");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits until the server has printed a log line containing `needle`.
    pub async fn wait_logged(&self, needle: &str) {
        let deadline = Instant::now() + HANG_GUARD;
        while !self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(Instant::now() < deadline, "{} never logged {needle:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGSTOP (the process pauses) or SIGCONT (it resumes).
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal");
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        self.wait()
    }

    /// Sends SIGKILL (kill -9) and reaps the process.
    pub fn kill9(&mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
        self.wait()
    }

    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "kv-server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same data dir with the same flags.
    pub fn restart(&mut self) {
        self.restart_with_env(&[]);
    }

    /// [`Server::restart`] with extra environment variables (`FAILPOINTS`, say) for this start.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn_with_env(env);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw gRPC client of our own generated stubs, for requests etcd-client would not send.
pub async fn raw_kv(endpoint: &str) -> kv_api::etcdserverpb::kv_client::KvClient<tonic::transport::Channel> {
    kv_api::etcdserverpb::kv_client::KvClient::connect(endpoint.to_string())
        .await
        .expect("connect")
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// Serialises the multi-member tests: three servers each under load are all that two cores
/// can run without starving heartbeats.
static CLUSTER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Loose timing for tests that are not about failover, so a busy CI machine does not cause
/// elections that would blur what they check.
pub const CALM: [&str; 4] = ["--heartbeat-interval", "100", "--election-timeout", "1000"];

/// A 3-member cluster of real processes on loopback.
pub struct Cluster {
    pub members: Vec<Server>,
    /// Each member's peer URL.
    pub peer_urls: Vec<String>,
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts members m1, m2, m3 with `extra` flags and waits until all serve linearizable reads.
    pub async fn start(extra: &[&str]) -> Cluster {
        let exclusive = CLUSTER_LOCK.lock().await;
        let ports = kv_server::net::unused_loopback_ports(3).expect("three unused loopback ports");
        let names = ["m1", "m2", "m3"];
        let initial: Vec<String> = names.iter().zip(&ports).map(|(n, p)| format!("{n}=http://127.0.0.1:{p}")).collect();
        let initial = initial.join(",");
        let members = names
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                let peer = format!("http://127.0.0.1:{port}");
                let mut args = vec!["--listen-peer-urls", peer.as_str(), "--initial-cluster", initial.as_str()];
                args.extend_from_slice(extra);
                Server::start_named(name, &args)
            })
            .collect();
        let peer_urls = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let c = Cluster { members, peer_urls, _exclusive: exclusive };
        for m in &c.members {
            m.client().await;
        }
        // Each member publishes its name through Raft once there is a leader: a test starts once
        // every name is out, so no publication lands in the middle of what it measures.
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let mut c0 = c.members[0].client().await;
            let named = c0.member_list().await.is_ok_and(|l| l.members().iter().all(|m| !m.name().is_empty()));
            if named {
                break;
            }
            assert!(Instant::now() < deadline, "members did not publish their names within {HANG_GUARD:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// The index of the member every running member agrees leads (waits for agreement).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            // (index, the leader it reports, its own id) for every running member that answers.
            let mut seen = Vec::new();
            for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.is_running()) {
                if let Ok(mut c) = Client::connect([m.endpoint.as_str()], None).await {
                    if let Ok(st) = c.status().await {
                        seen.push((i, st.leader(), st.header().map_or(0, |h| h.member_id())));
                    }
                }
            }
            let running = self.members.iter().filter(|m| m.is_running()).count();
            if seen.len() == running && seen[0].1 != 0 && seen.iter().all(|s| s.1 == seen[0].1) {
                if let Some(&(i, _, _)) = seen.iter().find(|s| s.2 == seen[0].1) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "members never agreed on a leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
