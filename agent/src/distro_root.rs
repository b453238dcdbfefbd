//! A distro's root directory as the agent reaches it: everything below it is
//! under the control of the distro's root user and is treated as hostile.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` on a descriptor of the distro's root, so that
//! `..`, absolute symlinks and `/proc/self/...` links stay inside the distro
//! exactly as they would for a process running in it. Files are first opened
//! `O_PATH` (which never blocks and opens no device) and only read once
//! `fstat` says they are regular and small; FIFOs, devices and sockets get a
//! one-line error instead of a stalled or runaway read.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use thiserror::Error;

/// Largest account database (`/etc/passwd`, `/etc/group`) the agent reads.
/// Real ones are a few KiB; a million users fit in far less than this.
pub const MAX_ACCOUNT_FILE: u64 = 16 * 1024 * 1024;

/// Longest the agent waits for one request's reads of a distro's files.
pub const FILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `work` (blocking reads of `distro`'s files) on the blocking pool and
/// waits at most [`FILE_TIMEOUT`], so a distro whose files hang (a FUSE
/// mount it serves itself, say) stalls only its own request.
pub async fn off_runtime<T: Send + 'static>(
    distro: &str,
    work: impl FnOnce() -> Result<T, DistroFileError> + Send + 'static,
) -> Result<T, DistroFileError> {
    let timed_out = || DistroFileError::TimedOut {
        distro: distro.to_string(),
    };
    match tokio::time::timeout(FILE_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(DistroFileError::Io {
            distro: distro.to_string(),
            path: "/".into(),
            source: io::Error::other(join),
        }),
        Err(_elapsed) => Err(timed_out()),
    }
}

/// Reading or resolving a file inside a distro failed.
#[derive(Debug, Error)]
pub enum DistroFileError {
    /// The distro's root directory itself could not be opened.
    #[error("could not open the root directory of distro {distro} ({})", root.display())]
    OpenRoot {
        /// Distro.
        distro: String,
        /// Its root as the agent sees it.
        root: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Nothing at that path (after resolving it inside the distro).
    #[error("{path} does not exist in distro {distro}")]
    Missing {
        /// Distro.
        distro: String,
        /// Path inside the distro.
        path: String,
    },
    /// Something other than a regular file where one is read.
    #[error("{path} in distro {distro} is not a regular file")]
    NotRegular {
        /// Distro.
        distro: String,
        /// Path inside the distro.
        path: String,
    },
    /// Something other than a directory where one is needed.
    #[error("{path} in distro {distro} is not a directory")]
    NotDirectory {
        /// Distro.
        distro: String,
        /// Path inside the distro.
        path: String,
    },
    /// The file is larger than the agent is willing to read.
    #[error("{path} in distro {distro} is larger than {limit} bytes")]
    TooLarge {
        /// Distro.
        distro: String,
        /// Path inside the distro.
        path: String,
        /// The cap.
        limit: u64,
    },
    /// The file system work did not finish in time (a stuck mount inside
    /// the distro, say); the agent gave up waiting.
    #[error("reading files of distro {distro} took longer than {FILE_TIMEOUT:?}")]
    TimedOut {
        /// Distro.
        distro: String,
    },
    /// Opening or reading failed otherwise (loops, permissions, I/O).
    #[error("could not read {path} in distro {distro}")]
    Io {
        /// Distro.
        distro: String,
        /// Path inside the distro.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// An open handle on a distro's root directory.
#[derive(Debug)]
pub struct DistroRoot {
    distro: String,
    fd: OwnedFd,
}

/// What kind of file a path names, after resolution inside the distro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file, with its permission bits.
    File {
        /// `st_mode & 0o7777`.
        mode: u32,
    },
    /// A directory.
    Directory,
    /// Anything else (FIFO, socket, device).
    Other,
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call in this
    // module and is stored nowhere else, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl DistroRoot {
    /// Opens `root`, the directory the distro sees as `/`: its root file
    /// system directory, or `/proc/<pid1>/root` of a running distro (which
    /// also sees the mounts made inside it). `root` is a path of the agent's
    /// own choosing, never one read from the distro.
    pub fn open(distro: &str, root: &Path) -> Result<DistroRoot, DistroFileError> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DistroFileError::OpenRoot {
            distro: distro.to_string(),
            root: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(DistroRoot {
            distro: distro.to_string(),
            fd: owned(fd),
        })
    }

    /// The distro's name, for messages.
    pub fn distro(&self) -> &str {
        &self.distro
    }

    fn missing(&self, path: &str) -> DistroFileError {
        DistroFileError::Missing {
            distro: self.distro.clone(),
            path: path.to_string(),
        }
    }

    fn io(&self, path: &str, source: io::Error) -> DistroFileError {
        DistroFileError::Io {
            distro: self.distro.clone(),
            path: path.to_string(),
            source,
        }
    }

    /// An `O_PATH` descriptor of `path` resolved inside the distro.
    fn resolve(&self, path: &str) -> Result<OwnedFd, DistroFileError> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // RESOLVE_IN_ROOT treats a leading `/` as the distro's root already;
        // a relative path is the same thing seen from there.
        let relative = path.trim_start_matches('/');
        let relative = if relative.is_empty() { "." } else { relative };
        match nix::fcntl::openat2(self.fd.as_raw_fd(), relative, how) {
            Ok(fd) => Ok(owned(fd)),
            Err(nix::Error::ENOENT) | Err(nix::Error::ENOTDIR) => Err(self.missing(path)),
            Err(e) => Err(self.io(path, e.into())),
        }
    }

    /// What `path` is inside the distro.
    pub fn kind(&self, path: &str) -> Result<Kind, DistroFileError> {
        let fd = self.resolve(path)?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| self.io(path, e.into()))?;
        Ok(kind_of(st.st_mode))
    }

