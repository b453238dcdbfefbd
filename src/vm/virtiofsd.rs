//! The virtio-fs daemons that serve host shares to the utility VM: one
//! `virtiofsd` (the Rust virtio-fs daemon, `cargo install virtiofsd`) per
//! share, each listening on a vhost-user socket in the runtime directory
//! that QEMU's `vhost-user-fs-device` or our VMM's virtio-fs device
//! connects to. The same daemon serves both backends.
//!
//! Each daemon runs in its own namespace sandbox (mount, PID and network
//! namespaces, with the shared directory as its root, and seccomp), so a
//! request that names `..` or follows a symlink cannot leave the share.
//! Run by an ordinary user it puts itself in a user namespace where that
//! user is root (`--uid-map :0:UID:1:`); run by root it needs none.
//!
//! Ownership: every file a distro creates is owned on the host by the user
//! running distroctl, whatever user created it in the distro (root in a
//! distro is not root on host files), and that user's files appear in the
//! distro as owned by UID/GID 1000, the default user `distroctl install`
//! creates. Other host users' files keep their numbers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::shares::Share;

/// How long a daemon may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The UID and GID host files of the user running distroctl have in
/// distros: the first regular user, which `distroctl install` creates.
pub const GUEST_OWNER_ID: u32 = 1000;

/// A daemon that could not be started.
#[derive(Debug, Error)]
pub enum VirtiofsdError {
    /// The binary could not be run.
    #[error("cannot start {}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited before its socket appeared.
    #[error("virtiofsd for {} exited with {status} before serving it; see {}", host.display(), log.display())]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The shared directory.
        host: PathBuf,
        /// Its log file.
        log: PathBuf,
    },
    /// An ordinary user's daemon needs a user namespace, and the host
    /// allows none.
    #[error("virtiofsd cannot sandbox itself without root: this host disables unprivileged user namespaces ({setting}); enable them (e.g. sudo sysctl -w {fix}) or set share_home = false and remove [[mount]] entries")]
    NoUserNamespaces {
        /// The setting that disables them, as found.
        setting: String,
        /// The sysctl that enables them.
        fix: String,
    },
    /// The socket did not appear in time.
    #[error("virtiofsd did not create {} within {SOCKET_TIMEOUT:?}", socket.display())]
    Timeout {
        /// The socket.
        socket: PathBuf,
    },
}

/// The configured daemon, else `virtiofsd` on `PATH`, in `~/.cargo/bin`
/// (where `cargo install virtiofsd` puts it) or where distributions
/// install the Rust daemon (`/usr/libexec`). QEMU's older C daemon
/// (`/usr/lib/qemu/virtiofsd` in Debian 12) takes other options and is
/// never used.
pub fn find_binary(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join("virtiofsd"))
        .chain([PathBuf::from("/usr/libexec/virtiofsd")])
        .find(|candidate| candidate.is_file())
}

/// The daemon's arguments for `share` on `socket`, run by `uid`/`gid`.
pub fn args(share: &Share, socket: &Path, uid: u32, gid: u32) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--socket-path".into(),
        socket.display().to_string(),
        "--shared-dir".into(),
        share.host.display().to_string(),
        "--sandbox".into(),
        "namespace".into(),
        // The guest's page cache keeps what it read until the host file
        // changes (checked on each open and on attribute timeouts), so
        // edits on either side show up on the other.
        "--cache".into(),
        "auto".into(),
        "--announce-submounts".into(),
        "--log-level".into(),
        "warn".into(),
    ];
    if share.read_only {
        args.push("--readonly".into());
    }
    // The daemon's own IDs are 0 either way: root's, or an ordinary
    // user's mapped to 0 in the sandbox's user namespace.
    if uid != 0 {
        args.push("--uid-map".into());
        args.push(format!(":0:{uid}:1:"));
        args.push("--gid-map".into());
        args.push(format!(":0:{gid}:1:"));
    }
    for flag in ["--translate-uid", "--translate-gid"] {
        // Whoever creates or chowns a file in a distro, it belongs to the
        // user running distroctl ...
        args.push(flag.into());
        args.push("squash-guest:0:0:4294967295".into());
        // ... whose own files appear as the distro's default user's.
        args.push(flag.into());
        args.push(format!("host:0:{GUEST_OWNER_ID}:1"));
    }
    args
}

