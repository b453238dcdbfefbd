//! Creating one archive entry below the distro root and giving it the
//! archive's metadata, under the extraction policy.
//!
//! Every name is resolved against an open parent directory and nothing here
//! follows a symlink, so what an entry creates stays inside the distro root.
//! Extraction is the only writer of the (staging) tree while it runs.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::dirfd;
use super::entry_meta::Meta;
use super::ImportError;

/// Character devices allowed as `dev/<name>`: the ones every root file system
/// has and that give no access to hardware or kernel memory.
const ALLOWED_CHAR_DEVICES: [(u32, u32); 8] = [
    (1, 3), // null
    (1, 5), // zero
    (1, 7), // full
    (1, 8), // random
    (1, 9), // urandom
    (5, 0), // tty
    (5, 1), // console
    (5, 2), // ptmx
];

/// The device kinds an entry can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Node {
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// Whether the device policy allows a node of `kind` with these numbers at
/// `path` (normalized). FIFOs are allowed anywhere.
pub(super) fn node_allowed(kind: Node, path: &[u8], major: u32, minor: u32) -> bool {
    match kind {
        Node::Fifo => true,
        Node::Block => false,
        Node::Char => {
            let in_dev = path
                .strip_prefix(b"dev/")
                .is_some_and(|name| !name.contains(&b'/'));
            in_dev && ALLOWED_CHAR_DEVICES.contains(&(major, minor))
        }
    }
}

/// Counts extended attributes the file system refused, warning about the
/// first, so that a file system without `user.*` support does not flood the log.
#[derive(Debug, Default)]
pub(super) struct XattrSkips {
    /// Attributes skipped so far.
    pub(super) count: u64,
}

impl XattrSkips {
    fn note(&mut self, path: &str, name: &[u8], err: &io::Error) {
        if self.count == 0 {
            tracing::warn!(
                path,
                xattr = %String::from_utf8_lossy(name),
                error = %err,
                "the file system refused an extended attribute; skipping such attributes"
            );
        }
        self.count += 1;
    }
}

/// Maps an I/O error on the destination to an [`ImportError`].
pub(super) fn dest<'a>(
    action: &'static str,
    path: &'a str,
) -> impl FnOnce(io::Error) -> ImportError + 'a {
    move |source| ImportError::Destination {
        action,
        path: path.to_owned(),
        source,
    }
}

fn dest_errno<'a>(action: &'static str, path: &'a str) -> impl FnOnce(Errno) -> ImportError + 'a {
    move |errno| ImportError::Destination {
        action,
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// Removes what is at `name` so that an entry can take its place: tar's rule
/// that a later entry wins. A directory is only removed when empty.
fn remove_existing(parent: BorrowedFd<'_>, name: &[u8], path: &str) -> Result<(), ImportError> {
    let stat = dirfd::stat_at(parent, name).map_err(dest("inspect", path))?;
    let is_dir = dirfd::file_type(&stat) == libc::S_IFDIR;
    let flag = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    match unlinkat(Some(parent.as_raw_fd()), name, flag) {
        Ok(()) => Ok(()),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) if is_dir => Err(ImportError::ReplacesDirectory {
            path: path.to_owned(),
        }),
        Err(errno) => Err(dest_errno("remove", path)(errno)),
    }
}

/// Runs `create`; if something is in the way, removes it and tries once more.
fn create_replacing<T>(
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &str,
    mut create: impl FnMut() -> io::Result<T>,
) -> Result<T, ImportError> {
    match create() {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
            remove_existing(parent, name, path)?;
            create().map_err(dest("create", path))
        }
        result => result.map_err(dest("create", path)),
    }
}

/// Creates the regular file `name` in `parent`, fresh even if something was
/// there, so that an existing file (perhaps a hard link) is never written into.
pub(super) fn create_file(
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &str,
) -> Result<File, ImportError> {
    create_replacing(parent, name, path, || dirfd::create_file(parent, name))
}

