//! Import and export of distro root filesystems as tar streams.
//!
//! [`extract`] unpacks an untrusted tar stream (plain, gzip, xz or zstd) into a
//! distro directory and keeps every write inside it: entry paths are checked,
//! directories are walked from a descriptor of the distro root without ever
//! following a symlink, and device nodes are limited to a few harmless ones.
//! [`export`] writes a distro tree back out as a tar stream that both
//! [`extract`] and GNU tar read.
//!
//! Both are blocking; the server runs them on `spawn_blocking`.

mod compression;
mod dirfd;
mod entry_meta;
mod entry_path;
mod export;
mod extract;
mod extract_entry;
mod parent_dirs;
#[cfg(test)]
mod test_tar;
#[cfg(test)]
mod tree_snapshot;
mod unpack;

use std::io;
use std::path::{Path, PathBuf};

use protocol::Compression;
use thiserror::Error;

/// Extracts a tar stream into `dest`, an existing empty directory.
///
/// The compression (none, gzip, xz or zstd) is detected from the first bytes.
/// Ownership, modes (setuid included), extended attributes, modification times
/// and hard links are preserved. Returns the number of uncompressed tar bytes
/// read.
///
/// The input is read to its end, past the end-of-archive marker, so that the
/// decoder verifies its checksums; a stream that stops before that marker is
/// reported as truncated.
///
/// On error, whatever was extracted so far stays in `dest`: callers extract into
/// a staging directory and delete it when this fails.
pub fn extract(input: impl io::Read, dest: &Path) -> Result<u64, ImportError> {
    extract::extract_tree(input, dest)
}

/// Writes the tree under `root` as a tar stream to `out` with the given
/// compression.
///
/// Symlinks are stored, never followed; the walk stays on the file system of
/// `root`; names are sorted so the same tree gives the same stream.
pub fn export(
    root: &Path,
    compression: Compression,
    out: impl io::Write,
) -> Result<(), ExportError> {
    export::export_tree(root, compression, out)
}

/// Who is at fault for an [`ImportError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFault {
    /// The archive is malformed, truncated, not a tar archive, or breaks the
    /// extraction policy. Retrying with the same input fails the same way.
    Archive,
    /// Reading the input stream failed.
    Input,
    /// Writing to the destination directory failed.
    Destination,
}

