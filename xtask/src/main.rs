//! `cargo xtask <task>`: the project's entry points, the same for people and CI.
//!
//! - `test [cargo test args]`: every test of the workspace, after making sure the stock
//!   etcdctl 3.4 and 3.5 the compatibility tests drive are present;
//! - `tools`: only that: installs Debian's etcdctl 3.4 if missing and fetches etcdctl 3.5 into
//!   `<target>/tools/etcd-3.5/`;
//! - `lint`: rustfmt check, clippy with warnings denied, and the simulation-mode build check;
//! - `sim [seeds] [base seed]`: the deterministic simulation, every scenario over that many
//!   seeds (default 1000 from seed 100), then the planted-bug tests from the base seed, in
//!   release mode in `target/sim`; `RAFTKV_SIM_*` variables override the members' settings
//!   (docs/testing.md);
//! - `bench [kvbench compare args]`: builds kv-server and kvbench in release mode and runs the
//!   side-by-side comparison (docs/benchmarks.md) against etcd 3.5 and then 3.4 (3.4 installed
//!   from Debian and 3.5 fetched from its next release if missing), writing
//!   `target/bench-report/etcd-3.5/`, `etcd-3.4/` and a README.md linking both; with `--etcd`,
//!   one comparison against that binary;
//! - `jepsen [test] [jepsen run args]`: builds kv-server and the harness in release mode and runs
//!   one black-box test (default `register`) as root, results in `target/jepsen/`
//!   (docs/jepsen.md); with `--planted`, against a kv-server built with the planted bugs in
//!   `target/planted`.
//!
//! Both point `PROTOC` at the protoc of the `protoc-bin-vendored` crate, so a machine with only
//! the Rust toolchain can build the test-only `etcd-client` crate, whose build script needs it.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod tools;

