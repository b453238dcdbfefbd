//! Extracting one archive entry: decoding its metadata and applying the path,
//! link and device policy before `unpack` creates it.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;

use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::entry_meta::{device_numbers, link_target, read_meta};
use super::entry_path::{EntryPath, PathProblem};
use super::extract::Blame;
use super::parent_dirs::{ParentDirs, WalkError};
use super::unpack::{self, dest, Node, XattrSkips};
use super::{dirfd, shown, ImportError};

/// Size of the buffer file contents are copied through.
const COPY_BUFFER: usize = 256 * 1024;

/// Extraction state carried from one entry to the next.
pub(super) struct Extractor {
    dirs: ParentDirs,
    /// Directory times to set at the end, with normalized paths.
    dir_times: Vec<(Vec<u8>, TimeSpec)>,
    buf: Vec<u8>,
    skips: XattrSkips,
}

impl Extractor {
    /// Starts extracting below the root of `dirs`.
    pub(super) fn new(dirs: ParentDirs) -> Self {
        Extractor {
            dirs,
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUFFER],
            skips: XattrSkips::default(),
        }
    }

    /// Extracts `entry`, whose path is `shown_path` as shown in messages.
    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown_path: &str,
        blame: &Blame,
    ) -> Result<(), ImportError> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // Global PAX records (git archive puts the commit id there) carry
            // nothing this extractor uses.
            return self.drain(entry, shown_path, blame);
        }
        let raw_path = entry.path_bytes().into_owned();
        let path =
            EntryPath::parse(&raw_path).map_err(|problem| path_error(problem, shown_path))?;
        let meta = read_meta(entry, shown_path)?;
        // Old tar wrote directories as regular files with a trailing slash.
        let is_dir = kind == EntryType::Directory
            || (kind == EntryType::Regular && raw_path.ends_with(b"/"));
        if path.is_root() && !is_dir {
            return Err(ImportError::InvalidPath {
                path: shown_path.to_owned(),
            });
        }
        let (dir, name) = path.parent_and_name();
        let walk = |err| walk_error(err, shown_path);
        match kind {
            _ if is_dir => {
                if path.is_root() {
                    let root = self
                        .dirs
                        .root()
                        .try_clone_to_owned()
                        .map_err(dest("open", shown_path))?;
                    unpack::apply_to_fd(&File::from(root), &meta, shown_path, &mut self.skips)?;
                } else {
                    let parent = self.dirs.open(dir, true).map_err(walk)?;
                    let fd = unpack::directory(parent, name, &meta, shown_path, &mut self.skips)?;
                    self.dirs.entered(dir, name, fd);
                }
                self.dir_times.push((path.as_bytes().to_vec(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let parent = self.dirs.open(dir, true).map_err(walk)?;
                let mut file = unpack::create_file(parent, name, shown_path)?;
                copy_data(entry, &mut self.buf, shown_path, blame, |chunk| {
                    io::Write::write_all(&mut file, chunk).map_err(dest("write", shown_path))
                })?;
                unpack::apply_to_fd(&file, &meta, shown_path, &mut self.skips)?;
                unpack::set_mtime_fd(&file, meta.mtime, shown_path)?;
            }
            EntryType::Symlink => {
                let target = link_target(entry, shown_path)?;
                let parent = self.dirs.open(dir, true).map_err(walk)?;
                unpack::symlink(parent, name, &target, &meta, shown_path, &mut self.skips)?;
            }
            EntryType::Link => self.hard_link(entry, &path, shown_path)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let node = match kind {
                    EntryType::Char => Node::Char,
                    EntryType::Block => Node::Block,
                    _ => Node::Fifo,
                };
                let numbers = device_numbers(entry, node, shown_path)?;
                if !unpack::node_allowed(node, path.as_bytes(), numbers.0, numbers.1) {
                    let kind = if node == Node::Block {
                        "block"
                    } else {
                        "character"
                    };
                    let (major, minor) = numbers;
                    return Err(ImportError::DeviceRefused {
                        path: shown_path.to_owned(),
                        kind,
                        major,
                        minor,
                    });
                }
                let parent = self.dirs.open(dir, true).map_err(walk)?;
                unpack::node(
                    parent,
                    name,
                    node,
                    numbers,
                    &meta,
                    shown_path,
                    &mut self.skips,
                )?;
            }
            other => {
                return Err(ImportError::UnsupportedType {
                    path: shown_path.to_owned(),
                    kind: char::from(other.as_byte()),
                })
            }
        }
        // Data of entries that should have none (a hard link may carry it).
        self.drain(entry, shown_path, blame)
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &EntryPath,
        shown_path: &str,
    ) -> Result<(), ImportError> {
        let raw_target = link_target(entry, shown_path)?;
        let shown_target = shown(&raw_target);
        let bad_target = || ImportError::BadLinkTarget {
            path: shown_path.to_owned(),
            target: shown_target.clone(),
        };
        let target = EntryPath::parse(&raw_target).map_err(|problem| match problem {
            PathProblem::Invalid | PathProblem::TooLong => ImportError::InvalidLinkTarget {
                path: shown_path.to_owned(),
            },
            PathProblem::Absolute | PathProblem::LeavesRoot => ImportError::LinkLeavesRoot {
                path: shown_path.to_owned(),
                target: shown_target.clone(),
            },
        })?;
        if target.is_root() {
            return Err(bad_target());
        }
        let (target_dir, target_name) = target.parent_and_name();
        let target_parent = match self.dirs.open(target_dir, false) {
            Ok(fd) => fd.try_clone_to_owned().map_err(dest("open", shown_path))?,
            Err(err @ WalkError::Io { .. }) => return Err(walk_error(err, shown_path)),
            Err(_) => return Err(bad_target()),
        };
        match dirfd::stat_at(target_parent.as_fd(), target_name) {
            Ok(stat) if dirfd::file_type(&stat) == libc::S_IFREG => {}
            Ok(_) => return Err(bad_target()),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Err(bad_target()),
            Err(err) => return Err(dest("inspect", &shown_target)(err)),
        }
        if target == *path {
            return Ok(());
        }
        let (dir, name) = path.parent_and_name();
        let parent = self
            .dirs
            .open(dir, true)
            .map_err(|err| walk_error(err, shown_path))?;
        unpack::hard_link(target_parent.as_fd(), target_name, parent, name, shown_path)
    }

    /// Reads and discards what is left of an entry's data.
    fn drain<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown_path: &str,
        blame: &Blame,
    ) -> Result<(), ImportError> {
        copy_data(entry, &mut self.buf, shown_path, blame, |_| Ok(()))
    }

    /// Sets directory times, children before parents, once nothing more is
    /// created in them. A directory that a later entry replaced is skipped.
    pub(super) fn finish(&mut self) -> Result<(), ImportError> {
        // Stable: for a directory listed twice, the later entry wins.
        self.dir_times.sort_by(|a, b| b.0.cmp(&a.0));
        for (raw, mtime) in std::mem::take(&mut self.dir_times) {
            let path = shown(&raw);
            let file = if raw.is_empty() {
                self.dirs
                    .root()
                    .try_clone_to_owned()
                    .map_err(dest("open", &path))?
            } else {
                let entry_path = EntryPath::parse(&raw).expect("stored paths are normalized");
                let (dir, name) = entry_path.parent_and_name();
                let parent = match self.dirs.open(dir, false) {
                    Ok(parent) => parent,
                    Err(err @ WalkError::Io { .. }) => return Err(walk_error(err, &path)),
                    Err(_) => continue,
                };
                match dirfd::open_dir(parent, name) {
                    Ok(fd) => fd,
                    Err(err)
                        if matches!(
                            err.raw_os_error(),
                            Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                        ) =>
                    {
                        continue
                    }
                    Err(err) => return Err(dest("open", &path)(err)),
                }
            };
            unpack::set_mtime_fd(&File::from(file), mtime, &path)?;
        }
        if self.skips.count > 1 {
            tracing::warn!(
                count = self.skips.count,
                "extended attributes skipped in total"
            );
        }
        Ok(())
    }
}

