//! The `fuser::Filesystem` implementation: a pass-through to the backing directory that
//! records, before each change, how to undo it (see `journal.rs`).
//!
//! The kernel is not given write-back caching (fuser does not ask for `FUSE_WRITEBACK_CACHE`),
//! so every `write(2)` reaches us before the syscall returns, in order, and the undo journal
//! sees the same stream of writes the application issued.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::inodes::{InodeTable, ROOT_INO};
use crate::journal::{remove_any, DataUndo, Journal, NameOp, STASH_DIR};
use crate::Fault;

/// How long the kernel may cache entries and attributes. Short, and harmless: the harness
/// unmounts (dropping every cache) at each power loss, and nothing else changes the backing
/// directory behind the kernel's back.
const TTL: Duration = Duration::from_secs(1);

/// `statfs` numbers (4 KiB blocks): a large disk, half free, or none free while the disk is
/// "full" so that tools like `df` agree with the ENOSPC errors.
const BLOCK_SIZE: u32 = 4096;
const TOTAL_BLOCKS: u64 = 1 << 28;

/// State shared by the mount's session thread and the [`crate::LazyFs`] handle.
pub(crate) struct Shared {
    pub(crate) backing: PathBuf,
    fault: AtomicU8,
    pub(crate) state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(backing: PathBuf) -> Shared {
        Shared { backing, fault: AtomicU8::new(Fault::None.code()), state: Mutex::new(State::new(0)) }
    }

    pub(crate) fn fault(&self) -> Fault {
        Fault::from_code(self.fault.load(Ordering::SeqCst))
    }

    pub(crate) fn set_fault(&self, fault: Fault) {
        self.fault.store(fault.code(), Ordering::SeqCst);
    }
}

/// One mount session's view: inodes, open handles and the undo journal.
pub(crate) struct State {
    /// Which session may change the backing directory; a request from an older session (one
    /// being torn down) is refused, so nothing changes once a power loss has begun.
    pub(crate) epoch: u64,
    pub(crate) inodes: InodeTable,
    pub(crate) journal: Journal,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

impl State {
    pub(crate) fn new(epoch: u64) -> State {
        State { epoch, inodes: InodeTable::new(), journal: Journal::default(), handles: HashMap::new(), next_fh: 1 }
    }

    fn add_handle(&mut self, handle: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        fh
    }

    fn file(&self, fh: FileHandle) -> Result<&OpenFile, Errno> {
        match self.handles.get(&fh.0) {
            Some(Handle::File(f)) => Ok(f),
            _ => Err(Errno::EBADF),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes.path(ino.0).map(Path::to_path_buf).ok_or(Errno::ENOENT)
    }

    /// Drops inode `ino` if neither the kernel nor an undo record needs it.
    fn collect(&mut self, ino: u64) {
        if !self.journal.pins(ino) {
            self.inodes.remove_if_unused(ino);
        }
    }
}

enum Handle {
    File(OpenFile),
    /// An open directory: the listing taken when reading starts at offset 0, so that the
    /// offsets handed to the kernel stay valid however many `readdir` calls it takes.
    Dir(Vec<(OsString, u64, FileType)>),
}

struct OpenFile {
    file: File,
    /// Opened with `O_SYNC`/`O_DSYNC`: each write is durable when it returns.
    sync: bool,
}

/// The file system the session thread runs. Cheap: everything lives in [`Shared`].
pub(crate) struct LazyFsOps {
    shared: Arc<Shared>,
    epoch: u64,
}

impl LazyFsOps {
    pub(crate) fn new(shared: Arc<Shared>, epoch: u64) -> LazyFsOps {
        LazyFsOps { shared, epoch }
    }

    /// Runs `f` on the state, unless this session has been superseded (then EIO).
    fn with<T>(&self, f: impl FnOnce(&mut State, &Path) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut state = self.shared.state.lock();
        if state.epoch != self.epoch {
            return Err(Errno::EIO);
        }
        f(&mut state, &self.shared.backing)
    }

    /// ENOSPC while the disk is full: the operation would need space and changes nothing.
    fn check_space(&self) -> Result<(), Errno> {
        match self.shared.fault() {
            Fault::DiskFull => Err(Errno::ENOSPC),
            _ => Ok(()),
        }
    }

