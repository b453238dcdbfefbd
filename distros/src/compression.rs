//! Recognising a tarball's compression from its first bytes, and reading it.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// The compression of a tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`.tar.gz`).
    Gzip,
    /// xz (`.tar.xz`).
    Xz,
    /// Zstandard (`.tar.zst`).
    Zstd,
}

/// Every compression, for looking a checksum up in the cache.
pub(crate) const ALL: [Compression; 4] = [
    Compression::None,
    Compression::Gzip,
    Compression::Xz,
    Compression::Zstd,
];

impl Compression {
    /// The file name extension, without a leading dot (`tar.gz`).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Xz => "tar.xz",
            Compression::Zstd => "tar.zst",
        }
    }

    /// Recognises the compression from a file's first 512 bytes; `None` when
    /// the bytes are neither a known compressed stream nor a tar header.
    pub fn from_magic(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.get(257..262) == Some(b"ustar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// Recognises the compression of the file at `path`.
    pub fn of_file(path: &Path) -> io::Result<Option<Compression>> {
        let mut head = Vec::with_capacity(512);
        File::open(path)?.take(512).read_to_end(&mut head)?;
        Ok(Compression::from_magic(&head))
    }

    /// Wraps `reader` in the matching decompressor.
    pub(crate) fn decoder<'a>(self, reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        let reader = BufReader::new(reader);
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        })
    }
}

/// The agent's import request names the same four compressions.
impl From<Compression> for protocol::Compression {
    fn from(compression: Compression) -> Self {
        match compression {
            Compression::None => protocol::Compression::None,
            Compression::Gzip => protocol::Compression::Gzip,
            Compression::Xz => protocol::Compression::Xz,
            Compression::Zstd => protocol::Compression::Zstd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_magic_recognises_each_compression() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");

        assert_eq!(
            Compression::from_magic(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_magic(b"\xfd7zXZ\x00\x00"),
            Some(Compression::Xz)
        );
        assert_eq!(
            Compression::from_magic(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::from_magic(&tar), Some(Compression::None));
    }

    #[test]
    fn from_magic_rejects_html_error_page() {
        assert_eq!(
            Compression::from_magic(b"<!DOCTYPE html><html>Not Found</html>"),
            None
        );
    }

    #[test]
    fn decoder_reads_back_gzip() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut encoder, b"root filesystem").unwrap();
        let compressed = encoder.finish().unwrap();

        let mut text = String::new();
        Compression::Gzip
            .decoder(compressed.as_slice())
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();

        assert_eq!(text, "root filesystem");
    }
}
