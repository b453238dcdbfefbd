//! The VM's Ethernet interface, configured from the kernel command line
//! (`distroctl.ip=A/P distroctl.gw=G distroctl.dns=D distroctl.mtu=M`,
//! written by the host together with matching passt options), and the
//! VM's `/etc/resolv.conf`, which the agent hands on to every distro.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use netlink::route::Rtnetlink;
use netlink::NetlinkError;

/// Where interfaces show up.
const NET_CLASS: &str = "/sys/class/net";

/// How long the virtio-net interface may take to appear after its module loaded.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(3);

/// The VM's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The network settings the host passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNetwork {
    /// Interface address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// DNS resolver.
    pub dns: Ipv4Addr,
    /// Interface MTU.
    pub mtu: u32,
}

/// Configuring the interface failed.
#[derive(Debug, Error)]
pub enum GuestNetworkError {
    /// A `distroctl.*` word on the command line does not parse.
    #[error("bad network setting {word:?} on the kernel command line")]
    BadSetting {
        /// The offending word.
        word: String,
    },
    /// No interface besides loopback appeared.
    #[error("no network interface appeared within {APPEAR_TIMEOUT:?}")]
    NoInterface,
    /// The interface index could not be read.
    #[error("could not read the index of interface {name}")]
    Index {
        /// The interface.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("could not configure interface {name}")]
    Netlink {
        /// The interface.
        name: String,
        /// Cause.
        #[source]
        source: NetlinkError,
    },
    /// `/etc/resolv.conf` could not be written.
    #[error("could not write {RESOLV_CONF}")]
    Resolver(#[source] std::io::Error),
}

/// Reads the settings from the kernel command line; `None` when the host
/// gave the VM no network.
pub fn parse_cmdline(cmdline: &str) -> Result<Option<GuestNetwork>, GuestNetworkError> {
    let mut address = None;
    let mut gateway = None;
    let mut dns = None;
    let mut mtu = None;
    for word in cmdline.split_whitespace() {
        let bad = || GuestNetworkError::BadSetting {
            word: word.to_owned(),
        };
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "distroctl.ip" => {
                let (a, p) = value.split_once('/').ok_or_else(bad)?;
                let prefix: u8 = p.parse().map_err(|_| bad())?;
                if prefix > 32 {
                    return Err(bad());
                }
                address = Some((a.parse::<Ipv4Addr>().map_err(|_| bad())?, prefix));
            }
            "distroctl.gw" => gateway = Some(value.parse().map_err(|_| bad())?),
            "distroctl.dns" => dns = Some(value.parse().map_err(|_| bad())?),
            "distroctl.mtu" => mtu = Some(value.parse().map_err(|_| bad())?),
            _ => {}
        }
    }
    let Some((address, prefix)) = address else {
        return Ok(None);
    };
    Ok(Some(GuestNetwork {
        address,
        prefix,
        gateway: gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
        dns: dns.unwrap_or(Ipv4Addr::UNSPECIFIED),
        mtu: mtu.unwrap_or(1500),
    }))
}

/// Brings the interface up with `network`'s settings and writes the VM's
/// resolver configuration. Returns the interface's name.
pub fn configure(network: &GuestNetwork) -> Result<String, GuestNetworkError> {
    let name = wait_for_interface(Path::new(NET_CLASS))?;
    let index = netlink::route::index_of(&name).map_err(|source| GuestNetworkError::Index {
        name: name.clone(),
        source,
    })?;
    let netlink_err = |source| GuestNetworkError::Netlink {
        name: name.clone(),
        source,
    };
    let netlink = Rtnetlink::open().map_err(netlink_err)?;
    netlink
        .set_link_up(index, network.mtu)
        .map_err(netlink_err)?;
    netlink
        .add_address(index, network.address, network.prefix)
        .map_err(netlink_err)?;
    if !network.gateway.is_unspecified() {
        netlink
            .add_default_route(index, network.gateway)
            .map_err(netlink_err)?;
    }
    if !network.dns.is_unspecified() {
        write_resolver(Path::new(RESOLV_CONF), network.dns).map_err(GuestNetworkError::Resolver)?;
    }
    Ok(name)
}

/// Writes a resolver configuration naming only `dns`.
fn write_resolver(path: &Path, dns: Ipv4Addr) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, resolver_text(dns))
}

fn resolver_text(dns: Ipv4Addr) -> String {
    format!("# Generated by distroctl-init: passt forwards these queries to the host's resolver.\nnameserver {dns}\n")
}

/// The first interface other than loopback, waiting for it to appear.
fn wait_for_interface(class: &Path) -> Result<String, GuestNetworkError> {
    let deadline = Instant::now() + APPEAR_TIMEOUT;
    loop {
        if let Some(name) = first_interface(class) {
            return Ok(name);
        }
        if Instant::now() > deadline {
            return Err(GuestNetworkError::NoInterface);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn first_interface(class: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(class)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_settings_are_parsed() {
        let line = "console=ttyS0 distroctl.ip=10.0.2.15/24 distroctl.gw=10.0.2.2 distroctl.dns=10.0.2.3 distroctl.mtu=65520 quiet";

        let network = parse_cmdline(line).unwrap().unwrap();

        assert_eq!(network.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(network.prefix, 24);
        assert_eq!(network.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(network.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(network.mtu, 65520);
    }

    #[test]
    fn cmdline_without_address_means_no_network() {
        assert_eq!(parse_cmdline("console=ttyS0 quiet").unwrap(), None);
    }

    #[test]
    fn cmdline_with_bad_prefix_is_an_error_naming_the_word() {
        let err = parse_cmdline("distroctl.ip=10.0.2.15/33").unwrap_err();

        assert!(err.to_string().contains("distroctl.ip=10.0.2.15/33"));
    }

    #[test]
    fn first_interface_skips_loopback_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["lo", "eth1", "eth0"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }

        assert_eq!(first_interface(dir.path()).as_deref(), Some("eth0"));
    }

    #[test]
    fn resolver_names_only_the_given_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/resolv.conf");

        write_resolver(&path, Ipv4Addr::new(10, 0, 2, 3)).unwrap();

        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.ends_with("nameserver 10.0.2.3\n"), "{text}");
        assert_eq!(text.matches("nameserver").count(), 1);
    }
}
