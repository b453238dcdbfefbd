//! What a VM is made of, as the runner's flags describe it.

use std::path::PathBuf;

use thiserror::Error;

use crate::boot::BootSource;
use crate::devices::virtio::fs::defs::FS_TAG_MAX_LEN;
use crate::devices::virtio::net::defs::{DEFAULT_MAC, DEFAULT_MTU, MIN_MTU};
use crate::vm::guest_ram::{RamBacking, RamSharing};

/// Most vCPUs: APIC IDs are one byte in CPUID leaf 1 and the MADT, and 255
/// is the broadcast ID.
pub const MAX_VCPUS: u8 = 254;
/// Least guest memory.
pub const MIN_MEMORY_MIB: u64 = 64;

/// The hybrid vsock device: guest CID and the Unix socket host programs
/// connect to (`CONNECT <port>\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// Path of the Unix socket the VMM listens on.
    pub uds_path: PathBuf,
}

/// The virtio-net device: the Unix socket of its backend (passt, serving
/// QEMU's `-netdev stream` framing), the guest's MAC address and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The socket passt listens on (`passt --socket PATH`).
    pub socket: PathBuf,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The largest MTU the guest may use (and uses by default).
    pub mtu: u16,
}

impl NetConfig {
    /// A device on `socket` with the default MAC and MTU.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            mac: DEFAULT_MAC,
            mtu: DEFAULT_MTU,
        }
    }
}

/// A host directory shared with the guest through virtio-fs: the tag the
/// guest mounts (`mount -t virtiofs TAG /mnt`) and the vhost-user socket of
/// the `virtiofsd` that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The mount tag (1–36 bytes of ASCII letters, digits, `-`, `_`, `.`).
    pub tag: String,
    /// The socket `virtiofsd --socket-path` listens on.
    pub socket: PathBuf,
}

impl FsConfig {
    /// Parses `TAG=SOCKET_PATH`, the `--fs` flag's value, checking the tag.
    pub fn parse(text: &str) -> Result<FsConfig, ConfigError> {
        let (tag, socket) = text
            .split_once('=')
            .filter(|(_, socket)| !socket.is_empty())
            .ok_or_else(|| ConfigError::FsSyntax(text.to_owned()))?;
        check_fs_tag(tag)?;
        Ok(FsConfig {
            tag: tag.to_owned(),
            socket: socket.into(),
        })
    }
}

/// Checks a virtio-fs mount tag: 1 to [`FS_TAG_MAX_LEN`] bytes of ASCII
/// letters, digits, `-`, `_` and `.`. The spec allows any UTF-8, but the
/// tag also travels through the host's command lines and the guest's
/// `mount`, where these characters need no quoting.
pub fn check_fs_tag(tag: &str) -> Result<(), ConfigError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if tag.is_empty() || tag.len() > FS_TAG_MAX_LEN || !tag.bytes().all(allowed) {
        return Err(ConfigError::FsTag(tag.to_owned()));
    }
    Ok(())
}

/// Parses a MAC address written as six two-digit hex bytes separated by
/// colons (`52:54:00:12:34:56`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let invalid = || ConfigError::MacSyntax(text.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// A whole VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel or firmware.
    pub boot: BootSource,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Raw disk image served as the first virtio-blk device (`/dev/vda`).
    pub disk: Option<PathBuf>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device, seeding the guest's CRNG from the host.
    pub rng: bool,
    /// A virtio-balloon device through which the guest reports free memory,
    /// which the host then takes back.
    pub balloon: bool,
    /// The network device; no network when `None`.
    pub net: Option<NetConfig>,
    /// File the serial console is appended to; standard output when `None`.
    pub console: Option<PathBuf>,
    /// Where guest RAM pages come from.
    pub ram_backing: RamBacking,
    /// A JSON file kept up to date with the memory the balloon has given
    /// back to the host (see `monitor_stats`).
    pub stats_file: Option<PathBuf>,
    /// Host directories shared through virtio-fs, one device each, in
    /// order. Any makes guest RAM shared (a memfd) so `virtiofsd` can map it.
    pub fs: Vec<FsConfig>,
}

