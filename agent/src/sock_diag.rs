//! Listening TCP sockets of the VM, read with one `NETLINK_SOCK_DIAG` dump
//! per address family (what `ss -tl` does) instead of parsing
//! `/proc/net/tcp*`: the kernel filters by state, so the reply holds only
//! listeners and costs microseconds however many connections are open.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink::Socket;
use nix::errno::Errno;
use protocol::Listener;
use thiserror::Error;

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` from `net/tcp_states.h`.
const TCP_LISTEN: u32 = 10;
/// `struct nlmsghdr`.
const NL_HEADER_LEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid (48).
const REQUEST_LEN: usize = 56;
/// `struct inet_diag_msg` up to and including the socket id.
const DIAG_MSG_MIN_LEN: usize = 4 + 48;

/// Reading the socket table failed.
#[derive(Debug, Error)]
pub enum SockDiagError {
    /// The netlink socket could not be opened.
    #[error("could not open a sock_diag netlink socket")]
    Socket(#[source] Errno),
    /// Sending the dump request or reading its reply failed.
    #[error("could not {step} the socket dump")]
    Io {
        /// `request` or `read`.
        step: &'static str,
        /// Cause.
        #[source]
        source: Errno,
    },
    /// The kernel answered with an error.
    #[error("the kernel refused the socket dump")]
    Refused(#[source] Errno),
    /// A reply message was cut short.
    #[error("truncated sock_diag reply")]
    Truncated,
}

/// The dump request for listening TCP sockets of `family`.
fn dump_request(family: u8) -> [u8; NL_HEADER_LEN + REQUEST_LEN] {
    let mut msg = [0u8; NL_HEADER_LEN + REQUEST_LEN];
    msg[0..4].copy_from_slice(&((NL_HEADER_LEN + REQUEST_LEN) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = family;
    msg[17] = libc::IPPROTO_TCP as u8;
    msg[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    msg
}

/// What one datagram of the reply held.
#[derive(Debug, Default, PartialEq, Eq)]
struct ReplyChunk {
    listeners: Vec<Listener>,
    done: bool,
}

/// Parses one datagram of netlink messages.
fn parse_reply(mut buf: &[u8]) -> Result<ReplyChunk, SockDiagError> {
    let mut chunk = ReplyChunk::default();
    while buf.len() >= NL_HEADER_LEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NL_HEADER_LEN || len > buf.len() {
            return Err(SockDiagError::Truncated);
        }
        let payload = &buf[NL_HEADER_LEN..len];
        match kind {
            k if k == libc::NLMSG_DONE as u16 => chunk.done = true,
            k if k == libc::NLMSG_ERROR as u16 => {
                let errno = payload
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(SockDiagError::Truncated)?;
                if errno != 0 {
                    return Err(SockDiagError::Refused(Errno::from_raw(-errno)));
                }
            }
            SOCK_DIAG_BY_FAMILY => chunk.listeners.push(parse_diag_msg(payload)?),
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or_default();
    }
    Ok(chunk)
}

/// One `struct inet_diag_msg`: family, state, timer, retrans, then the
/// socket id: source port (big-endian), destination port, source address
/// (16 bytes, IPv4 in the first 4), destination address, interface, cookie.
fn parse_diag_msg(msg: &[u8]) -> Result<Listener, SockDiagError> {
    if msg.len() < DIAG_MSG_MIN_LEN {
        return Err(SockDiagError::Truncated);
    }
    let port = u16::from_be_bytes([msg[4], msg[5]]);
    let src = &msg[8..24];
    let address = if i32::from(msg[0]) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        let octets: [u8; 16] = src.try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Ok(Listener { address, port })
}

/// Whether connections from the host should reach `listener`: wildcard and
/// loopback listeners yes, ones bound to another address of the VM (a
/// distro-internal service) no.
pub fn is_forwardable(listener: &Listener) -> bool {
    listener.address.is_unspecified() || listener.address.is_loopback()
}

/// An open sock_diag socket; reuse it for every poll.
pub struct SockDiag {
    socket: Socket,
}

impl SockDiag {
    /// Opens the netlink socket.
    pub fn open() -> Result<SockDiag, SockDiagError> {
        let socket = Socket::open(libc::NETLINK_SOCK_DIAG).map_err(SockDiagError::Socket)?;
        Ok(SockDiag { socket })
    }

    /// Every listening TCP socket, IPv4 and IPv6, sorted and deduplicated.
    pub fn listeners(&self) -> Result<Vec<Listener>, SockDiagError> {
        let mut all = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.dump(family, &mut all)?;
        }
        all.sort();
        all.dedup();
        Ok(all)
    }

    fn dump(&self, family: u8, out: &mut Vec<Listener>) -> Result<(), SockDiagError> {
        self.socket
            .send(&dump_request(family))
            .map_err(|source| SockDiagError::Io {
                step: "request",
                source,
            })?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let got = self
                .socket
                .recv(&mut buf)
                .map_err(|source| SockDiagError::Io {
                    step: "read",
                    source,
                })?;
            let chunk = parse_reply(&buf[..got])?;
            out.extend(chunk.listeners);
            if chunk.done || got == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` around `payload`.
    fn nl_message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut msg = vec![0u8; NL_HEADER_LEN];
        let len = (NL_HEADER_LEN + payload.len()) as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(payload);
        while msg.len() % 4 != 0 {
            msg.push(0);
        }
        msg
    }

    /// An `inet_diag_msg` for a listener on `address:port`.
    fn diag_msg(family: i32, port: u16, address: &[u8]) -> Vec<u8> {
        let mut msg = vec![0u8; 72];
        msg[0] = family as u8;
        msg[1] = TCP_LISTEN as u8;
        msg[4..6].copy_from_slice(&port.to_be_bytes());
        msg[8..8 + address.len()].copy_from_slice(address);
        msg
    }

    #[test]
    fn reply_yields_ipv4_and_ipv6_listeners_and_done() {
        let mut reply = nl_message(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(libc::AF_INET, 8123, &[127, 0, 0, 1]),
        );
        let v6 = Ipv6Addr::UNSPECIFIED.octets();
        reply.extend(nl_message(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(libc::AF_INET6, 22, &v6),
        ));
        reply.extend(nl_message(libc::NLMSG_DONE as u16, &[0; 4]));

        let chunk = parse_reply(&reply).unwrap();

        assert!(chunk.done);
        assert_eq!(
            chunk.listeners,
            [
                Listener {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 8123
                },
                Listener {
                    address: "::".parse().unwrap(),
                    port: 22
                },
            ]
        );
    }

    #[test]
    fn kernel_error_in_reply_is_reported() {
        let reply = nl_message(libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());

        let err = parse_reply(&reply).unwrap_err();

        assert!(matches!(err, SockDiagError::Refused(Errno::EPERM)));
    }

    #[test]
    fn truncated_message_is_an_error_not_a_panic() {
        let mut reply = nl_message(SOCK_DIAG_BY_FAMILY, &[0u8; 20]);
        assert!(matches!(parse_reply(&reply), Err(SockDiagError::Truncated)));
        reply[0] = 200;
        assert!(matches!(parse_reply(&reply), Err(SockDiagError::Truncated)));
    }

    #[test]
    fn request_asks_for_listening_tcp_sockets_of_the_family() {
        let req = dump_request(libc::AF_INET6 as u8);

        assert_eq!(req[16], libc::AF_INET6 as u8);
        assert_eq!(req[17], libc::IPPROTO_TCP as u8);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 1 << 10);
    }

    #[test]
    fn only_wildcard_and_loopback_listeners_are_forwardable() {
        let at = |a: &str| Listener {
            address: a.parse().unwrap(),
            port: 1,
        };

        for yes in ["0.0.0.0", "::", "127.0.0.1", "::1"] {
            assert!(is_forwardable(&at(yes)), "{yes}");
        }
        for no in ["10.0.2.15", "fd00::5"] {
            assert!(!is_forwardable(&at(no)), "{no}");
        }
    }

    #[test]
    fn live_dump_finds_a_listener_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();

        let found = SockDiag::open().unwrap().listeners().unwrap();

        assert!(
            found.contains(&Listener {
                address: "127.0.0.1".parse().unwrap(),
                port
            }),
            "{found:?}"
        );
    }
}