/// Streams an entry's data (all of it, as the header announced) into `sink`.
fn copy_data<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    buf: &mut [u8],
    shown_path: &str,
    blame: &Blame,
    mut sink: impl FnMut(&[u8]) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    loop {
        let n = match entry.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(blame.error(err, Some(shown_path), None)),
        };
        sink(&buf[..n])?;
    }
    // The entry reader just stops where the stream does; a short entry means
    // the stream ended inside it.
    if blame.ended() {
        return Err(ImportError::TruncatedEntry {
            path: shown_path.to_owned(),
        });
    }
    Ok(())
}

fn path_error(problem: PathProblem, shown_path: &str) -> ImportError {
    let path = shown_path.to_owned();
    match problem {
        PathProblem::Invalid => ImportError::InvalidPath { path },
        PathProblem::Absolute => ImportError::AbsolutePath { path },
        PathProblem::LeavesRoot => ImportError::LeavesRoot { path },
        PathProblem::TooLong => ImportError::PathTooLong { path },
    }
}

fn walk_error(err: WalkError, shown_path: &str) -> ImportError {
    let path = shown_path.to_owned();
    match err {
        WalkError::Symlink(at) => ImportError::ThroughSymlink {
            path,
            symlink: shown(&at),
        },
        WalkError::NotDirectory(at) | WalkError::Missing(at) => ImportError::ThroughNonDirectory {
            path,
            component: shown(&at),
        },
        WalkError::Io {
            action,
            path: at,
            source,
        } => ImportError::Destination {
            action,
            path: shown(&at),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::test_tar::{extract_into, header, names_in, privileged, TestTar};
    use crate::archive::ImportFault;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::Path;

    #[test]
    fn extract_restores_types_contents_and_metadata() {
        if !privileged() {
            return;
        }
        // Arrange
        let long_path = format!("deep/{}/{}", "d".repeat(100), "f".repeat(94));
        assert_eq!(long_path.len(), 200);
        let mut owned = header(EntryType::Regular, 0o640);
        owned.set_uid(1234);
        owned.set_gid(5678);
        owned.set_mtime(1_234_567_890);
        let mut etc = header(EntryType::Directory, 0o751);
        etc.set_mtime(1_111_111_111);
        let archive = TestTar::new()
            .add(etc, "etc/", b"")
            .pax(&[("SCHILY.xattr.user.test", b"hello")])
            .add(owned, "etc/hostname", b"debian\n")
            .add(
                header(EntryType::Regular, 0o4755),
                "usr/bin/su",
                b"#!/bin/true\n",
            )
            .link(EntryType::Link, "usr/bin/su2", "usr/bin/su")
            .link(EntryType::Symlink, "bin", "/usr/bin")
            .add(header(EntryType::Fifo, 0o600), "run/initctl", b"")
            .device(EntryType::Char, "dev/null", 1, 3)
            .file(&long_path, b"long")
            .bytes();

        // Act
        let (tmp, result) = extract_into(&archive);

        // Assert
        let root = tmp.path().join("root");
        assert_eq!(result.unwrap(), archive.len() as u64);
        let hostname = std::fs::symlink_metadata(root.join("etc/hostname")).unwrap();
        assert_eq!(
            std::fs::read(root.join("etc/hostname")).unwrap(),
            b"debian\n"
        );
        assert_eq!((hostname.uid(), hostname.gid()), (1234, 5678));
        assert_eq!(hostname.mode() & 0o7777, 0o640);
        assert_eq!(hostname.mtime(), 1_234_567_890);
        let etc = std::fs::symlink_metadata(root.join("etc")).unwrap();
        assert_eq!((etc.mode() & 0o7777, etc.mtime()), (0o751, 1_111_111_111));
        let su = std::fs::symlink_metadata(root.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755);
        let su2 = std::fs::symlink_metadata(root.join("usr/bin/su2")).unwrap();
        assert_eq!((su2.ino(), su.nlink()), (su.ino(), 2));
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("/usr/bin")
        );
        assert!(std::fs::symlink_metadata(root.join("run/initctl"))
            .unwrap()
            .file_type()
            .is_fifo());
        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (null.rdev(), null.mode() & 0o7777),
            (libc::makedev(1, 3), 0o666)
        );
        assert_eq!(std::fs::read(root.join(&long_path)).unwrap(), b"long");
        assert_eq!(
            std::fs::metadata(root.join("usr"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
        match xattr::get(root.join("etc/hostname"), "user.test") {
            Ok(value) => assert_eq!(value.as_deref(), Some(&b"hello"[..])),
            Err(err) => {
                println!("skipped the xattr assertion: this file system refuses user xattrs: {err}")
            }
        }
    }

    #[test]
    fn extract_rejects_paths_with_parent_components() {
        // Arrange
        for name in ["../x", "a/../../x"] {
            let archive = TestTar::new()
                .raw(EntryType::Regular, name.as_bytes(), b"", b"evil")
                .bytes();

            // Act
            let (tmp, result) = extract_into(&archive);

            // Assert
            let err = result.unwrap_err();
            assert!(
                matches!(&err, ImportError::LeavesRoot { path } if path == name),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("archive entry {name} leaves the distro root")
            );
            assert_eq!(err.fault(), ImportFault::Archive);
            assert_eq!(names_in(tmp.path()), ["root"]);
        }
    }

    #[test]
    fn extract_rejects_absolute_paths() {
        // Arrange
        let archive = TestTar::new()
            .raw(EntryType::Regular, b"/etc/x", b"", b"evil")
            .bytes();

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        assert!(matches!(result, Err(ImportError::AbsolutePath { path }) if path == "/etc/x"));
    }

    #[test]
    fn extract_rejects_a_file_written_through_a_symlink_to_outside() {
        if !privileged() {
            return;
        }
        // Arrange
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap();
        let archive = TestTar::new()
            .link(EntryType::Symlink, "link", target)
            .file("link/evil", b"evil")
            .bytes();

        // Act
        let (tmp, result) = extract_into(&archive);

        // Assert
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ImportError::ThroughSymlink { path, symlink } if path == "link/evil" && symlink == "link")
        );
        assert_eq!(
            err.to_string(),
            "archive entry link/evil goes through symlink link"
        );
        assert!(names_in(outside.path()).is_empty());
        assert_eq!(names_in(tmp.path()), ["root"]);
    }

    #[test]
    fn extract_rejects_a_file_written_through_a_symlink_to_the_parent() {
        if !privileged() {
            return;
        }
        // Arrange
        let archive = TestTar::new()
            .link(EntryType::Symlink, "up", "..")
            .file("up/evil", b"evil")
            .bytes();

        // Act
        let (tmp, result) = extract_into(&archive);

        // Assert
        assert!(matches!(result, Err(ImportError::ThroughSymlink { .. })));
        assert_eq!(names_in(tmp.path()), ["root"]);
        assert_eq!(names_in(&tmp.path().join("root")), ["up"]);
    }

    #[test]
    fn extract_rejects_hard_links_that_leave_the_root() {
        // Arrange
        for target in ["../outside", "/etc/passwd"] {
            let archive = TestTar::new()
                .link(EntryType::Link, "passwd", target)
                .bytes();

            // Act
            let (tmp, result) = extract_into(&archive);

            // Assert
            let err = result.unwrap_err();
            assert!(
                matches!(&err, ImportError::LinkLeavesRoot { target: t, .. } if t == target),
                "{err:?}"
            );
            assert!(names_in(&tmp.path().join("root")).is_empty());
        }
    }

    #[test]
    fn extract_rejects_hard_links_through_symlinks_or_to_non_files() {
        if !privileged() {
            return;
        }
        // Arrange
        let cases = [
            TestTar::new()
                .link(EntryType::Symlink, "etc", "/etc")
                .link(EntryType::Link, "pw", "etc/passwd")
                .bytes(),
            TestTar::new()
                .link(EntryType::Symlink, "s", "/etc/passwd")
                .link(EntryType::Link, "pw", "s")
                .bytes(),
            TestTar::new()
                .dir("d")
                .link(EntryType::Link, "pw", "d")
                .bytes(),
            TestTar::new()
                .link(EntryType::Link, "pw", "missing")
                .bytes(),
        ];

        for archive in cases {
            // Act
            let (tmp, result) = extract_into(&archive);

            // Assert
            assert!(
                matches!(result, Err(ImportError::BadLinkTarget { .. })),
                "{result:?}"
            );
            assert!(!tmp.path().join("root/pw").exists());
        }
    }

    #[test]
    fn extract_rejects_block_devices_and_dangerous_char_devices() {
        // Arrange
        let cases = [
            (
                EntryType::Block,
                "dev/sda",
                8,
                0,
                "archive entry dev/sda is a block device 8:0, which is not allowed",
            ),
            (
                EntryType::Char,
                "dev/mem",
                1,
                1,
                "archive entry dev/mem is a character device 1:1, which is not allowed",
            ),
            (
                EntryType::Char,
                "tmp/null",
                1,
                3,
                "archive entry tmp/null is a character device 1:3, which is not allowed",
            ),
        ];

        for (kind, path, major, minor, message) in cases {
            let archive = TestTar::new().device(kind, path, major, minor).bytes();

            // Act
            let (tmp, result) = extract_into(&archive);

            // Assert
            let err = result.unwrap_err();
            assert!(matches!(err, ImportError::DeviceRefused { .. }));
            assert_eq!(err.to_string(), message);
            assert!(!tmp.path().join("root").join(path).exists());
        }
    }

    #[test]
    fn extract_reads_old_gnu_sparse_files_and_refuses_pax_sparse_ones() {
        if !privileged() {
            return;
        }
        // Arrange
        let gnu_tar = std::process::Command::new("tar").arg("--version").output();
        if !gnu_tar.is_ok_and(|o| o.status.success()) {
            println!("skipped: GNU tar is not installed");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let sparse = std::fs::File::create(src.path().join("sparse")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 4 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, b"end", (8 << 20) - 3).unwrap();
        let pack = |format: &str| {
            let out = std::process::Command::new("tar")
                .args(["--sparse", &format!("--format={format}"), "-cf", "-", "-C"])
                .arg(src.path())
                .arg("sparse")
                .output()
                .unwrap();
            assert!(out.status.success());
            out.stdout
        };
        let (gnu, pax) = (pack("gnu"), pack("posix"));

        // Act
        let (tmp, gnu_result) = extract_into(&gnu);
        let (_tmp2, pax_result) = extract_into(&pax);

        // Assert
        gnu_result.unwrap();
        let expected = std::fs::read(src.path().join("sparse")).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("root/sparse")).unwrap(),
            expected
        );
        let err = pax_result.unwrap_err();
        assert!(
            matches!(err, ImportError::UnsupportedFeature { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn extract_rejects_unknown_entry_types() {
        // Arrange
        let archive = TestTar::new()
            .raw(EntryType::new(b'V'), b"volume", b"", b"")
            .bytes();

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        let err = result.unwrap_err();
        assert_eq!(
            err.to_string(),
            "archive entry volume has unsupported type 'V'"
        );
    }

    #[test]
    fn extract_lets_later_entries_replace_earlier_ones_without_following_them() {
        if !privileged() {
            return;
        }
        // Arrange
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let archive = TestTar::new()
            .link(EntryType::Symlink, "f", victim.to_str().unwrap())
            .file("f", b"new")
            .file("g", b"old")
            .link(EntryType::Symlink, "g", "f")
            .bytes();

        // Act
        let (tmp, result) = extract_into(&archive);

        // Assert
        result.unwrap();
        let root = tmp.path().join("root");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"new");
        assert_eq!(std::fs::read_link(root.join("g")).unwrap(), Path::new("f"));
    }

    #[test]
    fn extract_applies_the_root_entry_to_the_destination() {
        if !privileged() {
            return;
        }
        // Arrange
        let mut root_header = header(EntryType::Directory, 0o755);
        root_header.set_mtime(1_000_000_000);
        root_header.as_old_mut().name[..2].copy_from_slice(b"./");
        root_header.set_cksum();
        let archive = TestTar::new()
            .header_as_is(&root_header, b"")
            .file("a", b"")
            .bytes();

        // Act
        let (tmp, result) = extract_into(&archive);

        // Assert
        result.unwrap();
        let meta = std::fs::metadata(tmp.path().join("root")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o755, 1_000_000_000));
    }

    #[test]
    fn extract_refuses_anything_but_a_directory_at_the_root() {
        // Arrange
        let archive = TestTar::new()
            .raw(EntryType::Regular, b".", b"", b"x")
            .bytes();

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        assert!(
            matches!(result, Err(ImportError::InvalidPath { .. })),
            "{result:?}"
        );
    }
}
