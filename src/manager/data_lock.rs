//! One VM per data disk. The manager's lock in the runtime directory keeps
//! one manager per login session; two sessions of one user (same `HOME`,
//! another `XDG_RUNTIME_DIR`) share the data disk, so the manager also
//! holds a lock next to it, naming its PID and runtime directory. A second
//! session's manager is refused with that name before it touches any of
//! the running VM's files.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;
use thiserror::Error;

use crate::vm::state::{self, VmPaths};

/// The data disk is used by another session.
#[derive(Debug, Error)]
#[error(
    "the utility VM for {} is already run by another session ({}); use distroctl there, or run `distroctl shutdown` there first",
    data.display(),
    self.who()
)]
pub struct OtherSession {
    /// The data directory.
    pub data: PathBuf,
    /// The other manager's PID (`None` when it is gone but its VM runs).
    pub pid: Option<u32>,
    /// The other session's runtime directory.
    pub runtime: PathBuf,
}

impl OtherSession {
    fn who(&self) -> String {
        match self.pid {
            Some(pid) => format!(
                "manager PID {pid}, runtime directory {}",
                self.runtime.display()
            ),
            None => format!(
                "its VM still runs from the runtime directory {}",
                self.runtime.display()
            ),
        }
    }
}

/// The lock file next to the data disk.
pub fn path() -> PathBuf {
    crate::paths::data_dir().join("manager.lock")
}

/// Who holds (or last held) the data lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pid: u32,
    runtime: PathBuf,
}

fn read_holder(lock: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(lock).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let runtime = PathBuf::from(lines.next()?);
    Some(Holder { pid, runtime })
}

/// Takes the data lock for the manager of `paths`, writing its PID and
/// runtime directory into it. Refused while another session's manager
/// holds it, or while a VM that session started still runs.
pub fn acquire(paths: &VmPaths) -> Result<Result<Flock<File>, OtherSession>, io::Error> {
    let data = crate::paths::data_dir();
    crate::paths::private_dir(&data)?;
    let lock_path = path();
    let Some(lock) = state::try_lock(&lock_path)? else {
        let holder = read_holder(&lock_path);
        return Ok(Err(OtherSession {
            data,
            pid: holder.as_ref().map(|h| h.pid),
            runtime: holder.map_or_else(|| PathBuf::from("unknown"), |h| h.runtime),
        }));
    };
    // A manager of another session may be gone while its VM runs on.
    if let Some(previous) = read_holder(&lock_path) {
        if previous.runtime != paths.dir
            && state::is_running(&VmPaths::new(previous.runtime.clone()))
        {
            return Ok(Err(OtherSession {
                data,
                pid: None,
                runtime: previous.runtime,
            }));
        }
    }
    let me = format!("{}\n{}\n", std::process::id(), paths.dir.display());
    std::fs::write(&lock_path, me)?;
    Ok(Ok(lock))
}

/// For a command about to start a manager: the other session that holds
/// the data disk, if one does. A manager of this session that is exiting
/// still holds it for a moment; that is not another session.
pub fn other_session(paths: &VmPaths) -> Option<OtherSession> {
    let lock_path = path();
    let holder = read_holder(&lock_path)?;
    if holder.runtime == paths.dir {
        return None;
    }
    let held = matches!(state::try_lock(&lock_path), Ok(None));
    let vm_runs = state::is_running(&VmPaths::new(holder.runtime.clone()));
    (held || vm_runs).then(|| OtherSession {
        data: crate::paths::data_dir(),
        pid: held.then_some(holder.pid),
        runtime: holder.runtime,
    })
}

/// Files made before everything was private are tightened to 0600.
pub fn tighten_existing_files() {
    let data = crate::paths::data_dir();
    for name in ["data.img", "console.log", "console.log.old", "manager.log"] {
        if let Err(e) = crate::paths::private_file(&data.join(name)) {
            tracing::warn!(file = name, error = %e, "cannot make the file private");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_is_read_from_pid_and_runtime_lines() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("manager.lock");
        std::fs::write(&lock, "1234\n/run/user/1000/distroctl\n").unwrap();

        assert_eq!(
            read_holder(&lock),
            Some(Holder {
                pid: 1234,
                runtime: PathBuf::from("/run/user/1000/distroctl")
            })
        );
        std::fs::write(&lock, "garbage").unwrap();
        assert_eq!(read_holder(&lock), None);
    }
}