fn main() -> ExitCode {
    match task() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn task() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "test" => {
            let etcdctl = etcdctl_env()?;
            let env: Vec<(&str, &str)> = etcdctl.iter().map(|(k, v)| (*k, v.as_str())).collect();
            cargo(&["test", "--workspace"], &rest, &env)
        }
        "tools" => {
            let t = tools::ensure_etcdctl(&target_dir()?)?;
            println!("etcdctl 3.4: {}\netcdctl 3.5: {}", t.v34.display(), t.v35.display());
            Ok(())
        }
        "lint" => {
            cargo(&["fmt", "--all", "--check"], &[], &[])?;
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[], &[])?;
            cargo(
                &["check", "-p", "raft-core", "-p", "kv-server", "--all-targets"],
                &[],
                &[("RUSTFLAGS", "--cfg madsim"), ("CARGO_TARGET_DIR", "target/sim")],
            )?;
            cargo(
                &[
                    "clippy",
                    "-p",
                    "simulation",
                    "--all-targets",
                    "--release",
                    "--features",
                    "planted-bugs",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
                &[("RUSTFLAGS", "--cfg madsim"), ("CARGO_TARGET_DIR", "target/sim")],
            )
        }
        "sim" => {
            let seeds = rest.first().map(String::as_str).unwrap_or("1000");
            let base = rest.get(1).map(String::as_str).unwrap_or("100");
            let sim = [
                ("RUSTFLAGS", "--cfg madsim"),
                ("CARGO_TARGET_DIR", "target/sim"),
                ("MADSIM_TEST_SEED", base),
                ("MADSIM_TEST_NUM", seeds),
            ];
            // The members' settings the simulation overrides (it checks them and prints them
            // with every test and replay command); children inherit them.
            let overrides: Vec<String> = std::env::vars()
                .filter(|(k, _)| k.starts_with("RAFTKV_SIM_"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let overrides = if overrides.is_empty() { "none (defaults)".into() } else { overrides.join(" ") };
            eprintln!("xtask: sim overrides: {overrides}");
            // Every scenario over the seeds, then the planted bugs (each within 200 seeds).
            cargo(
                &[
                    "test",
                    "-p",
                    "simulation",
                    "--release",
                    "--test",
                    "scenarios",
                    "--test",
                    "failover",
                    "--",
                    "--nocapture",
                ],
                &[],
                &sim,
            )?;
            cargo(
                &[
                    "test",
                    "-p",
                    "simulation",
                    "--release",
                    "--features",
                    "planted-bugs",
                    "--test",
                    "planted",
                    "--",
                    "--nocapture",
                ],
                &[],
                &sim,
            )
        }
        "bench" => {
            cargo(&["build", "--release", "--bin", "kv-server", "--bin", "kvbench"], &[], &[])?;
            let kvbench = target_dir()?.join("release").join("kvbench");
            // An explicit --etcd (or --help) is one comparison as asked; otherwise one against
            // each of etcd 3.4 and 3.5, both fetched here if missing.
            if rest.iter().any(|a| a == "--etcd" || a.starts_with("--etcd=") || a == "--help" || a == "-h") {
                return compare(&kvbench, &rest);
            }
            let etcd = tools::ensure_etcd(&target_dir()?)?;
            let reports = target_dir()?.join("bench-report");
            for (version, binary) in [("3.5", &etcd.v35), ("3.4", &etcd.v34)] {
                let out = reports.join(format!("etcd-{version}"));
                let mut args: Vec<String> = rest.clone();
                args.extend(["--etcd".into(), binary.display().to_string(), "--out".into(), out.display().to_string()]);
                compare(&kvbench, &args)?;
            }
            let index = reports.join("README.md");
            std::fs::write(
                &index,
                "# raftkv against etcd 3.5 and 3.4\n\nOne comparison per etcd version, each interleaving \
                 raftkv and that etcd round by round:\n\n- [etcd 3.5](etcd-3.5/report.md)\n- [etcd 3.4](etcd-3.4/report.md)\n",
            )
            .with_context(|| format!("writing {}", index.display()))?;
            eprintln!("xtask: reports in {}", index.display());
            Ok(())
        }
        "jepsen" => {
            let (test, args) = match rest.first() {
                Some(t) if !t.starts_with('-') => (t.clone(), rest[1..].to_vec()),
                _ => ("register".to_string(), rest.clone()),
            };
            cargo(&["build", "--release", "--bin", "kv-server", "--bin", "jepsen"], &[], &[])?;
            let mut args = args;
            let planted = args.iter().any(|a| a == "--planted" || a.starts_with("--planted="));
            let explicit = args.iter().any(|a| a == "--kv-server" || a.starts_with("--kv-server="));
            if planted && !explicit {
                let target = target_dir()?.join("planted");
                cargo(
                    &[
                        "build",
                        "--release",
                        "--bin",
                        "kv-server",
                        "--features",
                        "kv-server/planted-bugs",
                        "--target-dir",
                    ],
                    &[target.display().to_string()],
                    &[],
                )?;
                args.extend(["--kv-server".into(), target.join("release").join("kv-server").display().to_string()]);
            }
            let jepsen = target_dir()?.join("release").join("jepsen");
            eprintln!("xtask: {} run {test} {}", jepsen.display(), args.join(" "));
            let status = Command::new(&jepsen)
                .arg("run")
                .arg(&test)
                .args(&args)
                .current_dir(workspace_root()?)
                .status()
                .with_context(|| format!("running {}", jepsen.display()))?;
            if !status.success() {
                bail!("jepsen run {test}: {status}");
            }
            Ok(())
        }
        _ => {
            bail!(
                "usage: cargo xtask test [cargo test args] | cargo xtask tools | cargo xtask lint | cargo xtask sim [seeds] [base seed] \
                 | cargo xtask bench [kvbench compare args] | cargo xtask jepsen [test] [jepsen run args]"
            )
        }
    }
}

/// Runs `kvbench compare` with `args` from the workspace root.
fn compare(kvbench: &std::path::Path, args: &[String]) -> Result<()> {
    eprintln!("xtask: {} compare {}", kvbench.display(), args.join(" "));
    let status = Command::new(kvbench)
        .arg("compare")
        .args(args)
        .current_dir(workspace_root()?)
        .status()
        .with_context(|| format!("running {}", kvbench.display()))?;
    if !status.success() {
        bail!("kvbench compare failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> Result<&'static std::path::Path> {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) or `target`.
fn target_dir() -> Result<std::path::PathBuf> {
    let root = workspace_root()?;
    Ok(std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t)))
}

/// The environment that tells the etcdctl tests where both versions are. A failed install or
/// fetch is reported here and not fatal: the tests that need the binaries then fail saying
/// which one is missing, and every other test still runs.
fn etcdctl_env() -> Result<Vec<(&'static str, String)>> {
    match tools::ensure_etcdctl(&target_dir()?) {
        Ok(t) => Ok(vec![
            ("RAFTKV_ETCDCTL_34", t.v34.display().to_string()),
            ("RAFTKV_ETCDCTL_35", t.v35.display().to_string()),
        ]),
        Err(e) => {
            eprintln!("xtask: warning: stock etcdctl not available ({e:#}); the etcdctl tests will fail");
            Ok(vec![])
        }
    }
}

/// Runs cargo with `args`, then `extra`, with the vendored protoc and `env` set.
fn cargo(args: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context("locating the vendored protoc")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).args(extra).env("PROTOC", protoc);
    for (k, v) in env {
        cmd.env(k, v);
    }
    eprintln!(
        "xtask: cargo {}",
        args.iter().copied().chain(extra.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    );
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}
