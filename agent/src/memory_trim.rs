//! Trimming the guest's page cache so the host gets the memory back.
//!
//! Guest memory that holds page cache is in use as far as free page
//! reporting can tell, so a VM that once read a few gigabytes keeps that
//! much host memory until the guest itself needs it. When the host's
//! manager sees the VM idle it asks for a trim (`trim_memory`):
//!
//! 1. `vm.drop_caches = 1` drops clean page cache guest-wide: every
//!    distro's group and the agent's own (imports, exports). Dirty and
//!    mapped pages stay, so nothing is lost and running programs keep their
//!    code; the next read of a dropped file comes from the data disk.
//!    (A distro group's `memory.reclaim` would reach only that group and,
//!    with no swap in the VM, free the same clean file pages.)
//! 2. `vm.compact_memory = 1` moves what is left together, so the freed
//!    pages form the 2 MiB blocks the kernel reports (it reports nothing
//!    smaller).

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A trim that could not be done.
#[derive(Debug, Error)]
pub enum TrimError {
    /// Writing a sysctl failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The sysctl file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What a trim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// `Cached` in `/proc/meminfo` before, in bytes.
    pub cache_before: u64,
    /// And after.
    pub cache_after: u64,
}

/// Drops clean page cache and compacts memory, under `proc` (`/proc` in
/// the VM). Blocking: compaction may take a moment.
pub fn trim(proc: &Path) -> Result<Trimmed, TrimError> {
    let cache_before = cached_bytes(proc);
    write(&proc.join("sys/vm/drop_caches"), "1")?;
    // A kernel without compaction still gives back whole free blocks.
    if let Err(e) = write(&proc.join("sys/vm/compact_memory"), "1") {
        tracing::debug!(error = %crate::error_chain(&e), "memory not compacted");
    }
    let cache_after = cached_bytes(proc);
    Ok(Trimmed {
        cache_before,
        cache_after,
    })
}

fn write(path: &Path, value: &str) -> Result<(), TrimError> {
    std::fs::write(path, value).map_err(|source| TrimError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `Cached` from `meminfo`, 0 when unreadable.
fn cached_bytes(proc: &Path) -> u64 {
    std::fs::read_to_string(proc.join("meminfo"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Cached:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/proc` with the two sysctls and a meminfo.
    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/vm")).unwrap();
        std::fs::write(dir.path().join("sys/vm/drop_caches"), "").unwrap();
        std::fs::write(dir.path().join("sys/vm/compact_memory"), "").unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:        1000 kB\nCached:           300 kB\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn trim_drops_clean_caches_then_compacts_and_reports_the_cache() {
        let proc = fake_proc();

        let trimmed = trim(proc.path()).unwrap();

        let read = |name: &str| std::fs::read_to_string(proc.path().join(name)).unwrap();
        assert_eq!(read("sys/vm/drop_caches"), "1");
        assert_eq!(read("sys/vm/compact_memory"), "1");
        assert_eq!(trimmed.cache_before, 300 * 1024);
    }

    #[test]
    fn trim_without_drop_caches_names_the_file() {
        let proc = fake_proc();
        std::fs::remove_dir_all(proc.path().join("sys")).unwrap();

        let err = trim(proc.path()).unwrap_err();

        assert!(err.to_string().contains("drop_caches"), "{err}");
    }

    #[test]
    fn trim_without_compaction_still_succeeds() {
        let proc = fake_proc();
        std::fs::remove_file(proc.path().join("sys/vm/compact_memory")).unwrap();
        std::fs::create_dir(proc.path().join("sys/vm/compact_memory")).unwrap();

        assert!(trim(proc.path()).is_ok());
    }
}
