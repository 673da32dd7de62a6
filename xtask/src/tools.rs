//! The stock etcd tools the compatibility tests drive: Debian's etcdctl 3.4 (package
//! `etcd-client`, installed system-wide when missing) and etcdctl 3.5, extracted from the
//! next Debian release's package into a cache under the target directory without installing
//! it. Both come through apt from the mirror the machine already uses, so CI on a fresh
//! Debian machine needs nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where Debian's etcd-client puts etcdctl.
const SYSTEM_ETCDCTL: &str = "/usr/bin/etcdctl";
/// The Debian release whose etcd-client is 3.5 (fixed at 3.5.16).
const SUITE_35: &str = "trixie";

/// The etcdctl binaries the tests run, found or fetched.
pub struct Etcdctl {
    pub v34: PathBuf,
    pub v35: PathBuf,
}

/// Makes sure both etcdctl versions are present; `target` is the cargo target directory.
pub fn ensure_etcdctl(target: &Path) -> Result<Etcdctl> {
    let v34 = PathBuf::from(SYSTEM_ETCDCTL);
    if !v34.exists() {
        eprintln!("xtask: {SYSTEM_ETCDCTL} missing: installing Debian's etcd-client");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "etcd-client"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let cache = target.join("tools").join("etcd-3.5");
    let v35 = cache.join("etcdctl");
    if !v35.exists() {
        eprintln!("xtask: fetching etcdctl 3.5 from Debian {SUITE_35} into {}", cache.display());
        fetch_35(&cache).context("fetching etcdctl 3.5")?;
    }
    Ok(Etcdctl { v34, v35 })
}

/// Downloads the suite's etcd-client package with a private apt state (nothing under /etc or
/// /var changes) and keeps only its etcdctl.
fn fetch_35(cache: &Path) -> Result<()> {
    let mirror = debian_mirror()?;
    let work = cache.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    for d in ["lists/partial", "cache/archives/partial", "debs", "root"] {
        std::fs::create_dir_all(work.join(d)).with_context(|| format!("creating {}", work.display()))?;
    }
    let sources = work.join("sources.list");
    std::fs::write(&sources, format!("deb {mirror} {SUITE_35} main\n"))?;
    let opts: Vec<String> = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".into(),
        format!("Dir::State::Lists={}", work.join("lists").display()),
        format!("Dir::Cache={}", work.join("cache").display()),
        "Debug::NoLocking=1".into(),
        "Acquire::Check-Valid-Until=false".into(),
        // apt's download sandbox user cannot write into a directory owned by root.
        "APT::Sandbox::User=root".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    run(Command::new("apt-get").args(&opts).args(["-qq", "update"]))?;
    run(Command::new("apt-get").args(&opts).args(["-qq", "download", "etcd-client"]).current_dir(work.join("debs")))?;
    let deb = std::fs::read_dir(work.join("debs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(work.join("root")))?;
    std::fs::create_dir_all(cache)?;
    // Copy then rename, so an interrupted fetch never leaves a truncated binary behind.
    let partial = cache.join("etcdctl.partial");
    std::fs::copy(work.join("root/usr/bin/etcdctl"), &partial).context("the package holds no usr/bin/etcdctl")?;
    std::fs::rename(&partial, cache.join("etcdctl"))?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// The Debian mirror apt is configured with (deb822 `.sources` or a one-line `sources.list`).
fn debian_mirror() -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.push(PathBuf::from("/etc/apt/sources.list"));
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for line in text.lines().map(str::trim) {
            let mut words = line.split_whitespace();
            let uri = match words.next() {
                Some("URIs:") => words.next(),
                // One-line format; options such as [signed-by=...] precede the URI.
                Some("deb") => words.find(|w| w.contains("://")),
                _ => None,
            };
            let Some(uri) = uri else { continue };
            if uri.trim_end_matches('/').ends_with("/debian") {
                return Ok(uri.to_string());
            }
        }
    }
    bail!("no Debian mirror found in /etc/apt")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
