//! Stock etcdctl 3.4 and 3.5 against a 3-member cluster with `http://` endpoints: the
//! commands operators run day to day, each checked by what it prints.
//!
//! `cargo xtask test` installs Debian's etcdctl 3.4 when missing and fetches 3.5 from the next
//! Debian release (`cargo xtask tools`), passing their paths in `RAFTKV_ETCDCTL_34/35`. A
//! missing binary fails the test, naming it: compatibility with the tools is the point here.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::harness::{Cluster, CALM};

/// One etcdctl binary and the minor version (`3.4`) it must report.
pub(crate) struct Etcdctl {
    pub(crate) path: PathBuf,
    version: &'static str,
}

impl Etcdctl {
    /// The binary named by `var`, or `default`; panics if it is missing or another version.
    fn find(var: &str, default: PathBuf, version: &'static str) -> Etcdctl {
        let path = std::env::var_os(var).map_or(default, PathBuf::from);
        assert!(
            path.exists(),
            "etcdctl {version} not found at {} (set {var}, or run `cargo xtask tools`; `cargo xtask test` does)",
            path.display()
        );
        let tool = Etcdctl { path, version };
        let out = tool.run(&[], &["version"], None);
        assert!(
            out.contains(&format!("etcdctl version: {version}.")),
            "{} is not etcdctl {version}: {out}",
            tool.name()
        );
        tool
    }

    fn name(&self) -> String {
        format!("etcdctl {}.x ({})", self.version, self.path.display())
    }

    /// Runs etcdctl with `global` flags then `args`, feeding `stdin`; returns stdout, failing
    /// the test with both streams when it exits non-zero.
    fn run(&self, global: &[&str], args: &[&str], stdin: Option<&str>) -> String {
        self.exec(global, args, stdin).0
    }

    /// [`Etcdctl::run`], returning stdout and stderr (some commands report on stderr).
    fn exec(&self, global: &[&str], args: &[&str], stdin: Option<&str>) -> (String, String) {
        let mut child = Command::new(&self.path)
            .env("ETCDCTL_API", "3")
            .args(global)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name()));
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(stdin.unwrap_or_default().as_bytes()).expect("writing etcdctl's stdin");
        drop(input);
        let out = child.wait_with_output().expect("waiting for etcdctl");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "{} {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            self.name(),
            out.status
        );
        (stdout.into_owned(), stderr.into_owned())
    }

    /// Like [`Etcdctl::run`], but the command must fail; returns stdout and stderr together.
    fn run_failing(&self, global: &[&str], args: &[&str]) -> String {
        let out = Command::new(&self.path).env("ETCDCTL_API", "3").args(global).args(args).output().expect("etcdctl");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{} {args:?} should have failed:\n{text}", self.name());
        text
    }
}

pub(crate) fn etcdctl_34() -> Etcdctl {
    Etcdctl::find("RAFTKV_ETCDCTL_34", "/usr/bin/etcdctl".into(), "3.4")
}

pub(crate) fn etcdctl_35() -> Etcdctl {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/etcd-3.5/etcdctl");
    Etcdctl::find("RAFTKV_ETCDCTL_35", default, "3.5")
}

/// The revision every member has applied, once all agree (members apply at their own pace).
async fn settled_revision(cluster: &Cluster) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut revs = Vec::new();
        for ep in cluster.endpoints() {
            let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
            revs.push(c.status().await.expect("status").header().expect("header").revision());
        }
        if revs.iter().all(|r| *r == revs[0]) {
            return revs[0];
        }
        assert!(Instant::now() < deadline, "members never reached the same revision: {revs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stock_etcdctl_34_and_35_work_with_url_endpoints() {
    let tools = [etcdctl_34(), etcdctl_35()];
    let cluster = Cluster::start(&CALM).await;
    let endpoints = cluster.endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("http://")), "{endpoints:?}");
    let flag = format!("--endpoints={}", endpoints.join(","));
    let global = [flag.as_str(), "--command-timeout=20s"];
    for tool in &tools {
        exercise(tool, &global, &cluster).await;
    }
}

