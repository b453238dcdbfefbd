//! Frame layout and codec.
//!
//! ```text
//!  0        1                         5
//!  +--------+-------------------------+---------------------+
//!  |  kind  | payload length (u32 BE) | payload (length B)  |
//!  +--------+-------------------------+---------------------+
//! ```
//!
//! The payload of handshake, request and response frames is JSON; stream
//! frames carry raw bytes or fixed binary fields (see [`FrameKind`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use crate::message::{Hello, Request, Response};

/// Bytes before the payload: kind (1) and length (4).
pub const HEADER_LEN: usize = 5;

/// Largest payload accepted. Senders split byte streams into chunks below it.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON [`Hello`], both directions.
    Hello = 0x01,
    /// JSON [`Request`], client → agent.
    Request = 0x02,
    /// JSON [`Response`], agent → client.
    Response = 0x03,
    /// Bytes for the process's standard input, client → agent.
    Stdin = 0x10,
    /// Bytes the process wrote to standard output (or its PTY), agent → client.
    Stdout = 0x11,
    /// Bytes the process wrote to standard error, agent → client.
    Stderr = 0x12,
    /// Standard input is finished, client → agent. Empty payload.
    StdinEof = 0x13,
    /// New PTY size, client → agent: rows (u16 BE), columns (u16 BE).
    Resize = 0x14,
    /// Deliver a signal to the process, client → agent: number (u32 BE).
    Signal = 0x15,
    /// The process ended, agent → client: status (i32 BE); 128+N when killed
    /// by signal N. Last frame of an exec.
    Exit = 0x16,
    /// A chunk of a tar stream (import: client → agent; export: agent → client).
    Data = 0x20,
    /// The tar stream is complete. Empty payload.
    DataEnd = 0x21,
}

impl FrameKind {
    /// The kind for a byte, if it names one.
    pub fn from_byte(b: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Request,
            0x03 => Response,
            0x10 => Stdin,
            0x11 => Stdout,
            0x12 => Stderr,
            0x13 => StdinEof,
            0x14 => Resize,
            0x15 => Signal,
            0x16 => Exit,
            0x20 => Data,
            0x21 => DataEnd,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Handshake.
    Hello(Hello),
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
    /// Standard input bytes.
    Stdin(Bytes),
    /// Standard output bytes.
    Stdout(Bytes),
    /// Standard error bytes.
    Stderr(Bytes),
    /// End of standard input.
    StdinEof,
    /// Terminal size change.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Signal for the process.
    Signal(u32),
    /// Exit status of the process.
    Exit(i32),
    /// Archive bytes.
    Data(Bytes),
    /// End of archive.
    DataEnd,
}

impl Frame {
    /// The kind byte this frame is sent with.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Request(_) => FrameKind::Request,
            Frame::Response(_) => FrameKind::Response,
            Frame::Stdin(_) => FrameKind::Stdin,
            Frame::Stdout(_) => FrameKind::Stdout,
            Frame::Stderr(_) => FrameKind::Stderr,
            Frame::StdinEof => FrameKind::StdinEof,
            Frame::Resize { .. } => FrameKind::Resize,
            Frame::Signal(_) => FrameKind::Signal,
            Frame::Exit(_) => FrameKind::Exit,
            Frame::Data(_) => FrameKind::Data,
            Frame::DataEnd => FrameKind::DataEnd,
        }
    }
}

/// Why bytes could not be decoded into a frame. Any of these ends the
/// connection: the stream cannot be resynchronised.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The kind byte is not one of [`FrameKind`].
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The length field exceeds [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// A fixed-size payload has the wrong size.
    #[error("{kind:?} frame has {len} payload bytes, expected {expected}")]
    BadLength {
        /// Frame kind.
        kind: FrameKind,
        /// Payload length received.
        len: usize,
        /// Payload length required.
        expected: usize,
    },
    /// A JSON payload does not parse as its message type.
    #[error("{kind:?} frame holds invalid JSON")]
    Json {
        /// Frame kind.
        kind: FrameKind,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A message could not be serialised (only on encode).
    #[error("could not encode {kind:?} frame")]
    Encode {
        /// Frame kind.
        kind: FrameKind,
        /// Serialiser error.
        #[source]
        source: serde_json::Error,
    },
    /// Reading or writing the transport failed.
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),
}

/// Decodes one frame from the front of `buf`, consuming its bytes. Returns
/// `Ok(None)` when `buf` holds only part of a frame.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind_byte = buf[0];
    let kind = FrameKind::from_byte(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    check_fixed_len(kind, len)?;
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let mut payload = buf.split_to(len).freeze();
    let json = |kind| move |source| FrameError::Json { kind, source };
    let frame = match kind {
        FrameKind::Hello => Frame::Hello(serde_json::from_slice(&payload).map_err(json(kind))?),
        FrameKind::Request => Frame::Request(serde_json::from_slice(&payload).map_err(json(kind))?),
        FrameKind::Response => {
            Frame::Response(serde_json::from_slice(&payload).map_err(json(kind))?)
        }
        FrameKind::Stdin => Frame::Stdin(payload),
        FrameKind::Stdout => Frame::Stdout(payload),
        FrameKind::Stderr => Frame::Stderr(payload),
        FrameKind::StdinEof => Frame::StdinEof,
        FrameKind::Resize => Frame::Resize {
            rows: payload.get_u16(),
            cols: payload.get_u16(),
        },
        FrameKind::Signal => Frame::Signal(payload.get_u32()),
        FrameKind::Exit => Frame::Exit(payload.get_i32()),
        FrameKind::Data => Frame::Data(payload),
        FrameKind::DataEnd => Frame::DataEnd,
    };
    Ok(Some(frame))
}

