//! One `stats` sample as the user sees it: a table (with the VM's lines
//! above it, like `top`) or a JSON document, CPU % taken from the previous
//! sample.

use std::fmt::Write;

use protocol::{DistroState, DistroStats, GuestMemory};
use serde::Serialize;

use super::host::VmHostStats;
use crate::commands::human;

/// Everything one `stats` sample read.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The agent's monotonic clock at the sample, in microseconds.
    pub sampled_at_usec: u64,
    /// The distros, sorted by name.
    pub distros: Vec<DistroStats>,
    /// The VM's memory as its kernel sees it.
    pub guest: GuestMemory,
    /// The host side of the VM (absent with `--agent-socket`).
    pub vm: Option<VmHostStats>,
}

/// CPU use of `now` since `before` in percent of one CPU (200 = two CPUs
/// busy), when both have a CPU time and it did not go backwards (a distro
/// restarted in between starts again from zero).
pub fn cpu_percent(before: Option<&Sample>, now: &Sample, distro: &DistroStats) -> Option<f64> {
    let before = before?;
    let then = before
        .distros
        .iter()
        .find(|d| d.name == distro.name)?
        .cpu_usage_usec?;
    let used = distro.cpu_usage_usec?.checked_sub(then)?;
    let elapsed = now.sampled_at_usec.checked_sub(before.sampled_at_usec)?;
    (elapsed > 0).then(|| used as f64 * 100.0 / elapsed as f64)
}

#[derive(Serialize)]
struct JsonDistro<'a> {
    #[serde(flatten)]
    stats: &'a DistroStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_percent: Option<f64>,
}

#[derive(Serialize)]
struct JsonGuest<'a> {
    #[serde(flatten)]
    memory: &'a GuestMemory,
    #[serde(skip_serializing_if = "Option::is_none")]
    used_bytes: Option<u64>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    distros: Vec<JsonDistro<'a>>,
    guest_memory: JsonGuest<'a>,
    vm: Option<&'a VmHostStats>,
}

/// Guest memory in use: all but what is available.
fn used_bytes(memory: &GuestMemory) -> Option<u64> {
    memory.total_bytes?.checked_sub(memory.available_bytes?)
}

/// The sample as one JSON document (`pretty`: indented, else one line).
pub fn json(before: Option<&Sample>, now: &Sample, pretty: bool) -> String {
    let report = JsonReport {
        distros: now
            .distros
            .iter()
            .map(|d| JsonDistro {
                stats: d,
                cpu_percent: cpu_percent(before, now, d).map(|p| (p * 10.0).round() / 10.0),
            })
            .collect(),
        guest_memory: JsonGuest {
            memory: &now.guest,
            used_bytes: used_bytes(&now.guest),
        },
        vm: now.vm.as_ref(),
    };
    let text = if pretty {
        serde_json::to_string_pretty(&report)
    } else {
        serde_json::to_string(&report)
    };
    text.expect("stats serialize")
}

fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_string(), human)
}

