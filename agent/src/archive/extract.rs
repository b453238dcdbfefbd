//! Extracting an untrusted tar stream into a distro directory.
//!
//! The stream passes through two counting readers, one under the decoder and
//! one above it, so that an error coming out of the tar parser can be told
//! apart: the input failed, the compressed data is damaged, the stream ended
//! early, or the tar data itself is bad.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use nix::sys::time::TimeSpec;
use protocol::Compression;
use tar::EntryType;

use super::compression::{decoder, detect, format_name, MAGIC_LEN};
use super::entry_path::{EntryPath, PathProblem};
use super::parent_dirs::{ParentDirs, WalkError};
use super::unpack::{self, dest, Meta, Node, XattrSkips};
use super::{dirfd, shown, ImportError};

/// Most bytes the tar parser may read between two entries: padding, headers,
/// GNU long names and PAX records. The parser keeps long names and PAX records
/// in memory, so this bounds what a hostile header can make it allocate.
const HEADER_BUDGET: u64 = 4 << 20;

/// Size of the buffer file contents are copied through.
const COPY_BUFFER: usize = 256 * 1024;

/// What a counting reader saw.
#[derive(Debug, Default)]
struct Seen {
    bytes: Cell<u64>,
    /// A read returned end of stream.
    eof: Cell<bool>,
    /// A read failed.
    failed: Cell<bool>,
    /// Bytes left before reads fail, while the parser looks for a header.
    budget: Cell<Option<u64>>,
    over_budget: Cell<bool>,
}

/// A reader that records what it saw in a shared [`Seen`].
struct Counting<R> {
    inner: R,
    seen: Rc<Seen>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let seen = &self.seen;
        let budget = seen.budget.get();
        let buf = match budget {
            Some(0) if !buf.is_empty() => {
                seen.over_budget.set(true);
                return Err(io::Error::other("extension headers exceed the limit"));
            }
            Some(left) => {
                let len = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                &mut buf[..len]
            }
            None => buf,
        };
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                seen.eof.set(true);
                Ok(0)
            }
            Ok(n) => {
                seen.bytes.set(seen.bytes.get() + n as u64);
                if let Some(left) = budget {
                    seen.budget.set(Some(left - n as u64));
                }
                Ok(n)
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Err(err),
            Err(err) => {
                seen.failed.set(true);
                Err(err)
            }
        }
    }
}

/// Attributes stream errors to their cause.
struct Blame {
    compression: Compression,
    input: Rc<Seen>,
    tar: Rc<Seen>,
}

impl Blame {
    /// Turns an error from reading the tar stream into an [`ImportError`].
    /// `inside` is the entry whose data was being read; `after` the last
    /// complete entry when the parser was looking for the next header.
    fn error(&self, err: io::Error, inside: Option<&str>, after: Option<&str>) -> ImportError {
        let truncated = || match inside {
            Some(path) => ImportError::TruncatedEntry { path: path.to_owned() },
            None => ImportError::Truncated,
        };
        if self.input.failed.get() {
            return ImportError::Read(err);
        }
        if self.tar.failed.get() {
            // The decoder failed: because its input ran out, or on bad data.
            if self.input.eof.get() || err.kind() == io::ErrorKind::UnexpectedEof {
                return truncated();
            }
            return ImportError::Decompress { format: format_name(self.compression), source: err };
        }
        if self.tar.over_budget.get() {
            return ImportError::HeaderTooLarge;
        }
        match (inside, after) {
            (None, None) => ImportError::NotTar,
            _ if self.tar.eof.get() => truncated(),
            (Some(path), _) => ImportError::BadHeader { path: path.to_owned(), source: err },
            (None, Some(after)) => ImportError::Corrupt { after: after.to_owned(), source: err },
        }
    }
}