/// Rejects fixed-size frames whose length field is wrong, before any of the
/// payload is read.
fn check_fixed_len(kind: FrameKind, len: usize) -> Result<(), FrameError> {
    let expected = match kind {
        FrameKind::StdinEof | FrameKind::DataEnd => 0,
        FrameKind::Resize | FrameKind::Signal | FrameKind::Exit => 4,
        _ => return Ok(()),
    };
    if len != expected {
        return Err(FrameError::BadLength {
            kind,
            len,
            expected,
        });
    }
    Ok(())
}

/// Appends the encoding of `frame` to `buf`.
pub fn encode(frame: &Frame, buf: &mut BytesMut) -> Result<(), FrameError> {
    let kind = frame.kind();
    let enc = |source| FrameError::Encode { kind, source };
    let json = match frame {
        Frame::Hello(m) => Some(serde_json::to_vec(m).map_err(enc)?),
        Frame::Request(m) => Some(serde_json::to_vec(m).map_err(enc)?),
        Frame::Response(m) => Some(serde_json::to_vec(m).map_err(enc)?),
        _ => None,
    };
    let mut fixed = [0u8; 4];
    let payload: &[u8] = match (frame, &json) {
        (_, Some(bytes)) => bytes,
        (Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) | Frame::Data(b), _) => b,
        (Frame::Resize { rows, cols }, _) => {
            fixed[..2].copy_from_slice(&rows.to_be_bytes());
            fixed[2..].copy_from_slice(&cols.to_be_bytes());
            &fixed
        }
        (Frame::Signal(n), _) => {
            fixed = n.to_be_bytes();
            &fixed
        }
        (Frame::Exit(n), _) => {
            fixed = n.to_be_bytes();
            &fixed
        }
        _ => &[],
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    buf.reserve(HEADER_LEN + payload.len());
    buf.put_u8(kind as u8);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    Ok(())
}

/// [`tokio_util::codec`] adapter for [`decode`] and [`encode`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        decode(src)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ErrorKind, Request};
    use rand::{Rng, SeedableRng};

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf).unwrap();

        let decoded = decode(&mut buf).unwrap();

        assert_eq!(decoded, Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_frame_kind_round_trips() {
        round_trip(Frame::Hello(Hello::new("test")));
        round_trip(Frame::Request(Request::List));
        round_trip(Frame::Response(Response::error(ErrorKind::NotFound, "x")));
        round_trip(Frame::Stdin(Bytes::from_static(b"\x00\xffbinary")));
        round_trip(Frame::Stdout(Bytes::from_static(b"out")));
        round_trip(Frame::Stderr(Bytes::new()));
        round_trip(Frame::StdinEof);
        round_trip(Frame::Resize {
            rows: 50,
            cols: 132,
        });
        round_trip(Frame::Signal(9));
        round_trip(Frame::Exit(-1));
        round_trip(Frame::Data(Bytes::from(vec![7u8; 4096])));
        round_trip(Frame::DataEnd);
    }

    #[test]
    fn resize_layout_is_rows_then_cols_big_endian() {
        let mut buf = BytesMut::new();

        encode(&Frame::Resize { rows: 1, cols: 2 }, &mut buf).unwrap();

        assert_eq!(&buf[..], &[0x14, 0, 0, 0, 4, 0, 1, 0, 2]);
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut full = BytesMut::new();
        encode(&Frame::Stdout(Bytes::from_static(b"hello")), &mut full).unwrap();
        let mut buf = BytesMut::from(&full[..7]);

        assert_eq!(decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&full[7..]);
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(Frame::Stdout(Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn decode_rejects_unknown_kind() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);

        assert!(matches!(
            decode(&mut buf),
            Err(FrameError::UnknownKind(b'G'))
        ));
    }

    #[test]
    fn decode_rejects_oversized_length_before_buffering() {
        let mut buf = BytesMut::from(&[0x11, 0xff, 0xff, 0xff, 0xff][..]);

        assert!(matches!(decode(&mut buf), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn decode_rejects_wrong_fixed_length() {
        let mut buf = BytesMut::from(&[0x16, 0, 0, 0, 2, 0, 0][..]);

        assert!(matches!(
            decode(&mut buf),
            Err(FrameError::BadLength { expected: 4, .. })
        ));
    }

    #[test]
    fn decode_rejects_bad_json() {
        let mut buf = BytesMut::from(&[0x02, 0, 0, 0, 2, b'{', b'x'][..]);

        assert!(matches!(decode(&mut buf), Err(FrameError::Json { .. })));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            // Bias towards valid kinds and small lengths so decoding goes deep.
            if len >= 5 && rng.gen_bool(0.7) {
                bytes[0] =
                    [0x01, 0x02, 0x03, 0x10, 0x14, 0x15, 0x16, 0x20, 0x21][rng.gen_range(0..9)];
                bytes[1..5].copy_from_slice(&(rng.gen_range(0..len as u32)).to_be_bytes());
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
        }
    }
}
