//! Files of a running utility VM in the runtime directory, and the lock that
//! guarantees one VM per data disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Paths of the VM's runtime files.
#[derive(Debug, Clone)]
pub struct VmPaths {
    /// The runtime directory (mode 0700).
    pub dir: PathBuf,
}

impl VmPaths {
    /// Paths under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        VmPaths { dir }
    }

    /// Creates the directory, private to the user (an existing one is
    /// tightened to 0700).
    pub fn create(&self) -> io::Result<()> {
        crate::paths::private_dir(&self.dir)
    }

    /// Held (exclusive flock) by the runner for the VM's whole life.
    pub fn vm_lock(&self) -> PathBuf {
        self.dir.join("vm.lock")
    }

    /// Hybrid vsock socket: `CONNECT <port>\n` reaches a guest port.
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// vhost-user socket between QEMU and our vsock backend.
    pub fn vhost_socket(&self) -> PathBuf {
        self.dir.join("vhost-vsock.sock")
    }

    /// Facts about the running VM.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("vm.json")
    }

    /// What the VM monitor publishes about itself while it runs
    /// (`{"memory_returned_bytes": N}`); only `distroctl-vmm` writes it.
    pub fn monitor_stats_file(&self) -> PathBuf {
        self.dir.join("monitor-stats.json")
    }

    /// Removes the sockets and `vm.json` of a VM that is gone (or, before
    /// a boot, of one that died without cleaning up).
    pub fn remove_runtime_files(&self) {
        for file in [
            self.vsock_socket(),
            self.vhost_socket(),
            self.state_file(),
            self.monitor_stats_file(),
        ] {
            let _ = std::fs::remove_file(file);
        }
    }

    /// The runner's own log.
    pub fn runner_log(&self) -> PathBuf {
        self.dir.join("runner.log")
    }
}

/// What a running VM reports about itself (`vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmState {
    /// PID of the runner process.
    pub runner_pid: u32,
    /// PID of the VM monitor (QEMU or `distroctl-vmm`).
    #[serde(alias = "qemu_pid")]
    pub vmm_pid: u32,
    /// `qemu` or `kvm` (our own VMM).
    pub backend: String,
    /// Why this backend and accelerator.
    pub reason: String,
    /// Unix time the VM started.
    pub started_at: u64,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel release.
    pub kernel_version: String,
    /// Serial console log.
    pub console_log: PathBuf,
    /// Host directories shared with the VM, and what became of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareState>,
}

/// A host share of the running VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareState {
    /// What is shared and where.
    #[serde(flatten)]
    pub share: super::shares::Share,
    /// Why it is not served (its daemon did not start or has died), in
    /// one line for the user; `None` while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl VmState {
    /// Writes `vm.json` atomically.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        io::Write::write_all(
            &mut crate::paths::create_private(&tmp, false)?,
            &serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }

    /// Reads `vm.json`, if present and valid.
    pub fn read(path: &Path) -> Option<VmState> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Opens (creating) a lock file.
fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Takes the exclusive lock on `path` without waiting; `None` when another
/// process holds it.
pub fn try_lock(path: &Path) -> io::Result<Option<Flock<File>>> {
    match Flock::lock(open_lock(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// True while a runner holds the VM lock.
pub fn is_running(paths: &VmPaths) -> bool {
    matches!(try_lock(&paths.vm_lock()), Ok(None))
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_while_the_first_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(dir.path().to_path_buf());

        let held = try_lock(&paths.vm_lock()).unwrap();
        assert!(held.is_some());
        assert!(is_running(&paths));
        drop(held);
        assert!(!is_running(&paths));
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = VmState {
            runner_pid: 1,
            vmm_pid: 2,
            backend: "qemu".into(),
            reason: "r".into(),
            started_at: 3,
            memory_mib: 4,
            cpus: 5,
            kernel_version: "6".into(),
            console_log: "/c".into(),
            shares: vec![ShareState {
                share: super::super::shares::Share {
                    tag: "share0".into(),
                    host: "/home/a".into(),
                    guest: "/home/a".into(),
                    read_only: false,
                },
                failed: Some("virtiofsd exited".into()),
            }],
        };

        state.write(&dir.path().join("vm.json")).unwrap();

        assert_eq!(VmState::read(&dir.path().join("vm.json")), Some(state));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("l");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();

        assert_eq!(log_tail(&log, 2), "c\nd");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}
