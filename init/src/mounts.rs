//! The API filesystems every process in the VM expects: `/dev`, `/proc`,
//! `/sys`, the cgroup v2 hierarchy, `/dev/pts` and `/run`.

use std::fs;
use std::io;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use thiserror::Error;

/// One filesystem mounted at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// Source shown in the mount table.
    pub source: &'static str,
    /// Mount point, created when missing.
    pub target: &'static str,
    /// Filesystem type.
    pub fs_type: &'static str,
    /// Generic mount flags.
    pub flags: MsFlags,
    /// Filesystem-specific options.
    pub data: &'static str,
}

/// Failure to mount one of the base filesystems.
#[derive(Debug, Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("could not create mount point {target}")]
    CreateTarget {
        /// The mount point.
        target: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The mount itself failed.
    #[error("could not mount {fs_type} at {target}")]
    Mount {
        /// Filesystem type.
        fs_type: &'static str,
        /// The mount point.
        target: &'static str,
        /// Cause.
        #[source]
        source: Errno,
    },
}

const NO_DEV_EXEC_SUID: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The base mounts, in dependency order (`/dev/pts` lives inside `/dev`,
/// the cgroup hierarchy inside `/sys`).
pub const BASE_MOUNTS: [MountSpec; 6] = [
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fs_type: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        source: "proc",
        target: "/proc",
        fs_type: "proc",
        flags: NO_DEV_EXEC_SUID,
        data: "",
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fs_type: "sysfs",
        flags: NO_DEV_EXEC_SUID,
        data: "",
    },
    // nsdelegate can only be set from the initial namespace, and it is what
    // makes each distro's cgroup namespace a delegation boundary.
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fs_type: "cgroup2",
        flags: NO_DEV_EXEC_SUID,
        data: "nsdelegate",
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fs_type: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "ptmxmode=0666,mode=0620",
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fs_type: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
];

/// Mounts `/proc` alone, which is needed before anything else to read the
/// mount table. Already mounted counts as success.
pub fn mount_proc() -> Result<(), MountError> {
    mount_one(&BASE_MOUNTS[1])
}

/// Mounts every base filesystem; those already mounted are left alone.
pub fn mount_base() -> Result<(), MountError> {
    BASE_MOUNTS.iter().try_for_each(mount_one)
}

/// Mounts `spec`; `EBUSY` (already mounted there) counts as success.
pub fn mount_one(spec: &MountSpec) -> Result<(), MountError> {
    fs::create_dir_all(spec.target).map_err(|source| MountError::CreateTarget {
        target: spec.target,
        source,
    })?;
    let data = (!spec.data.is_empty()).then_some(spec.data);
    match mount(
        Some(spec.source),
        spec.target,
        Some(spec.fs_type),
        spec.flags,
        data,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(source) => Err(MountError::Mount {
            fs_type: spec.fs_type,
            target: spec.target,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn nested_mounts_come_after_their_parent() {
        for (i, spec) in BASE_MOUNTS.iter().enumerate() {
            let parent_index = BASE_MOUNTS.iter().position(|p| {
                p.target != spec.target && Path::new(spec.target).starts_with(p.target)
            });

            if let Some(parent_index) = parent_index {
                assert!(
                    parent_index < i,
                    "{} mounted before its parent",
                    spec.target
                );
            }
        }
    }

    #[test]
    fn mount_proc_uses_the_proc_entry() {
        assert_eq!(BASE_MOUNTS[1].target, "/proc");
        assert_eq!(BASE_MOUNTS[1].fs_type, "proc");
    }

    #[test]
    fn pty_multiplexer_is_world_usable() {
        let devpts = BASE_MOUNTS.iter().find(|m| m.fs_type == "devpts").unwrap();

        assert!(devpts.data.contains("ptmxmode=0666"));
    }
}
