//! The data disk: the first virtio-blk disk, ext4, mounted at `/data`. It
//! holds every distro, so the VM is useless without it and init powers off
//! when it cannot be mounted.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use thiserror::Error;

/// The data disk's device node.
pub const DEVICE: &str = "/dev/vda";

/// Where the data disk is mounted.
pub const MOUNT_POINT: &str = "/data";

/// How long to wait for the disk's node: virtio-blk probes asynchronously
/// after its module is loaded.
pub const APPEAR_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the node's existence is checked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Failure to bring up the data disk.
#[derive(Debug, Error)]
pub enum DataDiskError {
    /// The device node did not appear in time.
    #[error("{} did not appear within {timeout:?}", device.display())]
    Missing {
        /// Device node waited for.
        device: PathBuf,
        /// How long.
        timeout: Duration,
    },
    /// The mount point could not be created.
    #[error("could not create {MOUNT_POINT}")]
    CreateMountPoint(#[source] std::io::Error),
    /// Mounting failed (not ext4, corrupt, module missing…).
    #[error("could not mount {} as ext4 at {MOUNT_POINT}", device.display())]
    Mount {
        /// Device node.
        device: PathBuf,
        /// Cause.
        #[source]
        source: Errno,
    },
}

/// How the data disk was released at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Cleanly unmounted.
    Unmounted,
    /// Busy; remounted read-only so the journal is clean, then detached.
    RemountedReadOnly,
    /// Busy and could not even be made read-only; detached lazily.
    Detached,
    /// It was not mounted.
    NotMounted,
}

/// Waits up to `timeout` for `device` to exist.
pub fn wait_for(device: &Path, timeout: Duration) -> Result<(), DataDiskError> {
    let started = Instant::now();
    while !device.exists() {
        if started.elapsed() >= timeout {
            return Err(DataDiskError::Missing {
                device: device.to_path_buf(),
                timeout,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
    Ok(())
}

/// Mounts `device` at [`MOUNT_POINT`] as ext4 with online discard (frees
/// host disk space as distros delete files) and without access-time writes.
pub fn mount_data(device: &Path) -> Result<(), DataDiskError> {
    std::fs::create_dir_all(MOUNT_POINT).map_err(DataDiskError::CreateMountPoint)?;
    mount(
        Some(device),
        MOUNT_POINT,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        Some("discard"),
    )
    .map_err(|source| DataDiskError::Mount {
        device: device.to_path_buf(),
        source,
    })
}

/// Unmounts the data disk as cleanly as the remaining processes allow.
pub fn release() -> Release {
    match umount2(MOUNT_POINT, MntFlags::empty()) {
        Ok(()) => Release::Unmounted,
        Err(Errno::EINVAL | Errno::ENOENT) => Release::NotMounted,
        Err(_) => {
            let read_only = mount(
                None::<&str>,
                MOUNT_POINT,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .is_ok();
            let _ = umount2(MOUNT_POINT, MntFlags::MNT_DETACH);
            if read_only {
                Release::RemountedReadOnly
            } else {
                Release::Detached
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_existing_device_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();

        let started = Instant::now();
        let result = wait_for(dir.path(), Duration::from_secs(5));

        assert!(result.is_ok());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn wait_for_missing_device_times_out_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("vda");

        let err = wait_for(&device, Duration::from_millis(30)).unwrap_err();

        assert!(matches!(err, DataDiskError::Missing { .. }));
        assert!(err.to_string().contains("vda"));
    }
}
