//! The `kv-server` processes under test, one per member namespace, started with `nsenter
//! --net` (which execs, so the child's PID is the server's own): kill -9, SIGSTOP/SIGCONT and
//! restart on the same data directory. Not `ip netns exec`: it also gives each process a mount
//! namespace of its own, holding a copy of every lazyfs mount there was at its start, and a
//! copy keeps a member's file system served after the harness unmounted it for a power loss.
//! Each member's output goes to `{name}.log` in the run's directory, appended across restarts.
//!
//! With disk faults, each member's data directory is a lazyfs mount (`{name}/data`, backed by
//! `{name}/disk`): a power loss kills the member and rolls its disk back to what it had synced;
//! a full or failing disk makes its writes or syncs fail. A member is expected to exit non-zero
//! on such a failure, and the harness restarts it once the disk is healed, as a supervisor
//! would.

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
    /// The member's disk, when the run has disk faults.
    disk: Option<lazyfs::LazyFs>,
    /// The disk fault in force ([`lazyfs::Fault::None`] when healthy).
    disk_fault: lazyfs::Fault,
    /// The running process has met a disk fault: its exit is the expected answer to it.
    disk_hit: bool,
    /// Exited after a disk fault, not started again yet.
    exited_on_fault: bool,
}

/// A member that exited on its own after a disk fault.
pub struct FaultExit {
    pub member: usize,
    pub status: std::process::ExitStatus,
    /// The error it exited with (the last `Error: ` line of its log), else its last line.
    pub last_words: String,
}

/// Every member process of a run. Dropping it kills them all.
pub struct Members {
    bin: PathBuf,
    /// Planted bugs the members run with (`RAFTKV_PLANTED_BUGS`; needs a kv-server built with
    /// the `planted-bugs` feature, which refuses to start otherwise).
    planted: Option<String>,
    initial_cluster: String,
    list: Vec<Member>,
    /// Members that exited without being killed by the harness and with no disk fault to
    /// answer: (member, status).
    pub exits: Vec<(usize, String)>,
    /// Members that exited after a disk fault.
    pub fault_exits: Vec<FaultExit>,
}

