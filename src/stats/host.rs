//! What the host sees of the utility VM: the VM monitor's resident memory,
//! the memory it has returned (our VMM reports it), and the data disk's
//! allocated and apparent size.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vm::state::{VmPaths, VmState};

/// Most bytes read from `/proc/PID/status` or `monitor-stats.json`.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// A monitor stats file older than the VM by more than this is left from
/// an earlier VM (`started_at` is whole seconds, taken after the spawn).
const STALE_SLACK_SECS: u64 = 5;

/// The host side of the running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmHostStats {
    /// `qemu` or `kvm`.
    pub backend: String,
    /// PID of the VM monitor.
    pub monitor_pid: u32,
    /// Its resident memory (`VmRSS`), guest RAM it has touched included.
    pub monitor_rss_bytes: Option<u64>,
    /// Guest memory given back to the host so far (free page reporting);
    /// `None` when the monitor does not report it (QEMU).
    pub memory_returned_bytes: Option<u64>,
    /// Bytes of the data disk image that are allocated on the host.
    pub data_disk_allocated_bytes: Option<u64>,
    /// Its apparent size (what the guest sees).
    pub data_disk_apparent_bytes: Option<u64>,
}

/// What our VMM writes to `monitor-stats.json`.
#[derive(Debug, Deserialize)]
struct MonitorStats {
    memory_returned_bytes: Option<u64>,
}

/// Reads the host side of the VM described by `state`.
pub fn read(paths: &VmPaths, state: &VmState, data_disk: &Path) -> VmHostStats {
    let status = read_bounded(Path::new(&format!("/proc/{}/status", state.vmm_pid)));
    let disk = std::fs::metadata(data_disk).ok();
    VmHostStats {
        backend: state.backend.clone(),
        monitor_pid: state.vmm_pid,
        monitor_rss_bytes: status.and_then(|s| parse_vm_rss(&s)),
        memory_returned_bytes: memory_returned(&paths.monitor_stats_file(), state.started_at),
        data_disk_allocated_bytes: disk.as_ref().map(|m| m.blocks().saturating_mul(512)),
        data_disk_apparent_bytes: disk.as_ref().map(|m| m.len()),
    }
}

/// `VmRSS` of a `/proc/PID/status` in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = rest.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// `memory_returned_bytes` of a monitor stats file written since the VM
/// started.
fn memory_returned(path: &Path, vm_started_at: u64) -> Option<u64> {
    let written = std::fs::metadata(path).ok()?.mtime();
    if u64::try_from(written).unwrap_or(0) + STALE_SLACK_SECS < vm_started_at {
        return None;
    }
    parse_monitor_stats(&read_bounded(path)?)
}

/// `memory_returned_bytes` from the text of `monitor-stats.json`.
pub fn parse_monitor_stats(text: &str) -> Option<u64> {
    serde_json::from_str::<MonitorStats>(text)
        .ok()?
        .memory_returned_bytes
}

fn read_bounded(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes_and_odd_status_gives_none() {
        let status =
            "Name:\tqemu-system-x86\nVmPeak:\t 2000 kB\nVmRSS:\t  123456 kB\nThreads:\t5\n";

        assert_eq!(parse_vm_rss(status), Some(123456 * 1024));
        assert_eq!(
            parse_vm_rss("Name:\tkthreadd\n"),
            None,
            "kernel threads have none"
        );
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tx kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: 99999999999999999999 kB\n"), None);
    }

    #[test]
    fn monitor_stats_give_returned_memory_or_nothing() {
        assert_eq!(
            parse_monitor_stats(r#"{"memory_returned_bytes": 4096, "later_field": 1}"#),
            Some(4096)
        );
        assert_eq!(parse_monitor_stats("{}"), None);
        assert_eq!(
            parse_monitor_stats(r#"{"memory_returned_bytes": -1}"#),
            None
        );
        assert_eq!(parse_monitor_stats("not json"), None);
        assert_eq!(parse_monitor_stats(""), None);
    }

    #[test]
    fn monitor_stats_left_by_an_earlier_vm_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("monitor-stats.json");
        std::fs::write(&file, r#"{"memory_returned_bytes": 8192}"#).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();

        assert_eq!(memory_returned(&file, now), Some(8192));
        assert_eq!(memory_returned(&file, now + 3600), None);
        assert_eq!(memory_returned(&dir.path().join("missing"), now), None);
    }

    #[test]
    fn host_stats_of_this_process_and_a_sparse_disk_are_sane() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("data.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let state = VmState {
            runner_pid: std::process::id(),
            vmm_pid: std::process::id(),
            backend: "qemu".into(),
            reason: "test".into(),
            started_at: 0,
            memory_mib: 1024,
            cpus: 1,
            kernel_version: "k".into(),
            console_log: "/c".into(),
            shares: Vec::new(),
        };

        let stats = read(&VmPaths::new(dir.path().to_path_buf()), &state, &disk);

        assert!(stats.monitor_rss_bytes.is_some_and(|r| r > 0), "{stats:?}");
        assert_eq!(stats.memory_returned_bytes, None, "no stats file");
        assert_eq!(stats.data_disk_apparent_bytes, Some(1 << 30));
        assert!(
            stats.data_disk_allocated_bytes.unwrap() < 1 << 20,
            "sparse: {stats:?}"
        );
    }
}
