//! cgroup v2 groups for distros: `<cgroup root>/distroctl/<name>`.
//!
//! When the configured root is not a cgroup2 mount, distros start without a
//! group and their limits are reported as unavailable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use protocol::Limits;
use thiserror::Error;

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Period used for `cpu.max`, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Failure of a cgroup operation.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// Writing a control file or creating a group failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The `distroctl` subtree of a cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroups {
    parent: PathBuf,
}

/// The group of one distro.
#[derive(Debug, Clone)]
pub struct DistroCgroup {
    /// Its directory.
    pub path: PathBuf,
    /// Whether every requested limit could be set.
    pub limits_applied: bool,
}

impl Cgroups {
    /// Uses `root` when it is a cgroup2 mount; creates `root/distroctl` and
    /// delegates the memory, cpu, pids and io controllers to it where possible.
    pub fn detect(root: &Path) -> Option<Cgroups> {
        let stat = nix::sys::statfs::statfs(root).ok()?;
        if stat.filesystem_type().0 != CGROUP2_SUPER_MAGIC {
            tracing::info!(root = %root.display(), "no cgroup2 mount; distros run without resource limits");
            return None;
        }
        let parent = root.join("distroctl");
        if let Err(e) = fs::create_dir_all(&parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "cannot create cgroup; distros run without resource limits");
            return None;
        }
        enable_controllers(root);
        enable_controllers(&parent);
        Some(Cgroups { parent })
    }

    /// The group of `name` when it exists (a distro left running by an
    /// earlier agent, or what is left of one).
    pub fn existing(&self, name: &str) -> Option<DistroCgroup> {
        let path = self.parent.join(name);
        path.is_dir().then_some(DistroCgroup {
            path,
            limits_applied: true,
        })
    }

    /// Creates (or reuses) the group for `name`, installs the device filter
    /// and applies `limits`.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<DistroCgroup, CgroupError> {
        let path = self.parent.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "create cgroup",
                    path,
                    source,
                })
            }
        }
        // Without the filter root in the distro could read the VM's disks;
        // a kernel without cgroup BPF cannot have it, so say so loudly.
        if let Err(e) = crate::device_filter::attach(&path) {
            tracing::warn!(distro = name, error = %crate::error_chain(&e), "distro runs without a device filter");
        }
        let applied = self.apply_limits(name, limits);
        Ok(DistroCgroup {
            path,
            limits_applied: applied,
        })
    }

    /// Writes `limits` to the group of `name` (a running distro's: they take
    /// effect at once); false when a requested limit could not be set.
    pub fn apply_limits(&self, name: &str, limits: &Limits) -> bool {
        let path = self.parent.join(name);
        let mut applied = true;
        let settings = [
            ("memory.max", limits.memory_bytes.map(|b| b.to_string())),
            (
                "cpu.max",
                limits
                    .cpu_millis
                    .map(|m| format!("{} {CPU_PERIOD_US}", u64::from(m) * CPU_PERIOD_US / 1000)),
            ),
            ("pids.max", limits.pids.map(|p| p.to_string())),
        ];
        for (file, value) in settings {
            // Unset limits are written as "max" so a removed limit is lifted.
            let value = value.unwrap_or_else(|| "max".to_string());
            let requested = value != "max";
            if let Err(e) = fs::write(path.join(file), &value) {
                if requested {
                    tracing::warn!(distro = name, file, error = %e, "limit not applied");
                    applied = false;
                }
            }
        }
        applied
    }
}

impl DistroCgroup {
    /// Kills every process in the group (`cgroup.kill`, Linux 5.14+).
    pub fn kill_all(&self) {
        if let Err(e) = fs::write(self.path.join("cgroup.kill"), "1") {
            tracing::debug!(error = %e, "cgroup.kill unavailable");
        }
    }

    /// Number of processes in the group and its children.
    pub fn process_count(&self) -> u32 {
        if let Some(n) = read_u64(&self.path.join("pids.current")) {
            return n as u32;
        }
        let mut count = 0;
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                count += procs.lines().count() as u32;
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        count
    }

    /// Memory charged to the group, when the memory controller is on.
    pub fn memory_bytes(&self) -> Option<u64> {
        read_u64(&self.path.join("memory.current"))
    }

    /// Removes the group, and any child groups its processes made, once
    /// its processes are gone (waits up to a second after a kill).
    pub fn remove(&self) {
        for _ in 0..100 {
            if self.process_count() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        remove_tree(&self.path);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove cgroup");
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn enable_controllers(dir: &Path) {
    let Ok(available) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    // io only for its `io.stat` (no io limits are set).
    for c in ["memory", "cpu", "pids", "io"] {
        if available.split_whitespace().any(|a| a == c) {
            if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                tracing::debug!(dir = %dir.display(), controller = c, error = %e, "controller not delegated");
            }
        }
    }
}
