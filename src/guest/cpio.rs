//! A writer for the cpio "newc" format, the one the kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`):
//! a 110-byte ASCII header (`070701` and 13 eight-digit hex fields), the
//! NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes;
//! the archive ends with an entry named `TRAILER!!!`.
//!
//! Timestamps and owners are fixed (0) so equal inputs give equal bytes.

use std::io::{self, Write};

/// Magic of a newc header without checksums.
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// The header's length.
pub const HEADER_LEN: usize = 110;
/// Name of the end-of-archive entry.
pub const TRAILER: &str = "TRAILER!!!";

/// `S_IFDIR`, `S_IFREG`, `S_IFCHR` from `sys/stat.h`.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100000;
/// Character device type bits.
pub const S_IFCHR: u32 = 0o020000;

/// Writes entries in order; call [`finish`](CpioWriter::finish) to add the
/// trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    written: u64,
}

/// The header fields that differ between entries.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    /// A writer appending to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_inode: 1,
            written: 0,
        }
    }

    /// A directory; `name` is relative to the archive root (`dev`, `lib/modules`).
    pub fn directory(&mut self, name: &str, permissions: u32) -> io::Result<()> {
        self.entry(
            Header {
                name,
                mode: S_IFDIR | (permissions & 0o7777),
                nlink: 2,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )
    }

    /// A regular file with `data` as its contents.
    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is over 4 GiB, too large for cpio newc"),
            )
        })?;
        self.entry(
            Header {
                name,
                mode: S_IFREG | (permissions & 0o7777),
                nlink: 1,
                size,
                rdev: (0, 0),
            },
            data,
        )
    }

    /// A character device node.
    pub fn char_device(
        &mut self,
        name: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(
            Header {
                name,
                mode: S_IFCHR | (permissions & 0o7777),
                nlink: 1,
                size: 0,
                rdev: (major, minor),
            },
            &[],
        )
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_inode = 0;
        self.entry(
            Header {
                name: TRAILER,
                mode: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, header: Header<'_>, data: &[u8]) -> io::Result<()> {
        if header.name.is_empty() || header.name.starts_with('/') || header.name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {:?}", header.name),
            ));
        }
        let inode = self.next_inode;
        self.next_inode = self.next_inode.wrapping_add(1);
        // namesize counts the terminating NUL.
        let name_size = header.name.len() + 1;
        let fields = [
            inode,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            0, // mtime
            header.size,
            0, // devmajor
            0, // devminor
            header.rdev.0,
            header.rdev.1,
            u32::try_from(name_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            0, // check
        ];
        let mut head = Vec::with_capacity(HEADER_LEN + name_size + 3);
        head.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            head.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        head.extend_from_slice(header.name.as_bytes());
        head.push(0);
        head.resize(head.len() + padding(self.written + head.len() as u64), 0);
        self.out.write_all(&head)?;
        self.out.write_all(data)?;
        let data_end = self.written + head.len() as u64 + data.len() as u64;
        let pad = padding(data_end);
        self.out.write_all(&[0; 3][..pad])?;
        self.written = data_end + pad as u64;
        Ok(())
    }
}

/// Bytes needed to bring `offset` to a multiple of 4.
fn padding(offset: u64) -> usize {
    ((4 - offset % 4) % 4) as usize
}

/// A reader for the archives written above, to check them in tests.
#[cfg(test)]
pub(crate) mod reader {
    /// One entry read back.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Entry {
        pub name: String,
        pub mode: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
        /// Offset of the entry's header in the archive.
        pub offset: usize,
    }

    /// Parses `archive`, checking magic, alignment and the trailer; the
    /// trailer itself is not returned.
    pub fn parse(archive: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "header at {at} not 4-byte aligned");
            let header = &archive[at..at + super::HEADER_LEN];
            assert_eq!(&header[..6], b"070701", "bad magic at {at}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&header[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
            let name_start = at + super::HEADER_LEN;
            let name_bytes = &archive[name_start..name_start + name_size];
            assert_eq!(name_bytes.last(), Some(&0), "name not NUL-terminated");
            let name = String::from_utf8(name_bytes[..name_size - 1].to_vec()).unwrap();
            let data_start = (name_start + name_size).next_multiple_of(4);
            let data = archive[data_start..data_start + size].to_vec();
            let next = (data_start + size).next_multiple_of(4);
            if name == super::TRAILER {
                assert_eq!(next, archive.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Entry {
                name,
                mode,
                rdev: (field(9), field(10)),
                data,
                offset: at,
            });
            at = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reader::parse;
    use super::*;

    #[test]
    fn entries_read_back_with_names_modes_and_data() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.directory("dev", 0o755).unwrap();
        writer.char_device("dev/console", 0o600, 5, 1).unwrap();
        writer.file("init", 0o755, b"\x7fELF...").unwrap();

        let archive = writer.finish().unwrap();

        let entries = parse(&archive);
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.mode, e.rdev))
            .collect();
        assert_eq!(
            summary,
            [
                ("dev", S_IFDIR | 0o755, (0, 0)),
                ("dev/console", S_IFCHR | 0o600, (5, 1)),
                ("init", S_IFREG | 0o755, (0, 0)),
            ]
        );
        assert_eq!(entries[2].data, b"\x7fELF...");
    }

    #[test]
    fn every_header_and_data_start_is_four_byte_aligned() {
        let mut writer = CpioWriter::new(Vec::new());
        // Names and sizes chosen to need every amount of padding.
        for (i, name) in ["a", "bb", "ccc", "dddd"].iter().enumerate() {
            writer.file(name, 0o644, &vec![b'x'; i + 1]).unwrap();
        }

        let archive = writer.finish().unwrap();

        let entries = parse(&archive);
        assert_eq!(entries.len(), 4);
        for entry in &entries {
            assert_eq!(entry.offset % 4, 0);
        }
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn archive_ends_with_trailer() {
        let archive = CpioWriter::new(Vec::new()).finish().unwrap();

        let trailer_name = &archive[HEADER_LEN..HEADER_LEN + TRAILER.len()];
        assert_eq!(trailer_name, TRAILER.as_bytes());
        assert!(parse(&archive).is_empty());
    }

    #[test]
    fn inodes_are_distinct_per_entry() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.file("a", 0o644, b"1").unwrap();
        writer.file("b", 0o644, b"2").unwrap();

        let archive = writer.finish().unwrap();

        let entries = parse(&archive);
        let inode = |offset: usize| &archive[offset + 6..offset + 14];
        assert_ne!(inode(entries[0].offset), inode(entries[1].offset));
    }

    #[test]
    fn same_input_gives_same_bytes() {
        let build = || {
            let mut writer = CpioWriter::new(Vec::new());
            writer.directory("bin", 0o755).unwrap();
            writer.file("bin/x", 0o755, b"payload").unwrap();
            writer.finish().unwrap()
        };

        assert_eq!(build(), build());
    }

    #[test]
    fn absolute_and_empty_names_are_refused() {
        let mut writer = CpioWriter::new(Vec::new());

        assert!(writer.file("/init", 0o755, b"").is_err());
        assert!(writer.directory("", 0o755).is_err());
    }

    #[test]
    fn permission_bits_cannot_change_the_file_type() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.file("f", 0o177_777, b"").unwrap();

        let archive = writer.finish().unwrap();

        assert_eq!(parse(&archive)[0].mode, S_IFREG | 0o7777);
    }
}
