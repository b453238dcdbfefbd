//! Checks the network backend's frame reassembly against a one-shot parse:
//! the same stream (QEMU's `-netdev stream` framing: 4-byte big-endian
//! length, then the frame) cut into fuzzed pieces must yield the same
//! frames, in order, and the same protocol error, and queueing those
//! frames again must reproduce the stream byte for byte.

#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::net::defs::{MAX_FRAME_LEN, STREAM_LENGTH_SIZE};
use vmm::devices::virtio::net::framing::{FrameReader, FrameWriter, FramingError};

/// Hands out the stream in the given piece sizes, then the rest at once.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: std::vec::IntoIter<u16>,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes.next().map_or(usize::MAX, |s| usize::from(s) + 1);
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The frames a reader of the whole stream sees, the bytes they span, and
/// the error that ends them, if any.
fn parse_at_once(stream: &[u8]) -> (Vec<&[u8]>, usize, Option<FramingError>) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(prefix) = stream[at..].first_chunk::<STREAM_LENGTH_SIZE>() {
        let len = u32::from_be_bytes(*prefix);
        if len as usize > MAX_FRAME_LEN {
            return (frames, at, Some(FramingError::FrameTooLong(len)));
        }
        let Some(frame) = stream[at + STREAM_LENGTH_SIZE..].get(..len as usize) else {
            break;
        };
        frames.push(frame);
        at += STREAM_LENGTH_SIZE + frame.len();
    }
    (frames, at, None)
}

fn run(mut u: Unstructured<'_>) -> Result<()> {
    let sizes: Vec<u16> = u.arbitrary()?;
    let stream = u.take_rest();
    let (expected, spanned, expected_error) = parse_at_once(stream);

    let mut reader = FrameReader::new();
    let mut source = Pieces {
        data: stream,
        sizes: sizes.into_iter(),
    };
    let mut frames = Vec::new();
    let error = loop {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                frames.push(frame.to_vec());
                reader.consume_frame();
            }
            Ok(None) => match reader.read_from(&mut source) {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) => panic!("read with no whole frame buffered failed: {e}"),
            },
            Err(e) => break Some(e),
        }
    };

    assert_eq!(frames, expected);
    assert_eq!(error, expected_error);
    if error.is_none() {
        assert_eq!(reader.buffered(), stream.len() - spanned);
    }
    let mut writer = FrameWriter::new();
    let mut written = Vec::new();
    for frame in &frames {
        writer
            .push_frame(frame.len(), |buf| {
                buf.copy_from_slice(frame);
                Ok(())
            })
            .unwrap();
        writer.write_to(&mut written).unwrap();
    }
    assert_eq!(written, stream[..spanned]);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(Unstructured::new(data));
});
