//! The per-user manager: a daemon that owns the utility VM ([`server`]),
//! the CLI's side of talking to it ([`client`]), and the messages between
//! them ([`wire`]).

pub mod client;
pub mod data_lock;
pub mod reclaim;
pub mod server;
pub mod wire;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::vm::state::VmPaths;

/// Longest message line either side accepts.
const MAX_LINE: usize = 64 * 1024;

/// The manager's socket in the runtime directory (mode 0600).
pub fn manager_socket(paths: &VmPaths) -> PathBuf {
    paths.dir.join("manager.sock")
}

/// Held by the running manager: one per user.
pub fn manager_lock(paths: &VmPaths) -> PathBuf {
    paths.dir.join("manager.lock")
}

/// The manager's log (kept across restarts, shown by `distroctl logs`).
pub fn manager_log() -> PathBuf {
    crate::paths::data_dir().join("manager.log")
}

/// A runtime file that belongs to another user.
#[derive(Debug, Error)]
#[error("{} belongs to uid {owner}, not to you (uid {me}); refusing to use it: remove it, or set XDG_RUNTIME_DIR to a directory of your own", path.display())]
pub struct OwnerError {
    /// The file.
    pub path: PathBuf,
    /// Its owner.
    pub owner: u32,
    /// This user.
    pub me: u32,
}

/// Refuses a runtime directory or socket owned by anyone but this user,
/// so a command never talks to (or trusts) someone else's manager.
pub fn check_owner(path: &Path) -> Result<(), OwnerError> {
    let me = nix::unistd::geteuid().as_raw();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.uid() != me => Err(OwnerError {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        }),
        _ => Ok(()),
    }
}