    /// Whether `path` is an executable regular file inside the distro (a
    /// missing one is not).
    pub fn is_executable(&self, path: &str) -> Result<bool, DistroFileError> {
        match self.kind(path) {
            Ok(Kind::File { mode }) => Ok(mode & 0o111 != 0),
            Ok(_) | Err(DistroFileError::Missing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Checks that `path` is a directory inside the distro.
    pub fn require_directory(&self, path: &str) -> Result<(), DistroFileError> {
        self.open_directory(path).map(drop)
    }

    /// An `O_PATH` descriptor of the directory `path` inside the distro,
    /// for `fchdir`: the process then starts in exactly the directory that
    /// was checked, whatever the distro renames or replaces meanwhile.
    pub fn open_directory(&self, path: &str) -> Result<OwnedFd, DistroFileError> {
        let fd = self.resolve(path)?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| self.io(path, e.into()))?;
        match kind_of(st.st_mode) {
            Kind::Directory => Ok(fd),
            _ => Err(DistroFileError::NotDirectory {
                distro: self.distro.clone(),
                path: path.to_string(),
            }),
        }
    }

    /// Reads the regular file `path` of at most `limit` bytes. Never blocks
    /// on a FIFO and never opens a device: the file is opened for reading
    /// only once it is known to be a regular file.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, DistroFileError> {
        let pinned = self.resolve(path)?;
        let st = fstat(pinned.as_raw_fd()).map_err(|e| self.io(path, e.into()))?;
        if !matches!(kind_of(st.st_mode), Kind::File { .. }) {
            return Err(DistroFileError::NotRegular {
                distro: self.distro.clone(),
                path: path.to_string(),
            });
        }
        let too_large = || DistroFileError::TooLarge {
            distro: self.distro.clone(),
            path: path.to_string(),
            limit,
        };
        if st.st_size as u64 > limit {
            return Err(too_large());
        }
        // Re-opening the pinned inode through the agent's own /proc cannot
        // reach another file: the O_PATH descriptor holds this one.
        let file = File::from(owned(
            nix::fcntl::open(
                format!("/proc/self/fd/{}", pinned.as_raw_fd()).as_str(),
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.io(path, e.into()))?,
        ));
        let mut bytes = Vec::with_capacity(st.st_size as usize);
        // One byte past the cap tells a file that grew meanwhile.
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(path, e))?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(bytes)
    }

