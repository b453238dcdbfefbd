//! Host directories shared with the VM over virtiofs. The host names each
//! on the kernel command line (`distroctl.share=TAG,ro|rw,<guest path in
//! hex>`); the agent mounts each tag once under [`SHARES_DIR`] in the VM,
//! and each distro's PID 1 binds them at their guest paths (see
//! [`crate::distro_init`]) unless the distro has mounts turned off.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

/// Where the VM mounts each share (`<SHARES_DIR>/<tag>`); distros never see
/// this directory.
pub const SHARES_DIR: &str = "/run/distroctl/shares";

/// A share as the kernel command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShare {
    /// The virtio-fs tag.
    pub tag: String,
    /// Where it appears in distros.
    pub guest: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A share mounted in the VM, as a distro's PID 1 binds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareMount {
    /// The VM's mount of the share.
    pub source: PathBuf,
    /// Where it appears in the distro.
    pub guest: String,
    /// Read-only.
    pub read_only: bool,
}

/// The shares named on a kernel command line; malformed words are logged
/// and skipped.
pub fn parse_cmdline(cmdline: &str) -> Vec<HostShare> {
    cmdline
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("distroctl.share="))
        .filter_map(|value| {
            let share = parse_one(value);
            if share.is_none() {
                tracing::warn!(value, "ignoring a malformed distroctl.share argument");
            }
            share
        })
        .collect()
}

fn parse_one(value: &str) -> Option<HostShare> {
    let mut parts = value.split(',');
    let (tag, mode, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || tag.is_empty()
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        _ => return None,
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let guest = String::from_utf8(bytes).ok()?;
    let sane = guest.starts_with('/')
        && !guest.contains('\0')
        && guest.split('/').all(|p| p != "..")
        && !guest.trim_matches('/').is_empty();
    sane.then(|| HostShare {
        tag: tag.to_owned(),
        guest,
        read_only,
    })
}

/// Mounts each share of this boot's kernel command line under
/// [`SHARES_DIR`] (already mounted ones, after an agent restart, are kept)
/// and returns those that are mounted. A share that cannot be mounted is
/// logged and left out: its distros start without it.
pub fn mount_all() -> Vec<ShareMount> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_cmdline(&cmdline)
        .into_iter()
        .filter_map(|share| {
            let source = Path::new(SHARES_DIR).join(&share.tag);
            let mounted = is_mount_point(&mountinfo, &source);
            if !mounted {
                if let Err(e) = mount_share(&share, &source) {
                    tracing::error!(tag = %share.tag, guest = %share.guest, error = %e, "cannot mount a host share; distros start without it");
                    return None;
                }
                tracing::info!(tag = %share.tag, guest = %share.guest, read_only = share.read_only, "host share mounted");
            }
            Some(ShareMount {
                source,
                guest: share.guest,
                read_only: share.read_only,
            })
        })
        .collect()
}

fn mount_share(share: &HostShare, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if share.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(share.tag.as_str()),
        target,
        Some("virtiofs"),
        flags,
        None::<&str>,
    )?;
    Ok(())
}

/// True when `/proc/self/mountinfo` text lists `path` as a mount point.
fn is_mount_point(mountinfo: &str, path: &Path) -> bool {
    let wanted = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|point| point == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_read_from_the_command_line_and_bad_words_skipped() {
        let cmdline = "console=ttyS0 distroctl.share=share0,rw,2f686f6d652f61 distroctl.ip=10.0.2.15/24 distroctl.share=share1,ro,2f612062 distroctl.share=share2,rx,2f61 distroctl.share=share3,ro,2f2e2e distroctl.share=share4,ro,2f distroctl.share=bad/tag,ro,2f61 distroctl.share=share5,ro,zz";

        let shares = parse_cmdline(cmdline);

        assert_eq!(
            shares,
            vec![
                HostShare {
                    tag: "share0".into(),
                    guest: "/home/a".into(),
                    read_only: false
                },
                HostShare {
                    tag: "share1".into(),
                    guest: "/a b".into(),
                    read_only: true
                },
            ]
        );
    }

    #[test]
    fn mount_points_are_found_in_mountinfo() {
        let mountinfo = "22 1 0:21 / /run rw - tmpfs tmpfs rw\n40 22 0:40 / /run/distroctl/shares/share0 rw,nosuid - virtiofs share0 rw\n";

        assert!(is_mount_point(
            mountinfo,
            Path::new("/run/distroctl/shares/share0")
        ));
        assert!(!is_mount_point(
            mountinfo,
            Path::new("/run/distroctl/shares/share1")
        ));
    }
}
