//! Checks of a distro's settings when they are given (`configure`,
//! `import`), so that a setting that would break every later start or exec
//! is refused with one line instead of being stored.

use protocol::{DistroSettings, Limits};
use thiserror::Error;

use crate::distro_root::{DistroFileError, DistroRoot};
use crate::exec::lookup;

/// Where a distro's own init must be for `systemd = true`.
const INIT: &str = "/sbin/init";

/// Where systemd itself lives (merged `/usr` or not).
const SYSTEMD_BINARIES: [&str; 2] = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"];

/// A setting that cannot be used.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// A resource limit of zero.
    #[error("{setting} 0 is not allowed: {allowed}")]
    ZeroLimit {
        /// The setting, as the CLI names it.
        setting: &'static str,
        /// What is allowed instead.
        allowed: &'static str,
    },
    /// The default user is not in the distro's `/etc/passwd`.
    #[error("user {user} does not exist in distro {distro}: create it in the distro first (e.g. `useradd -m {user}`)")]
    NoSuchUser {
        /// Distro.
        distro: String,
        /// The name given.
        user: String,
    },
    /// `systemd = true` for a root file system without systemd.
    #[error("distro {distro} has no systemd ({INIT} or systemd itself is missing): install it in the distro first (e.g. `apt-get install systemd-sysv`)")]
    NoSystemd {
        /// Distro.
        distro: String,
    },
    /// The distro's files could not be read safely.
    #[error("{0}")]
    Files(#[from] DistroFileError),
}

/// Refuses zero limits: the kernel would take them literally (no process
/// may start, no CPU time) while users usually mean "no limit".
pub fn check_limits(limits: &Limits) -> Result<(), SettingsError> {
    if limits.memory_bytes == Some(0) {
        return Err(SettingsError::ZeroLimit {
            setting: "--memory-max",
            allowed: "give a size such as 512M or 2G, or `none` for no limit",
        });
    }
    if limits.cpu_millis == Some(0) {
        return Err(SettingsError::ZeroLimit {
            setting: "--cpu-max",
            allowed: "give a number of CPUs from 0.001 to 4096 (e.g. 1.5), or `none` for no limit",
        });
    }
    if limits.pids == Some(0) {
        return Err(SettingsError::ZeroLimit {
            setting: "--pids-max",
            allowed: "give a number of processes from 1 to 4294967295, or `none` for no limit",
        });
    }
    Ok(())
}

/// Checks `settings` against the distro behind `root` (blocking: it reads
/// the distro's files).
pub fn check_against_root(
    root: &DistroRoot,
    settings: &DistroSettings,
) -> Result<(), SettingsError> {
    check_limits(&settings.limits)?;
    if let Some(user) = &settings.default_user {
        if lookup(root, user)?.is_none() {
            return Err(SettingsError::NoSuchUser {
                distro: root.distro().to_string(),
                user: user.clone(),
            });
        }
    }
    if settings.systemd && !has_systemd(root)? {
        return Err(SettingsError::NoSystemd {
            distro: root.distro().to_string(),
        });
    }
    Ok(())
}

/// True when `/sbin/init` and systemd are executable files in the distro.
pub fn has_systemd(root: &DistroRoot) -> Result<bool, DistroFileError> {
    if !root.is_executable(INIT)? {
        return Ok(false);
    }
    for path in SYSTEMD_BINARIES {
        if root.is_executable(path)? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;

    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        dir
    }

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn zero_limits_are_refused_with_the_setting_named() {
        let cases = [
            (
                Limits {
                    cpu_millis: Some(0),
                    ..Default::default()
                },
                "--cpu-max 0 is not allowed",
            ),
            (
                Limits {
                    pids: Some(0),
                    ..Default::default()
                },
                "--pids-max 0 is not allowed",
            ),
            (
                Limits {
                    memory_bytes: Some(0),
                    ..Default::default()
                },
                "--memory-max 0 is not allowed",
            ),
        ];
        for (limits, message) in cases {
            let err = check_limits(&limits).unwrap_err().to_string();

            assert!(err.starts_with(message), "{err}");
            assert!(err.contains("`none`"), "{err}");
        }
        assert!(check_limits(&Limits {
            cpu_millis: Some(1),
            pids: Some(1),
            memory_bytes: Some(1),
        })
        .is_ok());
    }

    #[test]
    fn unknown_default_user_is_refused_known_one_accepted() {
        let dir = rootfs();
        let root = DistroRoot::open("d", dir.path()).unwrap();
        let with_user = |u: &str| DistroSettings {
            default_user: Some(u.into()),
            ..Default::default()
        };

        let nosuch = check_against_root(&root, &with_user("nosuch")).unwrap_err();
        let alice = check_against_root(&root, &with_user("alice"));

        assert!(
            nosuch
                .to_string()
                .starts_with("user nosuch does not exist in distro d"),
            "{nosuch}"
        );
        assert!(alice.is_ok());
    }

    #[test]
    fn systemd_needs_init_and_systemd_in_the_distro() {
        let dir = rootfs();
        let root = DistroRoot::open("d", dir.path()).unwrap();
        let systemd = DistroSettings {
            systemd: true,
            ..Default::default()
        };

        let without = check_against_root(&root, &systemd);
        executable(&dir.path().join("usr/lib/systemd/systemd"));
        std::fs::create_dir_all(dir.path().join("sbin")).unwrap();
        symlink("/usr/lib/systemd/systemd", dir.path().join("sbin/init")).unwrap();
        let with = check_against_root(&root, &systemd);

        assert!(
            matches!(without, Err(SettingsError::NoSystemd { .. })),
            "{without:?}"
        );
        assert!(with.is_ok(), "{with:?}");
    }

    #[test]
    fn init_symlink_leaving_the_distro_is_not_systemd() {
        let dir = rootfs();
        let root_dir = dir.path().join("rootfs");
        std::fs::create_dir_all(root_dir.join("sbin")).unwrap();
        executable(&dir.path().join("usr/lib/systemd/systemd"));
        // Outside the distro's root: must not count.
        symlink(
            dir.path().join("usr/lib/systemd/systemd"),
            root_dir.join("sbin/init"),
        )
        .unwrap();
        let root = DistroRoot::open("d", &root_dir).unwrap();

        assert!(!has_systemd(&root).unwrap());
    }
}
