//! The `kv-server` processes under test, one per member namespace, started with `ip netns
//! exec` (which execs, so the child's PID is the server's own): kill -9, SIGSTOP/SIGCONT and
//! restart on the same data directory. Each member's output goes to `{name}.log` in the run's
//! directory, appended across restarts.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::net::Net;
use crate::HarnessError;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

struct Member {
    name: String,
    ns: String,
    ip: std::net::Ipv4Addr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// Every member process of a run. Dropping it kills them all.
pub struct Members {
    bin: PathBuf,
    /// Planted bugs the members run with (`RAFTKV_PLANTED_BUGS`; needs a kv-server built with
    /// the `planted-bugs` feature, which refuses to start otherwise).
    planted: Option<String>,
    initial_cluster: String,
    list: Vec<Member>,
    /// Members that exited without being killed by the harness: (member, status).
    pub exits: Vec<(usize, String)>,
}

impl Members {
    /// Starts one member per namespace of `net`, data and logs under `dir`.
    pub fn start(bin: &Path, planted: Option<String>, net: &Net, dir: &Path) -> Result<Members, HarnessError> {
        let list: Vec<Member> = (0..net.members())
            .map(|i| {
                let name = format!("n{}", i + 1);
                Member {
                    data_dir: dir.join(&name).join("data"),
                    log: dir.join(format!("{name}.log")),
                    name,
                    ns: net.member_ns(i),
                    ip: net.member_ip(i),
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let initial_cluster =
            list.iter().map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip)).collect::<Vec<_>>().join(",");
        let mut members = Members { bin: bin.to_path_buf(), planted, initial_cluster, list, exits: Vec::new() };
        for i in 0..members.len() {
            members.launch(i)?;
        }
        Ok(members)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.list[i].name
    }

    /// The client URL of member `i`, reachable from the clients' namespace.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.list[i].ip)
    }

    pub fn client_urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.client_url(i)).collect()
    }

    /// Starts member `i` (again) on its data directory, unless it runs.
    pub fn launch(&mut self, i: usize) -> Result<(), HarnessError> {
        self.reap();
        let initial_cluster = self.initial_cluster.clone();
        let bin = self.bin.clone();
        let planted = self.planted.clone();
        let m = &mut self.list[i];
        if m.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&m.data_dir)
            .map_err(|e| HarnessError::Setup(format!("creating {}: {e}", m.data_dir.display())))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| HarnessError::Setup(format!("opening {}: {e}", m.log.display())))?;
        let err = log.try_clone().map_err(|e| HarnessError::Setup(format!("{}: {e}", m.log.display())))?;
        let mut command = Command::new("ip");
        if let Some(names) = &planted {
            command.env("RAFTKV_PLANTED_BUGS", names);
        }
        let child = command
            .args(["netns", "exec", &m.ns])
            .arg(&bin)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &format!("http://{}:{CLIENT_PORT}", m.ip)])
            .args(["--listen-peer-urls", &format!("http://{}:{PEER_PORT}", m.ip)])
            .args(["--initial-cluster", &initial_cluster])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| HarnessError::Setup(format!("starting {}: {e}", bin.display())))?;
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// kill -9 of member `i`, waiting until it is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.list[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.list[i].paused = false;
    }

    /// SIGSTOP (`pause`) or SIGCONT to member `i`, if it runs.
    pub fn signal(&mut self, i: usize, pause: bool) {
        let m = &mut self.list[i];
        if let Some(child) = &m.child {
            let sig = if pause { Signal::SIGSTOP } else { Signal::SIGCONT };
            if kill(Pid::from_raw(child.id() as i32), sig).is_ok() {
                m.paused = pause;
            }
        }
    }

    pub fn running(&self, i: usize) -> bool {
        self.list[i].child.is_some()
    }

    /// Resumes every paused member and starts every stopped one.
    pub fn heal(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.len() {
            if self.list[i].paused {
                self.signal(i, false);
            }
            self.launch(i)?;
        }
        Ok(())
    }

    /// Notes members that exited on their own (a crash of the server, not a nemesis).
    pub fn reap(&mut self) {
        for (i, m) in self.list.iter_mut().enumerate() {
            if let Some(child) = &mut m.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exits.push((i, status.to_string()));
                    m.child = None;
                }
            }
        }
    }

    /// The PIDs of the members that run.
    pub fn pids(&self) -> Vec<u32> {
        self.list.iter().filter_map(|m| m.child.as_ref().map(Child::id)).collect()
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }
}