/// A configuration that cannot describe a VM.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Zero or too many vCPUs.
    #[error("vCPU count must be between 1 and {MAX_VCPUS}, not {0}")]
    Cpus(u8),
    /// Too little memory.
    #[error("guest memory must be at least {MIN_MEMORY_MIB} MiB, not {0}")]
    Memory(u64),
    /// A vsock CID the guest may not have (0–2 are reserved).
    #[error("vsock CID must be 3 or more, not {0}")]
    Cid(u64),
    /// A MAC address that is not six colon-separated hex bytes.
    #[error("MAC address {0:?} is not six hex bytes like 52:54:00:12:34:56")]
    MacSyntax(String),
    /// A multicast MAC address (bit 0 of the first byte set).
    #[error("MAC address {} is a multicast address; a NIC needs a unicast one", format_mac(.0))]
    MacMulticast([u8; 6]),
    /// An MTU below what IPv4 needs.
    #[error("network MTU must be at least {MIN_MTU}, not {0}")]
    Mtu(u16),
    /// A `--fs` value that is not `TAG=SOCKET_PATH`.
    #[error("virtio-fs share {0:?} is not TAG=SOCKET_PATH")]
    FsSyntax(String),
    /// A virtio-fs tag that is empty, too long or has other characters.
    #[error(
        "virtio-fs tag {0:?} must be 1 to {FS_TAG_MAX_LEN} ASCII letters, digits, '-', '_' or '.'"
    )]
    FsTag(String),
    /// Two virtio-fs shares with the same tag.
    #[error("virtio-fs tag {0:?} is given twice")]
    FsTagTwice(String),
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl VmConfig {
    /// Checks the values that need no file system access.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(ConfigError::Cpus(self.cpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.cid < 3 {
                return Err(ConfigError::Cid(vsock.cid));
            }
        }
        if let Some(net) = &self.net {
            if net.mac[0] & 1 != 0 {
                return Err(ConfigError::MacMulticast(net.mac));
            }
            if net.mtu < MIN_MTU {
                return Err(ConfigError::Mtu(net.mtu));
            }
        }
        for (index, fs) in self.fs.iter().enumerate() {
            check_fs_tag(&fs.tag)?;
            if self.fs[..index].iter().any(|other| other.tag == fs.tag) {
                return Err(ConfigError::FsTagTwice(fs.tag.clone()));
            }
        }
        Ok(())
    }

    /// Whether guest RAM must be shared with other processes: vhost-user
    /// backends (`virtiofsd`) map it themselves.
    pub fn ram_sharing(&self) -> RamSharing {
        if self.fs.is_empty() {
            RamSharing::Private
        } else {
            RamSharing::Shared
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            boot: BootSource::Kernel {
                kernel: "/k".into(),
                initramfs: None,
                cmdline: String::new(),
            },
            memory_mib: 512,
            cpus: 2,
            disk: None,
            vsock: Some(VsockConfig {
                cid: 3,
                uds_path: "/run/v.sock".into(),
            }),
            rng: true,
            balloon: true,
            net: Some(NetConfig::new("/run/net.sock")),
            console: None,
            ram_backing: RamBacking::default(),
            stats_file: None,
            fs: vec![FsConfig::parse("home=/run/home.sock").unwrap()],
        }
    }

    #[test]
    fn fs_share_is_parsed_from_tag_equals_socket() {
        assert_eq!(
            FsConfig::parse("my-share_1.x=/run/user/1000/fs=1.sock"),
            Ok(FsConfig {
                tag: "my-share_1.x".into(),
                socket: "/run/user/1000/fs=1.sock".into(),
            })
        );
    }

    #[test]
    fn fs_share_without_tag_or_socket_is_refused() {
        for text in ["", "home", "home=", "=/run/home.sock"] {
            let expected = if text.starts_with('=') {
                ConfigError::FsTag(String::new())
            } else {
                ConfigError::FsSyntax(text.to_owned())
            };
            assert_eq!(FsConfig::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn fs_tags_are_1_to_36_safe_ascii_bytes() {
        let longest = "a".repeat(36);
        assert_eq!(check_fs_tag(&longest), Ok(()));
        assert_eq!(check_fs_tag("A-z_0.9"), Ok(()));
        for bad in [
            "",
            &"a".repeat(37),
            "has space",
            "slash/",
            "ümlaut",
            "semi;colon",
            "nul\0",
        ] {
            let error = check_fs_tag(bad).unwrap_err();
            assert_eq!(error, ConfigError::FsTag(bad.to_owned()));
            assert!(error.to_string().contains("1 to 36"), "{error}");
        }
    }

    #[test]
    fn duplicate_fs_tags_are_refused_and_any_share_makes_ram_shared() {
        let mut c = config();
        assert_eq!(c.ram_sharing(), RamSharing::Shared);
        c.fs.push(FsConfig::parse("home=/run/other.sock").unwrap());

        assert_eq!(c.validate(), Err(ConfigError::FsTagTwice("home".into())));
        c.fs.clear();
        assert_eq!(c.ram_sharing(), RamSharing::Private);
    }

    #[test]
    fn sensible_config_is_accepted() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_value() {
        let mut c = config();
        c.cpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Cpus(0)));

        let mut c = config();
        c.memory_mib = 32;
        assert_eq!(c.validate(), Err(ConfigError::Memory(32)));

        let mut c = config();
        c.vsock.as_mut().unwrap().cid = 2;
        assert_eq!(c.validate(), Err(ConfigError::Cid(2)));

        let mut c = config();
        c.net.as_mut().unwrap().mtu = 67;
        assert_eq!(c.validate(), Err(ConfigError::Mtu(67)));
    }

    #[test]
    fn multicast_mac_is_refused_with_the_address() {
        let mut c = config();
        c.net.as_mut().unwrap().mac = [0x01, 0, 0x5e, 0, 0, 1];

        let error = c.validate().unwrap_err();

        assert_eq!(error, ConfigError::MacMulticast([0x01, 0, 0x5e, 0, 0, 1]));
        assert!(error.to_string().contains("01:00:5e:00:00:01"), "{error}");
    }

    #[test]
    fn mac_is_parsed_from_colon_separated_hex() {
        assert_eq!(
            parse_mac("02:AB:cd:00:10:ff"),
            Ok([0x02, 0xab, 0xcd, 0x00, 0x10, 0xff])
        );
        assert_eq!(
            format_mac(&[0x02, 0xab, 0xcd, 0, 0x10, 0xff]),
            "02:ab:cd:00:10:ff"
        );
    }

    #[test]
    fn malformed_macs_are_refused() {
        for text in [
            "",
            "02:ab:cd:00:10",
            "02:ab:cd:00:10:ff:00",
            "2:ab:cd:00:10:ff",
            "02-ab-cd-00-10-ff",
            "02:ab:cd:00:10:fg",
            "+2:ab:cd:00:10:ff",
        ] {
            assert_eq!(
                parse_mac(text),
                Err(ConfigError::MacSyntax(text.to_owned())),
                "{text:?}"
            );
        }
    }
}
