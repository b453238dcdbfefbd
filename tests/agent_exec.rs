//! Exec into distros: exit codes, streams, environment, users, concurrency.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{can_run_agent, text, Cli, TestAgent};

#[test]
fn exit_codes_are_returned() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("codes");

    for code in [0, 1, 42] {
        let out = agent.run(&["exec", "codes", "--", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code));
    }
    let killed = agent.run(&["exec", "codes", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(killed.status.code(), Some(128 + 9));
}

#[test]
fn missing_binary_exits_127_with_a_message() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("missing");

    let out = agent.run(&["exec", "missing", "--", "no-such-program", "x"]);

    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("no-such-program: command not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn binary_data_round_trips_through_cat() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("bytes");
    let mut data = vec![0u8; 64 << 20];
    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);

    let out = agent.round_trip_through_cat("bytes", &data);

    assert!(out.status.success());
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "64 MiB differ after the round trip");
}

#[test]
fn stdin_eof_reaches_the_process() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("eof");

    let mut child = agent
        .cli()
        .args(["exec", "eof", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"12345").unwrap();
    let out = child.wait_with_output().unwrap();

    assert_eq!(text(&out.stdout).trim(), "5");
}

#[test]
fn stdout_and_stderr_stay_apart() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("streams");

    let out = agent.run(&[
        "exec",
        "streams",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);

    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
}

#[test]
fn env_cwd_and_user_apply() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("who");

    let env = agent.ok(&[
        "exec",
        "who",
        "-e",
        "GREETING=hello world",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\"",
    ]);
    let cwd = agent.ok(&["exec", "who", "--cd", "/tmp", "--", "pwd"]);
    let root = agent.ok(&["exec", "who", "--", "sh", "-c", "id -u; echo $HOME; pwd"]);
    let nobody = agent.ok(&[
        "exec",
        "who",
        "--user",
        "nobody",
        "--",
        "sh",
        "-c",
        "id -un; id -u; echo $HOME",
    ]);
    let by_uid = agent.ok(&["exec", "who", "--user", "65534", "--", "id", "-un"]);
    let bad_user = agent.run(&["exec", "who", "--user", "mallory", "--", "true"]);
    let bad_cwd = agent.run(&["exec", "who", "--cd", "/nope", "--", "true"]);

    assert_eq!(text(&env.stdout), "hello world\n");
    assert_eq!(text(&cwd.stdout), "/tmp\n");
    assert_eq!(text(&root.stdout), "0\n/root\n/root\n");
    assert_eq!(text(&nobody.stdout), "nobody\n65534\n/nonexistent\n");
    assert_eq!(text(&by_uid.stdout), "nobody\n");
    assert_eq!(bad_user.status.code(), Some(1));
    assert!(text(&bad_user.stderr).contains("user mallory does not exist in distro who"));
    assert_eq!(bad_cwd.status.code(), Some(1));
    assert!(text(&bad_cwd.stderr).contains("directory /nope does not exist"));
}

#[test]
fn fifty_concurrent_execs_are_all_correct() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("busy");
    agent.ok(&["start", "busy"]);

    let children: Vec<_> = (0..50)
        .map(|i| {
            agent
                .cli()
                .args([
                    "exec",
                    "busy",
                    "--",
                    "sh",
                    "-c",
                    &format!("sleep 0.2; echo task-{i}; exit {}", i % 7),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(text(&out.stdout), format!("task-{i}\n"));
        assert_eq!(out.status.code(), Some((i % 7) as i32));
    }
}

fn agent_fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    (fds, rss_kib)
}

#[test]
fn thousand_sequential_execs_leak_no_fds_or_memory() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("loop");
    // Warm up: allocator arenas, thread pools and caches settle first.
    for _ in 0..100 {
        agent.ok(&["exec", "loop", "--", "true"]);
    }
    let (fds_before, rss_before) = agent_fds_and_rss(agent.pid());

    for _ in 0..1000 {
        agent.ok(&["exec", "loop", "--", "true"]);
    }
    // The last exec's connection may still be closing on a loaded host:
    // give it a moment. A leak grows with the execs and never settles.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (mut fds_after, mut rss_after) = agent_fds_and_rss(agent.pid());
    while fds_after > fds_before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        (fds_after, rss_after) = agent_fds_and_rss(agent.pid());
    }

    assert_eq!(fds_before, fds_after, "agent file descriptors grew");
    assert!(
        rss_after < rss_before + 4096,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
