//! Memory a distro frees goes back to the host: the utility VM's balloon
//! device reports free guest pages and the VM monitor drops them.

mod common;

use std::time::{Duration, Instant};

use common::vm::TestVm;
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

#[test]
fn memory_freed_in_a_distro_goes_back_to_the_host() {
    let vm = TestVm::new("");
    vm.ok(&["import", "mem", debian_rootfs().to_str().unwrap()]);
    let pid = vm.qemu_pid().expect("VM monitor pid in vm.json");
    let before = rss(pid);

    // 512 MiB held in two tmpfs files (each tmpfs may hold half the 1 GiB
    // guest), so the pages stay in use while the host side is measured.
    vm.sh(
        "mem",
        "head -c 256M /dev/zero > /dev/shm/fill && head -c 256M /dev/zero > /tmp/fill",
    );
    let peak = rss(pid);
    vm.sh("mem", "rm /dev/shm/fill /tmp/fill");

    // The guest reports only free blocks of at least pageblock order
    // (2 MiB), about 2 s after they were freed, in batches; under TCG each
    // batch takes a while longer, so allow a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = rss(pid);
    while now + 256 * MIB > peak && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        now = rss(pid);
    }

    assert!(
        peak >= before + 256 * MIB,
        "filling 512 MiB raised the VM monitor's RSS only from {} to {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(
        now + 256 * MIB <= peak,
        "the VM monitor's RSS went from {} MiB at the peak to {} MiB a minute after the files were removed",
        peak / MIB,
        now / MIB
    );
}
