//! Opening the directory an entry goes into, walking down from the distro root
//! one component at a time without following symlinks.
//!
//! Archives list entries in tree order, so consecutive entries usually share
//! their parent. The directories opened for the previous entry are kept open
//! and reused. A cached descriptor stays correct because extraction is the
//! only writer of the (private, staging) tree, and after [`ParentDirs::open`]
//! the cache holds exactly the directories on the returned path: an entry only
//! ever removes or replaces a child of that directory, never one of them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::stat::{fchmod, mkdirat, Mode};

use super::dirfd;
use super::entry_path::components;

/// Mode of directories created because an entry needs them.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Why a directory could not be reached.
#[derive(Debug)]
pub(super) enum WalkError {
    /// The directory at this path (relative to the root) is a symlink.
    Symlink(Vec<u8>),
    /// The thing at this path is not a directory.
    NotDirectory(Vec<u8>),
    /// Nothing exists at this path, and creating was not asked for.
    Missing(Vec<u8>),
    /// A system call failed at this path.
    Io {
        /// What was being done.
        action: &'static str,
        /// The directory, relative to the root.
        path: Vec<u8>,
        /// The error.
        source: io::Error,
    },
}

/// The distro root and the chain of directories opened below it.
pub(super) struct ParentDirs {
    root: OwnedFd,
    /// Open directories, outermost first; each is the named child of the one
    /// before it, the first a child of `root`.
    chain: Vec<(Vec<u8>, OwnedFd)>,
}

impl ParentDirs {
    /// Starts at `root`, an open directory.
    pub(super) fn new(root: OwnedFd) -> Self {
        ParentDirs {
            root,
            chain: Vec::new(),
        }
    }

