//! Mounting and unmounting one FUSE session, robustly enough for a test harness: an unmount
//! must end with the mountpoint free and the session thread gone (or unable to change
//! anything), whatever the kernel made of it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};

use crate::fs::{LazyFsOps, Shared};

/// The mount's source in the mount table, by which [`is_mounted`] knows ours.
const FS_NAME: &str = "lazyfs";

/// How long a session thread may take to notice its unmount before the connection is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A live mount: the session thread serving it and the means to take it down.
pub(crate) struct Mounted {
    unmounter: SessionUnmounter,
    thread: JoinHandle<io::Result<()>>,
    /// The FUSE connection's number (its directory in /sys/fs/fuse/connections).
    connection: Option<u64>,
}

/// Mounts a fresh session of `shared`'s file system on `mountpoint`, serving requests of
/// session `epoch` on one background thread (one thread keeps the operations in the order the
/// kernel sent them, which the undo journal relies on).
pub(crate) fn mount(shared: &Arc<Shared>, mountpoint: &Path, epoch: u64) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName(FS_NAME.into())];
    // Servers may run under another uid than the harness; the file system checks no
    // permissions itself (the backing directory's are the ones that count).
    config.acl = SessionACL::All;
    config.n_threads = Some(1);
    let mut session = Session::new(LazyFsOps::new(Arc::clone(shared), epoch), mountpoint, &config)?;
    let unmounter = session.unmount_callable();
    let thread = thread::Builder::new().name("lazyfs".into()).spawn(move || session.run())?;
    // A stat of the mountpoint is served by the new session itself.
    let connection = std::fs::metadata(mountpoint).ok().map(|md| connection_id(md.dev()));
    Ok(Mounted { unmounter, thread, connection })
}

/// The kernel's number of a device as fusectl names it (`MKDEV(major, minor)`).
fn connection_id(dev: u64) -> u64 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major << 20) | minor
}

/// Unmounts and stops the session thread. The caller has already fenced the session (its
/// requests no longer change anything), so a session that lingers is harmless; what must not
/// remain is the mount itself.
pub(crate) fn unmount(mut mounted: Mounted, mountpoint: &Path) -> Result<(), String> {
    let mut notes = Vec::new();
    if let Err(e) = mounted.unmounter.unmount() {
        // Busy (a process still has a file open there): detach it from the tree; the kernel
        // ends the connection when the last user goes, or when we abort it below.
        notes.push(format!("umount: {e}"));
        if let Err(e) = lazy_unmount(mountpoint) {
            notes.push(e);
        }
    }
    if !wait_finished(&mounted.thread, STOP_GRACE) {
        // Still served: the mount is referenced elsewhere (another mount namespace, a lazy
        // detach with open files). Aborting the connection fails every further request.
        if let Some(id) = mounted.connection {
            let abort = PathBuf::from(format!("/sys/fs/fuse/connections/{id}/abort"));
            match std::fs::write(&abort, b"1") {
                Ok(()) => {
                    wait_finished(&mounted.thread, STOP_GRACE);
                }
                Err(e) => notes.push(format!("cannot abort the FUSE connection via {}: {e}", abort.display())),
            }
        }
    }
    if mounted.thread.is_finished() {
        if let Ok(Err(e)) = mounted.thread.join() {
            tracing::debug!("lazyfs: session on {} ended with {e}", mountpoint.display());
        }
    } else {
        tracing::warn!("lazyfs: session thread of {} did not stop; left behind (fenced)", mountpoint.display());
    }
    if is_mounted(mountpoint) {
        notes.push("still mounted".into());
        return Err(notes.join("; "));
    }
    if !notes.is_empty() {
        tracing::warn!("lazyfs: unmount of {}: {}", mountpoint.display(), notes.join("; "));
    }
    Ok(())
}

fn wait_finished<T>(thread: &JoinHandle<T>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// `umount2(MNT_DETACH)` through the tools that have it (no unsafe code here).
pub(crate) fn lazy_unmount(mountpoint: &Path) -> Result<(), String> {
    let attempts: [(&str, &[&str]); 3] =
        [("umount", &["-l"]), ("fusermount3", &["-u", "-z", "--"]), ("fusermount", &["-u", "-z", "--"])];
    let mut errors = Vec::new();
    for (tool, args) in attempts {
        let output = Command::new(tool).args(args).arg(mountpoint).stdin(Stdio::null()).output();
        match output {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => errors.push(format!("{tool}: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => errors.push(format!("{tool}: {e}")),
        }
        if !is_mounted(mountpoint) {
            return Ok(());
        }
    }
    Err(errors.join("; "))
}

/// Whether a lazyfs mount sits on `mountpoint` in this process's mount namespace.
pub(crate) fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        let at = left.split(' ').nth(4).map(unescape);
        let mut fs = right.split(' ');
        let (fstype, source) = (fs.next().unwrap_or(""), fs.next().unwrap_or(""));
        at.as_deref() == Some(mountpoint.as_os_str().as_encoded_bytes())
            && fstype.starts_with("fuse")
            && source == FS_NAME
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b\c"), b"/tmp/a b\\c".to_vec());
        assert_eq!(unescape(r"/x\011y"), b"/x\ty".to_vec());
    }

    #[test]
    fn connection_id_of_an_anonymous_device_is_its_minor() {
        // st_dev of minor 60 and of minor 300 on major 0 (glibc's encoding).
        assert_eq!(connection_id(60), 60);
        assert_eq!(connection_id((300 & 0xff) | ((300 & !0xff) << 12)), 300);
    }
}
