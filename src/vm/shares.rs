//! Host directories shared with the utility VM over virtiofs: the user's
//! home by default, plus `[[mount]]` entries from `config.toml`.
//!
//! ```toml
//! share_home = true          # the default
//!
//! [[mount]]
//! host = "/srv/data"
//! guest = "/data"            # default: the same path as on the host
//! read_only = true           # default: false
//! ```
//!
//! Each share is served by its own `virtiofsd` (see [`super::virtiofsd`])
//! and attached to the VM as a virtio-fs device with the tag `share<N>`.
//! The kernel command line tells the agent each tag's guest path and mode
//! (`distroctl.share=share0,rw,<path in hex>`); the agent mounts it once in
//! the VM and binds it into every distro that has not turned mounts off.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A `[[mount]]` entry that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MountEntryError {
    /// `host` is not absolute.
    #[error("mount host = {0:?} is not an absolute path: write it from /")]
    HostRelative(String),
    /// `guest` is not absolute, or has `..`, or is `/`.
    #[error("mount guest = {0:?} must be an absolute path below / without `..` (e.g. \"/data\")")]
    GuestPath(String),
    /// A path the VM itself needs.
    #[error("mount guest = {0:?} would hide a directory every distro needs (/proc, /sys, /dev, /run, /tmp, /etc, /usr, /bin, /sbin, /lib, /lib64, /var); pick another guest path")]
    GuestReserved(String),
}

/// One validated `[[mount]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawMountEntry")]
pub struct MountEntry {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where it appears in each distro.
    pub guest: String,
    /// Writes are refused (`EROFS`).
    pub read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMountEntry {
    host: String,
    guest: Option<String>,
    #[serde(default)]
    read_only: bool,
}

impl TryFrom<RawMountEntry> for MountEntry {
    type Error = MountEntryError;

