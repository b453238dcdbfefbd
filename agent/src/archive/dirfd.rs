//! File system calls relative to directory descriptors, none of which follows
//! a symlink in the last component.
//!
//! Extraction and export resolve every name against an open directory so that
//! a symlink planted in the tree (by the archive, or by a process in a running
//! distro) can never redirect them outside the distro root.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode};

/// Extended attributes as (name, value) pairs.
pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Takes ownership of a descriptor just returned by a successful `openat`.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful openat in this module and has
    // not been stored anywhere else, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_at(dir: BorrowedFd<'_>, name: &[u8], flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        OsStr::from_bytes(name),
        flags | OFlag::O_CLOEXEC,
        mode,
    )?;
    Ok(owned(fd))
}

/// Opens the subdirectory `name` of `dir`; fails with `ENOTDIR` (or `ELOOP`)
/// on a symlink or anything else that is not a directory.
pub(super) fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
}

/// Creates the regular file `name` in `dir`, failing if anything is there.
pub(super) fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let fd = open_at(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    )?;
    Ok(File::from(fd))
}

/// Opens `name` in `dir` for reading without following a symlink and without
/// blocking should it be a FIFO.
pub(super) fn open_for_read(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let fd = open_at(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Opens `name` in `dir` as a path-only descriptor (`O_PATH`), which works for
/// symlinks and device nodes without opening what they point to.
pub(super) fn open_path_only(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    open_at(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty())
}

/// `lstat` of `name` in `dir`.
pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<FileStat> {
    Ok(fstatat(
        Some(dir.as_raw_fd()),
        OsStr::from_bytes(name),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// File type bits of a `stat` mode.
pub(super) fn file_type(stat: &FileStat) -> libc::mode_t {
    stat.st_mode & libc::S_IFMT
}

/// The `/proc` name of a path-only descriptor. The kernel resolves it straight
/// to the inode the descriptor refers to, symlink or not, which is the only way
/// to reach the extended attributes of a symlink relative to a descriptor on
/// kernels without `setxattrat`.
fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Sets an extended attribute on the inode behind a path-only descriptor.
pub(super) fn set_xattr_path_only(
    fd: BorrowedFd<'_>,
    name: &OsStr,
    value: &[u8],
) -> io::Result<()> {
    xattr::set_deref(proc_path(fd), name, value)
}

/// Lists the extended attributes of the inode behind a path-only descriptor,
/// with their values; none where the file system has no extended attributes.
pub(super) fn xattrs_path_only(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let path = proc_path(fd);
    let names = match xattr::list_deref(&path) {
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        names => names?,
    };
    let mut out = Vec::new();
    for name in names {
        // An attribute removed between listing and reading is simply gone.
        if let Some(value) = xattr::get_deref(&path, &name)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    Ok(out)
}

/// Lists the extended attributes of an open file or directory, with values;
/// none where the file system has no extended attributes.
pub(super) fn xattrs_of_file(file: &File) -> io::Result<Xattrs> {
    use xattr::FileExt;
    let names = match file.list_xattr() {
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        names => names?,
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = file.get_xattr(&name)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn open_root(dir: &std::path::Path) -> OwnedFd {
        File::open(dir).unwrap().into()
    }

    #[test]
    fn open_dir_refuses_a_symlink_to_a_directory() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        let root = open_root(tmp.path());

        // Act
        let real = open_dir(root.as_fd(), b"real");
        let link = open_dir(root.as_fd(), b"link");

        // Assert
        assert!(real.is_ok());
        // O_DIRECTORY wins over O_NOFOLLOW in the error code.
        let code = link.unwrap_err().raw_os_error();
        assert!(
            matches!(code, Some(libc::ENOTDIR | libc::ELOOP)),
            "{code:?}"
        );
    }

    #[test]
    fn create_file_refuses_to_follow_a_dangling_symlink() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("root/evil")).unwrap();
        let root = open_root(&tmp.path().join("root"));

        // Act
        let result = create_file(root.as_fd(), b"evil");

        // Assert
        assert!(result.is_err());
        assert!(!outside.exists());
    }

    #[test]
    fn path_only_xattr_lands_on_the_symlink_not_its_target() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("target"), b"x").unwrap();
        std::os::unix::fs::symlink("target", tmp.path().join("link")).unwrap();
        let root = open_root(tmp.path());
        let fd = open_path_only(root.as_fd(), b"link").unwrap();

        // Act
        let set = set_xattr_path_only(fd.as_fd(), OsStr::new("trusted.distroctl"), b"v");

        // Assert
        if let Err(err) = set {
            eprintln!("skipped: this file system refuses trusted xattrs on symlinks: {err}");
            return;
        }
        let on_link = xattr::get(tmp.path().join("link"), "trusted.distroctl").unwrap();
        let on_target = xattr::get(tmp.path().join("target"), "trusted.distroctl").unwrap();
        assert_eq!(on_link.as_deref(), Some(&b"v"[..]));
        assert_eq!(on_target, None);
        let listed = xattrs_path_only(fd.as_fd()).unwrap();
        assert!(listed.contains(&(b"trusted.distroctl".to_vec(), b"v".to_vec())));
    }
}