/// Extracting an archive failed.
///
/// Entry paths in the messages are shown as they appear in the archive, with
/// control characters escaped.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The input is empty, or an archive without a single entry.
    #[error("archive is empty")]
    Empty,
    /// The input does not start with a tar header.
    #[error("input is not a tar archive")]
    NotTar,
    /// The stream ends between entries, before the end-of-archive marker.
    #[error("archive is truncated")]
    Truncated,
    /// The stream ends inside an entry.
    #[error("archive is truncated in entry {path}")]
    TruncatedEntry {
        /// The entry being read.
        path: String,
    },
    /// The compressed stream is damaged.
    #[error("{format} data in the archive is corrupt")]
    Decompress {
        /// The compression format.
        format: &'static str,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// A tar header after the first one is damaged.
    #[error("archive is corrupt after entry {after}")]
    Corrupt {
        /// The last good entry.
        after: String,
        /// The tar parser's error.
        #[source]
        source: io::Error,
    },
    /// The extension headers (long name, PAX records) of one entry are
    /// unreasonably large.
    #[error("archive has oversized extension headers")]
    HeaderTooLarge,
    /// A header field of an entry cannot be decoded.
    #[error("archive entry {path} has an invalid header")]
    BadHeader {
        /// The entry.
        path: String,
        /// The decoding error.
        #[source]
        source: io::Error,
    },
    /// The entry path is empty, holds a NUL byte or names the distro root for
    /// something that is not a directory.
    #[error("archive entry {path} has an invalid path")]
    InvalidPath {
        /// The entry.
        path: String,
    },
    /// The entry path, or one of its components, is longer than Linux
    /// allows, or it is nested unreasonably deep.
    #[error("archive entry {path} has a path that is too long")]
    PathTooLong {
        /// The entry.
        path: String,
    },
    /// The entry path is absolute.
    #[error("archive entry {path} is an absolute path")]
    AbsolutePath {
        /// The entry.
        path: String,
    },
    /// The entry path has a `..` component.
    #[error("archive entry {path} leaves the distro root")]
    LeavesRoot {
        /// The entry.
        path: String,
    },
    /// A directory on the entry's path is a symlink.
    #[error("archive entry {path} goes through symlink {symlink}")]
    ThroughSymlink {
        /// The entry.
        path: String,
        /// The symlink, relative to the distro root.
        symlink: String,
    },
    /// A directory on the entry's path is something else than a directory.
    #[error("archive entry {path} goes through {component}, which is not a directory")]
    ThroughNonDirectory {
        /// The entry.
        path: String,
        /// The offending component, relative to the distro root.
        component: String,
    },
    /// A hard link target is absolute or has a `..` component.
    #[error("archive entry {path} links to {target}, which leaves the distro root")]
    LinkLeavesRoot {
        /// The entry.
        path: String,
        /// The link target as stored.
        target: String,
    },
    /// A hard link target is missing or is not a regular file.
    #[error(
        "archive entry {path} links to {target}, which is not a regular file extracted before it"
    )]
    BadLinkTarget {
        /// The entry.
        path: String,
        /// The link target as stored.
        target: String,
    },
    /// A symlink or hard link target is empty or holds a NUL byte.
    #[error("archive entry {path} has an invalid link target")]
    InvalidLinkTarget {
        /// The entry.
        path: String,
    },
    /// A device node outside the allowed set.
    #[error("archive entry {path} is a {kind} device {major}:{minor}, which is not allowed")]
    DeviceRefused {
        /// The entry.
        path: String,
        /// `character` or `block`.
        kind: &'static str,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// An entry type this extractor does not handle.
    #[error("archive entry {path} has unsupported type {kind:?}")]
    UnsupportedType {
        /// The entry.
        path: String,
        /// The type flag, as a character.
        kind: char,
    },
    /// An archive feature this extractor does not implement.
    #[error("archive entry {path} uses {feature}, which are not supported")]
    UnsupportedFeature {
        /// The entry.
        path: String,
        /// The feature, plural: `PAX sparse files`.
        feature: &'static str,
    },
    /// A non-directory entry where a non-empty directory already is.
    #[error("archive entry {path} would replace a non-empty directory")]
    ReplacesDirectory {
        /// The entry.
        path: String,
    },
    /// Reading the input stream failed.
    #[error("cannot read the archive")]
    Read(#[source] io::Error),
    /// The destination directory cannot be opened.
    #[error("cannot open the destination directory {}", dest.display())]
    OpenDestination {
        /// The destination.
        dest: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A write below the destination directory failed.
    #[error("cannot {action} {path}")]
    Destination {
        /// What was being done, e.g. `create` or `set the owner of`.
        action: &'static str,
        /// The entry, relative to the distro root.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ImportError {
    /// Tells whether the archive, the input stream or the destination is at
    /// fault.
    pub fn fault(&self) -> ImportFault {
        match self {
            ImportError::Read(_) => ImportFault::Input,
            ImportError::OpenDestination { .. } | ImportError::Destination { .. } => {
                ImportFault::Destination
            }
            _ => ImportFault::Archive,
        }
    }
}

/// Exporting a tree failed.
#[derive(Debug, Error)]
pub enum ExportError {
    /// Reading the tree failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file or directory, below the exported root.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing the tar stream failed.
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
}

/// Longest rendering of an archive path in an error message.
const SHOWN_PATH_MAX: usize = 1024;

/// Renders archive path bytes for a message: lossy UTF-8, control characters
/// escaped, very long paths cut, so that a hostile name cannot garble the
/// user's terminal or flood the log.
fn shown(bytes: &[u8]) -> String {
    let mut out = String::new();
    for ch in String::from_utf8_lossy(bytes).chars() {
        if out.len() >= SHOWN_PATH_MAX {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::test_tar::privileged;
    use super::*;

    #[test]
    fn shown_escapes_control_characters() {
        // Arrange
        let name = b"evil\x1b[2Jname\n";

        // Act
        let text = shown(name);

        // Assert
        assert_eq!(text, "evil\\u{1b}[2Jname\\n");
    }

    #[test]
    fn shown_cuts_long_paths() {
        // Arrange
        let name = vec![b'a'; 5000];

        // Act
        let text = shown(&name);

        // Assert
        assert!(text.chars().count() <= SHOWN_PATH_MAX + 1);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn fault_separates_archive_input_and_destination() {
        // Arrange
        let archive = ImportError::LeavesRoot {
            path: "../x".into(),
        };
        let input = ImportError::Read(io::Error::other("reset"));
        let dest = ImportError::Destination {
            action: "create",
            path: "x".into(),
            source: io::Error::other("full"),
        };

        // Act
        let faults = [archive.fault(), input.fault(), dest.fault()];

        // Assert
        assert_eq!(
            faults,
            [
                ImportFault::Archive,
                ImportFault::Input,
                ImportFault::Destination
            ]
        );
        assert_eq!(
            archive.to_string(),
            "archive entry ../x leaves the distro root"
        );
    }

    /// The Debian root file system the end-to-end tests prepare, if present.
    fn debian_rootfs() -> Option<PathBuf> {
        let dir = Path::new("/var/cache/distroctl-tests");
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("debian-bookworm-minbase-") && name.ends_with(".tar")
            })
            .collect();
        found.sort();
        found.pop()
    }

    #[test]
    fn debian_rootfs_extracts_with_its_layout_intact() {
        if !privileged() {
            return;
        }
        // Arrange
        let Some(source) = debian_rootfs() else {
            println!("skipped: no /var/cache/distroctl-tests/debian-bookworm-minbase-*.tar on this machine");
            return;
        };
        let archive = if source.is_dir() {
            // The cache holds the tree unpacked (mmdebstrap wrote a
            // directory); going through export also checks it on a real tree.
            let started = std::time::Instant::now();
            let mut archive = Vec::new();
            export(&source, Compression::None, &mut archive).unwrap();
            println!(
                "exported {} ({} bytes) in {:?}",
                source.display(),
                archive.len(),
                started.elapsed()
            );
            archive
        } else {
            std::fs::read(&source).unwrap()
        };
        let dest = tempfile::tempdir().unwrap();

        // Act
        let started = std::time::Instant::now();
        let bytes = extract(&archive[..], dest.path()).unwrap();
        let elapsed = started.elapsed();
        println!(
            "extracted {bytes} bytes of {} in {elapsed:?}",
            source.display()
        );

        // Assert
        use std::os::unix::fs::PermissionsExt;
        let bash = std::fs::symlink_metadata(dest.path().join("usr/bin/bash")).unwrap();
        assert!(bash.is_file());
        assert_ne!(bash.permissions().mode() & 0o111, 0);
        assert_eq!(
            std::fs::read_link(dest.path().join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        if source.is_dir() {
            let expected = super::tree_snapshot::snapshot(&source);
            super::tree_snapshot::assert_same(
                &expected,
                &super::tree_snapshot::snapshot(dest.path()),
            );
        }
    }
}
