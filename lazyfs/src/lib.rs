#![cfg(not(madsim))]
//! A FUSE file system for the black-box harness that loses, on a simulated power loss, exactly
//! what a real machine could lose: the idea of Jepsen's LazyFS.
//!
//! A server's data directory lives on the mount. Everything it does is applied at once to a
//! backing directory (so reads are plain pass-through) while undo records remember what is not
//! yet durable:
//! - data written since the file's last `fsync`/`fdatasync` (the page cache's dirty pages);
//! - directory entries created, removed or renamed since their directory's last `fsync`.
//!
//! [`LazyFs::power_loss`] unmounts, undoes all of that in the backing directory and mounts a
//! fresh session: what survives is what the server made durable, so a server that forgets an
//! `fsync` (of a file or of its directory) loses data the way it would on real hardware.
//! Optionally the file written last is torn: a disk may have persisted a prefix of its unsynced
//! writes, which is what a checksummed log's recovery must cope with.
//!
//! Faults can also be switched on at any time ([`Fault`]): a full disk (ENOSPC) and a disk whose
//! flushes fail (EIO from `fsync`, nothing becoming durable).
//!
//! Needs root and /dev/fuse (mounting uses mount(2) directly; fusermount3 is only a fallback).

mod error;
mod fs;
mod inodes;
mod journal;
mod session;

use std::io;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::LazyFsError;
pub use journal::{LossReport, Pending, TornFile};

use crate::fs::{Shared, State};
use crate::journal::STASH_DIR;

/// A fault of the simulated disk, switchable at any time with [`LazyFs::set_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A healthy disk.
    None,
    /// The disk is full: write, create, mknod, mkdir, fallocate and truncates that grow a file
    /// fail with ENOSPC and change nothing. Reads, removals, renames and syncs still work, as
    /// on a real full file system (freeing space is how a server recovers).
    DiskFull,
    /// Flushes fail: `fsync`, `fdatasync` and directory `fsync` return EIO and nothing becomes
    /// durable, so a power loss afterwards drops the writes whose sync failed (the Linux
    /// "fsyncgate" lesson: after a failed fsync the data must be assumed lost).
    SyncEio,
}

impl Fault {
    pub(crate) fn code(self) -> u8 {
        match self {
            Fault::None => 0,
            Fault::DiskFull => 1,
            Fault::SyncEio => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Fault {
        match code {
            1 => Fault::DiskFull,
            2 => Fault::SyncEio,
            _ => Fault::None,
        }
    }
}

/// A mounted lazyfs. Dropping it unmounts (like [`LazyFs::unmount`], errors only logged).
pub struct LazyFs {
    shared: Arc<Shared>,
    backing: PathBuf,
    mountpoint: PathBuf,
    mounted: Option<session::Mounted>,
}

impl LazyFs {
    /// Mounts a lazyfs of `backing` on `mountpoint`, creating both directories if missing.
    /// Files already in `backing` count as durable. The mountpoint must not lie inside the
    /// backing directory (the file system would serve itself).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFs, LazyFsError> {
        let backing = prepare_dir(backing)?;
        let mountpoint = match prepare_dir(mountpoint) {
            // A dead FUSE mount, left by a process that died mounted: detach it and go on.
            Err(LazyFsError::Directory { source, .. }) if source.raw_os_error() == Some(libc::ENOTCONN) => {
                if let Err(e) = session::lazy_unmount(mountpoint) {
                    tracing::warn!("lazyfs: cannot detach the dead mount on {}: {e}", mountpoint.display());
                }
                prepare_dir(mountpoint)?
            }
            other => other?,
        };
        if mountpoint.starts_with(&backing) {
            return Err(LazyFsError::MountpointInBacking { backing, mountpoint });
        }
        // Left over by a process that died mounted: its pending removals happened.
        reset_stash(&backing)?;
        let shared = Arc::new(Shared::new(backing.clone()));
        let mut fs = LazyFs { shared, backing, mountpoint, mounted: None };
        fs.start()?;
        tracing::info!("lazyfs: mounted {} on {}", fs.backing.display(), fs.mountpoint.display());
        Ok(fs)
    }

    /// Switches the disk's fault; takes effect with the next request.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.set_fault(fault);
    }

