//! Writing a distro tree as a tar stream.
//!
//! The walk goes from an open descriptor of the root and opens every name
//! relative to its parent without following symlinks, so a process in a
//! running distro that swaps a directory for a symlink cannot make the export
//! read files outside the distro. Headers are GNU (long names as GNU
//! extensions) with PAX records for extended attributes, which both
//! `extract` and GNU tar read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::readlinkat;
use nix::sys::stat::{major, minor, FileStat};
use protocol::Compression;
use tar::{Builder, EntryType, Header};

use super::compression::Encoder;
use super::dirfd::Xattrs;
use super::entry_meta::xattr_restored;
use super::{dirfd, shown, ExportError};

/// Longest link target stored in the header itself; longer ones go into a GNU
/// long-link entry.
const HEADER_LINK_MAX: usize = 100;

pub(super) fn export_tree(
    root: &Path,
    compression: Compression,
    out: impl Write,
) -> Result<(), ExportError> {
    let read_err = |source| ExportError::Read {
        path: root.to_owned(),
        source,
    };
    let root_dir = File::open(root).map_err(read_err)?;
    let root_stat = nix::sys::stat::fstat(root_dir.as_raw_fd()).map_err(|e| read_err(e.into()))?;
    if dirfd::file_type(&root_stat) != libc::S_IFDIR {
        return Err(read_err(io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let encoder = Encoder::new(compression, out).map_err(ExportError::Write)?;
    let mut exporter = Exporter {
        builder: Builder::new(encoder),
        first_links: HashMap::new(),
        root_dev: root_stat.st_dev,
    };
    exporter.directory(root_dir, &root_stat, b"")?;
    let encoder = exporter.builder.into_inner().map_err(ExportError::Write)?;
    let mut out = encoder.finish().map_err(ExportError::Write)?;
    out.flush().map_err(ExportError::Write)
}

struct Exporter<W: Write> {
    builder: Builder<Encoder<W>>,
    /// Path of the first name seen for each multiply linked regular file.
    first_links: HashMap<(u64, u64), Vec<u8>>,
    /// The file system being exported; mounts below the root are not entered.
    root_dev: u64,
}

impl<W: Write> Exporter<W> {
    /// Writes the directory `dir` at `rel` (empty for the root), then what is in it.
    fn directory(&mut self, dir: File, stat: &FileStat, rel: &[u8]) -> Result<(), ExportError> {
        let xattrs = dirfd::xattrs_of_file(&dir).map_err(read_error(rel))?;
        let mut name = if rel.is_empty() {
            b".".to_vec()
        } else {
            rel.to_vec()
        };
        name.push(b'/');
        let header = header_for(stat, EntryType::Directory);
        self.append(header, &name, &xattrs, io::empty())?;
        if stat.st_dev != self.root_dev {
            tracing::warn!(path = %shown(rel), "not exporting the contents of a mount point");
            return Ok(());
        }

        let listing = dir.try_clone().map_err(read_error(rel))?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in Dir::from(listing)
            .map_err(|e| read_error(rel)(e.into()))?
            .into_iter()
        {
            let entry = entry.map_err(|e| read_error(rel)(e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort_unstable();
        for name in names {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                [rel, b"/", &name].concat()
            };
            self.child(dir.as_fd(), &name, &child)?;
        }
        Ok(())
    }

    /// Writes the entry `name` of `parent`, found at `rel`.
    fn child(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<(), ExportError> {
        let stat = match dirfd::stat_at(parent, name) {
            Ok(stat) => stat,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(err) => return Err(read_error(rel)(err)),
        };
        match dirfd::file_type(&stat) {
            libc::S_IFDIR => match dirfd::open_dir(parent, name) {
                Ok(fd) => {
                    let dir = File::from(fd);
                    let stat = fstat(&dir).map_err(read_error(rel))?;
                    self.directory(dir, &stat, rel)
                }
                Err(err) => skip_if_changed(err, rel),
            },
            libc::S_IFREG => self.regular(parent, name, &stat, rel),
            libc::S_IFLNK => {
                let target = match readlinkat(Some(parent.as_raw_fd()), name) {
                    Ok(target) => target,
                    Err(errno) => return skip_if_changed(errno.into(), rel),
                };
                let xattrs = path_only_xattrs(parent, name, rel)?;
                let header = header_for(&stat, EntryType::Symlink);
                self.append_link(header, rel, target.as_bytes(), &xattrs)
            }
            kind @ (libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO) => {
                let entry_type = match kind {
                    libc::S_IFCHR => EntryType::Char,
                    libc::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut header = header_for(&stat, entry_type);
                if entry_type != EntryType::Fifo {
                    let (major, minor) = (major(stat.st_rdev), minor(stat.st_rdev));
                    let fits = |n: u64| {
                        u32::try_from(n).map_err(|_| io::Error::other("device number out of range"))
                    };
                    let set = header
                        .set_device_major(fits(major).map_err(read_error(rel))?)
                        .and_then(|()| header.set_device_minor(fits(minor)?));
                    set.map_err(read_error(rel))?;
                }
                let xattrs = path_only_xattrs(parent, name, rel)?;
                self.append(header, rel, &xattrs, io::empty())
            }
            _ => {
                tracing::debug!(path = %shown(rel), "sockets cannot be archived; skipped");
                Ok(())
            }
        }
    }

    fn regular(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        stat: &FileStat,
        rel: &[u8],
    ) -> Result<(), ExportError> {
        let key = (stat.st_dev, stat.st_ino);
        if stat.st_nlink > 1 {
            if let Some(first) = self.first_links.get(&key) {
                let first = first.clone();
                let header = header_for(stat, EntryType::Link);
                return self.append_link(header, rel, &first, &[]);
            }
        }
        let file = match dirfd::open_for_read(parent, name) {
            Ok(file) => file,
            Err(err) => return skip_if_changed(err, rel),
        };
        // Describe what was opened, not what was looked at before.
        let stat = fstat(&file).map_err(read_error(rel))?;
        if dirfd::file_type(&stat) != libc::S_IFREG {
            return Ok(());
        }
        let xattrs = dirfd::xattrs_of_file(&file).map_err(read_error(rel))?;
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let mut data = ExactSize {
            file,
            left: size,
            error: None,
            padded: false,
        };
        self.append(
            header_for(&stat, EntryType::Regular),
            rel,
            &xattrs,
            &mut data,
        )
        .map_err(|err| match data.error.take() {
            Some(source) => ExportError::Read {
                path: path_of(rel),
                source,
            },
            None => err,
        })?;
        if data.padded {
            tracing::warn!(path = %shown(rel), "file shrank while being exported; padded with zeros");
        }
        if stat.st_nlink > 1 {
            self.first_links
                .insert((stat.st_dev, stat.st_ino), rel.to_vec());
        }
        Ok(())
    }

    /// Appends PAX records for `xattrs` (if any), then the entry.
    fn append(
        &mut self,
        mut header: Header,
        rel: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: impl Read,
    ) -> Result<(), ExportError> {
        self.append_xattrs(rel, xattrs)?;
        let path = Path::new(std::ffi::OsStr::from_bytes(rel));
        self.builder
            .append_data(&mut header, path, data)
            .map_err(ExportError::Write)
    }

    fn append_link(
        &mut self,
        mut header: Header,
        rel: &[u8],
        target: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), ExportError> {
        self.append_xattrs(rel, xattrs)?;
        let path = Path::new(std::ffi::OsStr::from_bytes(rel));
        let result = if target.len() <= HEADER_LINK_MAX {
            // Byte for byte: `append_link` would normalize the target.
            header
                .set_link_name_literal(target)
                .and_then(|()| self.builder.append_data(&mut header, path, io::empty()))
        } else {
            let target = Path::new(std::ffi::OsStr::from_bytes(target));
            self.builder.append_link(&mut header, path, target)
        };
        result.map_err(ExportError::Write)
    }

    fn append_xattrs(
        &mut self,
        rel: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), ExportError> {
        let mut records = Vec::new();
        for (name, value) in xattrs {
            match std::str::from_utf8(name) {
                Ok(name) if xattr_restored(name.as_bytes()) => {
                    records.push((format!("SCHILY.xattr.{name}"), value.as_slice()));
                }
                _ => {
                    tracing::debug!(path = %shown(rel), xattr = %shown(name), "extended attribute not exported")
                }
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let records = records.iter().map(|(key, value)| (key.as_str(), *value));
        self.builder
            .append_pax_extensions(records)
            .map_err(ExportError::Write)
    }
}

/// A header for `stat` with numeric ids only, as the importing side expects.
fn header_for(stat: &FileStat, entry_type: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(stat.st_uid.into());
    header.set_gid(stat.st_gid.into());
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    let size = if entry_type == EntryType::Regular {
        stat.st_size
    } else {
        0
    };
    header.set_size(u64::try_from(size).unwrap_or(0));
    header
}

fn fstat(file: &File) -> io::Result<FileStat> {
    Ok(nix::sys::stat::fstat(file.as_raw_fd())?)
}

fn path_of(rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        PathBuf::from(".")
    } else {
        PathBuf::from(std::ffi::OsStr::from_bytes(rel))
    }
}

fn read_error(rel: &[u8]) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Read {
        path: path_of(rel),
        source,
    }
}

fn path_only_xattrs(
    parent: BorrowedFd<'_>,
    name: &[u8],
    rel: &[u8],
) -> Result<Xattrs, ExportError> {
    let fd: OwnedFd = dirfd::open_path_only(parent, name).map_err(read_error(rel))?;
    dirfd::xattrs_path_only(fd.as_fd()).map_err(read_error(rel))
}

/// A name that vanished or changed type between listing and opening was
/// changed by a running distro while exporting; it is left out, as tar does.
fn skip_if_changed(err: io::Error, rel: &[u8]) -> Result<(), ExportError> {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR) => {
            tracing::warn!(path = %shown(rel), "changed while being exported; skipped");
            Ok(())
        }
        _ => Err(read_error(rel)(err)),
    }
}

/// File contents of exactly the size written in the header: a file that grew
/// is cut, one that shrank is padded with zeros, and a read error is kept so
/// it can be told from a write error of the archive.
struct ExactSize {
    file: File,
    left: u64,
    error: Option<io::Error>,
    padded: bool,
}

impl Read for ExactSize {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = if self.padded {
            0
        } else {
            match self.file.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
                Err(err) => {
                    let kind = err.kind();
                    self.error = Some(err);
                    return Err(io::Error::new(kind, "reading the file failed"));
                }
            }
        };
        let n = if n == 0 {
            self.padded = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::test_tar::privileged;
    use crate::archive::tree_snapshot::{assert_same, snapshot};
    use filetime::FileTime;
    use nix::sys::stat::{mknod, Mode, SFlag};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::{Command, Stdio};

    /// Whether the file system under the temporary directory keeps user xattrs.
    fn user_xattrs_work(dir: &Path) -> bool {
        let probe = dir.join(".xattr-probe");
        std::fs::write(&probe, b"").unwrap();
        let works = xattr::set(&probe, "user.probe", b"1").is_ok();
        std::fs::remove_file(probe).unwrap();
        works
    }

    /// A tree with every kind of thing the archive format must carry.
    fn build_tree(root: &Path) {
        let at = |rel: &str| root.join(rel);
        std::fs::create_dir_all(at("etc")).unwrap();
        std::fs::create_dir_all(at("usr/bin")).unwrap();
        std::fs::create_dir_all(at("dev")).unwrap();
        std::fs::create_dir_all(at("tmp")).unwrap();
        let deep = format!("deep/{}/{}", "d".repeat(100), "f".repeat(94));
        std::fs::create_dir_all(at(&deep).parent().unwrap()).unwrap();
        std::fs::write(at(&deep), b"long").unwrap();
        std::fs::write(at("etc/hostname"), b"debian\n").unwrap();
        std::fs::write(at("etc/empty"), b"").unwrap();
        std::fs::write(at("usr/bin/su"), vec![0x7f; 100_000]).unwrap();
        std::fs::hard_link(at("usr/bin/su"), at("usr/bin/su2")).unwrap();
        std::fs::hard_link(at("usr/bin/su"), at("etc/su3")).unwrap();
        std::os::unix::fs::lchown(at("etc/hostname"), Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(at("usr/bin/su"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::set_permissions(at("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::set_permissions(at("etc"), std::fs::Permissions::from_mode(0o751)).unwrap();
        symlink("/usr/bin", at("bin")).unwrap();
        symlink(format!("../{}", "t".repeat(150)), at("etc/long-link")).unwrap();
        std::os::unix::fs::lchown(at("bin"), Some(1234), Some(5678)).unwrap();
        mknod(
            &at("dev/null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        mknod(
            &at("etc/initctl"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        std::fs::set_permissions(at("dev/null"), std::fs::Permissions::from_mode(0o666)).unwrap();
        if user_xattrs_work(root) {
            xattr::set(at("etc/hostname"), "user.test", b"hello").unwrap();
            xattr::set(at("etc"), "user.dir", b"on a directory").unwrap();
        }
        // Times last, children before parents.
        let mut paths: Vec<_> = walk(root);
        paths.sort_by(|a, b| b.cmp(a));
        for (i, path) in paths.iter().enumerate() {
            let time = FileTime::from_unix_time(1_400_000_000 + i as i64 * 1000, 0);
            filetime::set_symlink_file_times(path, time, time).unwrap();
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![dir.to_owned()];
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    fn gnu_tar_available() -> bool {
        Command::new("tar")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn export_then_extract_preserves_the_tree() {
        if !privileged() {
            return;
        }
        // Arrange
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path());
        let expected = snapshot(src.path());

        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
        ] {
            let dst = tempfile::tempdir().unwrap();

            // Act
            let mut archive = Vec::new();
            export_tree(src.path(), compression, &mut archive).unwrap();
            crate::archive::extract(&archive[..], dst.path()).unwrap();

            // Assert
            assert_same(&expected, &snapshot(dst.path()));
        }
        assert!(expected[&b"usr/bin/su2"[..]].same_inode_as.is_some());
    }

    #[test]
    fn export_writes_names_sorted_and_hard_links_once() {
        if !privileged() {
            return;
        }
        // Arrange
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path());

        // Act
        let mut archive = Vec::new();
        export_tree(src.path(), Compression::None, &mut archive).unwrap();

        // Assert
        let mut reader = tar::Archive::new(&archive[..]);
        let entries: Vec<(Vec<u8>, EntryType)> = reader
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path_bytes().into_owned(), e.header().entry_type())
            })
            .collect();
        let names: Vec<_> = entries
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect();
        assert_eq!(
            names[..4],
            ["./", "bin", "deep/", &format!("deep/{}/", "d".repeat(100))]
        );
        let links: Vec<_> = entries
            .iter()
            .filter(|(_, kind)| *kind == EntryType::Link)
            .collect();
        assert_eq!(links.len(), 2);
        let first_su = names.iter().position(|n| n == "etc/su3").unwrap();
        assert_eq!(entries[first_su].1, EntryType::Regular);
    }

    #[test]
    fn export_is_read_back_by_gnu_tar() {
        if !privileged() {
            return;
        }
        // Arrange
        if !gnu_tar_available() {
            println!("skipped: GNU tar is not installed");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path());
        let dst = tempfile::tempdir().unwrap();
        let mut archive = Vec::new();
        export_tree(src.path(), Compression::Gzip, &mut archive).unwrap();

        // Act
        let mut tar = Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xzpf",
                "-",
                "-C",
            ])
            .arg(dst.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        tar.stdin.take().unwrap().write_all(&archive).unwrap();
        let status = tar.wait().unwrap();

        // Assert
        assert!(status.success());
        assert_same(&snapshot(src.path()), &snapshot(dst.path()));
    }

    #[test]
    fn extract_reads_what_gnu_tar_writes() {
        if !privileged() {
            return;
        }
        // Arrange
        if !gnu_tar_available() {
            println!("skipped: GNU tar is not installed");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path());
        let dst = tempfile::tempdir().unwrap();
        let output = Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=*",
                "--format=posix",
                "--numeric-owner",
                "-cJf",
                "-",
                "-C",
            ])
            .arg(src.path())
            .arg(".")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );

        // Act
        let result = crate::archive::extract(&output.stdout[..], dst.path());

        // Assert
        result.unwrap();
        assert_same(&snapshot(src.path()), &snapshot(dst.path()));
    }

    #[test]
    fn export_refuses_a_root_that_is_not_a_directory() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();

        // Act
        let result = export_tree(&file, Compression::None, io::sink());

        // Assert
        assert!(
            matches!(result, Err(ExportError::Read { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn export_blames_the_output_when_writing_fails() {
        if !privileged() {
            return;
        }
        // Arrange
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path());

        // Act
        let result = export_tree(src.path(), Compression::None, Broken);

        // Assert
        assert!(matches!(result, Err(ExportError::Write(_))), "{result:?}");
    }
}
