//! Starts and stops real `kv-server` processes. Each server gets its own temp data dir and a
//! client port picked by the OS (port 0); the harness learns the port from the server's ready
//! line. Waits are condition-based with a generous hang guard, never fixed sleeps.

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
    extra: Vec<String>,
    child: Option<Child>,
    pub endpoint: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a fresh one-member server with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv-server"));
        cmd.arg("--name")
            .arg("t1")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg("http://127.0.0.1:0")
            .args(&self.extra)
            .env("RUST_LOG", "info,openraft=warn")
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
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
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