impl Members {
    /// Starts one member per namespace of `net`, data and logs under `dir`; with `lazyfs`, each
    /// member's data on a lazyfs mount of its own.
    pub fn start(
        bin: &Path,
        planted: Option<String>,
        net: &Net,
        dir: &Path,
        lazyfs: bool,
    ) -> Result<Members, HarnessError> {
        let mut list = Vec::new();
        for i in 0..net.members() {
            let name = format!("n{}", i + 1);
            let data_dir = dir.join(&name).join("data");
            let disk = if lazyfs {
                let backing = dir.join(&name).join("disk");
                let fs = lazyfs::LazyFs::mount(&backing, &data_dir)
                    .map_err(|e| HarnessError::Setup(format!("mounting lazyfs for {name}: {e}")))?;
                Some(fs)
            } else {
                None
            };
            list.push(Member {
                data_dir,
                log: dir.join(format!("{name}.log")),
                name,
                ns: net.member_ns(i),
                ip: net.member_ip(i),
                child: None,
                paused: false,
                disk,
                disk_fault: lazyfs::Fault::None,
                disk_hit: false,
                exited_on_fault: false,
            });
        }
        let initial_cluster =
            list.iter().map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.ip)).collect::<Vec<_>>().join(",");
        let mut members = Members {
            bin: bin.to_path_buf(),
            planted,
            initial_cluster,
            list,
            exits: Vec::new(),
            fault_exits: Vec::new(),
        };
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
        let mut command = Command::new("nsenter");
        if let Some(names) = &planted {
            command.env("RAFTKV_PLANTED_BUGS", names);
        }
        let child = command
            .arg(format!("--net=/run/netns/{}", m.ns))
            .arg("--")
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
        m.disk_hit = m.disk_fault != lazyfs::Fault::None;
        m.exited_on_fault = false;
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

    /// Resumes every paused member, heals every disk and starts every stopped member.
    pub fn heal(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.len() {
            if self.list[i].paused {
                self.signal(i, false);
            }
            self.disk_fault(i, lazyfs::Fault::None)?;
            self.launch(i)?;
        }
        Ok(())
    }

    /// What a supervisor does: restarts every member that exited after a disk fault, once its
    /// disk is healed.
    pub fn supervise(&mut self) -> Result<(), HarnessError> {
        self.reap();
        for i in 0..self.len() {
            let m = &self.list[i];
            if m.child.is_none() && m.exited_on_fault && m.disk_fault == lazyfs::Fault::None {
                self.launch(i)?;
            }
        }
        Ok(())
    }

    /// Notes members that exited on their own: after a disk fault, the expected answer to it;
    /// otherwise a crash of the server.
    pub fn reap(&mut self) {
        for (i, m) in self.list.iter_mut().enumerate() {
            if let Some(child) = &mut m.child {
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    if m.disk_hit {
                        let last_words = last_words(&m.log);
                        self.fault_exits.push(FaultExit { member: i, status, last_words });
                        m.disk_hit = false;
                        m.exited_on_fault = true;
                    } else {
                        self.exits.push((i, status.to_string()));
                    }
                }
            }
        }
    }

    /// Puts member `i`'s disk in `fault` (or heals it with [`lazyfs::Fault::None`]).
    pub fn disk_fault(&mut self, i: usize, fault: lazyfs::Fault) -> Result<(), HarnessError> {
        let m = &mut self.list[i];
        let Some(disk) = &m.disk else {
            if fault == lazyfs::Fault::None {
                return Ok(());
            }
            return Err(HarnessError::Setup(format!("{}: disk faults need lazyfs mounts", m.name)));
        };
        disk.set_fault(fault);
        m.disk_fault = fault;
        if fault != lazyfs::Fault::None && m.child.is_some() {
            m.disk_hit = true;
        }
        Ok(())
    }

    /// Power loss of member `i`, which must have been killed: its disk loses everything it had
    /// not synced (with `tear`, part of the last unsynced writes of one file stays). It stays
    /// down until the heal. Returns what was lost, in words.
    pub fn power_loss<R: rand::Rng>(&mut self, i: usize, tear: bool, rng: &mut R) -> Result<String, HarnessError> {
        self.kill(i);
        let m = &mut self.list[i];
        let Some(disk) = &mut m.disk else {
            return Err(HarnessError::Setup(format!("{}: power loss needs a lazyfs mount", m.name)));
        };
        let report = if tear { disk.power_loss(Some(rng)) } else { disk.power_loss::<R>(None) };
        let report = report.map_err(|e| HarnessError::Setup(format!("power loss of {}: {e}", m.name)))?;
        // A disk rolled back only in part would hold more than was durable: no verdict on that.
        if !report.undo_failures.is_empty() {
            return Err(HarnessError::Setup(format!("power loss of {}: {report}", m.name)));
        }
        Ok(report.to_string())
    }

    /// The PIDs of the members that run.
    pub fn pids(&self) -> Vec<u32> {
        self.list.iter().filter_map(|m| m.child.as_ref().map(Child::id)).collect()
    }
}

impl Drop for Members {
    /// Kills every member, then unmounts their disks (nothing is rolled back: the data stays
    /// for the report).
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
        for m in &mut self.list {
            if let Some(disk) = m.disk.take() {
                if let Err(e) = disk.unmount() {
                    eprintln!("jepsen: unmounting {}: {e}", m.data_dir.display());
                }
            }
        }
    }
}

/// The last line of the log at `path` that reports a process's error exit (`Error: `, from
/// anyhow in main), or its last line ("" if it cannot be read).
fn last_words(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let error = text.lines().rev().find(|l| l.starts_with("Error: "));
    error.or_else(|| text.lines().next_back()).unwrap_or_default().to_string()
}
