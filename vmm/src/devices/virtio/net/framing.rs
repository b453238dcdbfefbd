//! The frame stream of QEMU's `-netdev stream` (what passt serves on its
//! `--socket`): each Ethernet frame is preceded by its length as a 32-bit
//! big-endian number, nothing else.
//!
//! [`FrameReader`] reassembles frames from however the bytes arrive (a
//! length prefix split over two reads, a frame over many); [`FrameWriter`]
//! holds length-prefixed frames until a non-blocking socket takes them.
//! Neither touches a socket itself, so both are tested and fuzzed on plain
//! byte slices.

use std::io::{self, Read, Write};

use super::defs::{MAX_FRAME_LEN, STREAM_LENGTH_SIZE};

/// The peer broke the framing; the stream cannot be resynchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A length prefix larger than any Ethernet frame.
    #[error("the backend announced a {0}-byte frame (at most {MAX_FRAME_LEN})")]
    FrameTooLong(u32),
}

/// One whole frame plus its prefix: the most a frame can occupy.
const MAX_RECORD: usize = STREAM_LENGTH_SIZE + MAX_FRAME_LEN;

/// Reassembles length-prefixed frames from a byte stream.
///
/// The buffer holds two of the largest records, so after moving an
/// incomplete frame to the front there is always room to read more of it:
/// a frame never waits for space that only its own delivery would free.
#[derive(Debug)]
pub struct FrameReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; 2 * MAX_RECORD].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes read but not yet consumed as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The frame at the front, if all of it has arrived; a length prefix
    /// the framing does not allow is an error.
    pub fn next_frame(&self) -> Result<Option<&[u8]>, FramingError> {
        let pending = &self.buf[self.start..self.end];
        let Some(prefix) = pending.first_chunk::<STREAM_LENGTH_SIZE>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len as usize > MAX_FRAME_LEN {
            return Err(FramingError::FrameTooLong(len));
        }
        Ok(pending[STREAM_LENGTH_SIZE..].get(..len as usize))
    }

    /// Drops the frame [`FrameReader::next_frame`] returned. Does nothing
    /// when no whole frame is buffered.
    pub fn consume_frame(&mut self) {
        let len = match self.next_frame() {
            Ok(Some(frame)) => frame.len(),
            _ => return,
        };
        self.start += STREAM_LENGTH_SIZE + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// One read from `source` into the free space. Returns what `read`
    /// returned: 0 means end of stream. Call it only when
    /// [`FrameReader::next_frame`] has no frame, which guarantees space.
    pub fn read_from(&mut self, source: &mut impl Read) -> io::Result<usize> {
        if self.end == self.buf.len() {
            // Make room: move the incomplete frame to the front.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // Only whole frames fill the buffer; a read into no space
            // would look like the end of the stream.
            return Err(io::Error::other("the frame buffer is full of whole frames"));
        }
        let n = source.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// Length-prefixed frames on their way to a non-blocking socket, bounded
/// so a slow peer cannot make the VMM hold unbounded guest data.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    sent: usize,
    limit: usize,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameWriter {
    /// The default bound: four of the largest frames.
    pub const DEFAULT_LIMIT: usize = 4 * MAX_RECORD;

    /// An empty writer with the default bound.
    pub fn new() -> Self {
        Self::with_limit(Self::DEFAULT_LIMIT)
    }

    /// An empty writer holding at most `limit` bytes (at least one record).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            sent: 0,
            limit: limit.max(MAX_RECORD),
        }
    }

    /// Bytes waiting for the socket.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Whether a frame of the largest size still fits.
    pub fn has_room(&self) -> bool {
        self.pending() + MAX_RECORD <= self.limit
    }

    /// Appends a `len`-byte frame, its bytes written by `fill`. If `fill`
    /// fails nothing is appended. `len` must not exceed [`MAX_FRAME_LEN`]
    /// and the caller checks [`FrameWriter::has_room`] first.
    pub fn push_frame(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        debug_assert!(len <= MAX_FRAME_LEN, "frame of {len} bytes");
        if self.sent > 0 && self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent >= self.limit / 2 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        let old_len = self.buf.len();
        self.buf.extend_from_slice(&(len as u32).to_be_bytes());
        self.buf.resize(old_len + STREAM_LENGTH_SIZE + len, 0);
        let result = fill(&mut self.buf[old_len + STREAM_LENGTH_SIZE..]);
        if result.is_err() {
            self.buf.truncate(old_len);
        }
        result
    }

    /// Writes pending bytes to `sink` until all are written or `sink`
    /// would block. Returns how many bytes it wrote; other errors (the peer
    /// is gone) are returned.
    pub fn write_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        while self.pending() > 0 {
            match sink.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.pending() == 0 {
            self.buf.clear();
            self.sent = 0;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that hands out its bytes in the given piece sizes.
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: std::vec::IntoIter<usize>,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(size) = self.sizes.next() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// A sink that takes at most `budget` bytes, then would block.
    struct Throttled {
        taken: Vec<u8>,
        budget: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget);
            self.taken.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record(frame: &[u8]) -> Vec<u8> {
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(frame);
        bytes
    }

    #[test]
    fn frame_split_inside_prefix_and_body_is_reassembled() {
        let stream = [record(b"first frame"), record(b"second")].concat();
        let mut source = Pieces {
            data: &stream,
            sizes: vec![2, 1, 5, 100].into_iter(),
        };
        let mut reader = FrameReader::new();
        let mut seen = Vec::new();

        for _ in 0..4 {
            reader.read_from(&mut source).unwrap();
            while let Some(frame) = reader.next_frame().unwrap() {
                seen.push(frame.to_vec());
                reader.consume_frame();
            }
            if seen.is_empty() {
                assert!(reader.buffered() <= 8);
            }
        }

        assert_eq!(seen, vec![b"first frame".to_vec(), b"second".to_vec()]);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn largest_frame_arrives_whole_after_small_frames_filled_the_buffer() {
        let small = vec![0x11u8; MAX_RECORD / 2 - STREAM_LENGTH_SIZE];
        let big = vec![0xabu8; MAX_FRAME_LEN];
        let stream = [record(&small), record(&small), record(&small), record(&big)].concat();
        let mut source = Pieces {
            data: &stream,
            sizes: vec![usize::MAX; 3].into_iter(),
        };
        let mut reader = FrameReader::new();
        let mut frames = Vec::new();

        for _ in 0..3 {
            reader.read_from(&mut source).unwrap();
            while let Some(frame) = reader.next_frame().unwrap() {
                frames.push(frame.len());
                reader.consume_frame();
            }
        }

        assert_eq!(
            frames,
            vec![small.len(), small.len(), small.len(), big.len()]
        );
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn reading_into_a_buffer_full_of_whole_frames_is_refused() {
        let frame = vec![0u8; MAX_FRAME_LEN];
        let stream = [record(&frame), record(&frame), record(b"x")].concat();
        let mut reader = FrameReader::new();
        let mut source = &stream[..];
        reader.read_from(&mut source).unwrap();

        let result = reader.read_from(&mut source);

        assert!(result.is_err());
        assert_eq!(reader.buffered(), 2 * MAX_RECORD);
    }

    #[test]
    fn length_prefix_beyond_the_largest_frame_is_an_error() {
        let mut bytes = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let mut reader = FrameReader::new();

        reader.read_from(&mut &bytes[..]).unwrap();

        assert_eq!(
            reader.next_frame(),
            Err(FramingError::FrameTooLong(MAX_FRAME_LEN as u32 + 1))
        );
    }

    #[test]
    fn empty_frame_is_a_frame() {
        let mut reader = FrameReader::new();

        reader.read_from(&mut &record(b"")[..]).unwrap();

        assert_eq!(reader.next_frame().unwrap(), Some(&[][..]));
        reader.consume_frame();
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn writer_prefixes_each_frame_and_resumes_after_would_block() {
        let mut writer = FrameWriter::new();
        writer
            .push_frame(3, |b| {
                b.copy_from_slice(b"abc");
                Ok(())
            })
            .unwrap();
        writer
            .push_frame(2, |b| {
                b.copy_from_slice(b"de");
                Ok(())
            })
            .unwrap();
        let mut sink = Throttled {
            taken: Vec::new(),
            budget: 5,
        };

        let first = writer.write_to(&mut sink).unwrap();
        sink.budget = 100;
        let second = writer.write_to(&mut sink).unwrap();

        assert_eq!((first, second), (5, 8));
        assert_eq!(sink.taken, [record(b"abc"), record(b"de")].concat());
        assert_eq!(writer.pending(), 0);
    }

    #[test]
    fn writer_is_full_at_its_limit_and_failed_fill_appends_nothing() {
        let mut writer = FrameWriter::with_limit(2 * MAX_RECORD);
        writer.push_frame(MAX_FRAME_LEN, |_| Ok(())).unwrap();
        assert!(writer.has_room());
        writer.push_frame(MAX_FRAME_LEN, |_| Ok(())).unwrap();
        assert!(!writer.has_room());

        let failed = writer.push_frame(10, |_| Err(io::ErrorKind::InvalidData.into()));

        assert!(failed.is_err());
        assert_eq!(writer.pending(), 2 * MAX_RECORD);
    }

    #[test]
    fn writer_reports_a_gone_peer() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut writer = FrameWriter::new();
        writer.push_frame(1, |_| Ok(())).unwrap();

        let result = writer.write_to(&mut Broken);

        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
