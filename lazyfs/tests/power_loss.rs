#![cfg(not(madsim))]
//! Real mounts on temporary directories (needs root and /dev/fuse; fails, never skips, without
//! them). Each test checks what a server relies on: what survives a power loss is exactly what
//! it made durable with fsync of the file and of its directory.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use lazyfs::{Fault, LazyFs, LossReport, Pending};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// A mount on a fresh temporary directory; the file system is unmounted before the directory
/// is deleted (fields drop in order).
struct Mount {
    fs: LazyFs,
    _dir: TempDir,
}

impl Mount {
    fn new() -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = LazyFs::mount(&dir.path().join("backing"), &dir.path().join("mnt"))
            .unwrap_or_else(|e| panic!("these tests need a real FUSE mount (root and /dev/fuse): {e}"));
        Mount { fs, _dir: dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.fs.mountpoint().join(name)
    }

    fn power_loss(&mut self) -> LossReport {
        self.fs.power_loss::<SmallRng>(None).expect("power loss")
    }
}

/// Creates `path` with `data`, fsyncs it and its directory: durable.
fn durable_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    sync_dir(path.parent().unwrap());
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn append(path: &Path, data: &[u8]) {
    OpenOptions::new().append(true).open(path).unwrap().write_all(data).unwrap();
}

fn is_mounted(mountpoint: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().any(|l| l.split(' ').nth(4) == Some(mountpoint.to_str().unwrap()))
}

#[test]
fn unsynced_data_is_lost() {
    let mut m = Mount::new();
    let (f, g) = (m.path("f"), m.path("g"));
    durable_file(&f, b"old content");
    durable_file(&g, b"abc");
    assert_eq!(m.fs.pending(), Pending::default());

    let file = OpenOptions::new().write(true).open(&f).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"NEW", 0).unwrap();
    drop(file); // close makes nothing durable
    append(&f, b" and more");
    append(&g, b"defgh");
    assert_eq!(fs::read(&f).unwrap(), b"NEW content and more", "reads see unsynced writes");
    let pending = m.fs.pending();
    assert_eq!((pending.writes, pending.bytes, pending.namespace_ops), (3, 3 + 9 + 5, 0));

    let report = m.power_loss();
    assert_eq!((report.writes_dropped, report.bytes_dropped), (3, 17), "{report}");
    assert_eq!(fs::read(&f).unwrap(), b"old content");
    assert_eq!(fs::read(&g).unwrap(), b"abc", "an unsynced append is cut back to the old length");
    assert_eq!(fs::metadata(&g).unwrap().len(), 3);
    assert_eq!(m.fs.pending(), Pending::default());
}

#[test]
fn fsync_and_fdatasync_make_data_durable() {
    let mut m = Mount::new();
    let f = m.path("log");
    durable_file(&f, b"one");
    let mut file = OpenOptions::new().append(true).open(&f).unwrap();
    file.write_all(b"-two").unwrap();
    file.sync_data().unwrap();
    file.write_all(b"-three").unwrap();
    file.sync_all().unwrap();
    file.write_all(b"-four").unwrap();
    drop(file);
    assert_eq!(m.fs.pending().writes, 1);

    m.power_loss();
    assert_eq!(fs::read(&f).unwrap(), b"one-two-three", "the write after the last fsync is undone");

    let mut file = OpenOptions::new().append(true).open(&f).unwrap();
    file.write_all(b"-five").unwrap();
    // An fsync through another descriptor of the file counts too.
    OpenOptions::new().read(true).open(&f).unwrap().sync_data().unwrap();
    drop(file);
    m.power_loss();
    assert_eq!(fs::read(&f).unwrap(), b"one-two-three-five");
}