    /// The distro root.
    pub(super) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens `dir`, a normalized path relative to the root (empty for the root
    /// itself). With `create`, missing directories are made with mode 0755.
    pub(super) fn open(&mut self, dir: &[u8], create: bool) -> Result<BorrowedFd<'_>, WalkError> {
        let mut kept = 0;
        for (cached, wanted) in self.chain.iter().zip(components(dir)) {
            if cached.0 != wanted {
                break;
            }
            kept += 1;
        }
        self.chain.truncate(kept);
        for (depth, name) in components(dir).enumerate().skip(kept) {
            let parent = self
                .chain
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let fd = open_or_create(parent, name, create).map_err(|kind| {
                let path = prefix(dir, depth + 1).to_vec();
                kind.at(path)
            })?;
            self.chain.push((name.to_vec(), fd));
        }
        Ok(self
            .chain
            .last()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }

    /// Records that the directory `name` was just created or updated inside
    /// `dir`, the directory last returned by [`ParentDirs::open`], so that the
    /// next entry, usually one of its children, need not open it again.
    pub(super) fn entered(&mut self, dir: &[u8], name: &[u8], fd: OwnedFd) {
        debug_assert_eq!(self.chain.len(), components(dir).count());
        self.chain.push((name.to_vec(), fd));
    }
}

/// The first `count` components of `dir`.
fn prefix(dir: &[u8], count: usize) -> &[u8] {
    let mut seen = 0;
    for (i, &b) in dir.iter().enumerate() {
        if b == b'/' {
            seen += 1;
            if seen == count {
                return &dir[..i];
            }
        }
    }
    dir
}

/// A [`WalkError`] still missing its path.
enum Failure {
    Symlink,
    NotDirectory,
    Missing,
    Io(&'static str, io::Error),
}

impl Failure {
    fn at(self, path: Vec<u8>) -> WalkError {
        match self {
            Failure::Symlink => WalkError::Symlink(path),
            Failure::NotDirectory => WalkError::NotDirectory(path),
            Failure::Missing => WalkError::Missing(path),
            Failure::Io(action, source) => WalkError::Io {
                action,
                path,
                source,
            },
        }
    }
}

fn open_or_create(parent: BorrowedFd<'_>, name: &[u8], create: bool) -> Result<OwnedFd, Failure> {
    match dirfd::open_dir(parent, name) {
        Ok(fd) => Ok(fd),
        Err(err) => match err.raw_os_error() {
            Some(libc::ENOENT) if create => create_dir(parent, name),
            Some(libc::ENOENT) => Err(Failure::Missing),
            Some(libc::ELOOP | libc::ENOTDIR) => classify(parent, name),
            _ => Err(Failure::Io("open", err)),
        },
    }
}

fn create_dir(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Failure> {
    let mode = Mode::from_bits_truncate(IMPLICIT_DIR_MODE);
    match mkdirat(Some(parent.as_raw_fd()), name, mode) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(errno) => return Err(Failure::Io("create", errno.into())),
    }
    let fd = match dirfd::open_dir(parent, name) {
        Ok(fd) => fd,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return classify(parent, name);
        }
        Err(err) => return Err(Failure::Io("open", err)),
    };
    // The umask must not decide the mode of directories the archive never listed.
    fchmod(fd.as_raw_fd(), mode).map_err(|errno| Failure::Io("set the mode of", errno.into()))?;
    Ok(fd)
}

/// Tells a symlink from another non-directory after `open_dir` refused `name`.
fn classify(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Failure> {
    match dirfd::stat_at(parent, name) {
        Ok(stat) if dirfd::file_type(&stat) == libc::S_IFLNK => Err(Failure::Symlink),
        Ok(_) => Err(Failure::NotDirectory),
        Err(err) => Err(Failure::Io("inspect", err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::PermissionsExt;

    fn dirs_at(path: &std::path::Path) -> ParentDirs {
        ParentDirs::new(File::open(path).unwrap().into())
    }

    #[test]
    fn open_creates_missing_directories_with_mode_0755() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = dirs_at(tmp.path());

        // Act
        let result = dirs.open(b"a/b/c", true);

        // Assert
        assert!(result.is_ok());
        let meta = std::fs::metadata(tmp.path().join("a/b/c")).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn open_refuses_a_symlinked_component_and_names_it() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("a/link")).unwrap();
        let mut dirs = dirs_at(tmp.path());

        // Act
        let result = dirs.open(b"a/link/sub", true);

        // Assert
        match result {
            Err(WalkError::Symlink(path)) => assert_eq!(path, b"a/link"),
            other => panic!("expected a symlink refusal, got {:?}", other.map(|_| ())),
        }
        assert!(!outside.path().join("sub").exists());
    }

    #[test]
    fn open_refuses_a_file_in_the_middle() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        let mut dirs = dirs_at(tmp.path());

        // Act
        let result = dirs.open(b"file/x", true);

        // Assert
        assert!(matches!(result, Err(WalkError::NotDirectory(path)) if path == b"file"));
    }

    #[test]
    fn open_without_create_reports_missing_directories() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = dirs_at(tmp.path());

        // Act
        let result = dirs.open(b"nope/deeper", false);

        // Assert
        assert!(matches!(result, Err(WalkError::Missing(path)) if path == b"nope"));
        assert!(!tmp.path().join("nope").exists());
    }

    #[test]
    fn open_reopens_directories_off_the_previous_path() {
        // Arrange: cache a/b, move on to c, then replace a/b with a symlink.
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = dirs_at(tmp.path());
        dirs.open(b"a/b", true).unwrap();
        dirs.open(b"a/c", true).unwrap();
        std::fs::remove_dir(tmp.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("a/b")).unwrap();

        // Act
        let result = dirs.open(b"a/b/x", true);

        // Assert
        assert!(matches!(result, Err(WalkError::Symlink(path)) if path == b"a/b"));
    }

    #[test]
    fn prefix_cuts_after_the_given_number_of_components() {
        // Arrange
        let dir = b"usr/lib/x86_64";

        // Act
        let parts = [prefix(dir, 1), prefix(dir, 2), prefix(dir, 3)];

        // Assert
        assert_eq!(
            parts,
            [&b"usr"[..], &b"usr/lib"[..], &b"usr/lib/x86_64"[..]]
        );
    }
}
