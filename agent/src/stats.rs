//! The `stats` request: each distro's resource use from the files of its
//! cgroup v2 group, and the VM's memory from `/proc/meminfo`.
//!
//! The files are the agent's own cgroupfs and procfs, not anything a distro
//! controls, but they are still read defensively: bounded, and a missing or
//! odd file is an absent value, never an error (`memory.peak` needs Linux
//! 5.19, `io.stat` the io controller, everything a cgroup2 mount).

use std::io::Read;
use std::path::Path;

use protocol::{DistroState, DistroStats, GuestMemory};

use crate::cgroup::DistroCgroup;

/// Most bytes read from one file: `io.stat` has one line per block device,
/// `/proc/meminfo` about fifty.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Reads at most [`MAX_FILE_BYTES`] of `path`; `None` when it cannot be read.
fn read_bounded(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The value of a file holding one number (`memory.current`).
pub fn parse_single_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `usage_usec` from `cpu.stat` (present even without the cpu controller).
pub fn parse_cpu_usage_usec(text: &str) -> Option<u64> {
    flat_keyed(text, "usage_usec")
}

/// A `memory.max` value: `max` is no limit, else bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMax {
    /// No limit.
    Unlimited,
    /// A limit in bytes.
    Bytes(u64),
}

/// Parses `memory.max`; `None` for anything else than `max` or a number.
pub fn parse_memory_max(text: &str) -> Option<MemoryMax> {
    match text.trim() {
        "max" => Some(MemoryMax::Unlimited),
        n => n.parse().ok().map(MemoryMax::Bytes),
    }
}

/// Bytes read and written, summed over the devices of `io.stat`
/// (`MAJ:MIN rbytes=N wbytes=N rios=N …`, one line per device). A file
/// with no lines is a group that has done no block I/O yet: zero.
pub fn parse_io_totals(text: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "rbytes" => read = read.saturating_add(value),
                "wbytes" => written = written.saturating_add(value),
                _ => {}
            }
        }
    }
    (read, written)
}

/// `MemTotal`, `MemAvailable`, `MemFree` and `Cached` from `/proc/meminfo`
/// (`Name:   N kB`).
pub fn parse_meminfo(text: &str) -> GuestMemory {
    let mut memory = GuestMemory::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut memory.total_bytes,
            "MemAvailable" => &mut memory.available_bytes,
            "MemFree" => &mut memory.free_bytes,
            "Cached" => &mut memory.cached_bytes,
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let value = words.next().and_then(|n| n.parse::<u64>().ok());
        let bytes = match (value, words.next()) {
            (Some(kib), Some("kB")) => kib.checked_mul(1024),
            (Some(n), None) => Some(n),
            _ => None,
        };
        if bytes.is_some() {
            *slot = bytes;
        }
    }
    memory
}

/// The value of `key` in a flat keyed file (`key value` per line).
fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// The VM's memory now.
pub fn guest_memory() -> GuestMemory {
    read_bounded(Path::new("/proc/meminfo"))
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default()
}

/// Stats of a running distro read from its group (`None`: it runs without
/// one, and only `pids`, counted otherwise, is known).
pub fn running(name: &str, group: Option<&DistroCgroup>, pids: u32) -> DistroStats {
    let Some(group) = group else {
        return DistroStats {
            state: DistroState::Running,
            pids: Some(pids),
            ..DistroStats::stopped(name)
        };
    };
    let file = |f: &str| read_bounded(&group.path.join(f));
    let io = file("io.stat").map(|t| parse_io_totals(&t));
    DistroStats {
        name: name.to_string(),
        state: DistroState::Running,
        cpu_usage_usec: file("cpu.stat").and_then(|t| parse_cpu_usage_usec(&t)),
        memory_current_bytes: file("memory.current").and_then(|t| parse_single_u64(&t)),
        memory_peak_bytes: file("memory.peak").and_then(|t| parse_single_u64(&t)),
        memory_max_bytes: match file("memory.max").and_then(|t| parse_memory_max(&t)) {
            Some(MemoryMax::Bytes(b)) => Some(b),
            Some(MemoryMax::Unlimited) | None => None,
        },
        pids: Some(pids),
        io_read_bytes: io.map(|(r, _)| r),
        io_write_bytes: io.map(|(_, w)| w),
    }
}

