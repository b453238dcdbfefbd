//! Memory a distro frees goes back to the host: the utility VM's balloon
//! device reports free guest pages and the VM monitor drops them; page
//! cache goes back too once the VM is idle (`memory_reclaim = "idle"`).
//! One VM for both (each boot under emulation costs a minute).

mod common;

use std::time::{Duration, Instant};

use common::vm::{test_backend, TestVm};
use common::{debian_rootfs, Cli};

const MIB: u64 = 1 << 20;

/// Resident memory of `pid`, from `VmRSS` in `/proc/PID/status`.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Waits up to `within` for `pid`'s RSS to fall to `peak - margin` or
/// below; returns the last RSS seen.
fn wait_for_fall(pid: i32, peak: u64, margin: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut now = rss(pid);
    while now + margin > peak && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        now = rss(pid);
    }
    now
}

/// `memory_returned_bytes` in our VMM's stats file.
fn returned_bytes(vm: &TestVm) -> u64 {
    let text = std::fs::read_to_string(vm.runtime_dir().join("monitor-stats.json"))
        .expect("distroctl-vmm writes monitor-stats.json");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["memory_returned_bytes"].as_u64().unwrap()
}

#[test]
fn memory_freed_in_a_distro_and_idle_page_cache_go_back_to_the_host() {
    let vm = TestVm::new("memory = \"2G\"\nmemory_reclaim = \"idle\"\n");
    vm.ok(&["import", "mem", debian_rootfs().to_str().unwrap()]);
    let pid = vm.qemu_pid().expect("VM monitor pid in vm.json");
    let before = rss(pid);

    // 1 GiB held in two tmpfs files (each tmpfs may hold half the 2 GiB
    // guest), so the pages stay in use while the host side is measured.
    vm.sh(
        "mem",
        "head -c 512M /dev/zero > /dev/shm/fill && head -c 512M /dev/zero > /tmp/fill",
    );
    let peak = rss(pid);
    vm.sh("mem", "rm /dev/shm/fill /tmp/fill");
    // The guest reports only free blocks of at least pageblock order
    // (2 MiB), about 2 s after they were freed, in batches; under
    // emulation each batch takes a while longer, so allow a minute.
    let freed = wait_for_fall(pid, peak, 512 * MIB, Duration::from_secs(60));

    assert!(
        peak >= before + 768 * MIB,
        "filling 1 GiB raised the VM monitor's RSS only from {} to {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(
        freed + 512 * MIB <= peak,
        "the VM monitor's RSS went from {} MiB at the peak to {} MiB a minute after the files were removed",
        peak / MIB,
        freed / MIB
    );
    if test_backend() == "kvm" {
        // Written at most once a second.
        std::thread::sleep(Duration::from_millis(1500));
        let returned = returned_bytes(&vm);
        assert!(
            returned >= 512 * MIB,
            "monitor-stats.json says only {} MiB were returned",
            returned / MIB
        );
    }

    // 768 MiB of page cache: a file written to the data disk and read
    // back. Nothing frees it but the idle trim.
    let cached = vm.sh(
        "mem",
        "head -c 768M /dev/zero > /big && sync && cat /big > /dev/null && \
         awk '/^Cached:/ {print int($2 / 1024)}' /proc/meminfo",
    );
    let cached_mib: u64 = cached.trim().parse().unwrap();
    let cache_peak = rss(pid);
    // 15 s quiet, the trim, then the reports.
    let trimmed = wait_for_fall(pid, cache_peak, 384 * MIB, Duration::from_secs(90));

    assert!(cached_mib >= 640, "the guest caches only {cached_mib} MiB");
    assert!(
        trimmed + 384 * MIB <= cache_peak,
        "the VM monitor's RSS went from {} MiB with {cached_mib} MiB of guest page cache to only {} MiB after 90 s idle",
        cache_peak / MIB,
        trimmed / MIB
    );
    let after = vm.sh(
        "mem",
        "awk '/^Cached:/ {print int($2 / 1024)}' /proc/meminfo; rm /big",
    );
    assert!(
        after.trim().parse::<u64>().unwrap() < cached_mib / 2,
        "the guest still caches {} MiB",
        after.trim()
    );
}
