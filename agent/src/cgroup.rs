//! cgroup v2 groups for distros: `<cgroup root>/distroctl/<name>` holds the
//! device filter and the limits, and is where statistics are read; its
//! child `distro` is the root of the distro's cgroup namespace and of its
//! `/sys/fs/cgroup`. Root in the distro can open only that child, so it can
//! neither detach the filter nor raise the limits, and a runtime inside the
//! distro can still make groups and filters of its own below it.
//!
//! No process stays in that root: PID 1 moves to `init.scope` (where the
//! distro's systemd puts itself anyway) and every `exec` runs in
//! `distroctl-exec`. cgroup v2 lets a group hand controllers to its
//! children only while it holds no processes itself, so this is what lets
//! systemd, Docker and Podman in the distro delegate controllers from the
//! root as they do on a machine of their own.
//!
//! When the configured root is not a cgroup2 mount, distros start without a
//! group, without limits and without a device filter; the log says so.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use protocol::Limits;
use thiserror::Error;

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The child group at the root of a distro's cgroup namespace.
const PROCESSES_GROUP: &str = "distro";

/// Where the distro's PID 1 runs, below [`PROCESSES_GROUP`].
pub const INIT_GROUP: &str = "init.scope";

/// Where every `exec` into the distro runs, below [`PROCESSES_GROUP`].
pub const EXEC_GROUP: &str = "distroctl-exec";

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
    /// The device filter could not be installed; the distro must not run
    /// without it.
    #[error("distros do not start without a device filter")]
    DeviceFilter(#[source] crate::device_filter::DeviceFilterError),
}

/// The `distroctl` subtree of a cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroups {
    parent: PathBuf,
}

/// The group of one distro.
#[derive(Debug, Clone)]
pub struct DistroCgroup {
    /// Its directory: filter, limits and statistics (its processes run in
    /// [`DistroCgroup::processes`]).
    pub path: PathBuf,
    /// Whether every requested limit could be set.
    pub limits_applied: bool,
}

impl Cgroups {
    /// Uses `root` when it is a cgroup2 mount; creates `root/distroctl` and
    /// delegates every controller to it where possible.
    pub fn detect(root: &Path) -> Option<Cgroups> {
        let stat = nix::sys::statfs::statfs(root).ok()?;
        if stat.filesystem_type().0 != CGROUP2_SUPER_MAGIC {
            tracing::warn!(
                root = %root.display(),
                "no cgroup2 mount: distros run without resource limits and without a device filter \
                 (root in a distro can open the VM's disks)"
            );
            return None;
        }
        let parent = root.join("distroctl");
        if let Err(e) = fs::create_dir_all(&parent) {
            tracing::warn!(
                dir = %parent.display(),
                error = %e,
                "cannot create cgroup: distros run without resource limits and without a device filter \
                 (root in a distro can open the VM's disks)"
            );
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

    /// Creates the group for `name` with its device filter and `limits`,
    /// and the child its processes will run in. A group left behind by an
    /// earlier run is removed first so filters do not pile up.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<DistroCgroup, CgroupError> {
        let path = self.parent.join(name);
        if path.is_dir() {
            remove_tree(&path);
        }
        make_group(&path)?;
        // Before any process enters: without the filter root in the distro
        // could open the VM's disks, so a failure stops the start.
        if let Err(e) = crate::device_filter::attach(&path) {
            remove_tree(&path);
            return Err(CgroupError::DeviceFilter(e));
        }
        enable_controllers(&path);
        make_group(&path.join(PROCESSES_GROUP))?;
        make_group(&path.join(PROCESSES_GROUP).join(INIT_GROUP))?;
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

fn make_group(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io {
            action: "create cgroup",
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl DistroCgroup {
    /// The root of the distro's cgroup namespace: PID 1 enters it to make
    /// the namespace, then leaves for [`DistroCgroup::init_group`].
    pub fn processes(&self) -> PathBuf {
        self.path.join(PROCESSES_GROUP)
    }

    /// The group of the distro's PID 1.
    pub fn init_group(&self) -> PathBuf {
        self.processes().join(INIT_GROUP)
    }

    /// The group every `exec` joins, made again when root in the distro
    /// removed it.
    pub fn exec_group(&self) -> Result<PathBuf, CgroupError> {
        let path = self.processes().join(EXEC_GROUP);
        make_group(&path)?;
        Ok(path)
    }

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
    // Every controller the VM has: memory, cpu and pids carry the limits,
    // io its statistics, and the rest (cpuset, hugetlb, ...) are for the
    // container runtimes and the systemd inside a distro.
    for c in available.split_whitespace() {
        if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            tracing::debug!(dir = %dir.display(), controller = c, error = %e, "controller not delegated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_fails_and_leaves_no_group_when_the_device_filter_cannot_be_attached() {
        // A plain directory is no cgroup: the kernel refuses the filter
        // there (and without root it refuses to load the program at all).
        let dir = tempfile::tempdir().unwrap();
        let cgroups = Cgroups {
            parent: dir.path().to_path_buf(),
        };

        let created = cgroups.create("d", &Limits::default());

        let err = created.expect_err("a distro group without a device filter");
        assert!(matches!(err, CgroupError::DeviceFilter(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "distros do not start without a device filter"
        );
        assert!(!dir.path().join("d").exists());
    }

    #[test]
    fn processes_run_in_a_child_of_the_filtered_group() {
        let group = DistroCgroup {
            path: PathBuf::from("/sys/fs/cgroup/distroctl/d"),
            limits_applied: true,
        };

        assert_eq!(
            group.processes(),
            Path::new("/sys/fs/cgroup/distroctl/d/distro")
        );
        assert_eq!(
            group.init_group(),
            Path::new("/sys/fs/cgroup/distroctl/d/distro/init.scope")
        );
    }
}