/// Owner, mode and extended attributes of a regular file or directory.
/// The owner goes first because `chown` clears setuid and setgid, and the
/// attributes last because `chown` also drops `security.capability`.
pub(super) fn apply_to_fd(
    file: &File,
    meta: &Meta,
    path: &str,
    skips: &mut XattrSkips,
) -> Result<(), ImportError> {
    use xattr::FileExt;
    let fd = file.as_raw_fd();
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(dest_errno("set the owner of", path))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(dest_errno("set the mode of", path))?;
    set_xattrs(meta, path, skips, |name, value| file.set_xattr(name, value))
}

/// Sets the modification time of an open regular file or directory.
pub(super) fn set_mtime_fd(file: &File, mtime: TimeSpec, path: &str) -> Result<(), ImportError> {
    futimens(file.as_raw_fd(), &TimeSpec::UTIME_OMIT, &mtime)
        .map_err(dest_errno("set the modification time of", path))
}

fn set_xattrs(
    meta: &Meta,
    path: &str,
    skips: &mut XattrSkips,
    mut set: impl FnMut(&OsStr, &[u8]) -> io::Result<()>,
) -> Result<(), ImportError> {
    for (name, value) in &meta.xattrs {
        match set(OsStr::from_bytes(name), value) {
            Ok(()) => {}
            // Not supported here (many file systems lack user.* on some
            // types), or not allowed on this kind of inode.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EPERM | libc::E2BIG)
                ) =>
            {
                skips.note(path, name, &err);
            }
            Err(err) => return Err(dest("set extended attributes on", path)(err)),
        }
    }
    Ok(())
}

/// Creates (or keeps) the directory `name` in `parent`, applies owner, mode and
/// extended attributes, and returns it open. Its time is set by the caller at
/// the very end, once nothing is added to it any more.
pub(super) fn directory(
    parent: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    path: &str,
    skips: &mut XattrSkips,
) -> Result<OwnedFd, ImportError> {
    let private = Mode::from_bits_truncate(0o700);
    match mkdirat(Some(parent.as_raw_fd()), name, private) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(dest_errno("create", path)(errno)),
    }
    let fd = match dirfd::open_dir(parent, name) {
        Ok(fd) => fd,
        // A non-directory is in the way: the directory entry replaces it.
        Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            remove_existing(parent, name, path)?;
            mkdirat(Some(parent.as_raw_fd()), name, private).map_err(dest_errno("create", path))?;
            dirfd::open_dir(parent, name).map_err(dest("open", path))?
        }
        Err(err) => return Err(dest("open", path)(err)),
    };
    let file = File::from(fd);
    apply_to_fd(&file, meta, path, skips)?;
    Ok(file.into())
}

/// Creates the symlink `name` -> `target` in `parent`, as it is: an absolute
/// target is resolved inside the distro once it runs.
pub(super) fn symlink(
    parent: BorrowedFd<'_>,
    name: &[u8],
    target: &[u8],
    meta: &Meta,
    path: &str,
    skips: &mut XattrSkips,
) -> Result<(), ImportError> {
    let dirfd = Some(parent.as_raw_fd());
    create_replacing(parent, name, path, || Ok(symlinkat(target, dirfd, name)?))?;
    apply_at(parent, name, meta, false, path, skips)
}

/// Creates a device node or FIFO the policy allowed.
pub(super) fn node(
    parent: BorrowedFd<'_>,
    name: &[u8],
    kind: Node,
    (major, minor): (u32, u32),
    meta: &Meta,
    path: &str,
    skips: &mut XattrSkips,
) -> Result<(), ImportError> {
    let (sflag, dev) = match kind {
        Node::Char => (SFlag::S_IFCHR, makedev(major.into(), minor.into())),
        Node::Block => (SFlag::S_IFBLK, makedev(major.into(), minor.into())),
        Node::Fifo => (SFlag::S_IFIFO, 0),
    };
    let dirfd = Some(parent.as_raw_fd());
    let private = Mode::from_bits_truncate(0o600);
    create_replacing(parent, name, path, || {
        Ok(mknodat(dirfd, name, sflag, private, dev)?)
    })?;
    apply_at(parent, name, meta, true, path, skips)
}

