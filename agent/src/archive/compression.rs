//! Recognizing compressed tar streams by their first bytes, and the decoders
//! and encoders for them.

use std::io::{self, BufReader, BufWriter, Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use protocol::Compression;
use xz2::read::XzDecoder;
use xz2::stream::{Check, MtStreamBuilder};
use xz2::write::XzEncoder;

/// How many leading bytes [`detect`] looks at.
pub(super) const MAGIC_LEN: usize = 6;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Buffer between the input and the tar parser, which reads 512-byte headers.
const READ_BUFFER: usize = 256 * 1024;

/// Buffer in front of the output, so that tar's 512-byte writes do not each
/// become a system call.
const WRITE_BUFFER: usize = 256 * 1024;

/// xz level: the `xz` command's default.
const XZ_PRESET: u32 = 6;

/// zstd level: the `zstd` command's default.
const ZSTD_LEVEL: i32 = 3;

/// Most threads the xz encoder uses.
const XZ_MAX_THREADS: u32 = 8;

/// The compression of a stream starting with `prefix` (which may be shorter
/// than [`MAGIC_LEN`]); anything unrecognized is taken as plain tar.
pub(super) fn detect(prefix: &[u8]) -> Compression {
    if prefix.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if prefix.starts_with(XZ_MAGIC) {
        Compression::Xz
    } else if prefix.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The name of a compression format, for messages.
pub(super) fn format_name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "tar",
        Compression::Gzip => "gzip",
        Compression::Xz => "xz",
        Compression::Zstd => "zstd",
    }
}

/// Wraps `input` in the decoder for `compression`. Concatenated gzip members,
/// xz streams and zstd frames are all read, as the command line tools do.
pub(super) fn decoder<'a>(
    compression: Compression,
    input: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(BufReader::with_capacity(READ_BUFFER, input)),
        Compression::Gzip => Box::new(MultiGzDecoder::new(BufReader::with_capacity(
            READ_BUFFER,
            input,
        ))),
        Compression::Xz => Box::new(XzDecoder::new_multi_decoder(BufReader::with_capacity(
            READ_BUFFER,
            input,
        ))),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(BufReader::with_capacity(
            READ_BUFFER,
            input,
        ))?),
    })
}

/// A tar stream writer with optional compression.
pub(super) enum Encoder<W: Write> {
    /// Plain tar.
    None(BufWriter<W>),
    /// gzip.
    Gzip(GzEncoder<BufWriter<W>>),
    /// xz, multithreaded.
    Xz(XzEncoder<BufWriter<W>>),
    /// Zstandard.
    Zstd(zstd::Encoder<'static, BufWriter<W>>),
}

impl<W: Write> Encoder<W> {
    /// Starts a stream with `compression` on `out`.
    pub(super) fn new(compression: Compression, out: W) -> io::Result<Self> {
        let out = BufWriter::with_capacity(WRITE_BUFFER, out);
        Ok(match compression {
            Compression::None => Encoder::None(out),
            Compression::Gzip => Encoder::Gzip(GzEncoder::new(out, flate2::Compression::default())),
            Compression::Xz => {
                let threads = std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
                    .min(XZ_MAX_THREADS);
                let stream = MtStreamBuilder::new()
                    .threads(threads)
                    .preset(XZ_PRESET)
                    .check(Check::Crc64)
                    .encoder()
                    .map_err(io::Error::from)?;
                Encoder::Xz(XzEncoder::new_stream(out, stream))
            }
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(out, ZSTD_LEVEL)?),
        })
    }

    /// Writes the compression trailer, flushes, and returns the output.
    pub(super) fn finish(self) -> io::Result<W> {
        let buffered = match self {
            Encoder::None(out) => out,
            Encoder::Gzip(enc) => enc.finish()?,
            Encoder::Xz(enc) => enc.finish()?,
            Encoder::Zstd(enc) => enc.finish()?,
        };
        buffered
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(out) => out.write(buf),
            Encoder::Gzip(enc) => enc.write(buf),
            Encoder::Xz(enc) => enc.write(buf),
            Encoder::Zstd(enc) => enc.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(out) => out.flush(),
            Encoder::Gzip(enc) => enc.flush(),
            Encoder::Xz(enc) => enc.flush(),
            Encoder::Zstd(enc) => enc.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
    ];

    fn compress(compression: Compression, data: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::new(compression, Vec::new()).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn detect_recognizes_what_the_encoder_writes() {
        // Arrange
        let data = b"not really tar, but enough bytes to compress".repeat(10);

        // Act
        let detected: Vec<_> = ALL
            .iter()
            .map(|&c| detect(&compress(c, &data)[..MAGIC_LEN]))
            .collect();

        // Assert
        assert_eq!(detected, ALL);
    }

    #[test]
    fn detect_takes_short_or_unknown_prefixes_as_plain_tar() {
        // Arrange
        let prefixes: [&[u8]; 4] = [b"", b"\x1f", b"\xfd7zX", b"ustar"];

        // Act
        let detected: Vec<_> = prefixes.iter().map(|p| detect(p)).collect();

        // Assert
        assert_eq!(detected, [Compression::None; 4]);
    }

    #[test]
    fn decoder_round_trips_each_encoder() {
        // Arrange
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        for compression in ALL {
            let packed = compress(compression, &data);

            // Act
            let mut unpacked = Vec::new();
            decoder(compression, &packed[..])
                .unwrap()
                .read_to_end(&mut unpacked)
                .unwrap();

            // Assert
            assert_eq!(unpacked, data, "{compression:?}");
        }
    }

    #[test]
    fn decoder_reads_concatenated_streams() {
        // Arrange
        for compression in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let mut packed = compress(compression, b"first ");
            packed.extend(compress(compression, b"second"));

            // Act
            let mut unpacked = Vec::new();
            decoder(compression, &packed[..])
                .unwrap()
                .read_to_end(&mut unpacked)
                .unwrap();

            // Assert
            assert_eq!(unpacked, b"first second", "{compression:?}");
        }
    }

    #[test]
    fn decoder_fails_on_a_cut_stream() {
        // Arrange
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();

        for compression in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let packed = compress(compression, &data);
            let cut = &packed[..packed.len() / 2];

            // Act
            let mut unpacked = Vec::new();
            let result = decoder(compression, cut)
                .unwrap()
                .read_to_end(&mut unpacked);

            // Assert
            assert!(result.is_err(), "{compression:?} accepted a cut stream");
        }
    }
}
