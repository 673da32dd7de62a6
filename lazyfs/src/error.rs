//! Errors of the [`crate::LazyFs`] handle.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LazyFsError {
    #[error("lazyfs: cannot prepare directory {path}: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error("lazyfs: the mountpoint {mountpoint} must not be the backing directory {backing} or inside it")]
    MountpointInBacking { backing: PathBuf, mountpoint: PathBuf },
    #[error("lazyfs: cannot mount {backing} on {mountpoint} (needs root and /dev/fuse, or fusermount3): {source}")]
    Mount { backing: PathBuf, mountpoint: PathBuf, source: io::Error },
    #[error("lazyfs: cannot unmount {mountpoint} (is a process still using it?): {detail}")]
    Unmount { mountpoint: PathBuf, detail: String },
    #[error("lazyfs: {mountpoint} is not mounted (a failed power loss left it down)")]
    NotMounted { mountpoint: PathBuf },
}
