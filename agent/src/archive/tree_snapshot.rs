//! Test support: a description of a directory tree by which two trees can be
//! compared (types, modes, owners, times, contents, link targets, device
//! numbers, extended attributes and which names share an inode).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::entry_meta::xattr_restored;

/// One name in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    /// `d`, `f`, `l`, `c`, `b`, `p` or `s`.
    pub(super) kind: char,
    /// Permission bits with setuid, setgid and sticky; 0 for symlinks.
    pub(super) mode: u32,
    /// Owner.
    pub(super) uid: u32,
    /// Group.
    pub(super) gid: u32,
    /// Modification time, whole seconds.
    pub(super) mtime: i64,
    /// Hash and length of a regular file's contents.
    pub(super) content: Option<(u64, u64)>,
    /// Symlink target.
    pub(super) target: Option<Vec<u8>>,
    /// Device numbers of a device node.
    pub(super) rdev: u64,
    /// Restorable extended attributes.
    pub(super) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a file with several names: the first of them in path order.
    pub(super) same_inode_as: Option<Vec<u8>>,
}

/// Describes every name below `root` (the root itself as the empty path).
pub(super) fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut nodes = BTreeMap::new();
    let mut first_names: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut pending = vec![Vec::new()];
    while let Some(rel) = pending.pop() {
        let path = root.join(std::ffi::OsStr::from_bytes(&rel));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let kind = match () {
            _ if ft.is_dir() => 'd',
            _ if ft.is_file() => 'f',
            _ if ft.is_symlink() => 'l',
            _ if ft.is_char_device() => 'c',
            _ if ft.is_block_device() => 'b',
            _ if ft.is_fifo() => 'p',
            _ => 's',
        };
        if kind == 'd' {
            for child in std::fs::read_dir(&path).unwrap() {
                let name = child.unwrap().file_name();
                let mut child_rel = rel.clone();
                if !child_rel.is_empty() {
                    child_rel.push(b'/');
                }
                child_rel.extend_from_slice(name.as_bytes());
                pending.push(child_rel);
            }
        }
        let content = (kind == 'f').then(|| hash_file(&path));
        let target = (kind == 'l').then(|| {
            std::fs::read_link(&path)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let xattrs = xattr::list(&path)
            .map(|names| {
                names
                    .filter(|name| xattr_restored(name.as_bytes()))
                    .filter_map(|name| {
                        Some((name.as_bytes().to_vec(), xattr::get(&path, &name).ok()??))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let same_inode_as = (kind == 'f' && meta.nlink() > 1).then(|| {
            let first = first_names
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| rel.clone());
            if rel < *first {
                *first = rel.clone();
            }
            (meta.dev(), meta.ino())
        });
        nodes.insert(
            rel,
            (
                Node {
                    kind,
                    mode: if kind == 'l' { 0 } else { meta.mode() & 0o7777 },
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime: meta.mtime(),
                    content,
                    target,
                    rdev: meta.rdev(),
                    xattrs,
                    same_inode_as: None,
                },
                same_inode_as,
            ),
        );
    }
    nodes
        .into_iter()
        .map(|(rel, (mut node, inode))| {
            node.same_inode_as = inode.map(|key| first_names[&key].clone());
            (rel, node)
        })
        .collect()
}

fn hash_file(path: &Path) -> (u64, u64) {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0; 64 * 1024];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
        len += n as u64;
    }
    (hasher.finish(), len)
}

/// Panics with the first difference between two snapshots.
pub(super) fn assert_same(expected: &BTreeMap<Vec<u8>, Node>, actual: &BTreeMap<Vec<u8>, Node>) {
    for (path, node) in expected {
        let shown = String::from_utf8_lossy(path);
        let other = actual
            .get(path)
            .unwrap_or_else(|| panic!("{shown:?} is missing"));
        assert_eq!(node, other, "{shown:?} differs");
    }
    for path in actual.keys() {
        assert!(
            expected.contains_key(path),
            "{:?} is extra",
            String::from_utf8_lossy(path)
        );
    }
}
