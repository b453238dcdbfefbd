//! Distros outlive the agent: when the agent dies (killed by the OOM
//! killer, a crash) and init starts it again, the distros keep running —
//! their PID 1s, cgroups and namespaces do not depend on the agent — and
//! the new agent takes them back instead of killing them.
//!
//! For that each running distro has a record beside its settings
//! (`DATA/distros/<name>/running.json`): its PID 1, that process's start
//! time and the kernel's boot id, which together name one process of one
//! boot (a PID alone could have been reused), plus its network slot. The
//! new agent cannot `wait` for a process it did not fork, so it watches the
//! PID 1 through a pidfd, which becomes readable when the process exits.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What the agent remembers of a running distro.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningRecord {
    /// Host PID of its PID 1.
    pub pid1: i32,
    /// That process's start time (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    /// Its isolated network's slot, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_slot: Option<u8>,
    /// It runs in a cgroup of its own.
    #[serde(default)]
    pub cgroup: bool,
}

fn record_path(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name("running.json")
}

/// Start time of process `pid`, from `/proc/PID/stat`.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last `)`. After it come state (field 3) … starttime (field 22).
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

impl RunningRecord {
    /// The record of the distro whose PID 1 (just started) is `pid1`.
    pub fn of(pid1: i32, network_slot: Option<u8>, cgroup: bool) -> Option<RunningRecord> {
        Some(RunningRecord {
            pid1,
            start_time: start_time(pid1)?,
            boot_id: boot_id()?,
            network_slot,
            cgroup,
        })
    }

    /// Stores the record of the distro whose root file system is `rootfs`
    /// (written whole, then renamed into place).
    pub fn write(&self, rootfs: &Path) -> io::Result<()> {
        let path = record_path(rootfs);
        let tmp = path.with_file_name(".running.json.tmp");
        fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        fs::rename(&tmp, &path)
    }

    /// The stored record, if any and readable.
    pub fn read(rootfs: &Path) -> Option<RunningRecord> {
        let bytes = fs::read(record_path(rootfs)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forgets the record (the distro stopped).
    pub fn remove(rootfs: &Path) {
        let path = record_path(rootfs);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the running record");
            }
        }
    }

    /// True when the recorded PID 1 still runs: same boot, same process.
    pub fn is_alive(&self) -> bool {
        boot_id().as_deref() == Some(self.boot_id.as_str())
            && start_time(self.pid1) == Some(self.start_time)
    }
}

/// A process this agent did not start, watched until it exits.
#[derive(Debug)]
pub struct ForeignProcess {
    pidfd: AsyncFd<OwnedFd>,
}

impl ForeignProcess {
    /// Watches `pid` (`pidfd_open`, Linux 5.3+).
    pub fn watch(pid: i32) -> io::Result<ForeignProcess> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just returned and belongs to nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns `fd` from here on; an OwnedFd always
        // reports the same descriptor.
        let pidfd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(ForeignProcess { pidfd })
    }

    /// Waits until the process has exited.
    pub async fn exited(&self) {
        // A pidfd only ever becomes readable once, at exit; an error here
        // means the descriptor is unusable, which is as good as gone.
        let _ = self.pidfd.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_names_a_live_process() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let me = std::process::id() as i32;

        let record = RunningRecord::of(me, Some(3), true).unwrap();
        record.write(&rootfs).unwrap();
        let read = RunningRecord::read(&rootfs);
        RunningRecord::remove(&rootfs);

        assert_eq!(read.as_ref(), Some(&record));
        assert!(record.is_alive());
        assert!(RunningRecord::read(&rootfs).is_none());
    }

    #[test]
    fn record_of_a_reused_pid_is_not_alive() {
        let me = std::process::id() as i32;
        let mut record = RunningRecord::of(me, None, false).unwrap();

        record.start_time += 1;

        assert!(!record.is_alive());
    }

    #[tokio::test]
    async fn foreign_process_exit_is_seen() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .unwrap();
        let watched = ForeignProcess::watch(child.id() as i32).unwrap();

        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), watched.exited()).await;
        let _ = child.wait();

        assert!(seen.is_ok());
    }
}
