//! Just enough netlink for the utility VM, built by hand (header, fixed
//! part, attributes, each 4-byte aligned) because the initramfs has no `ip`
//! or `nft` tool and a handful of requests do not justify a netlink crate:
//!
//! - [`route`]: bring an interface up, give it an address and a default
//!   route, create a veth pair whose far end lives in another network
//!   namespace (`NETLINK_ROUTE`);
//! - [`nat`]: masquerade traffic from a private range leaving the VM
//!   (`NETLINK_NETFILTER`, one nftables batch).

mod message;
pub mod nat;
pub mod route;

pub use message::{NetlinkError, Socket};
