//! The inode table: our inode numbers <-> paths relative to the backing root.
//!
//! The kernel names files by the inode numbers we hand out in `lookup`/`create`/`mkdir`, and
//! forgets them (`forget`) once it drops them from its caches. We keep each inode's current
//! path, which follows renames, and moves into the stash when the name is removed while the
//! kernel (or a pending undo record) still refers to the inode.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Inode number of the mount's root (FUSE fixes it at 1).
pub(crate) const ROOT_INO: u64 = 1;

struct Node {
    /// Relative to the backing root; empty for the root.
    path: PathBuf,
    /// Lookups the kernel holds (each `lookup`/`create`/`mkdir` reply adds one).
    lookups: u64,
}

pub(crate) struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

impl InodeTable {
    pub(crate) fn new() -> InodeTable {
        let mut table = InodeTable { nodes: HashMap::new(), by_path: HashMap::new(), next: ROOT_INO + 1 };
        table.nodes.insert(ROOT_INO, Node { path: PathBuf::new(), lookups: 1 });
        table.by_path.insert(PathBuf::new(), ROOT_INO);
        table
    }

    pub(crate) fn path(&self, ino: u64) -> Option<&Path> {
        self.nodes.get(&ino).map(|n| n.path.as_path())
    }

    pub(crate) fn ino_of(&self, path: &Path) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode of `path` with one more kernel lookup, allocated if the path has none yet.
    pub(crate) fn lookup(&mut self, path: &Path) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.lookups += 1;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node { path: path.to_path_buf(), lookups: 1 });
        self.by_path.insert(path.to_path_buf(), ino);
        ino
    }

    /// Drops `n` kernel lookups. Returns true when the kernel holds none any more: the caller
    /// removes the inode unless an undo record still needs its path.
    pub(crate) fn forget(&mut self, ino: u64, n: u64) -> bool {
        match self.nodes.get_mut(&ino) {
            Some(node) if ino != ROOT_INO => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            _ => false,
        }
    }

    /// Removes an inode the kernel no longer holds (see [`InodeTable::forget`]).
    pub(crate) fn remove_if_unused(&mut self, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(node) = self.nodes.get(&ino) {
            if node.lookups == 0 {
                let path = node.path.clone();
                self.nodes.remove(&ino);
                if self.by_path.get(&path) == Some(&ino) {
                    self.by_path.remove(&path);
                }
            }
        }
    }

    /// Every inode at `from` or below it is now at the same place under `to` (a rename, or a
    /// removal into the stash). An inode already at `to` must have been moved away first.
    pub(crate) fn move_path(&mut self, from: &Path, to: &Path, is_dir: bool) {
        if !is_dir {
            if let Some(ino) = self.by_path.remove(from) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.path = to.to_path_buf();
                }
                self.by_path.insert(to.to_path_buf(), ino);
            }
            return;
        }
        let moved: Vec<(u64, PathBuf)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.path.starts_with(from))
            .map(|(&ino, n)| (ino, n.path.clone()))
            .collect();
        for (ino, old) in moved {
            if self.by_path.get(&old) == Some(&ino) {
                self.by_path.remove(&old);
            }
            let suffix = old.strip_prefix(from).unwrap_or(Path::new(""));
            let new = if suffix.as_os_str().is_empty() { to.to_path_buf() } else { to.join(suffix) };
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = new.clone();
            }
            self.by_path.insert(new, ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_of_a_directory_moves_its_descendants() {
        let mut t = InodeTable::new();
        let d = t.lookup(Path::new("d"));
        let f = t.lookup(Path::new("d/f"));
        let other = t.lookup(Path::new("dd"));
        t.move_path(Path::new("d"), Path::new("e"), true);
        assert_eq!(t.path(d), Some(Path::new("e")));
        assert_eq!(t.path(f), Some(Path::new("e/f")));
        assert_eq!(t.path(other), Some(Path::new("dd")), "a sibling sharing the name prefix stays");
        assert_eq!(t.ino_of(Path::new("e/f")), Some(f));
        assert_eq!(t.ino_of(Path::new("d/f")), None);
    }

    #[test]
    fn forget_removes_only_unreferenced_inodes() {
        let mut t = InodeTable::new();
        let a = t.lookup(Path::new("a"));
        assert_eq!(t.lookup(Path::new("a")), a);
        assert!(!t.forget(a, 1));
        assert!(t.forget(a, 1));
        t.remove_if_unused(a);
        assert_eq!(t.path(a), None);
        assert!(!t.forget(ROOT_INO, 5), "the root is never forgotten");
    }
}
