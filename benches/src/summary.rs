//! The comparison's report files: `report.md` (the tables docs/benchmarks.md quotes),
//! `report.json` (every run and every figure) and `throughput.svg` / `latency.svg`.

use std::fmt::Write as _;
use std::path::Path;

use crate::cluster::System;
use crate::compare::{median, Comparison, Median};
use crate::plot::{self, Metric};
use crate::BenchError;

/// Writes the four report files into `dir` (created if missing).
pub fn write(c: &Comparison, dir: &Path) -> Result<(), BenchError> {
    let io = |what: &str, e: std::io::Error| BenchError::Report(format!("writing {what} in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| io("the directory", e))?;
    let json = serde_json::to_string_pretty(c).map_err(|e| BenchError::Report(e.to_string()))?;
    std::fs::write(dir.join("report.json"), json).map_err(|e| io("report.json", e))?;
    std::fs::write(dir.join("report.md"), markdown(c)).map_err(|e| io("report.md", e))?;
    plot::draw(&c.rows, Metric::Throughput, &dir.join("throughput.svg"))?;
    plot::draw(&c.rows, Metric::P99, &dir.join("latency.svg"))
}

/// Per-member bytes per key, whole bytes.
fn per_key(v: &[f64]) -> String {
    v.iter().map(|b| format!("{b:.0}")).collect::<Vec<_>>().join(", ")
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{r:.2}×"))
}

/// The report as Markdown.
pub fn markdown(c: &Comparison) -> String {
    let s = &c.spec;
    let m = &c.machine;
    let mut out = String::new();
    let _ = writeln!(out, "## Comparison of {} (raftkv {}, {})\n", m.date, m.raftkv_commit, m.etcd_version);
    let _ = writeln!(
        out,
        "Machine: {}, {} cores, {:.0} GiB, Linux {}. Both systems: 3 members on loopback, default \
         settings (fsync before acknowledging). Load: {}-byte keys, {}-byte values over {} keys \
         (each written once before the runs), closed loop, min(clients, {}) connections spread over \
         the members starting at the leader (a one-client run talks to the leader). Each figure is the median of {} rounds of {} s; within a round the two \
         systems run back to back, alternating which goes first.\n",
        m.cpu,
        m.cores,
        m.memory_gib,
        m.kernel,
        crate::workload::key(0).len(),
        s.value_size,
        s.key_space,
        s.max_connections,
        s.rounds,
        s.duration.as_secs_f64()
    );
    kv_sections(&mut out, c);
    watch_section(&mut out, c);
    lease_section(&mut out, c);
    lock_section(&mut out, c);
    if !c.rows.is_empty() {
        let _ = writeln!(
            out,
            "\n![throughput per client count](throughput.svg)\n\n![p99 latency per client count](latency.svg)"
        );
    }
    out
}

/// The KV runs' table, the members' footprint and the leader kills: the parts of a comparison
/// that ran the KV workloads (`kv`, `failover`).
fn kv_sections(out: &mut String, c: &Comparison) {
    let s = &c.spec;
    if c.rows.is_empty() && c.failover.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Throughput and latency\n");
    let _ = writeln!(
        out,
        "| workload | clients | raftkv ops/s | etcd ops/s | raftkv/etcd | p50 ms raftkv / etcd | p99 ms raftkv / etcd | p99.9 ms raftkv / etcd | errors raftkv / etcd |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let pair = |a: f64, b: Option<f64>| match b {
        Some(b) => format!("{a:.2} / {b:.2}"),
        None => format!("{a:.2} / —"),
    };
    for r in &c.rows {
        let e: Option<&Median> = r.etcd.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} / {} |",
            r.workload,
            r.clients,
            r.raftkv.ops_per_sec,
            e.map_or_else(|| "—".into(), |e| format!("{:.0}", e.ops_per_sec)),
            ratio(r.throughput_ratio()),
            pair(r.raftkv.p50_ms, e.map(|e| e.p50_ms)),
            pair(r.raftkv.p99_ms, e.map(|e| e.p99_ms)),
            pair(r.raftkv.p999_ms, e.map(|e| e.p999_ms)),
            r.raftkv.errors,
            e.map_or_else(|| "—".into(), |e| e.errors.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\n`get` is a stock etcd get (linearizable on both); `get-lease`, `get-session` and \
         `get-bounded` are raftkv's own levels, which etcd does not have.\n"
    );

    let _ = writeln!(out, "### Memory and disk per member\n");
    let _ = writeln!(
        out,
        "| system | peak RSS MiB (m1, m2, m3) | data dir MiB: empty → loaded → end | disk bytes per key (m1, m2, m3) | bytes written to disk per key (cluster) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (system, f) in &c.footprint {
        let list = |v: &[u64]| v.iter().map(|b| mib(*b)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "| {system} | {} | {} → {} → {} | {} | {} |",
            list(&f.peak_rss_bytes),
            list(&f.disk_empty_bytes),
            list(&f.disk_loaded_bytes),
            list(&f.disk_end_bytes),
            per_key(&f.disk_bytes_per_key),
            f.written_bytes_per_key.map_or_else(|| "—".into(), |b| format!("{b:.0}"))
        );
    }
    let _ = writeln!(
        out,
        "\nPeak RSS is sampled every 200 ms during the {}-client runs. Disk bytes per key is the \
         growth of each data directory (file lengths) while the key space was loaded, divided by \
         the number of keys; etcd preallocates its WAL in 64 MiB segments, so that figure counts \
         the bbolt file's growth but not the WAL's. Bytes written to disk per key is what the disk \
         holding the data directories received while the key space was loaded into that system \
         (the other idle), divided by the number of keys: all three members, both logs (etcd's \
         WAL included), pages written again and the file system's journal. \"End\" is after every run, history included.\n",
        crate::compare::rss_clients(s)
    );

    let _ = writeln!(out, "### Leader kill -9 under write load\n");
    let _ = writeln!(
        out,
        "{} clients write; after 3 s the leader gets SIGKILL. *First write*: the first write sent \
         after the kill that is acknowledged. *Full throughput*: the start of the first half \
         second from then on with at least 90% of the write rate before the kill. Clients use a \
         1 s timeout and move to the next member after any error.\n",
        s.failover_clients
    );
    let _ = writeln!(
        out,
        "| system | writes/s before | first write ms (median; each round) | full throughput ms (median; each round) |"
    );
    let _ = writeln!(out, "|---|---:|---|---|");
    for (system, gaps) in &c.failover {
        let figures = |f: fn(&crate::failover::Gap) -> Option<f64>| {
            let each: Vec<String> = gaps
                .iter()
                .map(|g| match (f(g), &g.failed) {
                    (Some(v), _) => format!("{v:.0}"),
                    (None, Some(_)) => "failed".into(),
                    (None, None) => "none in 8 s".into(),
                })
                .collect();
            let reached: Vec<f64> = gaps.iter().filter_map(f).collect();
            let med = if reached.len() == gaps.len() { format!("{:.0}", median(reached)) } else { "—".into() };
            format!("{med}; {}", each.join(", "))
        };
        let _ = writeln!(
            out,
            "| {system} | {:.0} | {} | {} |",
            median(gaps.iter().map(|g| g.steady_ops_per_sec).collect()),
            figures(|g| g.to_first_write_ms),
            figures(|g| g.to_full_throughput_ms)
        );
    }
    for (system, gaps) in &c.failover {
        for (round, g) in gaps.iter().enumerate() {
            if let Some(why) = &g.failed {
                let _ = writeln!(out, "\n{system}, round {}: the measurement failed: {why}.", round + 1);
            }
        }
    }
}

/// The lease runs' tables, if there were any: every run (they are long, and few).
fn lease_section(out: &mut String, c: &Comparison) {
    let s = &c.spec;
    if !c.keep_alive_runs.is_empty() {
        let _ = writeln!(out, "\n### Leases kept alive\n");
        let _ = writeln!(
            out,
            "N leases of TTL {} s granted through all members, then kept alive for {:.0} s over {} keep-alive \
             streams (each lease renewed every third of its TTL). Lost: answered TTL 0 or missing from the \
             lease list at the end. CPU in cores over the keep-alive period and peak RSS, per member.\n",
            s.lease_ttl,
            s.lease_duration.as_secs_f64(),
            crate::lease::KEEP_ALIVE_STREAMS
        );
        let _ = writeln!(
            out,
            "| system | leases | lost | grants/s | renewals/s | renew p50 ms | renew p99 ms | member CPU | member RSS MiB |\n\
             |---|---:|---:|---:|---:|---:|---:|---|---|"
        );
        for (system, r) in &c.keep_alive_runs {
            let cpu: Vec<String> = r.member_cpu_cores.iter().map(|c| format!("{c:.2}")).collect();
            let rss: Vec<String> = r.member_rss_peak_bytes.iter().map(|b| mib(*b)).collect();
            let _ = writeln!(
                out,
                "| {system} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |",
                r.leases,
                r.leases_lost,
                r.grants_per_sec,
                r.renewals_per_sec,
                r.renew_p50_ms,
                r.renew_p99_ms,
                cpu.join(" / "),
                rss.join(" / ")
            );
        }
    }
    if !c.expiry_runs.is_empty() {
        let _ = writeln!(out, "\n### Leases expiring at once\n");
        let _ = writeln!(
            out,
            "{} writers put in a closed loop; after {} s, N leases of TTL {} s are granted with one key each and \
             abandoned. Put latency in the {} s before the grants against from the first lease's deadline until \
             the last key is gone.\n",
            crate::lease::EXPIRY_WRITERS,
            crate::lease::EXPIRY_BASELINE.as_secs(),
            s.expiring_ttl,
            crate::lease::EXPIRY_BASELINE.as_secs()
        );
        let _ = writeln!(
            out,
            "| system | leases | granted in s | all gone after deadline s | put p50 ms before / during | put p99 ms before / during | puts during | keys left |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (system, r) in &c.expiry_runs {
            let _ = writeln!(
                out,
                "| {system} | {} | {:.1} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} |",
                r.leases,
                r.grant_s,
                r.expiry_s,
                r.put_p50_before_ms,
                r.put_p50_during_ms,
                r.put_p99_before_ms,
                r.put_p99_during_ms,
                r.puts_during,
                r.keys_left
            );
        }
    }
}

/// The lock runs' table, if there were any: medians over the rounds per system and client count.
fn lock_section(out: &mut String, c: &Comparison) {
    if c.lock_runs.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n### Locks\n");
    let _ = writeln!(
        out,
        "N clients contend for one lock (etcd's v3lock Lock and Unlock), each on a lease of its own, spread \
         over the members; one operation is an acquire and its release, in a closed loop for {:.0} s per run. \
         Medians over {} round(s).\n",
        c.spec.lock_duration.as_secs_f64(),
        c.spec.rounds
    );
    let _ = writeln!(
        out,
        "| clients | raftkv acquire+release/s | etcd acquire+release/s | raftkv p50 / p99 ms | etcd p50 / p99 ms |\n\
         |---:|---:|---:|---:|---:|"
    );
    for &clients in &c.spec.lock_clients {
        let median = |system: System| {
            let runs: Vec<&crate::lock::LockReport> =
                c.lock_runs.iter().filter(|(s, r)| *s == system && r.clients == clients).map(|(_, r)| r).collect();
            if runs.is_empty() {
                return None;
            }
            let m = |f: fn(&crate::lock::LockReport) -> f64| median(runs.iter().map(|r| f(r)).collect());
            Some((m(|r| r.cycles_per_sec), m(|r| r.p50_ms), m(|r| r.p99_ms)))
        };
        let cell = |m: Option<(f64, f64, f64)>| match m {
            Some((ops, p50, p99)) => (format!("{ops:.0}"), format!("{p50:.2} / {p99:.2}")),
            None => ("—".into(), "—".into()),
        };
        let (r_ops, r_lat) = cell(median(System::Raftkv));
        let (e_ops, e_lat) = cell(median(System::Etcd));
        let _ = writeln!(out, "| {clients} | {r_ops} | {e_ops} | {r_lat} | {e_lat} |");
    }
}

/// The watch runs' table, if there were any.
fn watch_section(out: &mut String, c: &Comparison) {
    if c.watch.is_empty() {
        return;
    }
    let s = &c.spec;
    let _ = writeln!(out, "\n### Many watchers of one prefix\n");
    let _ = writeln!(
        out,
        "W watchers of one prefix on a follower ({} per stream, up to 10 connections); a writer \
         puts {:.0} values of {} bytes a second to the leader for {} s. *Delay*: from a put's \
         acknowledgement to its event at each watcher (an event that arrives before the \
         acknowledgement counts as 0). *Events/s*: delivered events from the first put to the last \
         event. CPU (cores) and peak RSS are the watched member's. Medians of {} rounds.\n",
        crate::watch::WATCHERS_PER_STREAM,
        s.watch_rate,
        s.value_size,
        s.watch_duration.as_secs_f64(),
        s.rounds
    );
    let _ = writeln!(
        out,
        "| watchers | events/s raftkv / etcd | delay p50 ms raftkv / etcd | delay p99 ms raftkv / etcd | \
         member CPU raftkv / etcd | member peak RSS MiB raftkv / etcd | delivered raftkv / etcd |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    for r in &c.watch {
        let (a, b) = (&r.raftkv, &r.etcd);
        let _ = writeln!(
            out,
            "| {} | {:.0} / {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} / {} | {:.1}% / {:.1}% |",
            r.watchers,
            a.events_per_sec,
            b.events_per_sec,
            a.delay_p50_ms,
            b.delay_p50_ms,
            a.delay_p99_ms,
            b.delay_p99_ms,
            a.member_cpu_cores,
            b.member_cpu_cores,
            mib(a.member_rss_peak_bytes as u64),
            mib(b.member_rss_peak_bytes as u64),
            a.delivered * 100.0,
            b.delivered * 100.0
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::cluster::System;
    use crate::compare::{CompareSpec, Footprint, Machine, Row};
    use crate::failover::Gap;

    fn med(ops: f64, p99: f64) -> Median {
        Median { ops_per_sec: ops, p50_ms: p99 / 4.0, p99_ms: p99, p999_ms: p99 * 2.0, errors: 0 }
    }

    fn comparison() -> Comparison {
        let spec = CompareSpec {
            kv_server: "kv-server".into(),
            etcd: "etcd".into(),
            work_dir: "w".into(),
            workloads: vec!["put".parse().unwrap()],
            raftkv_only: vec!["get-lease".parse().unwrap()],
            clients: vec![1, 64],
            max_connections: 8,
            rounds: 3,
            duration: Duration::from_secs(5),
            key_space: 1000,
            value_size: 256,
            failover_clients: 16,
            watchers: vec![100],
            watch_rate: 1000.0,
            watch_duration: Duration::from_secs(5),
            parts: vec![crate::compare::Part::Kv],
            leases: 0,
            lease_ttl: 30,
            lease_duration: Duration::from_secs(60),
            expiring: 0,
            expiring_ttl: 10,
            lock_clients: vec![1, 16],
            lock_duration: Duration::from_secs(10),
        };
        let machine = Machine {
            date: "today".into(),
            cpu: "cpu".into(),
            cores: 2,
            memory_gib: 24.0,
            kernel: "6".into(),
            raftkv_commit: "abc".into(),
            etcd_version: "etcd 3.4.23".into(),
        };
        let rows = vec![
            Row { workload: "put".into(), clients: 1, raftkv: med(500.0, 4.0), etcd: Some(med(1000.0, 2.0)) },
            Row { workload: "put".into(), clients: 64, raftkv: med(9000.0, 20.0), etcd: Some(med(6000.0, 30.0)) },
            Row { workload: "get-lease".into(), clients: 64, raftkv: med(30000.0, 3.0), etcd: None },
        ];
        let mut footprint = BTreeMap::new();
        for s in [System::Raftkv, System::Etcd] {
            footprint.insert(
                s,
                Footprint {
                    peak_rss_bytes: vec![64 << 20; 3],
                    disk_empty_bytes: vec![0; 3],
                    disk_loaded_bytes: vec![1 << 20; 3],
                    disk_end_bytes: vec![2 << 20; 3],
                    disk_bytes_per_key: vec![1048.6; 3],
                    written_bytes_per_key: Some(6291.5),
                },
            );
        }
        let gap = |first: Option<f64>| Gap {
            steady_ops_per_sec: 1000.0,
            to_first_write_ms: first,
            to_full_throughput_ms: first,
            failed: None,
        };
        let mut failover = BTreeMap::new();
        failover.insert(System::Raftkv, vec![gap(Some(300.0)), gap(Some(500.0)), gap(Some(400.0))]);
        let failed = Gap { failed: Some("etcd did not elect a leader within 30s".into()), ..Gap::default() };
        failover.insert(System::Etcd, vec![gap(Some(2000.0)), gap(None), failed]);
        let watched = |events_per_sec: f64, rss: f64| crate::watch::WatchMedian {
            events_per_sec,
            delay_p50_ms: 0.5,
            delay_p99_ms: 3.0,
            member_cpu_cores: 0.8,
            member_rss_peak_bytes: rss,
            delivered: 1.0,
        };
        let watch = vec![crate::watch::WatchRow {
            watchers: 100,
            raftkv: watched(99000.0, (80 << 20) as f64),
            etcd: watched(98000.0, (60 << 20) as f64),
        }];
        Comparison {
            spec,
            machine,
            runs: vec![],
            rows,
            footprint,
            failover,
            watch_runs: vec![],
            watch,
            keep_alive_runs: vec![],
            expiry_runs: vec![],
            lock_runs: vec![],
        }
    }

    #[test]
    fn the_markdown_report_carries_every_figure_and_ratio() {
        let md = markdown(&comparison());
        assert!(
            md.contains("| put | 64 | 9000 | 6000 | 1.50× | 5.00 / 7.50 | 20.00 / 30.00 | 40.00 / 60.00 | 0 / 0 |"),
            "{md}"
        );
        assert!(md.contains("| put | 1 | 500 | 1000 | 0.50× |"), "{md}");
        assert!(md.contains("| get-lease | 64 | 30000 | — | — | 0.75 / — |"), "{md}");
        assert!(md.contains("| raftkv | 64, 64, 64 | 0, 0, 0 → 1, 1, 1 → 2, 2, 2 | 1049, 1049, 1049 |"), "{md}");
        // A round that never recovered leaves no median, but shows in the list.
        assert!(md.contains("| raftkv | 1000 | 400; 300, 500, 400 | 400; 300, 500, 400 |"), "{md}");
        assert!(md.contains("| etcd | 1000 | —; 2000, none in 8 s, failed |"), "{md}");
        assert!(md.contains("etcd, round 3: the measurement failed: etcd did not elect a leader within 30s."), "{md}");
        let watch_row = "| 100 | 99000 / 98000 | 0.50 / 0.50 | 3.00 / 3.00 | 0.80 / 0.80 | 80 / 60 | 100.0% / 100.0% |";
        assert!(md.contains(watch_row), "{md}");
    }

    /// The lock table holds the median of the rounds per system and client count; a comparison
    /// of locks alone has no empty KV tables or plots.
    #[test]
    fn the_lock_table_holds_medians_and_stands_alone() {
        use crate::lock::LockReport;
        let mut c = comparison();
        let run = |clients, ops: f64, p50| LockReport {
            clients,
            cycles: 0,
            cycles_per_sec: ops,
            p50_ms: p50,
            p99_ms: p50 * 2.0,
            max_ms: p50 * 3.0,
        };
        c.lock_runs = vec![
            (System::Raftkv, run(1, 300.0, 3.0)),
            (System::Etcd, run(1, 400.0, 2.0)),
            (System::Raftkv, run(1, 330.0, 2.5)),
            (System::Etcd, run(1, 380.0, 2.2)),
            (System::Raftkv, run(1, 320.0, 2.9)),
            (System::Etcd, run(1, 1000.0, 1.0)),
        ];
        let md = markdown(&c);
        assert!(md.contains("| 1 | 320 | 400 | 2.90 / 5.80 | 2.00 / 4.00 |"), "{md}");
        assert!(md.contains("| 16 | — | — | — | — |"), "{md}");
        c.rows.clear();
        c.failover.clear();
        let md = markdown(&c);
        assert!(!md.contains("### Throughput and latency") && !md.contains("throughput.svg"), "{md}");
        assert!(md.contains("### Locks"), "{md}");
    }

    #[test]
    fn the_report_files_are_written_with_both_systems_plotted() {
        let dir = tempfile::tempdir().unwrap();
        write(&comparison(), dir.path()).unwrap();
        for f in ["throughput.svg", "latency.svg"] {
            let svg = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("raftkv") && svg.contains("etcd"), "{f}");
            // Only workloads run on both systems get a panel.
            assert!(svg.contains("put:") && !svg.contains("get-lease"), "{f}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
        assert_eq!(json["rows"][1]["etcd"]["ops_per_sec"], 6000.0);
        assert_eq!(json["failover"]["etcd"][1]["to_first_write_ms"], serde_json::Value::Null);
        assert!(std::fs::read_to_string(dir.path().join("report.md")).unwrap().contains("(throughput.svg)"));
    }
}