/// The sysctl under `proc_sys` that keeps ordinary users from creating user
/// namespaces, as `name = value`, with the setting that allows them.
fn user_namespaces_disabled(proc_sys: &Path) -> Option<(String, String)> {
    let read = |name: &str| {
        std::fs::read_to_string(proc_sys.join(name.replace('.', "/")))
            .ok()
            .map(|v| v.trim().to_owned())
    };
    let checks = [
        ("kernel.unprivileged_userns_clone", "0", "1"),
        ("user.max_user_namespaces", "0", "15000"),
        ("kernel.apparmor_restrict_unprivileged_userns", "1", "0"),
    ];
    checks.into_iter().find_map(|(name, off, on)| {
        (read(name).as_deref() == Some(off))
            .then(|| (format!("{name} = {off}"), format!("{name}={on}")))
    })
}

/// A running daemon; killed when dropped.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
    share: Share,
    socket: PathBuf,
    log: PathBuf,
}

impl Virtiofsd {
    /// Starts `binary` serving `share` on `runtime_dir/<tag>.sock` (log
    /// `<tag>.log`) and waits until the socket exists, so the monitor can
    /// connect at once.
    pub fn start(
        binary: &Path,
        share: &Share,
        runtime_dir: &Path,
    ) -> Result<Virtiofsd, VirtiofsdError> {
        let socket = runtime_dir.join(format!("{}.sock", share.tag));
        let log = runtime_dir.join(format!("{}.log", share.tag));
        let _ = std::fs::remove_file(&socket);
        let log_file =
            crate::paths::create_private(&log, false).map_err(|source| VirtiofsdError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        if uid != 0 {
            if let Some((setting, fix)) = user_namespaces_disabled(Path::new("/proc/sys")) {
                return Err(VirtiofsdError::NoUserNamespaces { setting, fix });
            }
        }
        let mut cmd = Command::new(binary);
        cmd.args(args(share, &socket, uid, gid))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // SAFETY: prctl in the forked child only sets its parent-death
        // signal: the daemon dies with the runner, like the monitor.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| VirtiofsdError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VirtiofsdError::Exited {
                    status,
                    host: share.host.clone(),
                    log,
                });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VirtiofsdError::Timeout { socket });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(pid = child.id(), tag = %share.tag, host = %share.host.display(), "virtiofsd started");
        Ok(Virtiofsd {
            child,
            share: share.clone(),
            socket,
            log,
        })
    }

    /// Its vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The share it serves.
    pub fn share(&self) -> &Share {
        &self.share
    }

    /// A line saying how it ended, once it has; `None` while it runs.
    pub fn ended(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        Some(format!(
            "virtiofsd serving {} exited ({status}); see {}",
            self.share.host.display(),
            self.log.display()
        ))
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(read_only: bool) -> Share {
        Share {
            tag: "share0".into(),
            host: "/home/alice".into(),
            guest: "/home/alice".into(),
            read_only,
        }
    }

    fn joined(args: &[String]) -> String {
        args.join(" ")
    }

    #[test]
    fn root_gets_no_user_namespace_and_owns_every_file_a_distro_makes() {
        let args = joined(&args(&share(false), Path::new("/r/share0.sock"), 0, 0));

        assert!(args
            .contains("--socket-path /r/share0.sock --shared-dir /home/alice --sandbox namespace"));
        assert!(!args.contains("--uid-map"));
        assert!(args.contains("--translate-uid squash-guest:0:0:4294967295"));
        assert!(args.contains("--translate-uid host:0:1000:1"));
        assert!(args.contains("--translate-gid squash-guest:0:0:4294967295"));
        assert!(!args.contains("--readonly"));
    }

    #[test]
    fn an_ordinary_user_is_root_of_the_daemons_user_namespace() {
        let args = joined(&args(&share(true), Path::new("/r/s.sock"), 1001, 1002));

        assert!(args.contains("--uid-map :0:1001:1: --gid-map :0:1002:1:"));
        assert!(args.contains("--translate-uid squash-guest:0:0:4294967295"));
        assert!(args.contains("--translate-gid host:0:1000:1"));
        assert!(args.contains("--readonly"));
    }

    #[test]
    fn disabled_user_namespaces_are_named_with_the_setting_that_enables_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("kernel")).unwrap();
        std::fs::create_dir_all(dir.path().join("user")).unwrap();
        std::fs::write(dir.path().join("user/max_user_namespaces"), "15000\n").unwrap();
        assert_eq!(user_namespaces_disabled(dir.path()), None);

        std::fs::write(dir.path().join("kernel/unprivileged_userns_clone"), "0\n").unwrap();

        assert_eq!(
            user_namespaces_disabled(dir.path()),
            Some((
                "kernel.unprivileged_userns_clone = 0".into(),
                "kernel.unprivileged_userns_clone=1".into()
            ))
        );
    }

    #[test]
    fn a_configured_binary_wins() {
        assert_eq!(
            find_binary(Some(Path::new("/opt/virtiofsd"))),
            Some(PathBuf::from("/opt/virtiofsd"))
        );
    }
}