pub(super) fn extract_tree(input: impl Read, dest_dir: &Path) -> Result<u64, ImportError> {
    let root = File::open(dest_dir)
        .and_then(|f| match f.metadata()?.is_dir() {
            true => Ok(OwnedFd::from(f)),
            false => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        })
        .map_err(|source| ImportError::OpenDestination { dest: dest_dir.to_owned(), source })?;

    let input_seen = Rc::new(Seen::default());
    let mut input = Counting { inner: input, seen: input_seen.clone() };
    let mut magic = [0u8; MAGIC_LEN];
    let magic_len = read_prefix(&mut input, &mut magic).map_err(ImportError::Read)?;
    if magic_len == 0 {
        return Err(ImportError::Empty);
    }
    let compression = detect(&magic[..magic_len]);
    let rejoined = Cursor::new(magic).take(magic_len as u64).chain(input);
    let blame = Blame { compression, input: input_seen, tar: Rc::new(Seen::default()) };
    let decoded = decoder(compression, rejoined)
        .map_err(|source| ImportError::Decompress { format: format_name(compression), source })?;
    let mut archive = tar::Archive::new(Counting { inner: decoded, seen: blame.tar.clone() });

    let mut extractor = Extractor {
        dirs: ParentDirs::new(root),
        dir_times: Vec::new(),
        buf: vec![0; COPY_BUFFER],
        skips: XattrSkips::default(),
    };
    let mut last: Option<String> = None;
    let mut entries = archive.entries().map_err(|err| blame.error(err, None, None))?;
    loop {
        blame.tar.budget.set(Some(HEADER_BUDGET));
        let next = entries.next();
        blame.tar.budget.set(None);
        let mut entry = match next {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(err)) => return Err(blame.error(err, None, last.as_deref())),
        };
        let path = shown(&entry.path_bytes());
        extractor.entry(&mut entry, &path, &blame)?;
        last = Some(path);
    }
    drop(entries);

    if blame.tar.bytes.get() == 0 {
        return Err(ImportError::Empty);
    }
    if blame.tar.eof.get() {
        // The stream stopped at an entry boundary without the end-of-archive
        // marker: most likely cut off.
        return Err(ImportError::Truncated);
    }
    // Read past the marker to the end, so that the decoder checks its trailer
    // (gzip CRC, xz and zstd checksums) and the sender is not left blocked.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|err| blame.error(err, None, last.as_deref()))?;
    extractor.finish()?;
    if extractor.skips.count > 1 {
        tracing::warn!(count = extractor.skips.count, "extended attributes skipped in total");
    }
    Ok(blame.tar.bytes.get())
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
fn read_prefix(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

struct Extractor {
    dirs: ParentDirs,
    /// Directory times to set at the end, with normalized paths.
    dir_times: Vec<(Vec<u8>, TimeSpec)>,
    buf: Vec<u8>,
    skips: XattrSkips,
}

impl Extractor {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, shown_path: &str, blame: &Blame) -> Result<(), ImportError> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // Global PAX records (git archive puts the commit id there) carry
            // nothing this extractor uses.
            return self.drain(entry, shown_path, blame);
        }
        let raw_path = entry.path_bytes().into_owned();
        let path = EntryPath::parse(&raw_path).map_err(|problem| path_error(problem, shown_path))?;
        let meta = read_meta(entry, shown_path)?;
        // Old tar wrote directories as regular files with a trailing slash.
        let is_dir = kind == EntryType::Directory || (kind == EntryType::Regular && raw_path.ends_with(b"/"));
        if path.is_root() && !is_dir {
            return Err(ImportError::InvalidPath { path: shown_path.to_owned() });
        }
        let (dir, name) = path.parent_and_name();
        let walk = |err| walk_error(err, shown_path);
        match kind {
            _ if is_dir => {
                if path.is_root() {
                    let root = self.dirs.root().try_clone_to_owned().map_err(dest("open", shown_path))?;
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
                    let kind = if node == Node::Block { "block" } else { "character" };
                    let (major, minor) = numbers;
                    return Err(ImportError::DeviceRefused { path: shown_path.to_owned(), kind, major, minor });
                }
                let parent = self.dirs.open(dir, true).map_err(walk)?;
                unpack::node(parent, name, node, numbers, &meta, shown_path, &mut self.skips)?;
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

    fn hard_link<R: Read>(&mut self, entry: &tar::Entry<'_, R>, path: &EntryPath, shown_path: &str) -> Result<(), ImportError> {
        let raw_target = link_target(entry, shown_path)?;
        let shown_target = shown(&raw_target);
        let bad_target = || ImportError::BadLinkTarget { path: shown_path.to_owned(), target: shown_target.clone() };
        let target = EntryPath::parse(&raw_target).map_err(|problem| match problem {
            PathProblem::Invalid => ImportError::InvalidLinkTarget { path: shown_path.to_owned() },
            PathProblem::Absolute | PathProblem::LeavesRoot => {
                ImportError::LinkLeavesRoot { path: shown_path.to_owned(), target: shown_target.clone() }
            }
        })?;
        if target.is_root() {
            return Err(bad_target());
        }
        let (target_dir, target_name) = target.parent_and_name();
        let target_parent = match self.dirs.open(target_dir, false) {
            Ok(fd) => fd.try_clone_to_owned().map_err(dest("open", shown_path))?,
            Err(WalkError::Io { action, path, source }) => {
                return Err(ImportError::Destination { action, path: shown(&path), source })
            }
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
        let parent = self.dirs.open(dir, true).map_err(|err| walk_error(err, shown_path))?;
        unpack::hard_link(target_parent.as_fd(), target_name, parent, name, shown_path)
    }

    /// Reads and discards what is left of an entry's data.
    fn drain<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, shown_path: &str, blame: &Blame) -> Result<(), ImportError> {
        copy_data(entry, &mut self.buf, shown_path, blame, |_| Ok(()))
    }

    /// Sets directory times, children before parents, once nothing more is
    /// created in them. A directory that a later entry replaced is skipped.
    fn finish(&mut self) -> Result<(), ImportError> {
        // Stable: for a directory listed twice, the later entry wins.
        self.dir_times.sort_by(|a, b| b.0.cmp(&a.0));
        for (raw, mtime) in std::mem::take(&mut self.dir_times) {
            let path = shown(&raw);
            let file = if raw.is_empty() {
                self.dirs.root().try_clone_to_owned().map_err(dest("open", &path))?
            } else {
                let entry_path = EntryPath::parse(&raw).expect("stored paths are normalized");
                let (dir, name) = entry_path.parent_and_name();
                let parent = match self.dirs.open(dir, false) {
                    Ok(parent) => parent,
                    Err(WalkError::Io { action, path, source }) => {
                        return Err(ImportError::Destination { action, path: shown(&path), source })
                    }
                    Err(_) => continue,
                };
                match dirfd::open_dir(parent, name) {
                    Ok(fd) => fd,
                    Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)) => continue,
                    Err(err) => return Err(dest("open", &path)(err)),
                }
            };
            unpack::set_mtime_fd(&File::from(file), mtime, &path)?;
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
    if blame.tar.eof.get() {
        return Err(ImportError::TruncatedEntry { path: shown_path.to_owned() });
    }
    Ok(())
}

fn path_error(problem: PathProblem, shown_path: &str) -> ImportError {
    let path = shown_path.to_owned();
    match problem {
        PathProblem::Invalid => ImportError::InvalidPath { path },
        PathProblem::Absolute => ImportError::AbsolutePath { path },
        PathProblem::LeavesRoot => ImportError::LeavesRoot { path },
    }
}

fn walk_error(err: WalkError, shown_path: &str) -> ImportError {
    let path = shown_path.to_owned();
    match err {
        WalkError::Symlink(at) => ImportError::ThroughSymlink { path, symlink: shown(&at) },
        WalkError::NotDirectory(at) | WalkError::Missing(at) => {
            ImportError::ThroughNonDirectory { path, component: shown(&at) }
        }
        WalkError::Io { action, path: at, source } => ImportError::Destination { action, path: shown(&at), source },
    }
}

fn bad_header(shown_path: &str) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::BadHeader { path: shown_path.to_owned(), source }
}

