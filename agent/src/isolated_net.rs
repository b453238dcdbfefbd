//! Distros with `network = isolated`: a network namespace of their own,
//! joined to the VM's by a veth pair on a private /24, with a default route
//! through the VM and their outbound traffic masqueraded to the VM's
//! address (the only address passt serves).
//!
//! Slot `N` (1–254) is the link `dcN` in the VM, `172.31.N.1/24`, and
//! `eth0` in the distro, `172.31.N.2/24`. The pair disappears with the
//! distro's namespace when its last process exits; the slot is released
//! then.
//!
//! Such a distro has its own loopback, so its servers are not forwarded to
//! the host automatically; `distroctl proxy` (and ssh through it) reaches
//! them by connecting from inside the namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Mutex;

use netlink::nat::{self, MasqueradeRange};
use netlink::route::{self, Rtnetlink};
use netlink::NetlinkError;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use thiserror::Error;

/// First two bytes of every isolated distro's link network.
const RANGE: [u8; 2] = [172, 31];
/// The VM's own network interface, whose MTU the links copy.
const VM_INTERFACE: &str = "eth0";
/// Name of the link inside the distro.
const DISTRO_INTERFACE: &str = "eth0";

/// Setting up a distro's own network failed.
#[derive(Debug, Error)]
pub enum IsolatedNetError {
    /// All 254 slots are taken.
    #[error("no free address: 254 distros with isolated networks run already")]
    NoSlot,
    /// A netlink request failed.
    #[error("cannot {step}")]
    Netlink {
        /// What was being done.
        step: &'static str,
        /// Cause.
        #[source]
        source: NetlinkError,
    },
    /// Entering the distro's namespace or reading an interface failed.
    #[error("cannot {step}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn netlink_err(step: &'static str) -> impl FnOnce(NetlinkError) -> IsolatedNetError {
    move |source| IsolatedNetError::Netlink { step, source }
}

fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> IsolatedNetError {
    move |source| IsolatedNetError::Io { step, source }
}

/// The addresses of one isolated distro's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Slot number, 1–254.
    pub slot: u8,
}

impl Link {
    /// The VM's end.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(RANGE[0], RANGE[1], self.slot, 1)
    }

    /// The distro's address.
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::new(RANGE[0], RANGE[1], self.slot, 2)
    }

    /// The link's name in the VM.
    pub fn vm_interface(&self) -> String {
        format!("dc{}", self.slot)
    }
}

/// Which slots are in use, by distro.
#[derive(Debug, Default)]
pub struct IsolatedNetworks {
    slots: Mutex<BTreeMap<u8, String>>,
}

impl IsolatedNetworks {
    /// Gives the distro `name`, whose PID 1 is `pid1` in a fresh network
    /// namespace, its link, address, route and NAT. Blocking (netlink).
    pub fn attach(&self, name: &str, pid1: i32) -> Result<Link, IsolatedNetError> {
        enable_forwarding()?;
        let mtu = vm_mtu();
        let netlink = Rtnetlink::open().map_err(netlink_err("open a netlink socket"))?;
        let link = self.create_link(&netlink, name, pid1)?;
        let result = configure_vm_side(&netlink, link, mtu)
            .and_then(|()| in_namespace(pid1, || configure_distro_side(link, mtu)));
        if result.is_err() {
            self.detach(name);
        }
        result.map(|()| link)
    }

    /// Marks `slot` as used by `name`, a distro taken back from an earlier
    /// agent whose link still exists.
    pub fn claim(&self, slot: u8, name: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot, name.to_owned());
    }

    /// Forgets the slot of `name` (its link went away with its namespace).
    pub fn detach(&self, name: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, owner| owner != name);
    }

    /// Creates the veth pair in the first free slot whose name is not
    /// still held by a namespace the kernel is tearing down.
    fn create_link(
        &self,
        netlink: &Rtnetlink,
        name: &str,
        pid1: i32,
    ) -> Result<Link, IsolatedNetError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in 1..=254u8 {
            if slots.contains_key(&slot) {
                continue;
            }
            let link = Link { slot };
            match netlink.create_veth(&link.vm_interface(), DISTRO_INTERFACE, pid1 as u32) {
                Ok(()) => {
                    slots.insert(slot, name.to_owned());
                    return Ok(link);
                }
                Err(NetlinkError::Refused {
                    source: Errno::EEXIST,
                    ..
                }) => continue,
                Err(e) => return Err(netlink_err("create the veth pair")(e)),
            }
        }
        Err(IsolatedNetError::NoSlot)
    }
}