/// The VM's monotonic clock in microseconds (the time base of CPU rates).
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_usage_is_read_from_its_line_and_odd_files_give_none() {
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n";

        assert_eq!(parse_cpu_usage_usec(stat), Some(123456));
        assert_eq!(parse_cpu_usage_usec("user_usec 5\n"), None);
        assert_eq!(parse_cpu_usage_usec("usage_usec\n"), None);
        assert_eq!(parse_cpu_usage_usec("usage_usec -3\n"), None);
        assert_eq!(parse_cpu_usage_usec("usage_usec_total 9\n"), None);
        assert_eq!(parse_cpu_usage_usec(""), None);
    }

    #[test]
    fn memory_max_is_a_limit_or_unlimited() {
        assert_eq!(parse_memory_max("max\n"), Some(MemoryMax::Unlimited));
        assert_eq!(
            parse_memory_max("536870912\n"),
            Some(MemoryMax::Bytes(512 << 20))
        );
        assert_eq!(parse_memory_max(""), None);
        assert_eq!(parse_memory_max("lots"), None);
        assert_eq!(parse_memory_max("-1"), None);
    }

    #[test]
    fn io_totals_sum_every_device_and_skip_junk() {
        let stat = "254:0 rbytes=1000 wbytes=2000 rios=3 wios=4 dbytes=0 dios=0\n\
                    7:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n\
                    8:0 rbytes=oops wbytes= junk =5\n";

        assert_eq!(parse_io_totals(stat), (1010, 2020));
        assert_eq!(parse_io_totals(""), (0, 0));
    }

    #[test]
    fn io_totals_saturate_instead_of_wrapping() {
        let stat = format!("1:0 wbytes={}\n2:0 wbytes=5\n", u64::MAX);

        assert_eq!(parse_io_totals(&stat), (0, u64::MAX));
    }

    #[test]
    fn meminfo_values_are_bytes_and_bad_lines_are_left_out() {
        let info = "MemTotal:        1004548 kB\nMemFree:          700000 kB\n\
                    MemAvailable:     800000 kB\nBuffers:           1000 kB\n\
                    Cached:       banana kB\nSwapCached:            0 kB\n";

        let memory = parse_meminfo(info);

        assert_eq!(memory.total_bytes, Some(1004548 * 1024));
        assert_eq!(memory.free_bytes, Some(700000 * 1024));
        assert_eq!(memory.available_bytes, Some(800000 * 1024));
        assert_eq!(memory.cached_bytes, None, "not a number");
        assert_eq!(
            parse_meminfo("MemTotal: 99999999999999999999 kB\n").total_bytes,
            None
        );
        assert_eq!(parse_meminfo("").total_bytes, None);
    }

    #[test]
    fn a_group_without_memory_or_io_files_has_only_cpu_and_pids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 42\n").unwrap();
        let group = DistroCgroup {
            path: dir.path().to_path_buf(),
            limits_applied: true,
        };

        let stats = running("d", Some(&group), 3);

        assert_eq!(stats.state, DistroState::Running);
        assert_eq!(stats.cpu_usage_usec, Some(42));
        assert_eq!(stats.pids, Some(3));
        assert_eq!(stats.memory_current_bytes, None);
        assert_eq!(stats.memory_peak_bytes, None);
        assert_eq!(stats.io_write_bytes, None);
    }

    #[test]
    fn a_full_group_reports_every_value() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in [
            ("cpu.stat", "usage_usec 7\n"),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("memory.max", "1048576\n"),
            ("io.stat", "254:0 rbytes=1 wbytes=2 rios=1 wios=1\n"),
        ] {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let group = DistroCgroup {
            path: dir.path().to_path_buf(),
            limits_applied: true,
        };

        let stats = running("d", Some(&group), 1);

        assert_eq!(stats.memory_current_bytes, Some(4096));
        assert_eq!(stats.memory_peak_bytes, Some(8192));
        assert_eq!(stats.memory_max_bytes, Some(1 << 20));
        assert_eq!(
            (stats.io_read_bytes, stats.io_write_bytes),
            (Some(1), Some(2))
        );
    }
}
