//! What a VM is made of, as the runner's flags describe it.

use std::path::PathBuf;

use thiserror::Error;

use crate::boot::BootSource;

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
    /// File the serial console is appended to; standard output when `None`.
    pub console: Option<PathBuf>,
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
        Ok(())
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
            console: None,
        }
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
    }
}
