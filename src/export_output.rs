//! Where `distroctl export` writes its archive, chosen so that an export
//! never replaces or writes through something it should not, even when
//! another local user can write to the target's directory.
//!
//! - A regular file (or a name that does not exist yet) is written to a
//!   temporary file created exclusively under a random name in the same
//!   directory (`O_CREAT|O_EXCL`, so a planted symlink or file is never
//!   followed), fsynced, renamed over the name and the directory fsynced:
//!   a reader sees the old file or the whole new one. A symlink at the
//!   name is replaced, never followed: its target stays untouched.
//! - `-`, `/dev/stdout`, `/dev/stderr`, `/dev/fd/N` and `/proc/self/fd/N`
//!   write to that open descriptor, as the shell set it up.
//! - A FIFO, a terminal, `/dev/null` or a tape drive is opened and written
//!   to directly: that is what the user means by naming it.
//! - Anything else (a directory, a socket, a block device, other character
//!   devices such as `/dev/full` or `/dev/mem`) is refused; it is never
//!   replaced by a regular file.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Major number of SCSI tape drives (`/dev/st0`, `/dev/nst0`).
const TAPE_MAJOR: u32 = 9;
/// Major and minor of `/dev/null`.
const NULL_DEVICE: (u32, u32) = (1, 3);

/// A target an export cannot be written to.
#[derive(Debug, Error)]
pub enum OutputError {
    /// The target is something an archive must not be written into.
    #[error("cannot export to {}: it is {what}; name a regular file, a FIFO or -", path.display())]
    Refused {
        /// The target.
        path: PathBuf,
        /// What it is, as a noun phrase.
        what: &'static str,
    },
    /// A file system step failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// How an export reaches its target, decided before the agent is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An open descriptor of this process (`-` is 1).
    Descriptor(i32),
    /// A FIFO or an allowed device, written to in place.
    Direct(PathBuf),
    /// A regular file or new name, replaced atomically when complete.
    Replace(PathBuf),
}

impl Target {
    /// Decides how `path` is written, or refuses it.
    pub fn choose(path: &Path) -> Result<Target, OutputError> {
        if let Some(fd) = descriptor_path(path) {
            return Ok(Target::Descriptor(fd));
        }
        let io_err = |source| OutputError::Io {
            action: "look at",
            path: path.to_path_buf(),
            source,
        };
        // Follows symlinks: `/dev/tty` style links lead to the device. A
        // link to a regular file is replaced, not followed, below.
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Target::Replace(path.to_path_buf()))
            }
            Err(e) => return Err(io_err(e)),
        };
        let refuse = |what| {
            Err(OutputError::Refused {
                path: path.to_path_buf(),
                what,
            })
        };
        let kind = meta.file_type();
        if kind.is_file() {
            Ok(Target::Replace(path.to_path_buf()))
        } else if written_in_place(&meta) {
            Ok(Target::Direct(path.to_path_buf()))
        } else if kind.is_char_device() {
            refuse("a character device that is not a terminal, a tape or /dev/null")
        } else if kind.is_dir() {
            refuse("a directory")
        } else if kind.is_block_device() {
            refuse("a block device")
        } else if kind.is_socket() {
            refuse("a socket")
        } else {
            refuse("not a regular file")
        }
    }

    /// Opens the target for writing (a FIFO waits for its reader here).
    pub fn open(&self) -> Result<Output, OutputError> {
        match self {
            Target::Descriptor(fd) => {
                let copy = nix::unistd::dup(*fd).map_err(|e| OutputError::Io {
                    action: "write to",
                    path: PathBuf::from(format!("/dev/fd/{fd}")),
                    source: e.into(),
                })?;
                // SAFETY: `dup` just returned `copy`, a new descriptor that
                // nothing else owns; the File takes it over.
                Ok(Output::Direct(unsafe { File::from_raw_fd(copy) }))
            }
            Target::Direct(path) => open_direct(path),
            Target::Replace(path) => open_replacement(path),
        }
    }
}

/// `/dev/stdout`, `/dev/fd/N` and the like: the descriptor they name.
fn descriptor_path(path: &Path) -> Option<i32> {
    let s = path.to_str()?;
    match s {
        "-" | "/dev/stdout" => return Some(1),
        "/dev/stderr" => return Some(2),
        _ => {}
    }
    let n = s
        .strip_prefix("/dev/fd/")
        .or_else(|| s.strip_prefix("/proc/self/fd/"))?;
    n.parse().ok().filter(|&fd| fd >= 0)
}

