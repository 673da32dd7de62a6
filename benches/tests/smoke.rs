//! A brief run of every workload against a one-member raftkv started in this process: the
//! generator connects, every request is answered, and the report adds up. (Not a timing: the
//! figures are whatever this machine gives.)

use std::time::Duration;

use raftkv_bench::{run, Report, Spec, Workload};

/// A one-member raftkv in this process on free ports, with its data dir (kept while held).
async fn one_member() -> (tempfile::TempDir, kv_server::Running) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = kv_server::ServerConfig {
        data_dir: dir.path().join("data"),
        listen_client_urls: vec!["http://127.0.0.1:0".into()],
        listen_peer_urls: vec!["http://127.0.0.1:0".into()],
        ..kv_server::ServerConfig::default()
    };
    let member = kv_server::start(cfg).await.unwrap();
    (dir, member)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_and_reports() {
    let (_dir, member) = one_member().await;
    let endpoint = member.client_urls[0].clone();
    let mut rows = vec![Report::markdown_header()];
    for (workload, rate) in [
        ("put", None),
        ("get", None),
        ("get-serializable", None),
        ("get-lease", None),
        ("get-session", None),
        ("get-bounded", None),
        ("txn", None),
        ("range", None),
        ("mixed-90", None),
        ("put", Some(200.0)),
    ] {
        let spec = Spec {
            endpoints: vec![endpoint.clone()],
            workload: workload.parse::<Workload>().unwrap(),
            clients: 4,
            connections: 2,
            duration: Duration::from_millis(500),
            rate,
            key_space: 100,
            value_size: 256,
            progress: false,
        };
        let report = run(&spec).await.unwrap();
        assert!(report.ops > 0, "{workload}: no operation completed");
        assert_eq!(report.errors, 0, "{workload}: requests failed");
        assert!(report.p50_ms <= report.p99_ms && report.p99_ms <= report.p999_ms && report.p999_ms <= report.max_ms);
        if let Some(rate) = rate {
            // The open loop sends exactly what the rate and duration call for.
            assert_eq!(report.ops, (rate * 0.5) as u64, "{workload} at {rate}/s");
        }
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(json["ops"], report.ops);
        rows.push(report.markdown_row());
    }
    println!("{}", rows.join("\n"));
}

/// The watch workload against a one-member raftkv: every put reaches every watcher, and the
/// member's CPU and RSS are read from its process (this one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_workload_delivers_every_event_to_every_watcher() {
    let (_dir, member) = one_member().await;
    let endpoint = member.client_urls[0].clone();
    let spec = raftkv_bench::watch::WatchSpec {
        watch_endpoint: endpoint.clone(),
        write_endpoint: endpoint,
        watchers: 30,
        streams: 4,
        connections: 2,
        rate: 200.0,
        duration: Duration::from_millis(500),
        value_size: 64,
        member_pid: Some(std::process::id()),
        drain: Duration::from_secs(20),
    };
    let r = raftkv_bench::watch::run_watch(&spec).await.unwrap();
    assert_eq!(r.puts, 100, "the open loop sends what the rate calls for");
    assert_eq!((r.events_expected, r.events_delivered), (3000, 3000), "{r:?}");
    assert!(r.delay_p50_ms <= r.delay_p99_ms && r.delay_p99_ms <= r.delay_max_ms, "{r:?}");
    assert!(r.member_cpu_cores.is_some() && r.member_rss_peak_bytes >= r.member_rss_start_bytes, "{r:?}");
    println!("{}\n{}", raftkv_bench::watch::WatchReport::markdown_header(), r.markdown_row());
}

#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let err = "scan".parse::<Workload>().unwrap_err().to_string();
    assert!(err.contains("unknown workload \"scan\""), "{err}");
    assert!("mixed-101".parse::<Workload>().is_err());
    let spec = Spec {
        endpoints: vec!["http://127.0.0.1:1".into()],
        workload: Workload::Put,
        clients: 1,
        connections: 1,
        duration: Duration::from_millis(100),
        rate: None,
        key_space: 10,
        value_size: 8,
        progress: false,
    };
    let err = run(&spec).await.unwrap_err().to_string();
    assert!(err.starts_with("cannot connect to http://127.0.0.1:1"), "{err}");
    let err = run(&Spec { clients: 0, ..spec }).await.unwrap_err().to_string();
    assert!(err.contains("must not be zero"), "{err}");
}

/// The binary refuses bad input with one line on stderr and a non-zero exit.
#[test]
fn the_binary_reports_bad_input_in_one_line() {
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_kvbench")).args(args).output().unwrap();
    let out = run(&["run", "--clients", "0", "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kvbench: invalid benchmark: clients, connections and endpoints must not be zero"),
        "{stderr}"
    );
    let out = run(&["run", "--endpoints", "http://127.0.0.1:1", "--duration", "1s", "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("kvbench: cannot connect to http://127.0.0.1:1"), "{stderr}");
    let out = run(&["run", "--workload", "scan"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload \"scan\""));
    let out = run(&["compare", "--kv-server", "/nonexistent/kv-server"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("kvbench: no kv-server binary at /nonexistent/kv-server"), "{stderr}");
}
