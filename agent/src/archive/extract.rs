//! Extracting an untrusted tar stream into a distro directory.
//!
//! The stream passes through two counting readers, one under the decoder and
//! one above it, so that an error coming out of the tar parser can be told
//! apart: the input failed, the compressed data is damaged, the stream ended
//! early, or the tar data itself is bad.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;

use protocol::Compression;

use super::compression::{decoder, detect, format_name, MAGIC_LEN};
use super::extract_entry::Extractor;
use super::parent_dirs::ParentDirs;
use super::{shown, ImportError};

/// Most bytes the tar parser may read between two entries: padding, headers,
/// GNU long names and PAX records. The parser keeps long names and PAX records
/// in memory, so this bounds what a hostile header can make it allocate.
const HEADER_BUDGET: u64 = 4 << 20;

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
        loop {
            return match self.inner.read(buf) {
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
                // The tar parser does not retry, so a signal must not look
                // like a broken archive.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    seen.failed.set(true);
                    Err(err)
                }
            };
        }
    }
}

/// Attributes stream errors to their cause.
pub(super) struct Blame {
    compression: Compression,
    input: Rc<Seen>,
    tar: Rc<Seen>,
}

impl Blame {
    /// Whether the decoded stream ended.
    pub(super) fn ended(&self) -> bool {
        self.tar.eof.get()
    }

    /// Turns an error from reading the tar stream into an [`ImportError`].
    /// `inside` is the entry whose data was being read; `after` the last
    /// complete entry when the parser was looking for the next header.
    pub(super) fn error(
        &self,
        err: io::Error,
        inside: Option<&str>,
        after: Option<&str>,
    ) -> ImportError {
        let truncated = || match inside {
            Some(path) => ImportError::TruncatedEntry {
                path: path.to_owned(),
            },
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
            return ImportError::Decompress {
                format: format_name(self.compression),
                source: err,
            };
        }
        if self.tar.over_budget.get() {
            return ImportError::HeaderTooLarge;
        }
        match (inside, after) {
            (None, None) => ImportError::NotTar,
            _ if self.tar.eof.get() => truncated(),
            (Some(path), _) => ImportError::BadHeader {
                path: path.to_owned(),
                source: err,
            },
            (None, Some(after)) => ImportError::Corrupt {
                after: after.to_owned(),
                source: err,
            },
        }
    }
}

