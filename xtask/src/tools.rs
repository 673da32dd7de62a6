//! The stock etcd binaries the compatibility tests and the benchmark drive: Debian's 3.4
//! (packages `etcd-client` and `etcd-server`, installed system-wide when missing) and 3.5,
//! extracted from the next Debian release's packages into a cache under the target directory
//! without installing them. All come through apt from the mirror the machine already uses, so
//! a fresh Debian machine needs nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where Debian's etcd-client puts etcdctl.
const SYSTEM_ETCDCTL: &str = "/usr/bin/etcdctl";
/// Where Debian's etcd-server puts etcd.
const SYSTEM_ETCD: &str = "/usr/bin/etcd";
/// The Debian release whose etcd-client is 3.5 (fixed at 3.5.16).
const SUITE_35: &str = "trixie";

/// The etcdctl binaries the tests run, found or fetched.
pub struct Etcdctl {
    pub v34: PathBuf,
    pub v35: PathBuf,
}

/// The etcd servers the benchmark compares raftkv with, found or fetched.
pub struct EtcdServers {
    pub v34: PathBuf,
    pub v35: PathBuf,
}

/// Makes sure both etcdctl versions are present; `target` is the cargo target directory.
pub fn ensure_etcdctl(target: &Path) -> Result<Etcdctl> {
    Ok(Etcdctl {
        v34: ensure_system(SYSTEM_ETCDCTL, "etcd-client")?,
        v35: ensure_35(target, "etcd-client", "etcdctl")?,
    })
}

/// Makes sure both etcd server versions are present; `target` is the cargo target directory.
pub fn ensure_etcd(target: &Path) -> Result<EtcdServers> {
    Ok(EtcdServers { v34: ensure_system(SYSTEM_ETCD, "etcd-server")?, v35: ensure_35(target, "etcd-server", "etcd")? })
}

/// `path`, installing Debian's `package` (which provides it) if it is missing.
fn ensure_system(path: &str, package: &str) -> Result<PathBuf> {
    if !Path::new(path).exists() {
        eprintln!("xtask: {path} missing: installing Debian's {package}");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", package]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(PathBuf::from(path))
}

/// The 3.5 `binary` of `package`, fetched into the cache under `target` if it is not there.
fn ensure_35(target: &Path, package: &str, binary: &str) -> Result<PathBuf> {
    let cache = target.join("tools").join("etcd-3.5");
    let path = cache.join(binary);
    if !path.exists() {
        eprintln!("xtask: fetching {binary} 3.5 from Debian {SUITE_35} into {}", cache.display());
        fetch_35(&cache, package, binary).with_context(|| format!("fetching {binary} 3.5"))?;
    }
    Ok(path)
}

/// Downloads the suite's `package` with a private apt state (nothing under /etc or /var
/// changes) and keeps only its `usr/bin/<binary>`.
fn fetch_35(cache: &Path, package: &str, binary: &str) -> Result<()> {
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
    run(Command::new("apt-get").args(&opts).args(["-qq", "download", package]).current_dir(work.join("debs")))?;
    let deb = std::fs::read_dir(work.join("debs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(work.join("root")))?;
    std::fs::create_dir_all(cache)?;
    // Copy then rename, so an interrupted fetch never leaves a truncated binary behind.
    let partial = cache.join(format!("{binary}.partial"));
    std::fs::copy(work.join("root/usr/bin").join(binary), &partial)
        .with_context(|| format!("the package {package} holds no usr/bin/{binary}"))?;
    std::fs::rename(&partial, cache.join(binary))?;
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
