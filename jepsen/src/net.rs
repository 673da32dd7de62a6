//! The harness's network: one namespace per member and one for the clients, each with an
//! address on a bridge that lives in a namespace of its own, so no traffic of a run touches the
//! host's interfaces. Partitions are iptables rules inside the members' namespaces.
//!
//! Everything is named after the run's prefix (`{prefix}-sw`, `{prefix}-n1`, …, `{prefix}-c`):
//! [`cleanup`] removes exactly what a harness with that prefix made, also after a crash of the
//! harness itself (`jepsen clean`). Deleting a namespace removes its interfaces and rules; the
//! processes inside are killed first.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

use crate::HarnessError;

/// The namespaces and addresses of one run.
pub struct Net {
    prefix: String,
    members: usize,
    subnet: u8,
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Setup(format!("running {program}: {e}")))?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure `ip` and `iptables` are there (installing Debian's iptables if missing) and that
/// the harness runs as root, which namespaces need.
pub fn ensure_tools() -> Result<(), HarnessError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(HarnessError::Setup("the harness needs root (network namespaces, iptables)".into()));
    }
    run("ip", &["-V"])?;
    // util-linux's, which starts the members in their network namespaces (crate::members).
    run("nsenter", &["--version"])?;
    if run("iptables", &["--version"]).is_err() {
        eprintln!("jepsen: installing iptables with apt-get");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "iptables"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| HarnessError::Setup(format!("running apt-get: {e}")))?
            .success();
        if !ok {
            // A fresh machine may have no package lists yet.
            run("apt-get", &["update", "-q"])?;
            run("apt-get", &["install", "-y", "-q", "iptables"])?;
        }
        run("iptables", &["--version"])?;
    }
    Ok(())
}

impl Net {
    /// Creates the bridge, one namespace per member and the clients' namespace on subnet
    /// `10.{subnet}.0.0/24`. Refuses if namespaces of this prefix exist already (another run,
    /// or the remains of one: `jepsen clean`).
    pub fn create(prefix: &str, members: usize, subnet: u8) -> Result<Net, HarnessError> {
        if !leftovers(prefix)?.is_empty() {
            return Err(HarnessError::Setup(format!(
                "namespaces named {prefix}-* exist already (another run, or run `jepsen clean --prefix {prefix}`)"
            )));
        }
        // From here on, a failure removes what was made.
        let net = Net { prefix: prefix.to_string(), members, subnet };
        let sw = net.switch_ns();
        run("ip", &["netns", "add", &sw])?;
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        let mut spots: Vec<(String, Ipv4Addr)> = (0..members).map(|i| (net.member_ns(i), net.member_ip(i))).collect();
        spots.push((net.client_ns(), net.client_ip()));
        for (n, (ns, ip)) in spots.iter().enumerate() {
            let port = format!("p{n}");
            run("ip", &["netns", "add", ns])?;
            run("ip", &["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw])?;
            run("ip", &["-n", &sw, "link", "set", &port, "master", "br0"])?;
            run("ip", &["-n", &sw, "link", "set", &port, "up"])?;
            run("ip", &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    pub fn members(&self) -> usize {
        self.members
    }

    fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    pub fn member_ns(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }

    pub fn client_ns(&self) -> String {
        format!("{}-c", self.prefix)
    }

    pub fn member_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, i as u8 + 1)
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 100)
    }

    /// Member `at` drops every packet from member `from` (one direction of a partition).
    pub fn drop_from(&self, at: usize, from: usize) -> Result<(), HarnessError> {
        let ns = self.member_ns(at);
        let src = self.member_ip(from).to_string();
        run("ip", &["netns", "exec", &ns, "iptables", "-w", "-A", "INPUT", "-s", &src, "-j", "DROP"]).map(drop)
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<(), HarnessError> {
        for i in 0..self.members {
            run("ip", &["netns", "exec", &self.member_ns(i), "iptables", "-w", "-F", "INPUT"])?;
        }
        Ok(())
    }

    /// Moves the calling thread into the clients' namespace. Threads it starts afterwards (a
    /// tokio runtime's workers) are born there too.
    pub fn enter_client_ns(&self) -> Result<(), HarnessError> {
        let path = format!("/var/run/netns/{}", self.client_ns());
        let file = File::open(&path).map_err(|e| HarnessError::Setup(format!("opening {path}: {e}")))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| HarnessError::Setup(format!("entering {path}: {e}")))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for problem in cleanup(&self.prefix) {
            eprintln!("jepsen: cleanup: {problem}");
        }
    }
}

/// The namespaces named `{prefix}-*` that exist now.
pub fn leftovers(prefix: &str) -> Result<Vec<String>, HarnessError> {
    let listed = run("ip", &["netns", "list"])?;
    let mine = format!("{prefix}-");
    Ok(listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&mine))
        .map(str::to_string)
        .collect())
}

/// Kills every process inside the namespaces of `prefix` and deletes the namespaces (their
/// interfaces and iptables rules go with them). Returns what could not be removed.
pub fn cleanup(prefix: &str) -> Vec<String> {
    let names = match leftovers(prefix) {
        Ok(n) => n,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    for ns in &names {
        if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
            let me = std::process::id() as i32;
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|p| *p != me) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    for ns in &names {
        if let Err(e) = run("ip", &["netns", "delete", ns]) {
            problems.push(e.to_string());
        }
    }
    problems
}
