//! Building netlink messages and talking to the kernel over a netlink
//! socket: send a request, read one acknowledgement per message that asked
//! for one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use thiserror::Error;

/// A netlink request failed.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("could not open a netlink socket")]
    Socket(#[source] Errno),
    /// Sending or receiving failed.
    #[error("could not {step} over netlink")]
    Io {
        /// `send` or `receive`.
        step: &'static str,
        /// Cause.
        #[source]
        source: Errno,
    },
    /// The kernel refused the request.
    #[error("the kernel refused to {action}")]
    Refused {
        /// What was asked.
        action: &'static str,
        /// The error the kernel returned.
        #[source]
        source: Errno,
    },
    /// The reply was not an acknowledgement.
    #[error("unexpected netlink reply to {action}")]
    BadReply {
        /// What was asked.
        action: &'static str,
    },
}

/// `struct nlmsghdr` length.
pub(crate) const HEADER_LEN: usize = 16;
/// Marks an attribute whose value is more attributes.
const NLA_F_NESTED: u16 = 0x8000;

/// One request message under construction.
#[derive(Debug)]
pub(crate) struct Message {
    bytes: Vec<u8>,
    /// Start offsets of the nested attributes still open.
    open: Vec<usize>,
}

impl Message {
    /// A header of `kind` with `flags` (REQUEST added), then `body`.
    pub(crate) fn new(kind: u16, flags: u16, body: &[u8]) -> Message {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = flags | libc::NLM_F_REQUEST as u16;
        bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
        bytes[8..12].copy_from_slice(&1u32.to_ne_bytes());
        bytes.extend_from_slice(body);
        pad(&mut bytes);
        Message {
            bytes,
            open: Vec::new(),
        }
    }

    /// Appends attribute `kind` with `value`.
    pub(crate) fn attribute(mut self, kind: u16, value: &[u8]) -> Message {
        let len = (4 + value.len()) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        pad(&mut self.bytes);
        self
    }

    /// Appends a NUL-terminated string attribute.
    pub(crate) fn string(self, kind: u16, value: &str) -> Message {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attribute(kind, &bytes)
    }

    /// Opens a nested attribute `kind`; the attributes up to the matching
    /// [`Message::end`] go inside it.
    pub(crate) fn begin(mut self, kind: u16) -> Message {
        self.open.push(self.bytes.len());
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Appends raw bytes inside the current nested attribute (the fixed
    /// header some nested payloads start with, e.g. a veth peer's
    /// `ifinfomsg`).
    pub(crate) fn raw(mut self, bytes: &[u8]) -> Message {
        self.bytes.extend_from_slice(bytes);
        pad(&mut self.bytes);
        self
    }

    /// Closes the innermost open nested attribute.
    pub(crate) fn end(mut self) -> Message {
        let start = self.open.pop().expect("end() without begin()");
        let len = (self.bytes.len() - start) as u16;
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The finished message with its length filled in.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        assert!(self.open.is_empty(), "nested attribute left open");
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

fn pad(bytes: &mut Vec<u8>) {
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
}

/// The errno of an `NLMSG_ERROR` acknowledgement (0 = success), or `None`
/// when `reply` does not start with one.
pub(crate) fn ack_errno(reply: &[u8]) -> Option<i32> {
    if reply.len() < HEADER_LEN + 4 {
        return None;
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return None;
    }
    let error = i32::from_ne_bytes(reply[16..20].try_into().ok()?);
    Some(-error)
}

/// An open netlink socket of one protocol family.
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens a socket for `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`,
    /// `NETLINK_SOCK_DIAG`) in the calling thread's network namespace.
    pub fn open(protocol: i32) -> Result<Socket, Errno> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        let fd = Errno::result(fd)?;
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Socket { fd })
    }

    /// Sends `request` (one or more messages) to the kernel.
    pub fn send(&self, request: &[u8]) -> Result<(), Errno> {
        // SAFETY: `request` is a live, initialised buffer of the given length;
        // a null destination sends to the kernel on a netlink socket.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        Errno::result(sent).map(drop)
    }

    /// Receives one datagram (one or more messages) into `buf`; returns its
    /// length.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        // SAFETY: `buf` is writable for its whole length during the call.
        let got = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        Errno::result(got).map(|n| n as usize)
    }

    /// Sends `request` (one or more messages) and reads `acks`
    /// acknowledgements; the first refusal is the error.
    pub(crate) fn transact(
        &self,
        request: &[u8],
        acks: usize,
        action: &'static str,
    ) -> Result<(), NetlinkError> {
        self.send(request).map_err(|source| NetlinkError::Io {
            step: "send",
            source,
        })?;
        let mut seen = 0;
        while seen < acks {
            let mut reply = [0u8; 4096];
            let got = self.recv(&mut reply).map_err(|source| NetlinkError::Io {
                step: "receive",
                source,
            })?;
            let mut rest = &reply[..got];
            while rest.len() >= HEADER_LEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                if len < HEADER_LEN || len > rest.len() {
                    return Err(NetlinkError::BadReply { action });
                }
                match ack_errno(&rest[..len]) {
                    Some(0) => seen += 1,
                    Some(errno) => {
                        return Err(NetlinkError::Refused {
                            action,
                            source: Errno::from_raw(errno),
                        })
                    }
                    None => return Err(NetlinkError::BadReply { action }),
                }
                rest = &rest[(len + 3) & !3..];
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([bytes[at], bytes[at + 1]])
    }

    #[test]
    fn nested_attribute_length_covers_its_children_and_is_flagged() {
        let msg = Message::new(1, 0, &[])
            .begin(7)
            .attribute(1, &[1, 2, 3, 4])
            .string(2, "ab")
            .end()
            .finish();

        // Nested header (4) + first child (8) + second child (4 + "ab\0" padded to 8).
        assert_eq!(u16_at(&msg, HEADER_LEN), 4 + 8 + 8);
        assert_eq!(u16_at(&msg, HEADER_LEN + 2), 7 | NLA_F_NESTED);
        assert_eq!(&msg[HEADER_LEN + 16..HEADER_LEN + 19], b"ab\0");
        assert_eq!(msg.len(), HEADER_LEN + 20);
    }

    #[test]
    fn ack_errno_reads_the_kernel_answer() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());

        assert_eq!(ack_errno(&ack), Some(libc::EEXIST));
        assert_eq!(ack_errno(&ack[..10]), None);
    }
}