/// Owner, mode, time and extended attributes of an entry. Names are ignored:
/// ids are numeric, as the distro's own `/etc/passwd` defines them.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, shown_path: &str) -> Result<Meta, ImportError> {
    let header = entry.header();
    let id = |value: u64| {
        u32::try_from(value)
            .ok()
            .filter(|&id| id != u32::MAX)
            .ok_or_else(|| bad_header(shown_path)(io::Error::other("owner id out of range")))
    };
    let uid = id(header.uid().map_err(bad_header(shown_path))?)?;
    let gid = id(header.gid().map_err(bad_header(shown_path))?)?;
    let mode = header.mode().map_err(bad_header(shown_path))? & 0o7777;
    let seconds = header.mtime().map_err(bad_header(shown_path))?;
    let mut mtime = TimeSpec::new(i64::try_from(seconds).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(records) = entry.pax_extensions().map_err(bad_header(shown_path))? {
        for record in records {
            let record = record.map_err(bad_header(shown_path))?;
            let key = record.key_bytes();
            if key == b"mtime" {
                if let Some(time) = unpack::parse_pax_time(record.value_bytes()) {
                    mtime = time;
                }
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if unpack::xattr_restored(name) {
                    xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
                } else {
                    tracing::warn!(path = shown_path, xattr = %shown(name), "extended attribute not restored");
                }
            }
        }
    }
    Ok(Meta { uid, gid, mode, mtime, xattrs })
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown_path: &str) -> Result<Vec<u8>, ImportError> {
    match entry.link_name_bytes() {
        Some(target) if !target.is_empty() && !target.contains(&0) => Ok(target.into_owned()),
        _ => Err(ImportError::InvalidLinkTarget { path: shown_path.to_owned() }),
    }
}