/// Routes between the links and the VM's interface.
fn enable_forwarding() -> Result<(), IsolatedNetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(io_err("enable IPv4 forwarding in the VM"))?;
    nat::masquerade(MasqueradeRange {
        prefix: Ipv4Addr::new(RANGE[0], RANGE[1], 0, 0),
        octets: 2,
    })
    .map_err(netlink_err(
        "install the NAT rule (are nft_masq and nft_chain_nat loaded?)",
    ))
}

/// The VM interface's MTU, so forwarded packets never need fragmenting.
fn vm_mtu() -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{VM_INTERFACE}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500)
}

fn configure_vm_side(netlink: &Rtnetlink, link: Link, mtu: u32) -> Result<(), IsolatedNetError> {
    let index = route::index_of(&link.vm_interface()).map_err(io_err("find the VM's link end"))?;
    netlink
        .set_link_up(index, mtu)
        .map_err(netlink_err("set the VM's link end up"))?;
    netlink
        .add_address(index, link.gateway(), 24)
        .map_err(netlink_err("address the VM's link end"))
}

/// Runs inside the distro's namespace: loopback and `eth0` up, address,
/// default route through the VM.
fn configure_distro_side(link: Link, mtu: u32) -> Result<(), IsolatedNetError> {
    let netlink = Rtnetlink::open().map_err(netlink_err("open a netlink socket"))?;
    let lo = route::index_of("lo").map_err(io_err("find the distro's loopback"))?;
    netlink
        .set_link_up(lo, 65536)
        .map_err(netlink_err("set the distro's loopback up"))?;
    let eth0 = route::index_of(DISTRO_INTERFACE).map_err(io_err("find the distro's link end"))?;
    netlink
        .set_link_up(eth0, mtu)
        .map_err(netlink_err("set the distro's link end up"))?;
    netlink
        .add_address(eth0, link.address(), 24)
        .map_err(netlink_err("address the distro's link end"))?;
    netlink
        .add_default_route(eth0, link.gateway())
        .map_err(netlink_err("route the distro through the VM"))
}

/// Runs `work` on a fresh thread that has joined the network namespace of
/// process `pid` (a thread's network namespace is its own to change).
fn in_namespace<T: Send>(
    pid: i32,
    work: impl FnOnce() -> Result<T, IsolatedNetError> + Send,
) -> Result<T, IsolatedNetError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = File::open(format!("/proc/{pid}/ns/net"))
                    .map_err(io_err("open the distro's network namespace"))?;
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io_err("enter the distro's network namespace")(e.into()))?;
                work()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(io_err("configure the distro's network")(io::Error::other(
                    "the worker thread panicked",
                )))
            })
    })
}

/// Connects to `port` on the loopback of the distro whose PID 1 is `pid`,
/// from inside its namespace (IPv4, then IPv6). Blocking.
pub fn connect_loopback_in(pid: i32, port: u16) -> io::Result<std::net::TcpStream> {
    let connect = || {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        std::net::TcpStream::connect(v4)
            .or_else(|e| {
                std::net::TcpStream::connect(SocketAddr::from((
                    std::net::Ipv6Addr::LOCALHOST,
                    port,
                )))
                .map_err(|_| e)
            })
            .map_err(io_err("connect"))
    };
    in_namespace(pid, connect).map_err(|e| match e {
        IsolatedNetError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_addresses_share_a_24_with_the_gateway_first() {
        let link = Link { slot: 7 };

        assert_eq!(link.gateway(), Ipv4Addr::new(172, 31, 7, 1));
        assert_eq!(link.address(), Ipv4Addr::new(172, 31, 7, 2));
        assert_eq!(link.vm_interface(), "dc7");
    }

    #[test]
    fn detach_frees_only_that_distros_slot() {
        let networks = IsolatedNetworks::default();
        {
            let mut slots = networks.slots.lock().unwrap();
            slots.insert(1, "a".into());
            slots.insert(2, "b".into());
        }

        networks.detach("a");

        let slots = networks.slots.lock().unwrap();
        assert_eq!(slots.keys().copied().collect::<Vec<_>>(), [2]);
    }
}
