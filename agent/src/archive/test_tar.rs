//! Test support: building tar archives, including hostile ones the `tar`
//! crate refuses to write, and extracting them into a fresh directory.

use std::path::Path;

use tar::{EntryType, Header};

use super::ImportError;

/// A GNU header of `kind` with `mode`, owner 0:0 and a fixed time.
pub(super) fn header(kind: EntryType, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(1_500_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header
}

/// An archive being built in memory.
pub(super) struct TestTar {
    builder: tar::Builder<Vec<u8>>,
}

impl TestTar {
    /// An empty archive.
    pub(super) fn new() -> Self {
        TestTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// Adds an entry; long paths get a GNU long-name entry.
    pub(super) fn add(&mut self, mut header: Header, path: &str, data: &[u8]) -> &mut Self {
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, path, data).unwrap();
        self
    }

    /// Adds a regular file, mode 0644.
    pub(super) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.add(header(EntryType::Regular, 0o644), path, data)
    }

    /// Adds a directory, mode 0755.
    pub(super) fn dir(&mut self, path: &str) -> &mut Self {
        self.add(header(EntryType::Directory, 0o755), path, b"")
    }

    /// Adds a symlink or hard link with `target` stored as it is.
    pub(super) fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
        let mut header = header(kind, 0o777);
        header.set_link_name_literal(target).unwrap();
        self.add(header, path, b"")
    }

    /// Adds a device node.
    pub(super) fn device(
        &mut self,
        kind: EntryType,
        path: &str,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut header = header(kind, 0o666);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.add(header, path, b"")
    }

    /// Adds an entry with `name` and `link` written into the header as they are.
    pub(super) fn raw(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
    ) -> &mut Self {
        let mut header = header(kind, 0o644);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    /// Adds a header exactly as given, with `data`.
    pub(super) fn header_as_is(&mut self, header: &Header, data: &[u8]) -> &mut Self {
        self.builder.append(header, data).unwrap();
        self
    }

    /// Adds PAX records for the next entry.
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    /// The archive with its end-of-archive marker.
    pub(super) fn bytes(&mut self) -> Vec<u8> {
        self.builder.finish().unwrap();
        self.builder.get_ref().clone()
    }
}

/// Extracts `archive` into `root` inside a new temporary directory, so that
/// tests can check nothing appeared next to `root`.
pub(super) fn extract_into(archive: &[u8]) -> (tempfile::TempDir, Result<u64, ImportError>) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("root")).unwrap();
    let result = super::extract(archive, &tmp.path().join("root"));
    (tmp, result)
}

/// The sorted names in `dir`.
pub(super) fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether this process may set owners and make device nodes, as extraction
/// does; prints why the calling test is skipped when it may not.
pub(super) fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    println!("skipped: extraction sets owners and makes device nodes, which needs root");
    false
}
