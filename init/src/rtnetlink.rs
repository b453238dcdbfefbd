//! Just enough rtnetlink to configure one IPv4 interface: set it up with an
//! MTU, give it an address, add a default route. Messages are built by hand
//! (header, fixed part, attributes, each 4-byte aligned) because the
//! initramfs has no `ip` tool and the three requests do not justify a
//! netlink crate.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use thiserror::Error;

/// An rtnetlink request failed.
#[derive(Debug, Error)]
pub enum RtnetlinkError {
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
const HEADER_LEN: usize = 16;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFLA_MTU: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// One request message under construction.
#[derive(Debug)]
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    /// A header of `kind` with `flags` (ACK and REQUEST added), then `body`.
    fn new(kind: u16, flags: u16, body: &[u8]) -> Message {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
        bytes[8..12].copy_from_slice(&1u32.to_ne_bytes());
        bytes.extend_from_slice(body);
        pad(&mut bytes);
        Message { bytes }
    }

    /// Appends attribute `kind` with `value`.
    fn attribute(mut self, kind: u16, value: &[u8]) -> Message {
        let len = (4 + value.len()) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        pad(&mut self.bytes);
        self
    }

    /// The finished message with its length filled in.
    fn finish(mut self) -> Vec<u8> {
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

/// `RTM_NEWLINK`: interface `index` up with `mtu`.
fn link_up(index: u32, mtu: u32) -> Vec<u8> {
    // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32.
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    let up = libc::IFF_UP as u32;
    body[8..12].copy_from_slice(&up.to_ne_bytes());
    body[12..16].copy_from_slice(&up.to_ne_bytes());
    Message::new(libc::RTM_NEWLINK, 0, &body)
        .attribute(IFLA_MTU, &mtu.to_ne_bytes())
        .finish()
}

/// `RTM_NEWADDR`: `address/prefix` on interface `index`.
fn add_address(index: u32, address: Ipv4Addr, prefix: u8) -> Vec<u8> {
    // struct ifaddrmsg: family, prefixlen, flags, scope (u8 each), index u32.
    let mut body = vec![libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&index.to_ne_bytes());
    let create = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    Message::new(libc::RTM_NEWADDR, create, &body)
        .attribute(IFA_LOCAL, &address.octets())
        .attribute(IFA_ADDRESS, &address.octets())
        .finish()
}

/// `RTM_NEWROUTE`: default route through `gateway` on interface `index`.
fn add_default_route(index: u32, gateway: Ipv4Addr) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type (u8 each), flags u32.
    let mut body = vec![
        libc::AF_INET as u8,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    let create = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    Message::new(libc::RTM_NEWROUTE, create, &body)
        .attribute(RTA_GATEWAY, &gateway.octets())
        .attribute(RTA_OIF, &index.to_ne_bytes())
        .finish()
}

/// The errno of an `NLMSG_ERROR` acknowledgement (0 = success), or `None`
/// when `reply` is not one.
fn ack_errno(reply: &[u8]) -> Option<i32> {
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

/// An open `NETLINK_ROUTE` socket.
pub struct Rtnetlink {
    fd: OwnedFd,
}

impl Rtnetlink {
    /// Opens the socket.
    pub fn open() -> Result<Rtnetlink, RtnetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        let fd = Errno::result(fd).map_err(RtnetlinkError::Socket)?;
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Rtnetlink { fd })
    }

    /// Sets interface `index` up with `mtu`.
    pub fn set_link_up(&self, index: u32, mtu: u32) -> Result<(), RtnetlinkError> {
        self.transact(&link_up(index, mtu), "set the interface up")
    }

    /// Adds `address/prefix` to interface `index`.
    pub fn add_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), RtnetlinkError> {
        self.transact(&add_address(index, address, prefix), "add the address")
    }

    /// Adds the default route through `gateway`.
    pub fn add_default_route(&self, index: u32, gateway: Ipv4Addr) -> Result<(), RtnetlinkError> {
        self.transact(&add_default_route(index, gateway), "add the default route")
    }

    fn transact(&self, request: &[u8], action: &'static str) -> Result<(), RtnetlinkError> {
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
        Errno::result(sent).map_err(|source| RtnetlinkError::Io {
            step: "send",
            source,
        })?;
        let mut reply = [0u8; 1024];
        // SAFETY: `reply` is a writable buffer of the given length for the call.
        let got = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                reply.as_mut_ptr().cast(),
                reply.len(),
                0,
            )
        };
        let got = Errno::result(got).map_err(|source| RtnetlinkError::Io {
            step: "receive",
            source,
        })?;
        match ack_errno(&reply[..got as usize]) {
            Some(0) => Ok(()),
            Some(errno) => Err(RtnetlinkError::Refused {
                action,
                source: Errno::from_raw(errno),
            }),
            None => Err(RtnetlinkError::BadReply { action }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([bytes[at], bytes[at + 1]])
    }

    #[test]
    fn messages_carry_their_length_and_are_aligned() {
        let msg = add_default_route(2, Ipv4Addr::new(10, 0, 2, 2));

        let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, msg.len());
        assert_eq!(len % 4, 0);
        assert_eq!(u16_at(&msg, 4), libc::RTM_NEWROUTE);
    }

    #[test]
    fn address_message_holds_prefix_and_address_attributes() {
        let msg = add_address(3, Ipv4Addr::new(10, 0, 2, 15), 24);

        assert_eq!(msg[HEADER_LEN], libc::AF_INET as u8);
        assert_eq!(msg[HEADER_LEN + 1], 24);
        assert_eq!(u32::from_ne_bytes(msg[20..24].try_into().unwrap()), 3);
        // First attribute right after the 8-byte ifaddrmsg: len 8, IFA_LOCAL.
        assert_eq!(u16_at(&msg, 24), 8);
        assert_eq!(u16_at(&msg, 26), IFA_LOCAL);
        assert_eq!(&msg[28..32], &[10, 0, 2, 15]);
    }

    #[test]
    fn link_message_sets_up_flag_and_mtu() {
        let msg = link_up(2, 65520);

        let flags = u32::from_ne_bytes(msg[24..28].try_into().unwrap());
        assert_eq!(flags, libc::IFF_UP as u32);
        assert_eq!(u16_at(&msg, 34), IFLA_MTU);
        assert_eq!(u32::from_ne_bytes(msg[36..40].try_into().unwrap()), 65520);
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