    /// Reads `path` as text (invalid UTF-8 replaced); a missing file is
    /// empty, every other problem is an error.
    pub fn read_text_or_empty(&self, path: &str, limit: u64) -> Result<String, DistroFileError> {
        match self.read_file(path, limit) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(DistroFileError::Missing { .. }) => Ok(String::new()),
            Err(e) => Err(e),
        }
    }
}

fn kind_of(mode: u32) -> Kind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Kind::File {
            mode: mode & 0o7777,
        },
        SFlag::S_IFDIR => Kind::Directory,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn distro() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        (dir, root)
    }

    #[test]
    fn reads_a_regular_file() {
        let (_dir, root) = distro();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();

        let bytes = DistroRoot::open("a", &root)
            .unwrap()
            .read_file("/etc/passwd", 100)
            .unwrap();

        assert_eq!(bytes, b"root:x:0:0::/root:/bin/sh\n");
    }

    #[test]
    fn absolute_symlink_resolves_inside_the_distro() {
        let (dir, root) = distro();
        let outside = dir.path().join("secret");
        std::fs::write(&outside, "outside").unwrap();
        std::fs::write(root.join("etc/real"), "inside").unwrap();
        symlink(&outside, root.join("etc/escape")).unwrap();
        symlink("/etc/real", root.join("etc/passwd")).unwrap();
        symlink("../../../../../../secret", root.join("etc/dots")).unwrap();
        let r = DistroRoot::open("a", &root).unwrap();

        let followed = r.read_file("/etc/passwd", 100).unwrap();
        let escape = r.read_file("/etc/escape", 100);
        let dots = r.read_file("/etc/dots", 100);

        assert_eq!(followed, b"inside");
        assert!(
            matches!(escape, Err(DistroFileError::Missing { .. })),
            "{escape:?}"
        );
        assert!(
            matches!(dots, Err(DistroFileError::Missing { .. })),
            "{dots:?}"
        );
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let (_dir, root) = distro();
        nix::unistd::mkfifo(&root.join("etc/passwd"), Mode::from_bits_truncate(0o644)).unwrap();

        let err = DistroRoot::open("a", &root)
            .unwrap()
            .read_file("/etc/passwd", 100)
            .unwrap_err();

        assert_eq!(
            err.to_string(),
            "/etc/passwd in distro a is not a regular file"
        );
    }

    #[test]
    fn magic_link_is_refused() {
        let (_dir, root) = distro();
        symlink("/proc/self/root/etc/hostname", root.join("etc/passwd")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();

        let r = DistroRoot::open("a", &root).unwrap();
        let err = r.read_file("/etc/passwd", 100);

        // The distro has no /proc/self here: it resolves to nothing.
        assert!(err.is_err(), "{err:?}");
    }

    #[test]
    fn file_over_the_cap_is_refused() {
        let (_dir, root) = distro();
        std::fs::write(root.join("etc/group"), vec![b'x'; 101]).unwrap();

        let err = DistroRoot::open("a", &root)
            .unwrap()
            .read_file("/etc/group", 100)
            .unwrap_err();

        assert_eq!(
            err.to_string(),
            "/etc/group in distro a is larger than 100 bytes"
        );
    }

    #[test]
    fn directory_check_stays_inside_the_distro() {
        let (dir, root) = distro();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        symlink(dir.path().join("elsewhere"), root.join("x")).unwrap();
        std::fs::create_dir(root.join("home")).unwrap();
        let r = DistroRoot::open("a", &root).unwrap();

        let escaped = r.require_directory("/x").unwrap_err();
        let home = r.require_directory("/home");
        let file = r.require_directory("/etc");

        assert_eq!(escaped.to_string(), "/x does not exist in distro a");
        assert!(home.is_ok());
        assert!(file.is_ok());
    }

    #[test]
    fn missing_file_reads_as_empty_text() {
        let (_dir, root) = distro();

        let text = DistroRoot::open("a", &root)
            .unwrap()
            .read_text_or_empty("/etc/group", 100)
            .unwrap();

        assert_eq!(text, "");
    }
}
