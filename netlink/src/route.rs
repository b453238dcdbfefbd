//! `NETLINK_ROUTE` requests: set an interface up with an MTU, give it an
//! address, add a default route, create a veth pair.

use std::net::Ipv4Addr;

use crate::message::{Message, Socket};
use crate::NetlinkError;

const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFLA_MTU: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// `RTM_NEWLINK`: interface `index` up with `mtu`.
fn link_up(index: u32, mtu: u32) -> Vec<u8> {
    // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32.
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    let up = libc::IFF_UP as u32;
    body[8..12].copy_from_slice(&up.to_ne_bytes());
    body[12..16].copy_from_slice(&up.to_ne_bytes());
    Message::new(libc::RTM_NEWLINK, ACK, &body)
        .attribute(IFLA_MTU, &mtu.to_ne_bytes())
        .finish()
}

/// `RTM_NEWADDR`: `address/prefix` on interface `index`.
fn add_address(index: u32, address: Ipv4Addr, prefix: u8) -> Vec<u8> {
    // struct ifaddrmsg: family, prefixlen, flags, scope (u8 each), index u32.
    let mut body = vec![libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&index.to_ne_bytes());
    let create = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16 | ACK;
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
    let create = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16 | ACK;
    Message::new(libc::RTM_NEWROUTE, create, &body)
        .attribute(RTA_GATEWAY, &gateway.octets())
        .attribute(RTA_OIF, &index.to_ne_bytes())
        .finish()
}

/// `RTM_NEWLINK`: a veth pair, `name` here and `peer` in the network
/// namespace of process `peer_pid`.
fn new_veth(name: &str, peer: &str, peer_pid: u32) -> Vec<u8> {
    let ifinfomsg = [0u8; 16];
    let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16 | ACK;
    Message::new(libc::RTM_NEWLINK, create, &ifinfomsg)
        .string(IFLA_IFNAME, name)
        .begin(IFLA_LINKINFO)
        .string(IFLA_INFO_KIND, "veth")
        .begin(IFLA_INFO_DATA)
        .begin(VETH_INFO_PEER)
        .raw(&ifinfomsg)
        .string(IFLA_IFNAME, peer)
        .attribute(IFLA_NET_NS_PID, &peer_pid.to_ne_bytes())
        .end()
        .end()
        .end()
        .finish()
}

/// Every request here wants its acknowledgement.
const ACK: u16 = libc::NLM_F_ACK as u16;

/// The index of interface `name` in the calling thread's network namespace.
pub fn index_of(name: &str) -> std::io::Result<u32> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(index)
}

/// An open `NETLINK_ROUTE` socket.
pub struct Rtnetlink {
    socket: Socket,
}

impl Rtnetlink {
    /// Opens the socket, in the calling thread's network namespace.
    pub fn open() -> Result<Rtnetlink, NetlinkError> {
        Ok(Rtnetlink {
            socket: Socket::open(libc::NETLINK_ROUTE).map_err(NetlinkError::Socket)?,
        })
    }

    /// Sets interface `index` up with `mtu`.
    pub fn set_link_up(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.socket
            .transact(&link_up(index, mtu), 1, "set the interface up")
    }

    /// Adds `address/prefix` to interface `index`.
    pub fn add_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.socket
            .transact(&add_address(index, address, prefix), 1, "add the address")
    }

    /// Adds the default route through `gateway`.
    pub fn add_default_route(&self, index: u32, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.socket.transact(
            &add_default_route(index, gateway),
            1,
            "add the default route",
        )
    }

    /// Creates a veth pair: `name` in this socket's namespace, `peer` in
    /// the network namespace of process `peer_pid`.
    pub fn create_veth(&self, name: &str, peer: &str, peer_pid: u32) -> Result<(), NetlinkError> {
        self.socket
            .transact(&new_veth(name, peer, peer_pid), 1, "create a veth pair")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HEADER_LEN;

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
    fn veth_message_nests_the_peer_with_its_namespace() {
        let msg = new_veth("dc0", "eth0", 42);

        let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, msg.len());
        let text = String::from_utf8_lossy(&msg);
        assert!(text.contains("dc0\0") && text.contains("veth\0") && text.contains("eth0\0"));
        // The peer's namespace PID is the last attribute: len 8, type, value.
        assert_eq!(u16_at(&msg, msg.len() - 6), IFLA_NET_NS_PID);
        assert_eq!(
            u32::from_ne_bytes(msg[msg.len() - 4..].try_into().unwrap()),
            42
        );
    }
}