    /// The disk's current fault.
    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// What a power loss now would drop.
    pub fn pending(&self) -> Pending {
        self.shared.state.lock().journal.pending()
    }

    /// Simulates a power loss and reboot. The caller must first have killed every process
    /// using the mount (as the power loss would): an open file keeps the mount busy.
    ///
    /// Unmounts, undoes in the backing directory every change not made durable (data first,
    /// newest first per file, then directory entries, newest first), and mounts again with a
    /// fresh session, so no kernel cache remembers the lost state. With `tear`, the file
    /// written last keeps a random prefix (in bytes, possibly ending inside a write) of its
    /// unsynced writes; every other file loses all of its unsynced data.
    ///
    /// Also the recovery after a failed power loss: called again, it finishes the job.
    pub fn power_loss<R: rand::Rng>(&mut self, tear: Option<&mut R>) -> Result<LossReport, LazyFsError> {
        self.stop()?;
        let mut report = {
            let mut state = self.shared.state.lock();
            let journal = mem::take(&mut state.journal);
            journal.power_loss(&self.backing, &state.inodes, tear)
        };
        if let Err(e) = reset_stash(&self.backing) {
            report.undo_failures.push(e.to_string());
        }
        self.start()?;
        tracing::info!("lazyfs: power loss on {}: {report}", self.mountpoint.display());
        Ok(report)
    }

    /// Unmounts, leaving the backing directory as it is: everything written stays, as after a
    /// clean shutdown (which syncs everything).
    pub fn unmount(mut self) -> Result<(), LazyFsError> {
        self.finish()
    }

    /// The mountpoint, canonicalized.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory, canonicalized: the disk's contents, readable while unmounted.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Mounts a new session with a fresh inode table and nothing pending.
    fn start(&mut self) -> Result<(), LazyFsError> {
        let epoch = {
            let mut state = self.shared.state.lock();
            let epoch = state.epoch + 1;
            *state = State::new(epoch);
            epoch
        };
        let mounted = session::mount(&self.shared, &self.mountpoint, epoch).map_err(|source| LazyFsError::Mount {
            backing: self.backing.clone(),
            mountpoint: self.mountpoint.clone(),
            source,
        })?;
        self.mounted = Some(mounted);
        Ok(())
    }

    /// Fences the session (its late requests change nothing) and unmounts it.
    fn stop(&mut self) -> Result<(), LazyFsError> {
        let Some(mounted) = self.mounted.take() else {
            return Ok(());
        };
        self.shared.state.lock().epoch += 1;
        session::unmount(mounted, &self.mountpoint)
            .map_err(|detail| LazyFsError::Unmount { mountpoint: self.mountpoint.clone(), detail })
    }

    /// A clean unmount: pending removals take effect (their stashed files are deleted).
    fn finish(&mut self) -> Result<(), LazyFsError> {
        self.stop()?;
        {
            let mut state = self.shared.state.lock();
            let epoch = state.epoch;
            *state = State::new(epoch);
        }
        reset_stash(&self.backing)?;
        tracing::info!("lazyfs: unmounted {}", self.mountpoint.display());
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if self.mounted.is_some() {
            if let Err(e) = self.finish() {
                tracing::warn!("{e}");
            }
        }
    }
}

fn prepare_dir(path: &Path) -> Result<PathBuf, LazyFsError> {
    let prepare = || -> io::Result<PathBuf> {
        std::fs::create_dir_all(path)?;
        path.canonicalize()
    };
    prepare().map_err(|source| LazyFsError::Directory { path: path.to_path_buf(), source })
}

/// Empties the stash (removed files kept for an undo), creating it if missing.
fn reset_stash(backing: &Path) -> Result<(), LazyFsError> {
    let stash = backing.join(STASH_DIR);
    let reset = || -> io::Result<()> {
        journal::remove_any(&stash)?;
        std::fs::create_dir(&stash)
    };
    reset().map_err(|source| LazyFsError::Directory { path: stash.clone(), source })
}