/// Every command of the acceptance list, with `tool`.
async fn exercise(tool: &Etcdctl, global: &[&str], cluster: &Cluster) {
    let endpoints = cluster.endpoints();
    let who = tool.name();
    let v = tool.version;
    eprintln!("t96: exercising {who}");
    let key = |k: &str| format!("{v}/{k}");

    // endpoint status: one line per endpoint, exactly one leader, no errors.
    let status = tool.run(global, &["endpoint", "status"], None);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines.len(), 3, "{who} endpoint status:\n{status}");
    for ep in &endpoints {
        assert!(lines.iter().any(|l| l.starts_with(&format!("{ep}, "))), "{who}: no status line for {ep}:\n{status}");
    }
    assert_eq!(lines.iter().filter(|l| l.contains(", true, false, ")).count(), 1, "{who}: one leader:\n{status}");
    assert!(lines.iter().all(|l| l.contains(", 3.5.16, ")), "{who}: API version:\n{status}");

    // endpoint health: healthy everywhere (3.5 also reads the alarm list).
    // etcdctl prints the health report on stderr.
    let (out, err) = tool.exec(global, &["endpoint", "health"], None);
    let health = format!("{out}{err}");
    for ep in &endpoints {
        assert!(health.contains(&format!("{ep} is healthy")), "{who} endpoint health:\n{health}");
    }
    assert!(!health.contains("unhealthy"), "{who} endpoint health:\n{health}");

    // put / get.
    assert_eq!(tool.run(global, &["put", &key("a"), "one"], None).trim(), "OK", "{who} put");
    assert_eq!(tool.run(global, &["put", &key("b"), "two"], None).trim(), "OK", "{who} put");
    let got = tool.run(global, &["get", &key("a")], None);
    assert_eq!(got.lines().collect::<Vec<_>>(), [key("a").as_str(), "one"], "{who} get");
    let prefix = tool.run(global, &["get", "--prefix", &key("")], None);
    assert_eq!(prefix.lines().collect::<Vec<_>>(), [&key("a"), "one", &key("b"), "two"], "{who} get --prefix");

    // txn from stdin (compares, blank line, success ops, blank line, failure ops): first the
    // success branch, then the failure branch.
    let txn = |expect: &str| {
        format!(
            "value(\"{}\") = \"{expect}\"\n\nput {} then\nget {}\n\nput {} else\n\n",
            key("a"),
            key("c"),
            key("a"),
            key("c")
        )
    };
    let out = tool.run(global, &["txn"], Some(&txn("one")));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["SUCCESS", "", "OK", "", &key("a"), "one"], "{who} txn success");
    assert_eq!(tool.run(global, &["get", "--print-value-only", &key("c")], None).trim(), "then", "{who}");
    let out = tool.run(global, &["txn"], Some(&txn("not this")));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["FAILURE", "", "OK"], "{who} txn failure");
    assert_eq!(tool.run(global, &["get", "--print-value-only", &key("c")], None).trim(), "else", "{who}");

    // endpoint hashkv: the same hash on every member at the same revision.
    let rev = settled_revision(cluster).await;
    let rev_flag = format!("--rev={rev}");
    let hashes = tool.run(global, &["endpoint", "hashkv", &rev_flag], None);
    let values: Vec<&str> = hashes.lines().filter_map(|l| l.split(", ").nth(1)).collect();
    assert_eq!(values.len(), 3, "{who} endpoint hashkv:\n{hashes}");
    assert!(values.iter().all(|h| *h == values[0] && h.parse::<u32>().is_ok()), "{who} hashes differ:\n{hashes}");
    let current = tool.run(global, &["endpoint", "hashkv"], None);
    assert!(current.lines().all(|l| l.ends_with(&format!(", {}", values[0]))), "{who}: rev 0 = current:\n{current}");

    // member list: every member, started, with its name, peer URL and client URL.
    let members = tool.run(global, &["member", "list"], None);
    let lines: Vec<&str> = members.lines().collect();
    assert_eq!(lines.len(), 3, "{who} member list:\n{members}");
    for ((name, peer), client) in ["m1", "m2", "m3"].iter().zip(&cluster.peer_urls).zip(&endpoints) {
        let line = format!(", started, {name}, {peer}, {client}, false");
        assert!(lines.iter().any(|l| l.ends_with(&line)), "{who}: no {line:?} in member list:\n{members}");
    }

    // leases: grant, put --lease, timetolive with keys, keep-alive, list, revoke.
    let granted = tool.run(global, &["lease", "grant", "60"], None);
    let hex = granted
        .strip_prefix("lease ")
        .and_then(|r| r.split_whitespace().next())
        .filter(|h| i64::from_str_radix(h, 16).is_ok())
        .unwrap_or_else(|| panic!("{who} lease grant:\n{granted}"))
        .to_string();
    assert!(granted.contains("granted with TTL(60s)"), "{who} lease grant:\n{granted}");
    let lease_flag = format!("--lease={hex}");
    assert_eq!(tool.run(global, &["put", &lease_flag, &key("leased"), "x"], None).trim(), "OK", "{who} put --lease");
    let ttl = tool.run(global, &["lease", "timetolive", &hex, "--keys"], None);
    assert!(
        ttl.contains(&format!("lease {hex} granted with TTL(60s), remaining(")) && ttl.contains(&key("leased")),
        "{who} lease timetolive --keys:\n{ttl}"
    );
    let kept = tool.run(global, &["lease", "keep-alive", "--once", &hex], None);
    assert_eq!(kept.trim(), format!("lease {hex} keepalived with TTL(60)"), "{who} lease keep-alive --once");
    let list = tool.run(global, &["lease", "list"], None);
    assert!(list.starts_with("found ") && list.lines().any(|l| l == hex), "{who} lease list:\n{list}");
    let revoked = tool.run(global, &["lease", "revoke", &hex], None);
    assert_eq!(revoked.trim(), format!("lease {hex} revoked"), "{who} lease revoke");
    assert_eq!(tool.run(global, &["get", &key("leased")], None), "", "{who}: the leased key went with its lease");
    let expired = tool.run(global, &["lease", "timetolive", &hex], None);
    assert_eq!(expired.trim(), format!("lease {hex} already expired"), "{who} lease timetolive after revoke");

    // lock NAME -- CMD: runs CMD while holding the lock (etcdctl prints CMD's output).
    let locked = tool.run(global, &["lock", &key("mutex"), "echo", "inside"], None);
    assert!(locked.contains("inside"), "{who} lock -- echo:\n{locked}");
    // elect NAME PROPOSAL campaigns and holds leadership until interrupted; elect -l observes.
    let mut candidate = Command::new(&tool.path)
        .env("ETCDCTL_API", "3")
        .args(global)
        .args(["elect", &key("vote"), "me"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting etcdctl elect");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(candidate.stdout.take().expect("piped stdout")));
    let elected = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(elected.starts_with(&key("vote/")), "{who} elect printed the leader key first: {elected:?}");
    let mut listener = Command::new(&tool.path)
        .env("ETCDCTL_API", "3")
        .args(global)
        .args(["elect", "-l", &key("vote")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting etcdctl elect -l");
    let mut heard = std::io::BufRead::lines(std::io::BufReader::new(listener.stdout.take().expect("piped stdout")));
    let observed: Vec<String> = heard.by_ref().take(2).map_while(Result::ok).collect();
    assert_eq!(observed, [elected.clone(), "me".to_string()], "{who} elect -l");
    let _ = listener.kill();
    let _ = candidate.kill();
    let _ = (listener.wait(), candidate.wait());

    // compaction: older revisions are gone afterwards, the current one still reads.
    let out = tool.run(global, &["compaction", &rev.to_string()], None);
    assert_eq!(out.trim(), format!("compacted revision {rev}"), "{who} compaction");
    let old = tool.run_failing(global, &["get", &key("a"), &format!("--rev={}", rev - 1)]);
    assert!(old.contains("required revision has been compacted"), "{who} get below the compaction:\n{old}");
    let at = tool.run(global, &["get", "--print-value-only", &key("a"), &rev_flag], None);
    assert_eq!(at.trim(), "one", "{who} get at the compacted revision");
}