#[test]
fn a_new_name_needs_its_directory_fsynced() {
    let mut m = Mount::new();
    let (lost, kept) = (m.path("lost"), m.path("kept"));
    let mut f = File::create(&kept).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(m.path("e")).unwrap();
    sync_dir(m.fs.mountpoint());

    let mut f = File::create(&lost).unwrap();
    f.write_all(b"synced data, unsynced name").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // A directory whose parent was not synced goes, with what was made durable inside it.
    fs::create_dir(m.path("d")).unwrap();
    durable_file(&m.path("d/x"), b"x");
    // Pending on the durable directory e, which is not synced again.
    fs::create_dir(m.path("e/sub")).unwrap();
    let lost_later = m.path("lost-later");
    fs::write(&lost_later, b"z").unwrap();

    let report = m.power_loss();
    assert_eq!(report.namespace_ops_dropped, 4, "{report}");
    assert!(!lost.exists());
    assert!(!lost_later.exists());
    assert!(!m.path("d").exists());
    assert!(m.path("e").is_dir() && !m.path("e/sub").exists());
    assert_eq!(fs::read(&kept).unwrap(), b"data");
    let names: BTreeSet<String> =
        fs::read_dir(m.fs.mountpoint()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["e".to_string(), "kept".to_string()]));
}

#[test]
fn rename_and_unlink_need_their_directory_fsynced() {
    let mut m = Mount::new();
    let (src, target) = (m.path("snapshot.tmp"), m.path("snapshot"));
    durable_file(&target, b"old snapshot");
    durable_file(&src, b"new snapshot");

    fs::rename(&src, &target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"new snapshot");
    m.power_loss();
    assert_eq!(fs::read(&src).unwrap(), b"new snapshot", "old name back");
    assert_eq!(fs::read(&target).unwrap(), b"old snapshot", "replaced target restored");

    fs::rename(&src, &target).unwrap();
    sync_dir(m.fs.mountpoint());
    m.power_loss();
    assert!(!src.exists());
    assert_eq!(fs::read(&target).unwrap(), b"new snapshot");

    // An unlinked file still open keeps working, and comes back whole.
    let mut open = OpenOptions::new().append(true).open(&target).unwrap();
    fs::remove_file(&target).unwrap();
    assert!(!target.exists());
    open.write_all(b" + unsynced").unwrap();
    drop(open);
    m.power_loss();
    assert_eq!(fs::read(&target).unwrap(), b"new snapshot");

    fs::remove_file(&target).unwrap();
    sync_dir(m.fs.mountpoint());
    let stash = m.fs.backing().join(".lazyfs-stash");
    assert_eq!(fs::read_dir(stash).unwrap().count(), 0, "a durable removal leaves nothing behind");
    m.power_loss();
    assert!(!target.exists());
}

#[test]
fn an_unsynced_truncate_is_undone() {
    let mut m = Mount::new();
    let f = m.path("segment");
    durable_file(&f, b"0123456789");
    OpenOptions::new().write(true).open(&f).unwrap().set_len(4).unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"0123");
    m.power_loss();
    assert_eq!(fs::read(&f).unwrap(), b"0123456789", "cut bytes back");

    let file = OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(3).unwrap();
    file.set_len(20).unwrap();
    drop(file);
    m.power_loss();
    assert_eq!(fs::read(&f).unwrap(), b"0123456789");
    // O_TRUNC is a truncate too.
    File::create(&f).unwrap();
    m.power_loss();
    assert_eq!(fs::read(&f).unwrap(), b"0123456789");
}

#[test]
fn a_tear_keeps_a_prefix_of_the_last_files_unsynced_writes() {
    let mut m = Mount::new();
    let other = m.path("other");
    durable_file(&other, b"other");
    let mut partial_seen = false;
    for seed in 0..8u64 {
        append(&other, b" unsynced");
        let f = m.path(&format!("wal-{seed}"));
        durable_file(&f, b"synced head|");
        let mut gen = SmallRng::seed_from_u64(1000 + seed);
        let mut stream = Vec::new();
        let mut boundaries = vec![0];
        let mut file = OpenOptions::new().append(true).open(&f).unwrap();
        for _ in 0..40 {
            let chunk: Vec<u8> = (0..gen.gen_range(1..200)).map(|_| gen.gen()).collect();
            file.write_all(&chunk).unwrap();
            stream.extend_from_slice(&chunk);
            boundaries.push(stream.len());
        }
        drop(file);

        let report = m.fs.power_loss(Some(&mut SmallRng::seed_from_u64(seed))).unwrap();
        let torn = report.torn.clone().unwrap_or_else(|| panic!("no torn file: {report}"));
        assert_eq!(torn.path, Path::new(&format!("wal-{seed}")));
        assert_eq!(torn.bytes_pending, stream.len() as u64);
        let content = fs::read(&f).unwrap();
        assert_eq!(&content[..12], b"synced head|");
        let kept = &content[12..];
        assert_eq!(kept.len() as u64, torn.bytes_kept, "{report}");
        assert!(kept == &stream[..kept.len()], "seed {seed}: not a prefix of the written stream");
        assert_eq!(torn.partial_write, !boundaries.contains(&kept.len()), "{report}");
        partial_seen |= torn.partial_write;
        assert_eq!(fs::read(&other).unwrap(), b"other", "other files lose all unsynced data");
    }
    assert!(partial_seen, "no seed kept part of a write");
}