/// `M:SS.ss` below an hour, else `H:MM:SS`, as `top` shows CPU time.
pub fn cpu_time(usec: u64) -> String {
    let secs = usec / 1_000_000;
    if secs < 3600 {
        format!("{}:{:05.2}", secs / 60, (usec % 60_000_000) as f64 / 1e6)
    } else {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// The sample as lines for a terminal: the VM, the guest's memory, then a
/// row per distro.
pub fn table(before: Option<&Sample>, now: &Sample) -> String {
    let mut out = String::new();
    if let Some(vm) = &now.vm {
        let returned = match vm.memory_returned_bytes {
            Some(b) => human(b),
            None => "not reported".to_string(),
        };
        let _ = writeln!(
            out,
            "VM         {} (pid {}), monitor RSS {}, memory returned to the host: {returned}",
            vm.backend,
            vm.monitor_pid,
            size(vm.monitor_rss_bytes)
        );
    }
    let g = &now.guest;
    let _ = writeln!(
        out,
        "Guest RAM  {} total, {} in use, {} available, {} free",
        size(g.total_bytes),
        size(used_bytes(g)),
        size(g.available_bytes),
        size(g.free_bytes)
    );
    if let Some(vm) = &now.vm {
        let _ = writeln!(
            out,
            "Data disk  {} allocated of {}",
            size(vm.data_disk_allocated_bytes),
            size(vm.data_disk_apparent_bytes)
        );
    }
    out.push('\n');
    let width = now
        .distros
        .iter()
        .map(|d| d.name.len())
        .fold(12, usize::max);
    let _ = writeln!(
        out,
        "{:<width$} {:<8} {:>6} {:>9} {:>10} {:>10} {:>10} {:>5} {:>10} {:>10}",
        "NAME", "STATE", "CPU %", "CPU TIME", "MEMORY", "PEAK", "LIMIT", "PIDS", "READ", "WRITE"
    );
    if now.distros.is_empty() {
        out.push_str("(no distro is running)\n");
    }
    for d in &now.distros {
        let _ = writeln!(out, "{}", row(before, now, d, width));
    }
    out
}

fn row(before: Option<&Sample>, now: &Sample, d: &DistroStats, width: usize) -> String {
    if d.state == DistroState::Stopped {
        return format!("{:<width$} stopped", d.name);
    }
    let percent = cpu_percent(before, now, d).map_or_else(|| "-".into(), |p| format!("{p:.1}%"));
    let limit = match (d.memory_max_bytes, d.memory_current_bytes) {
        (Some(max), _) => human(max),
        (None, Some(_)) => "none".to_string(),
        (None, None) => "-".to_string(),
    };
    format!(
        "{:<width$} {:<8} {:>6} {:>9} {:>10} {:>10} {:>10} {:>5} {:>10} {:>10}",
        d.name,
        "running",
        percent,
        d.cpu_usage_usec.map_or_else(|| "-".into(), cpu_time),
        size(d.memory_current_bytes),
        size(d.memory_peak_bytes),
        limit,
        d.pids.map_or_else(|| "-".into(), |p| p.to_string()),
        size(d.io_read_bytes),
        size(d.io_write_bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distro(name: &str, cpu: Option<u64>) -> DistroStats {
        DistroStats {
            name: name.into(),
            state: DistroState::Running,
            cpu_usage_usec: cpu,
            memory_current_bytes: Some(3 << 20),
            memory_peak_bytes: Some(5 << 20),
            memory_max_bytes: None,
            pids: Some(4),
            io_read_bytes: Some(0),
            io_write_bytes: Some(1 << 20),
        }
    }

    fn sample(at: u64, distros: Vec<DistroStats>) -> Sample {
        Sample {
            sampled_at_usec: at,
            distros,
            guest: GuestMemory {
                total_bytes: Some(1 << 30),
                available_bytes: Some(768 << 20),
                free_bytes: Some(512 << 20),
                cached_bytes: Some(128 << 20),
            },
            vm: None,
        }
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let before = sample(1_000_000, vec![distro("a", Some(100_000))]);
        let now = sample(1_500_000, vec![distro("a", Some(850_000))]);

        let percent = cpu_percent(Some(&before), &now, &now.distros[0]);

        assert_eq!(percent, Some(150.0));
    }

    #[test]
    fn cpu_percent_is_unknown_without_a_usable_earlier_sample() {
        let now = sample(2_000_000, vec![distro("a", Some(500))]);
        let restarted = sample(1_000_000, vec![distro("a", Some(9_000))]);
        let other = sample(1_000_000, vec![distro("b", Some(0))]);
        let same_time = sample(2_000_000, vec![distro("a", Some(0))]);
        let d = &now.distros[0];

        assert_eq!(cpu_percent(None, &now, d), None);
        assert_eq!(cpu_percent(Some(&restarted), &now, d), None);
        assert_eq!(cpu_percent(Some(&other), &now, d), None);
        assert_eq!(cpu_percent(Some(&same_time), &now, d), None);
        let unread = sample(3_000_000, vec![distro("a", None)]);
        assert_eq!(cpu_percent(Some(&now), &unread, &unread.distros[0]), None);
    }

    #[test]
    fn cpu_time_reads_like_top() {
        assert_eq!(cpu_time(0), "0:00.00");
        assert_eq!(cpu_time(83_450_000), "1:23.45");
        assert_eq!(cpu_time(3_723_000_000), "1:02:03");
    }

    #[test]
    fn table_shows_vm_lines_and_a_row_per_distro() {
        let mut now = sample(1_000_000, vec![distro("alpha", Some(2_000_000))]);
        now.distros.push(DistroStats {
            state: DistroState::Stopped,
            ..distro("beta", None)
        });
        now.vm = Some(VmHostStats {
            backend: "qemu".into(),
            monitor_pid: 42,
            monitor_rss_bytes: Some(300 << 20),
            memory_returned_bytes: None,
            data_disk_allocated_bytes: Some(1 << 30),
            data_disk_apparent_bytes: Some(8 << 30),
        });

        let text = table(None, &now);

        assert!(
            text.contains("qemu (pid 42), monitor RSS 300.0 MiB"),
            "{text}"
        );
        assert!(
            text.contains("returned to the host: not reported"),
            "{text}"
        );
        assert!(text.contains("256.0 MiB in use"), "{text}");
        assert!(text.contains("1.0 GiB allocated of 8.0 GiB"), "{text}");
        let alpha = text.lines().find(|l| l.starts_with("alpha")).unwrap();
        let cols: Vec<&str> = alpha.split_whitespace().collect();
        assert_eq!(cols[1..4], ["running", "-", "0:02.00"], "{alpha}");
        assert!(alpha.contains("none"), "no memory limit: {alpha}");
        let beta = text.lines().find(|l| l.starts_with("beta")).unwrap();
        assert_eq!(beta.split_whitespace().nth(1), Some("stopped"));
    }

    #[test]
    fn table_says_so_when_nothing_runs() {
        let text = table(None, &sample(0, Vec::new()));

        assert!(text.contains("(no distro is running)"), "{text}");
        assert!(!text.contains("Data disk"), "no VM lines without a VM");
    }

    #[test]
    fn json_has_the_values_cpu_percent_and_used_memory() {
        let before = sample(0, vec![distro("a", Some(0))]);
        let now = sample(1_000_000, vec![distro("a", Some(250_000))]);

        let doc: serde_json::Value =
            serde_json::from_str(&json(Some(&before), &now, false)).unwrap();

        let a = &doc["distros"][0];
        assert_eq!(a["name"], "a");
        assert_eq!(a["state"], "running");
        assert_eq!(a["cpu_percent"], 25.0);
        assert_eq!(a["memory_current_bytes"], 3 << 20);
        assert_eq!(a["io_write_bytes"], 1 << 20);
        assert_eq!(doc["guest_memory"]["used_bytes"], 256 << 20);
        assert!(doc["vm"].is_null());
    }
}