/// Terminals: virtual consoles and serial lines (4), `/dev/tty` and
/// `/dev/console` (5), pseudo-terminal slaves (136–143).
fn is_terminal_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

fn open_direct(path: &Path) -> Result<Output, OutputError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        // Never create, never become the controlling terminal.
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|source| OutputError::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
    // The name may have been swapped since it was looked at: write only to
    // what was allowed, never into a regular file in place.
    let meta = file.metadata().map_err(|source| OutputError::Io {
        action: "look at",
        path: path.to_path_buf(),
        source,
    })?;
    if !written_in_place(&meta) {
        return Err(OutputError::Refused {
            path: path.to_path_buf(),
            what: "no longer the FIFO or device it was",
        });
    }
    Ok(Output::Direct(file))
}

/// FIFOs, terminals, `/dev/null` and tape drives.
fn written_in_place(meta: &std::fs::Metadata) -> bool {
    let kind = meta.file_type();
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    kind.is_fifo()
        || (kind.is_char_device()
            && ((major, minor) == NULL_DEVICE || major == TAPE_MAJOR || is_terminal_major(major)))
}

fn open_replacement(path: &Path) -> Result<Output, OutputError> {
    let name = path.file_name().ok_or_else(|| OutputError::Refused {
        path: path.to_path_buf(),
        what: "not a file name",
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // tempfile creates with O_CREAT|O_EXCL under a random name, so nothing
    // planted in the directory is followed or reused. 0600: an archive of a
    // distro holds its /etc/shadow.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(|source| OutputError::Io {
            action: "create a temporary file in",
            path: dir.clone(),
            source,
        })?;
    Ok(Output::Replace {
        tmp,
        dir,
        target: path.to_path_buf(),
    })
}

/// An open export target.
#[derive(Debug)]
pub enum Output {
    /// Written in place.
    Direct(File),
    /// Written to `tmp`, renamed over `target` by [`Output::commit`].
    Replace {
        /// The temporary file (removed when dropped uncommitted).
        tmp: tempfile::NamedTempFile,
        /// The directory holding both.
        dir: PathBuf,
        /// The name being replaced.
        target: PathBuf,
    },
}

impl Output {
    /// A handle to write the archive through.
    pub fn writer(&self) -> io::Result<File> {
        match self {
            Output::Direct(f) => f.try_clone(),
            Output::Replace { tmp, .. } => tmp.as_file().try_clone(),
        }
    }

    /// Makes a complete archive durable and visible under its name.
    pub fn commit(self) -> Result<(), OutputError> {
        let Output::Replace { tmp, dir, target } = self else {
            return Ok(());
        };
        let err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| OutputError::Io {
                action,
                path,
                source,
            }
        };
        tmp.as_file().sync_all().map_err(err("write", &target))?;
        tmp.persist(&target)
            .map_err(|e| e.error)
            .map_err(err("rename into place", &target))?;
        let dir_file = File::open(&dir).map_err(err("open", &dir))?;
        dir_file.sync_all().map_err(err("flush", &dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_names_write_to_the_open_descriptor() {
        assert_eq!(descriptor_path(Path::new("-")), Some(1));
        assert_eq!(descriptor_path(Path::new("/dev/stdout")), Some(1));
        assert_eq!(descriptor_path(Path::new("/dev/stderr")), Some(2));
        assert_eq!(descriptor_path(Path::new("/dev/fd/7")), Some(7));
        assert_eq!(descriptor_path(Path::new("/proc/self/fd/3")), Some(3));
        assert_eq!(descriptor_path(Path::new("/dev/fd/x")), None);
        assert_eq!(descriptor_path(Path::new("out.tar")), None);
    }

    #[test]
    fn targets_are_replaced_written_in_place_or_refused_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.tar");

        assert_eq!(Target::choose(&new).unwrap(), Target::Replace(new.clone()));
        assert_eq!(
            Target::choose(Path::new("/dev/null")).unwrap(),
            Target::Direct("/dev/null".into())
        );
        let full = Target::choose(Path::new("/dev/full"))
            .unwrap_err()
            .to_string();
        assert!(full.contains("is a character device"), "{full}");
        let directory = Target::choose(dir.path()).unwrap_err().to_string();
        assert!(directory.contains("is a directory"), "{directory}");
    }

    #[test]
    fn uncommitted_replacement_leaves_nothing_and_the_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.tar");
        std::fs::write(&target, "old").unwrap();

        let output = Target::Replace(target.clone()).open().unwrap();
        std::io::Write::write_all(&mut output.writer().unwrap(), b"half").unwrap();
        drop(output);

        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
