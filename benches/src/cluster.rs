//! Local 3-member clusters of either system, started as real processes so the comparison can
//! read their memory, measure their disks and kill their leaders with SIGKILL.
//!
//! Both systems run with their defaults (fsync before acknowledging on both). etcd gets the same
//! flags as `../shared/tools/etcd-cluster.sh` (client ports 23101-23103, peer ports
//! 23201-23203); raftkv uses 24101-24103 and 24201-24203, so both clusters can stay up for the
//! whole comparison and runs can alternate between them.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kv_api::etcdserverpb::StatusRequest;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::BenchError;

/// Which store a cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Raftkv,
    Etcd,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Raftkv => "raftkv",
            System::Etcd => "etcd",
        })
    }
}

impl System {
    /// First client port; member i (0-based) serves clients on `base + i + 1` and peers on
    /// `base + 100 + i + 1`.
    fn base_port(self) -> u16 {
        match self {
            System::Raftkv => 24100,
            System::Etcd => 23100,
        }
    }
}

/// One member process and how to start it again after a kill.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub data_dir: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) -> Result<(), BenchError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| BenchError::Cluster(format!("cannot open {}: {e}", self.log.display())))?;
        let err_log = log.try_clone().map_err(|e| BenchError::Cluster(e.to_string()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| BenchError::Cluster(format!("cannot start {}: {e}", self.program.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id while the member runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Bytes of every file under the data directory (their lengths, as `du --apparent-size`).
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(p) else { return 0 };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.data_dir)
    }

    /// SIGKILL, then reap: the member loses whatever it had not flushed, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running 3-member cluster. Dropping it kills every member it started.
pub struct LocalCluster {
    pub system: System,
    pub members: Vec<Member>,
}

impl LocalCluster {
    /// Starts a fresh cluster of `system` with its data under `dir/<system>` (wiped first).
    /// `program` is the kv-server binary for raftkv and the etcd binary for etcd.
    pub fn start(system: System, program: &Path, dir: &Path) -> Result<LocalCluster, BenchError> {
        let root = dir.join(system.to_string());
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .map_err(|e| BenchError::Cluster(format!("cannot clear {}: {e}", root.display())))?;
        }
        std::fs::create_dir_all(&root)
            .map_err(|e| BenchError::Cluster(format!("cannot create {}: {e}", root.display())))?;
        let base = system.base_port();
        let peer = |i: u16| format!("http://127.0.0.1:{}", base + 100 + i);
        let initial: Vec<String> = (1..=3).map(|i| format!("m{i}={}", peer(i))).collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for i in 1..=3u16 {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{}", base + i);
            let data_dir = root.join(&name);
            let d = data_dir.display().to_string();
            let args: Vec<String> = match system {
                System::Raftkv => vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    d,
                    "--listen-client-urls".into(),
                    client_url.clone(),
                    "--listen-peer-urls".into(),
                    peer(i),
                    "--initial-cluster".into(),
                    initial.clone(),
                    "--initial-cluster-token".into(),
                    "kvbench".into(),
                ],
                System::Etcd => vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    d,
                    "--listen-client-urls".into(),
                    client_url.clone(),
                    "--advertise-client-urls".into(),
                    client_url.clone(),
                    "--listen-peer-urls".into(),
                    peer(i),
                    "--initial-advertise-peer-urls".into(),
                    peer(i),
                    "--initial-cluster".into(),
                    initial.clone(),
                    "--initial-cluster-token".into(),
                    "kvbench".into(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                ],
            };
            let log = root.join(format!("{name}.log"));
            members.push(Member { name, client_url, data_dir, program: program.to_path_buf(), args, log, child: None });
        }
        let mut cluster = LocalCluster { system, members };
        for m in &mut cluster.members {
            m.spawn()?;
        }
        Ok(cluster)
    }

    /// Client URLs of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Client URLs of every member starting with the leader's (waiting for one as
    /// [`LocalCluster::wait_ready`] does). A load's connections go to the endpoints in turn, so a
    /// one-connection run talks to the leader on either system, never to whichever member is
    /// listed first: a follower forwards each write, which would measure the election's
    /// outcome, not the system.
    pub async fn endpoints_leader_first(&self, timeout: Duration) -> Result<Vec<String>, BenchError> {
        let leader = self.wait_ready(timeout).await?;
        Ok(leader_first(self.endpoints(), leader))
    }

    /// Waits until every running member answers Status and names the same leader, and
    /// returns the leader's index.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<usize, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Cluster(format!(
                    "{} did not elect a leader within {timeout:?} (logs in {})",
                    self.system,
                    self.members[0].log.parent().unwrap_or(Path::new(".")).display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's index if every running member answers and they agree on it. A leader
    /// that is not running (just killed) does not count.
    async fn agreed_leader(&self) -> Option<usize> {
        let mut answers = Vec::new();
        for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
            let (id, leader) = status(&m.client_url).await?;
            answers.push((i, id, leader));
        }
        let leader = answers.first()?.2;
        if leader == 0 || answers.iter().any(|a| a.2 != leader) {
            return None;
        }
        answers.iter().find(|a| a.1 == leader).map(|a| a.0)
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its kept data.
    pub fn restart(&mut self, i: usize) -> Result<(), BenchError> {
        self.members[i].spawn()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// (this member's id, the leader's id) from Maintenance.Status, within 500 ms.
async fn status(url: &str) -> Option<(u64, u64)> {
    let ch = Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()?;
    let mut m = MaintenanceClient::new(ch);
    let r = tokio::time::timeout(Duration::from_millis(500), m.status(StatusRequest {})).await.ok()?.ok()?.into_inner();
    Some((r.header?.member_id, r.leader))
}

/// `endpoints` rotated so that member `leader`'s comes first, the others in their order after it.
fn leader_first(mut endpoints: Vec<String>, leader: usize) -> Vec<String> {
    if leader < endpoints.len() {
        endpoints.rotate_left(leader);
    }
    endpoints
}

/// Samples the resident memory of processes until stopped, keeping each one's peak (0 for a
/// process that is not running).
pub struct RssSampler {
    peaks: std::sync::Arc<parking_lot::Mutex<Vec<u64>>>,
    stop: std::sync::Arc<tokio::sync::Notify>,
}

impl RssSampler {
    /// Starts sampling `pids` every `every`.
    pub fn start(pids: Vec<Option<u32>>, every: Duration) -> RssSampler {
        let peaks = std::sync::Arc::new(parking_lot::Mutex::new(vec![0u64; pids.len()]));
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let (p, s) = (peaks.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(rss) = pid.and_then(rss_of_pid) {
                        let mut peaks = p.lock();
                        peaks[i] = peaks[i].max(rss);
                    }
                }
                tokio::select! {
                    _ = s.notified() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        RssSampler { peaks, stop }
    }

    /// Stops sampling; returns each process's peak.
    pub fn stop(self) -> Vec<u64> {
        self.stop.notify_one();
        self.peaks.lock().clone()
    }
}

/// A process's resident memory from /proc, in bytes.
pub fn rss_of_pid(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
    kib.parse::<u64>().ok().map(|k| k * 1024)
}

/// Finds `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The etcd binary: from PATH, or installed from Debian's `etcd-server` package when this
/// process may (root), as `../shared/tools/etcd-cluster.sh` does.
pub fn etcd_binary() -> Result<PathBuf, BenchError> {
    if let Some(p) = on_path("etcd") {
        return Ok(p);
    }
    let install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client";
    eprintln!("kvbench: etcd not found; running `{install}`");
    let ok = Command::new("sh").args(["-c", install]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    match on_path("etcd") {
        Some(p) if ok => Ok(p),
        _ => Err(BenchError::Cluster("etcd is not installed and apt-get could not install etcd-server".into())),
    }
}

/// `<binary> --version`'s first line, for the report.
pub fn version_of(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Bytes written so far to the block device that holds `path` (the sectors-written count of
/// `/sys/dev/block/MAJOR:MINOR/stat`, in 512-byte sectors): what reached the disk, whichever
/// process or file caused it, the file system's journal included. None where Linux does not
/// say (a file system with no block device, such as tmpfs).
pub fn device_written_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = ((dev >> 8) & 0xfff | (dev >> 32) & !0xfff, dev & 0xff | (dev >> 12) & !0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    stat.split_whitespace().nth(6)?.parse::<u64>().ok().map(|sectors| sectors * 512)
}

#[cfg(test)]
mod tests {
    use super::leader_first;

    #[test]
    fn the_leader_comes_first_and_the_others_keep_their_order() {
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(leader_first(e(&["a", "b", "c"]), 0), e(&["a", "b", "c"]));
        assert_eq!(leader_first(e(&["a", "b", "c"]), 1), e(&["b", "c", "a"]));
        assert_eq!(leader_first(e(&["a", "b", "c"]), 2), e(&["c", "a", "b"]));
    }
}
