//! `distroctl stats` against a real agent: the values follow what a distro
//! does and equal its cgroup files; bad names and stopped distros.

mod common;

use std::path::Path;

use common::{can_run_agent, stats_json, stats_of, stats_workload, text, Cli, TestAgent};

fn usage_usec(group: &Path) -> u64 {
    let stat = std::fs::read_to_string(group.join("cpu.stat")).unwrap();
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Processes in the group and its children, as the kernel lists them.
fn procs(group: &Path) -> u64 {
    let mut count = 0;
    let mut stack = vec![group.to_path_buf()];
    while let Some(dir) = stack.pop() {
        count += std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap()
            .lines()
            .count() as u64;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    count
}

fn number(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn io_written(group: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(group.join("io.stat")).ok()?;
    Some(
        stat.split_whitespace()
            .filter_map(|f| f.strip_prefix("wbytes="))
            .map(|n| n.parse::<u64>().unwrap())
            .sum(),
    )
}

#[test]
fn stats_follow_allocation_forks_and_writes_and_equal_the_cgroup_files() {
    if !can_run_agent() {
        return;
    }
    let Some(root) = common::cgroup2_root() else {
        return;
    };
    let agent = TestAgent::start_with_cgroups(Some(&root));
    agent.import_debian("busy");
    agent.ok(&["start", "busy"]);
    let group = root.join("distroctl/busy");
    let first = stats_json(&agent, &["busy"]);

    agent.sh("busy", &stats_workload(300_000));
    let cpu_before = usage_usec(&group);
    let doc = stats_json(&agent, &["busy"]);
    let cpu_after = usage_usec(&group);

    let (was, now) = (stats_of(&first, "busy"), stats_of(&doc, "busy"));
    assert_eq!(now["state"], "running");
    let cpu = now["cpu_usage_usec"].as_u64().unwrap();
    assert!(
        cpu > was["cpu_usage_usec"].as_u64().unwrap() + 50_000,
        "the spin shows as CPU time: {was} then {now}"
    );
    assert!(
        (cpu_before..=cpu_after).contains(&cpu),
        "cpu.stat said {cpu_before} then {cpu_after}, stats {cpu}"
    );
    assert!(
        now["pids"].as_u64().unwrap() >= was["pids"].as_u64().unwrap() + 3,
        "three sleepers forked: {was} then {now}"
    );
    assert_eq!(now["pids"].as_u64(), Some(procs(&group)), "{now}");
    assert!(
        now["cpu_percent"].as_f64().is_some_and(|p| p >= 0.0),
        "{now}"
    );
    match number(&group.join("memory.current")) {
        Some(current) => {
            let stat = now["memory_current_bytes"].as_u64().unwrap();
            assert!(
                stat >= was["memory_current_bytes"].as_u64().unwrap() + (30 << 20),
                "32 MiB in /tmp are charged: {was} then {now}"
            );
            assert!(stat.abs_diff(current) < 4 << 20, "file {current}, {now}");
            assert!(now["memory_peak_bytes"].as_u64() >= Some(stat), "{now}");
        }
        None => {
            eprintln!("SKIP (memory part): this host's cgroup2 has no memory controller");
            assert!(now.get("memory_current_bytes").is_none(), "{now}");
        }
    }
    match io_written(&group) {
        Some(written) => {
            let stat = now["io_write_bytes"].as_u64().unwrap();
            assert!(stat >= 8 << 20, "8 MiB written with fsync: {now}");
            assert!(stat <= written, "io.stat {written}, {now}");
        }
        None => {
            eprintln!("SKIP (io part): this host's cgroup2 has no io controller");
            assert!(now.get("io_write_bytes").is_none(), "{now}");
        }
    }
    assert!(
        doc["guest_memory"]["total_bytes"].as_u64() > Some(0),
        "{doc}"
    );
    assert!(doc["vm"].is_null(), "no VM behind --agent-socket: {doc}");
}

#[test]
fn stats_show_running_distros_named_stopped_ones_and_refuse_unknown_names() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("up");
    agent.import_debian("down");
    agent.ok(&["start", "up"]);

    let all = stats_json(&agent, &[]);
    let named = stats_json(&agent, &["down", "up"]);
    let table = text(&agent.ok(&["stats", "down", "up"]).stdout);
    let unknown = agent.run(&["stats", "up", "nosuch"]);
    let invalid = agent.run(&["stats", "Bad/Name"]);

    let names: Vec<_> = all["distros"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, ["up"], "only running distros by default: {all}");
    assert_eq!(stats_of(&named, "down")["state"], "stopped");
    assert!(
        stats_of(&named, "up")["pids"].as_u64() >= Some(1),
        "{named}"
    );
    let down = table.lines().find(|l| l.starts_with("down")).unwrap();
    assert_eq!(down.split_whitespace().nth(1), Some("stopped"), "{table}");
    for (out, what) in [(unknown, "nosuch"), (invalid, "Bad/Name")] {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(what), "{err}");
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn stats_watch_prints_a_json_line_per_sample() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("watched");
    agent.ok(&["start", "watched"]);
    let mut child = agent
        .cli()
        .args(["stats", "--watch", "--interval", "0.2", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));

    let samples: Vec<serde_json::Value> = (0..3)
        .map(|_| serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap())
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();

    for s in &samples {
        assert_eq!(stats_of(s, "watched")["state"], "running", "{s}");
    }
}