/// Hard-links `name` in `parent` to `target_name` in `target_parent`, which
/// the caller checked is a regular file. Never follows a symlink.
pub(super) fn hard_link(
    target_parent: BorrowedFd<'_>,
    target_name: &[u8],
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &str,
) -> Result<(), ImportError> {
    create_replacing(parent, name, path, || {
        Ok(linkat(
            Some(target_parent.as_raw_fd()),
            target_name,
            Some(parent.as_raw_fd()),
            name,
            AtFlags::empty(),
        )?)
    })
}

/// Owner, mode (not for symlinks), extended attributes and time of something
/// that cannot be opened for writing: a symlink, device node or FIFO, which
/// the caller created at `name` a moment ago.
fn apply_at(
    parent: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    with_mode: bool,
    path: &str,
    skips: &mut XattrSkips,
) -> Result<(), ImportError> {
    let dirfd = Some(parent.as_raw_fd());
    let (uid, gid) = (Uid::from_raw(meta.uid), Gid::from_raw(meta.gid));
    fchownat(
        dirfd,
        name,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(dest_errno("set the owner of", path))?;
    if with_mode {
        // Following is harmless: `name` is the node just made by mknodat,
        // which fails if anything was there, and nothing else writes the tree.
        fchmodat(
            dirfd,
            name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(dest_errno("set the mode of", path))?;
    }
    if !meta.xattrs.is_empty() {
        let fd = dirfd::open_path_only(parent, name).map_err(dest("open", path))?;
        set_xattrs(meta, path, skips, |n, v| {
            dirfd::set_xattr_path_only(fd.as_fd(), n, v)
        })?;
    }
    utimensat(
        dirfd,
        name,
        &TimeSpec::UTIME_OMIT,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(dest_errno("set the modification time of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_policy_allows_harmless_char_devices_in_dev_only() {
        // Arrange
        let cases: [(Node, &[u8], u32, u32, bool); 9] = [
            (Node::Char, b"dev/null", 1, 3, true),
            (Node::Char, b"dev/ptmx", 5, 2, true),
            (Node::Char, b"dev/urandom", 1, 9, true),
            (Node::Char, b"dev/mem", 1, 1, false),
            (Node::Char, b"dev/kmsg", 1, 11, false),
            (Node::Char, b"tmp/null", 1, 3, false),
            (Node::Char, b"dev/pts/null", 1, 3, false),
            (Node::Block, b"dev/sda", 8, 0, false),
            (Node::Fifo, b"run/initctl", 0, 0, true),
        ];

        for (kind, path, major, minor, expected) in cases {
            // Act
            let allowed = node_allowed(kind, path, major, minor);

            // Assert
            assert_eq!(
                allowed,
                expected,
                "{kind:?} {} {major}:{minor}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn create_file_replaces_a_symlink_instead_of_writing_through_it() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("root/f")).unwrap();
        let root: OwnedFd = File::open(tmp.path().join("root")).unwrap().into();

        // Act
        let file = create_file(root.as_fd(), b"f", "f");

        // Assert
        assert!(file.is_ok());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(tmp.path().join("root/f"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn directory_refuses_to_replace_a_non_empty_directory_with_a_file() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d/inner")).unwrap();
        let root: OwnedFd = File::open(tmp.path()).unwrap().into();

        // Act
        let result = create_file(root.as_fd(), b"d", "d");

        // Assert
        assert!(matches!(result, Err(ImportError::ReplacesDirectory { path }) if path == "d"));
        assert!(tmp.path().join("d/inner").is_dir());
    }
}