    fn try_from(raw: RawMountEntry) -> Result<Self, Self::Error> {
        if !raw.host.starts_with('/') {
            return Err(MountEntryError::HostRelative(raw.host));
        }
        let guest = raw.guest.unwrap_or_else(|| raw.host.clone());
        let guest = check_guest_path(&guest)?;
        Ok(MountEntry {
            host: PathBuf::from(raw.host),
            guest,
            read_only: raw.read_only,
        })
    }
}

/// Top-level directories a share must not cover: the distro would lose
/// its programs or the files distroctl sets up at each start.
const RESERVED: &[&str] = &[
    "proc", "sys", "dev", "run", "tmp", "etc", "usr", "bin", "sbin", "lib", "lib64", "var",
];

/// A guest path in normal form (no `.`, empty components or trailing `/`),
/// or why it cannot be one.
fn check_guest_path(path: &str) -> Result<String, MountEntryError> {
    let bad = || MountEntryError::GuestPath(path.to_owned());
    if !path.starts_with('/') || path.contains('\0') {
        return Err(bad());
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(bad());
    }
    if parts.len() == 1 && RESERVED.contains(&parts[0]) {
        return Err(MountEntryError::GuestReserved(path.to_owned()));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// One directory shared with the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The virtio-fs tag the guest mounts (`share0`, `share1`, …).
    pub tag: String,
    /// Directory on the host.
    pub host: PathBuf,
    /// Where it appears in each distro.
    pub guest: String,
    /// Writes are refused.
    pub read_only: bool,
}

impl Share {
    /// The kernel command line argument that tells the agent about it.
    pub fn kernel_arg(&self) -> String {
        let hex: String = self.guest.bytes().map(|b| format!("{b:02x}")).collect();
        let mode = if self.read_only { "ro" } else { "rw" };
        format!("distroctl.share={},{mode},{hex}", self.tag)
    }
}

/// The shares a VM gets, and a line for each configured one left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SharePlan {
    /// What the VM gets, tagged in order.
    pub shares: Vec<Share>,
    /// One line per configured share that cannot be served (its host
    /// directory is missing, say), for the user.
    pub skipped: Vec<String>,
}

/// The shares for a VM: the home directory `home` when `share_home`, then
/// each `[[mount]]` entry. A host directory that is missing or not a
/// directory is left out with a line saying so; a guest path used twice
/// keeps its first share.
pub fn plan(share_home: bool, home: Option<&Path>, mounts: &[MountEntry]) -> SharePlan {
    let mut wanted: Vec<(MountEntry, &'static str)> = Vec::new();
    if share_home {
        match home.map(|h| h.to_string_lossy().into_owned()) {
            Some(h) if h.starts_with('/') && check_guest_path(&h).is_ok() => wanted.push((
                MountEntry {
                    host: PathBuf::from(&h),
                    guest: check_guest_path(&h).expect("checked"),
                    read_only: false,
                },
                "share_home",
            )),
            other => {
                return SharePlan {
                    skipped: vec![format!(
                        "your home directory is not shared: HOME ({}) is not a directory a distro can show at the same path; set share_home = false in config.toml to silence this",
                        other.unwrap_or_else(|| "unset".into())
                    )],
                    ..plan(false, None, mounts)
                }
            }
        }
    }
    wanted.extend(mounts.iter().map(|m| (m.clone(), "[[mount]]")));
    let mut out = SharePlan::default();
    for (entry, origin) in wanted {
        if !entry.host.is_dir() {
            let why = if entry.host.exists() {
                "it is not a directory"
            } else {
                "it does not exist"
            };
            out.skipped.push(format!(
                "{} is not shared: {why}; create it or change the {origin} entry in config.toml",
                entry.host.display()
            ));
            continue;
        }
        if let Some(first) = out.shares.iter().find(|s| s.guest == entry.guest) {
            out.skipped.push(format!(
                "{} is not shared at {}: {} is already shared there; give one of the [[mount]] entries another guest path",
                entry.host.display(),
                entry.guest,
                first.host.display()
            ));
            continue;
        }
        out.shares.push(Share {
            tag: format!("share{}", out.shares.len()),
            host: entry.host,
            guest: entry.guest,
            read_only: entry.read_only,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, guest: Option<&str>) -> Result<MountEntry, MountEntryError> {
        MountEntry::try_from(RawMountEntry {
            host: host.into(),
            guest: guest.map(str::to_owned),
            read_only: false,
        })
    }

    #[test]
    fn guest_path_defaults_to_the_host_path_in_normal_form() {
        assert_eq!(entry("/srv/data", None).unwrap().guest, "/srv/data");
        assert_eq!(entry("/srv", Some("//mnt/./x/")).unwrap().guest, "/mnt/x");
    }

    #[test]
    fn bad_entries_each_get_their_own_error() {
        assert_eq!(
            entry("srv", None),
            Err(MountEntryError::HostRelative("srv".into()))
        );
        assert_eq!(
            entry("/srv", Some("data")),
            Err(MountEntryError::GuestPath("data".into()))
        );
        assert_eq!(
            entry("/srv", Some("/a/../etc")),
            Err(MountEntryError::GuestPath("/a/../etc".into()))
        );
        assert_eq!(
            entry("/srv", Some("/")),
            Err(MountEntryError::GuestPath("/".into()))
        );
        assert_eq!(
            entry("/srv", Some("/etc/")),
            Err(MountEntryError::GuestReserved("/etc/".into()))
        );
        assert!(entry("/srv", Some("/etc/app")).is_ok());
    }

    #[test]
    fn home_comes_first_then_mounts_and_missing_directories_are_skipped() {
        let home = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mounts = vec![
            MountEntry {
                host: data.path().into(),
                guest: "/data".into(),
                read_only: true,
            },
            MountEntry {
                host: "/nonexistent/distroctl".into(),
                guest: "/gone".into(),
                read_only: false,
            },
        ];

        let plan = plan(true, Some(home.path()), &mounts);

        assert_eq!(plan.shares.len(), 2);
        assert_eq!(plan.shares[0].tag, "share0");
        assert_eq!(plan.shares[0].guest, home.path().to_str().unwrap());
        assert!(!plan.shares[0].read_only);
        assert_eq!(plan.shares[1].tag, "share1");
        assert_eq!(plan.shares[1].guest, "/data");
        assert!(plan.shares[1].read_only);
        assert_eq!(plan.skipped.len(), 1);
        assert!(
            plan.skipped[0].starts_with("/nonexistent/distroctl is not shared: it does not exist"),
            "{:?}",
            plan.skipped
        );
    }

    #[test]
    fn share_home_false_and_a_guest_path_used_twice() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mounts = vec![
            MountEntry {
                host: a.path().into(),
                guest: "/x".into(),
                read_only: false,
            },
            MountEntry {
                host: b.path().into(),
                guest: "/x".into(),
                read_only: false,
            },
        ];

        let plan = plan(false, Some(a.path()), &mounts);

        assert_eq!(plan.shares.len(), 1);
        assert_eq!(plan.shares[0].host, a.path());
        assert!(plan.skipped[0].contains("is already shared there"));
    }

    #[test]
    fn kernel_argument_hex_encodes_the_guest_path() {
        let share = Share {
            tag: "share1".into(),
            host: "/h".into(),
            guest: "/a b".into(),
            read_only: true,
        };

        assert_eq!(share.kernel_arg(), "distroctl.share=share1,ro,2f612062");
    }
}