    /// EIO while syncs fail: the data stays as unsafe as it was (a real disk's failed flush).
    fn check_sync(&self) -> Result<(), Errno> {
        match self.shared.fault() {
            Fault::SyncEio => Err(Errno::EIO),
            _ => Ok(()),
        }
    }
}

/// The path of `name` in directory `parent`. The stash in the backing root is not part of the
/// file system: `reserved` is the error for using its name.
fn child(state: &State, parent: INodeNo, name: &OsStr, reserved: Errno) -> Result<PathBuf, Errno> {
    if parent.0 == ROOT_INO && name == STASH_DIR {
        return Err(reserved);
    }
    Ok(state.path(parent)?.join(name))
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn kind(file_type: fs::FileType) -> FileType {
    FileType::from_std(file_type).unwrap_or(FileType::RegularFile)
}

/// The backing file's attributes under our inode number.
fn attr(ino: u64, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.len(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(md.file_type()),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

fn is_sync(flags: i32) -> bool {
    flags & (libc::O_SYNC | libc::O_DSYNC) != 0
}

/// Open options for the backing file: only the access mode is passed on, with read access
/// added to write-only opens (a write first reads the bytes it overwrites, for the undo).
/// `O_APPEND` in particular must not be passed on: the kernel already turned appends into
/// writes at the end offset, and Linux's `pwrite` on an `O_APPEND` descriptor ignores it.
fn access(flags: i32) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    if OpenFlags(flags).acc_mode() != OpenAccMode::O_RDONLY {
        options.write(true);
    }
    options
}

/// Reads `[offset, offset + len)` of `file`, shorter at its end.
fn read_range(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Sets the length of the file at `full`, recording the undo for inode `ino`.
fn resize(state: &mut State, ino: u64, full: &Path, new_len: u64) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(full)?;
    let old_len = file.metadata()?.len();
    if new_len == old_len {
        return Ok(());
    }
    let cut = if new_len < old_len { read_range(&file, new_len, old_len - new_len)? } else { Vec::new() };
    state.journal.record_data(ino, DataUndo::Resize { old_len, cut });
    file.set_len(new_len)
}

/// Moves `path` into the stash, where a pending removal keeps it until the removal is durable.
fn stash(state: &mut State, backing: &Path, path: &Path, is_dir: bool) -> io::Result<PathBuf> {
    let stash = state.journal.new_stash_path();
    fs::rename(backing.join(path), backing.join(&stash))?;
    state.inodes.move_path(path, &stash, is_dir);
    Ok(stash)
}

impl Filesystem for LazyFsOps {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.with(|st, backing| {
            let path = child(st, parent, name, Errno::ENOENT)?;
            let md = fs::symlink_metadata(backing.join(&path)).map_err(errno)?;
            Ok(attr(st.inodes.lookup(&path), &md))
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _ = self.with(|st, _| {
            if st.inodes.forget(ino.0, nlookup) {
                st.collect(ino.0);
            }
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.with(|st, backing| {
            let md = match fh.and_then(|fh| st.file(fh).ok()) {
                // An open file may have been unlinked: ask its descriptor.
                Some(open) => open.file.metadata(),
                None => fs::symlink_metadata(backing.join(st.path(ino)?)),
            };
            Ok(attr(ino.0, &md.map_err(errno)?))
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|st, backing| {
            let full = backing.join(st.path(ino)?);
            if let Some(size) = size {
                let len = fs::metadata(&full).map_err(errno)?.len();
                if size > len {
                    self.check_space()?;
                }
                resize(st, ino.0, &full, size).map_err(errno)?;
            }
            // Metadata (mode, owner, times) is passed through and not journaled: the harness
            // checks data and names, which is what an application's durability rests on.
            if let Some(mode) = mode {
                fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&full, uid, gid).map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                let resolve = |t: TimeOrNow| match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
                let mut times = fs::FileTimes::new();
                if let Some(t) = atime {
                    times = times.set_accessed(resolve(t));
                }
                if let Some(t) = mtime {
                    times = times.set_modified(resolve(t));
                }
                File::open(&full).and_then(|f| f.set_times(times)).map_err(errno)?;
            }
            Ok(attr(ino.0, &fs::symlink_metadata(&full).map_err(errno)?))
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let result = self.with(|st, backing| {
            let path = child(st, parent, name, Errno::EPERM)?;
            let file_type = mode & libc::S_IFMT;
            if file_type != libc::S_IFREG && file_type != 0 {
                // Devices, fifos and sockets: nothing the harness's servers create.
                return Err(Errno::EPERM);
            }
            self.check_space()?;
            let full = backing.join(&path);
            let file =
                OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(&full).map_err(errno)?;
            // Recorded as soon as it exists, so a power loss undoes it whatever fails next.
            st.journal.record_name(parent.0, NameOp::Created { path: path.clone() });
            let md = file.metadata().map_err(errno)?;
            Ok(attr(st.inodes.lookup(&path), &md))
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let result = self.with(|st, backing| {
            let path = child(st, parent, name, Errno::EPERM)?;
            self.check_space()?;
            let full = backing.join(&path);
            DirBuilder::new().mode(mode & 0o7777).create(&full).map_err(errno)?;
            st.journal.record_name(parent.0, NameOp::Created { path: path.clone() });
            let md = fs::symlink_metadata(&full).map_err(errno)?;
            Ok(attr(st.inodes.lookup(&path), &md))
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.with(|st, backing| {
            let path = child(st, parent, name, Errno::ENOENT)?;
            if fs::symlink_metadata(backing.join(&path)).map_err(errno)?.is_dir() {
                return Err(Errno::EISDIR);
            }
            let stash = stash(st, backing, &path, false).map_err(errno)?;
            st.journal.record_name(parent.0, NameOp::Removed { path, stash });
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.with(|st, backing| {
            let path = child(st, parent, name, Errno::ENOENT)?;
            let full = backing.join(&path);
            if !fs::symlink_metadata(&full).map_err(errno)?.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            if fs::read_dir(&full).map_err(errno)?.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
            let stash = stash(st, backing, &path, true).map_err(errno)?;
            st.journal.record_name(parent.0, NameOp::Removed { path, stash });
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.with(|st, backing| {
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let from = child(st, parent, name, Errno::ENOENT)?;
            let to = child(st, newparent, newname, Errno::EPERM)?;
            let src_dir = fs::symlink_metadata(backing.join(&from)).map_err(errno)?.is_dir();
            if from == to {
                return Ok(());
            }
            let replaced = match fs::symlink_metadata(backing.join(&to)) {
                Ok(md) => {
                    let dst_dir = md.is_dir();
                    if src_dir && !dst_dir {
                        return Err(Errno::ENOTDIR);
                    }
                    if !src_dir && dst_dir {
                        return Err(Errno::EISDIR);
                    }
                    if dst_dir && fs::read_dir(backing.join(&to)).map_err(errno)?.next().is_some() {
                        return Err(Errno::ENOTEMPTY);
                    }
                    Some((stash(st, backing, &to, dst_dir).map_err(errno)?, dst_dir))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(errno(e)),
            };
            if let Err(e) = fs::rename(backing.join(&from), backing.join(&to)) {
                if let Some((stash, dst_dir)) = &replaced {
                    // Put the target back; the failed rename changed nothing.
                    if fs::rename(backing.join(stash), backing.join(&to)).is_ok() {
                        st.inodes.move_path(stash, &to, *dst_dir);
                    }
                }
                return Err(errno(e));
            }
            st.inodes.move_path(&from, &to, src_dir);
            let replaced = replaced.map(|(stash, _)| stash);
            st.journal.record_name(newparent.0, NameOp::Renamed { from, to, replaced });
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.with(|st, backing| {
            let file = access(flags.0).open(backing.join(st.path(ino)?)).map_err(errno)?;
            Ok(st.add_handle(Handle::File(OpenFile { file, sync: is_sync(flags.0) })))
        });
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.with(|st, _| read_range(&st.file(fh)?.file, offset, u64::from(size)).map_err(errno));
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.with(|st, _| {
            self.check_space()?;
            let open = st.file(fh)?;
            let len = data.len() as u64;
            if !open.sync && !is_sync(flags.0) {
                let old_len = open.file.metadata().map_err(errno)?.len();
                let old = if offset < old_len {
                    read_range(&open.file, offset, len.min(old_len - offset)).map_err(errno)?
                } else {
                    Vec::new()
                };
                st.journal.record_data(ino.0, DataUndo::Write { offset, old, old_len, len });
            }
            st.file(fh)?.file.write_all_at(data, offset).map_err(errno)?;
            Ok(data.len() as u32)
        });
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    /// `close(2)`: makes nothing durable (data reaches the disk on `fsync` only).
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = self.with(|st, _| Ok(st.handles.remove(&fh.0)));
        reply.ok();
    }

    /// `fsync(2)` and `fdatasync(2)` alike (`datasync` set for the latter): the inode's data,
    /// written through any handle, is durable. Its directory entry is not (see `fsyncdir`).
    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let result = self.with(|st, _| {
            self.check_sync()?;
            st.journal.sync_file(ino.0);
            st.collect(ino.0);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.with(|st, _| {
            st.path(ino)?;
            Ok(st.add_handle(Handle::Dir(Vec::new())))
        });
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    /// Entry `i` of the listing carries offset `i + 1`, the kernel's cookie for the next call.
    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let result = self.with(|st, backing| {
            let needs_listing = offset == 0 || matches!(st.handles.get(&fh.0), Some(Handle::Dir(e)) if e.is_empty());
            if needs_listing {
                let listing = list_dir(st, backing, ino)?;
                match st.handles.get_mut(&fh.0) {
                    Some(Handle::Dir(entries)) => *entries = listing,
                    _ => return Err(Errno::EBADF),
                }
            }
            let Some(Handle::Dir(entries)) = st.handles.get(&fh.0) else {
                return Err(Errno::EBADF);
            };
            for (i, (name, ino, kind)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                    break;
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _ = self.with(|st, _| Ok(st.handles.remove(&fh.0)));
        reply.ok();
    }

    /// `fsync(2)` of a directory: the entries created, removed or renamed into it are durable;
    /// files kept in the stash for their pending removal are deleted now.
    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let result = self.with(|st, backing| {
            self.check_sync()?;
            for stashed in st.journal.sync_dir(ino.0) {
                if let Err(e) = remove_any(&backing.join(&stashed)) {
                    tracing::warn!("lazyfs: cannot delete {}: {e}", backing.join(&stashed).display());
                }
            }
            st.collect(ino.0);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let free = if self.shared.fault() == Fault::DiskFull { 0 } else { TOTAL_BLOCKS / 2 };
        reply.statfs(TOTAL_BLOCKS, free, free, 1 << 24, 1 << 23, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.with(|st, backing| {
            let path = child(st, parent, name, Errno::EPERM)?;
            self.check_space()?;
            let full = backing.join(&path);
            // Created read-write whatever the access mode asked (std cannot create read-only);
            // the kernel enforces the caller's mode on its descriptor.
            let created = OpenOptions::new().read(true).write(true).create_new(true).mode(mode & 0o7777).open(&full);
            let (file, ino) = match created {
                Ok(file) => {
                    st.journal.record_name(parent.0, NameOp::Created { path: path.clone() });
                    (file, st.inodes.lookup(&path))
                }
                // Created by someone else since the kernel's lookup: open it as open(2) would.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                    let file = OpenOptions::new().read(true).write(true).open(&full).map_err(errno)?;
                    let ino = st.inodes.lookup(&path);
                    if flags & libc::O_TRUNC != 0 {
                        if let Err(e) = resize(st, ino, &full, 0) {
                            st.inodes.forget(ino, 1);
                            st.collect(ino);
                            return Err(errno(e));
                        }
                    }
                    (file, ino)
                }
                Err(e) => return Err(errno(e)),
            };
            let md = file.metadata().map_err(errno)?;
            let fh = st.add_handle(Handle::File(OpenFile { file, sync: is_sync(flags) }));
            Ok((attr(ino, &md), fh))
        });
        match result {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    /// Mode 0 only (allocate, growing the file): the other modes (keep size, punch hole,
    /// zero range) answer EOPNOTSUPP, which callers treat as "not supported here".
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.with(|st, backing| {
            if mode != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            self.check_space()?;
            let full = backing.join(st.path(ino)?);
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            if end > fs::metadata(&full).map_err(errno)?.len() {
                resize(st, ino.0, &full, end).map_err(errno)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// The listing of directory `ino`: `.`, `..`, then the backing entries (the stash hidden). An
/// entry the kernel has not looked up yet has no inode of ours; it is listed with the backing
/// inode number, high bit set so that it cannot collide with ours.
fn list_dir(st: &State, backing: &Path, ino: INodeNo) -> Result<Vec<(OsString, u64, FileType)>, Errno> {
    let path = st.path(ino)?;
    let parent_ino = path.parent().and_then(|p| st.inodes.ino_of(p)).unwrap_or(ROOT_INO);
    let mut entries = vec![
        (OsString::from("."), ino.0, FileType::Directory),
        (OsString::from(".."), parent_ino, FileType::Directory),
    ];
    for entry in fs::read_dir(backing.join(&path)).map_err(errno)? {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name();
        if ino.0 == ROOT_INO && name == STASH_DIR {
            continue;
        }
        let entry_ino = st.inodes.ino_of(&path.join(&name)).unwrap_or(entry.ino() | 1 << 63);
        let kind = entry.file_type().map(kind).unwrap_or(FileType::RegularFile);
        entries.push((name, entry_ino, kind));
    }
    Ok(entries)
}