fn device_numbers<R: Read>(entry: &tar::Entry<'_, R>, node: Node, shown_path: &str) -> Result<(u32, u32), ImportError> {
    if node == Node::Fifo {
        return Ok((0, 0));
    }
    let header = entry.header();
    let major = header.device_major().map_err(bad_header(shown_path))?;
    let minor = header.device_minor().map_err(bad_header(shown_path))?;
    match (major, minor) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(bad_header(shown_path)(io::Error::other("device numbers missing"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compression::Encoder;
    use crate::archive::ImportFault;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use tar::Header;

    /// Builds test archives, including ones the `tar` crate refuses to write.
    struct TestTar {
        builder: tar::Builder<Vec<u8>>,
    }

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_mtime(1_500_000_000);
        header.set_size(0);
        header
    }

    impl TestTar {
        fn new() -> Self {
            TestTar { builder: tar::Builder::new(Vec::new()) }
        }

        fn add(&mut self, mut header: Header, path: &str, data: &[u8]) -> &mut Self {
            header.set_size(data.len() as u64);
            self.builder.append_data(&mut header, path, data).unwrap();
            self
        }

        fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            self.add(header(EntryType::Regular, 0o644), path, data)
        }

        fn dir(&mut self, path: &str) -> &mut Self {
            self.add(header(EntryType::Directory, 0o755), path, b"")
        }

        fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
            let mut header = header(kind, 0o777);
            header.set_link_name_literal(target).unwrap();
            self.add(header, path, b"")
        }

        fn device(&mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> &mut Self {
            let mut header = header(kind, 0o666);
            header.set_device_major(major).unwrap();
            header.set_device_minor(minor).unwrap();
            self.add(header, path, b"")
        }

        /// An entry with `name` written into the header as it is.
        fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
            let mut header = header(kind, 0o644);
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            self.builder.append_pax_extensions(records.iter().copied()).unwrap();
            self
        }

        fn bytes(&mut self) -> Vec<u8> {
            self.builder.finish().unwrap();
            self.builder.get_ref().clone()
        }
    }

    fn extract_into(archive: &[u8]) -> (tempfile::TempDir, Result<u64, ImportError>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        let result = extract_tree(archive, &tmp.path().join("root"));
        (tmp, result)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn extract_restores_types_contents_and_metadata() {
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
            .add(header(EntryType::Regular, 0o4755), "usr/bin/su", b"#!/bin/true\n")
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
        assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"debian\n");
        assert_eq!((hostname.uid(), hostname.gid()), (1234, 5678));
        assert_eq!(hostname.mode() & 0o7777, 0o640);
        assert_eq!(hostname.mtime(), 1_234_567_890);
        let etc = std::fs::symlink_metadata(root.join("etc")).unwrap();
        assert_eq!((etc.mode() & 0o7777, etc.mtime()), (0o751, 1_111_111_111));
        let su = std::fs::symlink_metadata(root.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755);
        let su2 = std::fs::symlink_metadata(root.join("usr/bin/su2")).unwrap();
        assert_eq!((su2.ino(), su.nlink()), (su.ino(), 2));
        assert_eq!(std::fs::read_link(root.join("bin")).unwrap(), Path::new("/usr/bin"));
        assert!(std::fs::symlink_metadata(root.join("run/initctl")).unwrap().file_type().is_fifo());
        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((null.rdev(), null.mode() & 0o7777), (libc::makedev(1, 3), 0o666));
        assert_eq!(std::fs::read(root.join(&long_path)).unwrap(), b"long");
        assert_eq!(std::fs::metadata(root.join("usr")).unwrap().permissions().mode() & 0o7777, 0o755);
        match xattr::get(root.join("etc/hostname"), "user.test") {
            Ok(value) => assert_eq!(value.as_deref(), Some(&b"hello"[..])),
            Err(err) => println!("skipped the xattr assertion: this file system refuses user xattrs: {err}"),
        }
    }

    #[test]
    fn extract_detects_each_compression() {
        // Arrange
        let plain = TestTar::new().file("hello.txt", b"hi there").bytes();

        for compression in [Compression::None, Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let mut encoder = Encoder::new(compression, Vec::new()).unwrap();
            encoder.write_all(&plain).unwrap();
            let packed = encoder.finish().unwrap();

            // Act
            let (tmp, result) = extract_into(&packed);

            // Assert
            assert_eq!(result.unwrap(), plain.len() as u64, "{compression:?}");
            assert_eq!(std::fs::read(tmp.path().join("root/hello.txt")).unwrap(), b"hi there");
        }
    }

    #[test]
    fn extract_rejects_paths_with_parent_components() {
        // Arrange
        for name in ["../x", "a/../../x"] {
            let archive = TestTar::new().raw(EntryType::Regular, name.as_bytes(), b"", b"evil").bytes();

            // Act
            let (tmp, result) = extract_into(&archive);

            // Assert
            let err = result.unwrap_err();
            assert!(matches!(&err, ImportError::LeavesRoot { path } if path == name), "{err:?}");
            assert_eq!(err.to_string(), format!("archive entry {name} leaves the distro root"));
            assert_eq!(err.fault(), ImportFault::Archive);
            assert_eq!(names_in(tmp.path()), ["root"]);
        }
    }

    #[test]
    fn extract_rejects_absolute_paths() {
        // Arrange
        let archive = TestTar::new().raw(EntryType::Regular, b"/etc/x", b"", b"evil").bytes();

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        assert!(matches!(result, Err(ImportError::AbsolutePath { path }) if path == "/etc/x"));
    }

    #[test]
    fn extract_rejects_a_file_written_through_a_symlink_to_outside() {
        // Arrange
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap();
        let archive = TestTar::new().link(EntryType::Symlink, "link", target).file("link/evil", b"evil").bytes();

        // Act
        let (tmp, result) = extract_into(&archive);

        // Assert
        let err = result.unwrap_err();
        assert!(matches!(&err, ImportError::ThroughSymlink { path, symlink } if path == "link/evil" && symlink == "link"));
        assert_eq!(err.to_string(), "archive entry link/evil goes through symlink link");
        assert!(names_in(outside.path()).is_empty());
        assert_eq!(names_in(tmp.path()), ["root"]);
    }

    #[test]
    fn extract_rejects_a_file_written_through_a_symlink_to_the_parent() {
        // Arrange
        let archive = TestTar::new().link(EntryType::Symlink, "up", "..").file("up/evil", b"evil").bytes();

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
            let archive = TestTar::new().link(EntryType::Link, "passwd", target).bytes();

            // Act
            let (tmp, result) = extract_into(&archive);

            // Assert
            let err = result.unwrap_err();
            assert!(matches!(&err, ImportError::LinkLeavesRoot { target: t, .. } if t == target), "{err:?}");
            assert!(names_in(&tmp.path().join("root")).is_empty());
        }
    }

    #[test]
    fn extract_rejects_hard_links_through_symlinks_or_to_non_files() {
        // Arrange
        let cases = [
            TestTar::new().link(EntryType::Symlink, "etc", "/etc").link(EntryType::Link, "pw", "etc/passwd").bytes(),
            TestTar::new().link(EntryType::Symlink, "s", "/etc/passwd").link(EntryType::Link, "pw", "s").bytes(),
            TestTar::new().dir("d").link(EntryType::Link, "pw", "d").bytes(),
            TestTar::new().link(EntryType::Link, "pw", "missing").bytes(),
        ];

        for archive in cases {
            // Act
            let (tmp, result) = extract_into(&archive);

            // Assert
            assert!(matches!(result, Err(ImportError::BadLinkTarget { .. })), "{result:?}");
            assert!(!tmp.path().join("root/pw").exists());
        }
    }

    #[test]
    fn extract_rejects_block_devices_and_dangerous_char_devices() {
        // Arrange
        let cases = [
            (EntryType::Block, "dev/sda", 8, 0, "archive entry dev/sda is a block device 8:0, which is not allowed"),
            (EntryType::Char, "dev/mem", 1, 1, "archive entry dev/mem is a character device 1:1, which is not allowed"),
            (EntryType::Char, "tmp/null", 1, 3, "archive entry tmp/null is a character device 1:3, which is not allowed"),
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
    fn extract_reports_a_stream_cut_inside_a_file() {
        // Arrange
        let archive = TestTar::new().file("a", b"first").file("big", &[7u8; 4096]).bytes();
        let cut = &archive[..512 * 3 + 1000];

        // Act
        let (_tmp, result) = extract_into(cut);

        // Assert
        let err = result.unwrap_err();
        assert!(matches!(&err, ImportError::TruncatedEntry { path } if path == "big"), "{err:?}");
        assert_eq!(err.to_string(), "archive is truncated in entry big");
    }

    #[test]
    fn extract_reports_a_stream_cut_between_entries() {
        // Arrange
        let archive = TestTar::new().file("a", b"first").file("b", b"second").bytes();
        let cut = &archive[..512 * 2];

        // Act
        let (tmp, result) = extract_into(cut);

        // Assert
        assert!(matches!(result, Err(ImportError::Truncated)), "{result:?}");
        assert_eq!(std::fs::read(tmp.path().join("root/a")).unwrap(), b"first");
    }

    #[test]
    fn extract_reports_a_cut_compressed_stream_as_truncated() {
        // Arrange
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let plain = TestTar::new().file("noise", &data).bytes();

        for compression in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let mut encoder = Encoder::new(compression, Vec::new()).unwrap();
            encoder.write_all(&plain).unwrap();
            let packed = encoder.finish().unwrap();

            // Act
            let (_tmp, result) = extract_into(&packed[..packed.len() / 2]);

            // Assert
            assert!(
                matches!(result, Err(ImportError::TruncatedEntry { .. } | ImportError::Truncated)),
                "{compression:?}: {result:?}"
            );
        }
    }

    #[test]
    fn extract_rejects_input_that_is_not_tar() {
        // Arrange
        let mut state = 0x1234_5678_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();

        for input in [&noise[..], &noise[..100], b"hello world\n"] {
            // Act
            let (_tmp, result) = extract_into(input);

            // Assert
            let err = result.unwrap_err();
            assert!(matches!(err, ImportError::NotTar), "{err:?}");
            assert_eq!(err.to_string(), "input is not a tar archive");
        }
    }

    #[test]
    fn extract_rejects_empty_input() {
        // Arrange
        let empty: &[u8] = b"";

        // Act
        let (_tmp, result) = extract_into(empty);

        // Assert
        let err = result.unwrap_err();
        assert!(matches!(err, ImportError::Empty));
        assert_eq!(err.to_string(), "archive is empty");
    }

    #[test]
    fn extract_reports_a_damaged_header_after_good_entries() {
        // Arrange
        let mut archive = TestTar::new().file("a", b"first").file("b", b"second").bytes();
        archive[1024 + 10] ^= 0xff;

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        let err = result.unwrap_err();
        assert!(matches!(&err, ImportError::Corrupt { after, .. } if after == "a"), "{err:?}");
    }

    #[test]
    fn extract_rejects_unknown_entry_types() {
        // Arrange
        let archive = TestTar::new().raw(EntryType::new(b'V'), b"volume", b"", b"").bytes();

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        let err = result.unwrap_err();
        assert_eq!(err.to_string(), "archive entry volume has unsupported type 'V'");
    }

    #[test]
    fn extract_rejects_oversized_long_names() {
        // Arrange
        let long_name = vec![b'a'; (HEADER_BUDGET + 4096) as usize];
        let archive = TestTar::new().raw(EntryType::GNULongName, b"././@LongLink", b"", &long_name).file("x", b"").bytes();

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        assert!(matches!(result, Err(ImportError::HeaderTooLarge)), "{result:?}");
    }

    #[test]
    fn extract_lets_later_entries_replace_earlier_ones_without_following_them() {
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
        // Arrange
        let mut root_header = header(EntryType::Directory, 0o755);
        root_header.set_mtime(1_000_000_000);
        let archive = TestTar::new().raw(EntryType::Directory, b"./", b"", b"").file("a", b"").bytes();
        let archive_with_time = {
            let mut tar = TestTar::new();
            tar.builder.append(&{ let mut h = root_header; h.as_old_mut().name[..2].copy_from_slice(b"./"); h.set_cksum(); h }, &b""[..]).unwrap();
            tar.file("a", b"").bytes()
        };

        // Act
        let (tmp, result) = extract_into(&archive_with_time);
        let (_tmp2, as_file) = extract_into(&TestTar::new().raw(EntryType::Regular, b"./", b"", b"x").bytes());

        // Assert
        result.unwrap();
        let meta = std::fs::metadata(tmp.path().join("root")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o755, 1_000_000_000));
        assert!(matches!(as_file, Err(ImportError::InvalidPath { .. })), "{as_file:?}");
        drop(archive);
    }

    #[test]
    fn extract_blames_the_input_when_reading_it_fails() {
        // Arrange
        struct Failing(Vec<u8>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let archive = TestTar::new().file("a", &[1u8; 2000]).bytes();
        let tmp = tempfile::tempdir().unwrap();

        // Act
        let result = extract_tree(Failing(archive[..1200].to_vec()), tmp.path());

        // Assert
        let err = result.unwrap_err();
        assert!(matches!(err, ImportError::Read(_)), "{err:?}");
        assert_eq!(err.fault(), ImportFault::Input);
    }

    #[test]
    fn extract_blames_the_destination_when_it_is_missing() {
        // Arrange
        let tmp = tempfile::tempdir().unwrap();
        let archive = TestTar::new().file("a", b"x").bytes();

        // Act
        let result = extract_tree(&archive[..], &tmp.path().join("missing"));

        // Assert
        assert_eq!(result.unwrap_err().fault(), ImportFault::Destination);
    }
}