#[test]
fn disk_full_and_failing_sync() {
    let mut m = Mount::new();
    let f = m.path("f");
    durable_file(&f, b"abc");

    m.fs.set_fault(Fault::DiskFull);
    assert_eq!(m.fs.fault(), Fault::DiskFull);
    let mut file = OpenOptions::new().append(true).open(&f).unwrap();
    let err = file.write_all(b"def").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let err = File::create(m.path("new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let err = fs::create_dir(m.path("dir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(!m.path("new").exists() && !m.fs.backing().join("new").exists());
    assert_eq!(fs::read(&f).unwrap(), b"abc", "a failed write changes nothing");
    assert_eq!(m.fs.pending(), Pending::default());

    m.fs.set_fault(Fault::None);
    file.write_all(b"def").unwrap();
    file.sync_all().unwrap();

    m.fs.set_fault(Fault::SyncEio);
    file.write_all(b"xyz").unwrap();
    let err = file.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = file.sync_data().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = File::open(m.fs.mountpoint()).unwrap().sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs::read(&f).unwrap(), b"abcdefxyz", "reads still work");
    drop(file);

    let report = m.power_loss();
    assert_eq!(report.bytes_dropped, 3, "{report}");
    assert_eq!(fs::read(&f).unwrap(), b"abcdef", "the write whose sync failed is lost");
    assert_eq!(m.fs.fault(), Fault::SyncEio, "a fault outlives the power loss until switched off");
    m.fs.set_fault(Fault::None);
    append(&f, b"!");
    File::open(&f).unwrap().sync_all().unwrap();
}

#[test]
fn a_large_directory_lists_completely() {
    let m = Mount::new();
    let dir = m.path("log");
    fs::create_dir(&dir).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..300 {
        let name = format!("segment-{i:020}-with-a-longish-name.log");
        fs::write(dir.join(&name), i.to_string()).unwrap();
        expected.insert(name);
    }
    // Pending removals sit in the stash, which the root's listing must not show.
    fs::write(m.path("gone"), b"x").unwrap();
    fs::remove_file(m.path("gone")).unwrap();

    let listed: BTreeSet<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(listed.len(), 300);
    assert_eq!(listed, expected);
    let root: Vec<String> =
        fs::read_dir(m.fs.mountpoint()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(root, vec!["log".to_string()]);
    let err = fs::metadata(m.path(".lazyfs-stash")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn unmount_and_drop_remove_the_mount() {
    let m = Mount::new();
    let mountpoint = m.fs.mountpoint().to_path_buf();
    let backing = m.fs.backing().to_path_buf();
    assert!(is_mounted(&mountpoint));
    fs::write(m.path("unsynced"), b"stays").unwrap();
    let Mount { fs: lazy, _dir: dir } = m;
    lazy.unmount().unwrap();
    assert!(!is_mounted(&mountpoint));
    assert_eq!(fs::read(backing.join("unsynced")).unwrap(), b"stays", "unmount keeps everything written");

    let lazy = LazyFs::mount(&backing, &mountpoint).unwrap();
    assert!(is_mounted(&mountpoint));
    assert_eq!(fs::read(mountpoint.join("unsynced")).unwrap(), b"stays");
    drop(lazy);
    assert!(!is_mounted(&mountpoint));
    drop(dir);
}