pub(super) fn extract_tree(input: impl Read, dest_dir: &Path) -> Result<u64, ImportError> {
    let root = File::open(dest_dir)
        .and_then(|f| match f.metadata()?.is_dir() {
            true => Ok(OwnedFd::from(f)),
            false => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        })
        .map_err(|source| ImportError::OpenDestination {
            dest: dest_dir.to_owned(),
            source,
        })?;

    let input_seen = Rc::new(Seen::default());
    let mut input = Counting {
        inner: input,
        seen: input_seen.clone(),
    };
    let mut magic = [0u8; MAGIC_LEN];
    let magic_len = read_prefix(&mut input, &mut magic).map_err(ImportError::Read)?;
    if magic_len == 0 {
        return Err(ImportError::Empty);
    }
    let compression = detect(&magic[..magic_len]);
    let rejoined = Cursor::new(magic).take(magic_len as u64).chain(input);
    let blame = Blame {
        compression,
        input: input_seen,
        tar: Rc::new(Seen::default()),
    };
    let decoded = decoder(compression, rejoined).map_err(|source| ImportError::Decompress {
        format: format_name(compression),
        source,
    })?;
    let mut archive = tar::Archive::new(Counting {
        inner: decoded,
        seen: blame.tar.clone(),
    });

    let mut extractor = Extractor::new(ParentDirs::new(root));
    let mut last: Option<String> = None;
    let mut count: u64 = 0;
    let mut entries = archive
        .entries()
        .map_err(|err| blame.error(err, None, None))?;
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
        count += 1;
    }

    if blame.tar.eof.get() && blame.tar.bytes.get() > 0 {
        // The stream stopped at an entry boundary without the end-of-archive
        // marker: most likely cut off.
        return Err(ImportError::Truncated);
    }
    // Read past the marker to the end, so that the decoder checks its trailer
    // (gzip CRC, xz and zstd checksums) and the sender is not left blocked.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|err| blame.error(err, None, last.as_deref()))?;
    if count == 0 {
        // Nothing to make a distro from: an empty (or all-zero) stream.
        return Err(ImportError::Empty);
    }
    extractor.finish()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compression::Encoder;
    use crate::archive::test_tar::{extract_into, privileged, TestTar};
    use crate::archive::ImportFault;
    use std::io::Write;
    use tar::EntryType;

    #[test]
    fn extract_detects_each_compression() {
        if !privileged() {
            return;
        }
        // Arrange
        let plain = TestTar::new().file("hello.txt", b"hi there").bytes();

        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
        ] {
            let mut encoder = Encoder::new(compression, Vec::new()).unwrap();
            encoder.write_all(&plain).unwrap();
            let packed = encoder.finish().unwrap();

            // Act
            let (tmp, result) = extract_into(&packed);

            // Assert
            assert_eq!(result.unwrap(), plain.len() as u64, "{compression:?}");
            assert_eq!(
                std::fs::read(tmp.path().join("root/hello.txt")).unwrap(),
                b"hi there"
            );
        }
    }

    #[test]
    fn extract_reports_a_stream_cut_inside_a_file() {
        if !privileged() {
            return;
        }
        // Arrange
        let archive = TestTar::new()
            .file("a", b"first")
            .file("big", &[7u8; 4096])
            .bytes();
        let cut = &archive[..512 * 3 + 1000];

        // Act
        let (_tmp, result) = extract_into(cut);

        // Assert
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ImportError::TruncatedEntry { path } if path == "big"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "archive is truncated in entry big");
    }

    #[test]
    fn extract_reports_a_stream_cut_between_entries() {
        if !privileged() {
            return;
        }
        // Arrange
        let archive = TestTar::new()
            .file("a", b"first")
            .file("b", b"second")
            .bytes();
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
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let plain = TestTar::new().file("noise", &data).bytes();

        for compression in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let mut encoder = Encoder::new(compression, Vec::new()).unwrap();
            encoder.write_all(&plain).unwrap();
            let packed = encoder.finish().unwrap();

            // Act
            let (_tmp, result) = extract_into(&packed[..packed.len() / 2]);

            // Assert
            assert!(
                matches!(
                    result,
                    Err(ImportError::TruncatedEntry { .. } | ImportError::Truncated)
                ),
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
    fn extract_rejects_archives_without_entries() {
        // Arrange
        let end_marker_only = TestTar::new().bytes();
        let gzip_of_nothing = Encoder::new(Compression::Gzip, Vec::new())
            .unwrap()
            .finish()
            .unwrap();

        for input in [&end_marker_only[..], &gzip_of_nothing[..]] {
            // Act
            let (_tmp, result) = extract_into(input);

            // Assert
            assert!(matches!(result, Err(ImportError::Empty)), "{result:?}");
        }
    }

    #[test]
    fn extract_reports_a_damaged_header_after_good_entries() {
        if !privileged() {
            return;
        }
        // Arrange
        let mut archive = TestTar::new()
            .file("a", b"first")
            .file("b", b"second")
            .bytes();
        archive[1024 + 10] ^= 0xff;

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ImportError::Corrupt { after, .. } if after == "a"),
            "{err:?}"
        );
    }

    #[test]
    fn extract_rejects_oversized_long_names() {
        // Arrange
        let long_name = vec![b'a'; (HEADER_BUDGET + 4096) as usize];
        let archive = TestTar::new()
            .raw(EntryType::GNULongName, b"././@LongLink", b"", &long_name)
            .file("x", b"")
            .bytes();

        // Act
        let (_tmp, result) = extract_into(&archive);

        // Assert
        assert!(
            matches!(result, Err(ImportError::HeaderTooLarge)),
            "{result:?}"
        );
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
