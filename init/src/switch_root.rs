//! Leaving the initramfs root.
//!
//! The kernel unpacks the initramfs into "rootfs", the one filesystem that
//! can never be unmounted, so `pivot_root` refuses to move away from it — yet
//! the agent pivots into every distro. Init therefore moves its files onto a
//! tmpfs, makes that tmpfs `/` (`MS_MOVE` + `chroot`, as `switch_root` tools
//! do) and re-executes itself there. Files are deleted from rootfs as they
//! are copied so their memory is returned instead of doubled.

use std::convert::Infallible;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot};
use thiserror::Error;

/// Environment marker set on the re-executed init so it never tries to
/// switch twice, even if the mount table were misread.
pub const SWITCHED_MARKER: &str = "DISTROCTL_INIT_SWITCHED";

/// Where the new root tmpfs is assembled before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// The program re-executed after the switch: the initramfs's `/init`.
const INIT_PATH: &str = "/init";

/// Failure to leave the initramfs root.
#[derive(Debug, Error)]
pub enum SwitchRootError {
    /// Mounting the tmpfs that becomes the new root failed.
    #[error("could not mount a tmpfs at {NEW_ROOT}")]
    MountNewRoot(#[source] nix::Error),
    /// Moving one file or directory into the new root failed.
    #[error("could not move {} into the new root", path.display())]
    Move {
        /// The file in the old root.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A step of the root switch itself (`chdir`, `MS_MOVE`, `chroot`) failed.
    #[error("could not {step} while switching root")]
    Switch {
        /// Which step.
        step: &'static str,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// Executing init again from the new root failed.
    #[error("could not re-execute {INIT_PATH} from the new root")]
    Reexec(#[source] io::Error),
}

/// Whether this process is the init that already switched root.
pub fn already_switched() -> bool {
    std::env::var_os(SWITCHED_MARKER).is_some()
}

/// Moves everything onto a tmpfs root and re-executes init from there.
/// Only returns on failure. `/proc` must be mounted by the caller (it was
/// needed to decide to switch); it is unmounted here and mounted again by the
/// new init.
pub fn leave_initramfs(args: &[OsString]) -> Result<Infallible, SwitchRootError> {
    fs::create_dir_all(NEW_ROOT).map_err(|source| SwitchRootError::Move {
        path: NEW_ROOT.into(),
        source,
    })?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(SwitchRootError::MountNewRoot)?;
    // Nothing below needs /proc, and leaving it mounted would pin the old
    // root; the re-executed init mounts a fresh one.
    let _ = umount2("/proc", MntFlags::MNT_DETACH);

    let root_dev = fs::symlink_metadata("/")
        .map_err(|source| SwitchRootError::Move {
            path: "/".into(),
            source,
        })?
        .dev();
    move_tree(Path::new("/"), Path::new(NEW_ROOT), root_dev)?;

    chdir(NEW_ROOT).map_err(|source| SwitchRootError::Switch {
        step: "enter the new root",
        source,
    })?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
        SwitchRootError::Switch {
            step: "move the new root over /",
            source,
        }
    })?;
    chroot(".").map_err(|source| SwitchRootError::Switch {
        step: "chroot into the new root",
        source,
    })?;
    chdir("/").map_err(|source| SwitchRootError::Switch {
        step: "enter /",
        source,
    })?;

    let mut command = Command::new(INIT_PATH);
    if let Some((arg0, rest)) = args.split_first() {
        command.arg0(arg0).args(rest);
    }
    Err(SwitchRootError::Reexec(
        command.env(SWITCHED_MARKER, "1").exec(),
    ))
}

/// Moves the contents of directory `from` into existing directory `to`,
/// staying on the filesystem `dev` (mount points below are recreated empty,
/// not entered). `to` itself is skipped when it appears inside `from`.
fn move_tree(from: &Path, to: &Path, dev: u64) -> Result<(), SwitchRootError> {
    let entries = fs::read_dir(from).map_err(move_error(from))?;
    for entry in entries {
        let entry = entry.map_err(move_error(from))?;
        let source = entry.path();
        if source == Path::new(NEW_ROOT) {
            continue;
        }
        let target = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&source).map_err(move_error(&source))?;
        if meta.is_dir() {
            fs::create_dir(&target)
                .or_else(ignore_exists)
                .and_then(|()| fs::set_permissions(&target, meta.permissions()))
                .map_err(move_error(&source))?;
            if meta.dev() == dev {
                move_tree(&source, &target, dev)?;
                fs::remove_dir(&source).map_err(move_error(&source))?;
            }
        } else {
            move_leaf(&source, &target, &meta).map_err(move_error(&source))?;
        }
    }
    Ok(())
}

fn move_error(path: &Path) -> impl FnOnce(io::Error) -> SwitchRootError {
    let path = path.to_path_buf();
    move |source| SwitchRootError::Move { path, source }
}

/// Moves a non-directory: copy (or recreate) it at `target`, then delete it.
fn move_leaf(source: &Path, target: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let kind = meta.file_type();
    let mode = meta.mode() & 0o7777;
    if kind.is_file() {
        fs::copy(source, target)?;
        fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
    } else if kind.is_symlink() {
        symlink(fs::read_link(source)?, target)?;
    } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
        let node_kind = if kind.is_char_device() {
            SFlag::S_IFCHR
        } else if kind.is_block_device() {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFIFO
        };
        mknod(
            target,
            node_kind,
            Mode::from_bits_truncate(mode),
            meta.rdev(),
        )
        .map_err(io::Error::from)?;
    }
    // Sockets cannot be carried over; they are simply dropped.
    fs::remove_file(source)
}

fn ignore_exists(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::AlreadyExists {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_tree_moves_files_dirs_and_symlinks_and_empties_source() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        fs::create_dir(from.path().join("bin")).unwrap();
        fs::write(from.path().join("bin/tool"), b"#!payload").unwrap();
        fs::set_permissions(
            from.path().join("bin/tool"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("bin/tool", from.path().join("link")).unwrap();
        let dev = fs::metadata(from.path()).unwrap().dev();

        move_tree(from.path(), to.path(), dev).unwrap();

        let tool = to.path().join("bin/tool");
        assert_eq!(fs::read(&tool).unwrap(), b"#!payload");
        assert_eq!(fs::metadata(&tool).unwrap().mode() & 0o777, 0o755);
        assert_eq!(
            fs::read_link(to.path().join("link")).unwrap(),
            Path::new("bin/tool")
        );
        assert_eq!(fs::read_dir(from.path()).unwrap().count(), 0);
    }

    #[test]
    fn move_tree_does_not_enter_other_filesystems() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        fs::create_dir(from.path().join("mnt")).unwrap();
        fs::write(from.path().join("mnt/kept"), b"x").unwrap();
        // A device number nothing has: every directory looks foreign.
        let foreign_dev = u64::MAX;

        move_tree(from.path(), to.path(), foreign_dev).unwrap();

        assert!(to.path().join("mnt").is_dir());
        assert!(!to.path().join("mnt/kept").exists());
        assert!(from.path().join("mnt/kept").exists());
    }
}
