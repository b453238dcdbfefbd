//! Hostile distros: a distro's root controls every file in it, so each case
//! here plants something in one distro ("hostile") and checks that the
//! agent answers with one clear line, that the distro next to it ("victim")
//! still answers within a few seconds, that the agent was not restarted,
//! and that nothing outside the hostile distro changed.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{can_run_agent, text, Cli, TestAgent};

/// How quickly the victim must answer while the hostile distro misbehaves.
const VICTIM_DEADLINE: Duration = Duration::from_secs(5);

/// Two Debian distros, `hostile` and `victim`, both running.
fn two_distros() -> TestAgent {
    let agent = TestAgent::start();
    agent.import_debian("hostile");
    agent.import_debian("victim");
    agent.ok(&["start", "hostile"]);
    agent.ok(&["start", "victim"]);
    agent
}

/// The victim distro runs a command within [`VICTIM_DEADLINE`] and the
/// agent is still the process the test started.
fn assert_victim_unharmed(agent: &TestAgent) {
    assert_unharmed(agent, "victim");
}

/// [`assert_victim_unharmed`] for a victim of another name (tests with
/// cgroups share the host's hierarchy, so their distros' names differ).
fn assert_unharmed(agent: &TestAgent, victim: &str) {
    let started = Instant::now();
    let out = agent.sh(victim, "echo alive");
    assert_eq!(out.trim(), "alive");
    assert!(
        started.elapsed() < VICTIM_DEADLINE,
        "the victim took {:?} to answer",
        started.elapsed()
    );
    assert!(agent.is_running(), "the agent died: {}", agent.log_tail());
}

/// Runs `distroctl ARGS`, expecting failure within a few seconds, and
/// returns its one-line error.
fn refused(agent: &TestAgent, args: &[&str]) -> (Option<i32>, String) {
    let started = Instant::now();
    let out = agent.run(args);
    let elapsed = started.elapsed();
    assert!(
        !out.status.success(),
        "distroctl {args:?} succeeded: {}",
        text(&out.stdout)
    );
    assert!(
        elapsed < VICTIM_DEADLINE,
        "distroctl {args:?} took {elapsed:?}"
    );
    (out.status.code(), text(&out.stderr).trim().to_string())
}

fn replace_with_symlink(path: &Path, target: &Path) {
    std::fs::remove_file(path).unwrap();
    symlink(target, path).unwrap();
}

#[test]
fn passwd_symlinked_into_another_distro_is_read_inside_the_own_distro() {
    if !can_run_agent() {
        return;
    }
    let agent = two_distros();
    let victim_passwd = agent.rootfs("victim").join("etc/passwd");
    let mut passwd = std::fs::read_to_string(&victim_passwd).unwrap();
    passwd.push_str("secretuser:x:4242:4242::/secret:/bin/sh\n");
    std::fs::write(&victim_passwd, &passwd).unwrap();
    replace_with_symlink(&agent.rootfs("hostile").join("etc/passwd"), &victim_passwd);

    let (code, err) = refused(
        &agent,
        &["exec", "hostile", "--user", "secretuser", "--", "id"],
    );

    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("user secretuser does not exist in distro hostile"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim_passwd).unwrap(), passwd);
    assert_victim_unharmed(&agent);
}

#[test]
fn passwd_fifo_is_refused_without_stalling_anyone() {
    if !can_run_agent() {
        return;
    }
    let agent = two_distros();
    let passwd = agent.rootfs("hostile").join("etc/passwd");
    std::fs::remove_file(&passwd).unwrap();
    nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();

    let (code, err) = refused(&agent, &["exec", "hostile", "--", "id"]);

    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("/etc/passwd in distro hostile is not a regular file"),
        "{err}"
    );
    assert_victim_unharmed(&agent);
}

#[test]
fn group_pointing_at_dev_zero_is_refused_without_reading_it() {
    if !can_run_agent() {
        return;
    }
    let agent = two_distros();
    // Inside the distro, /dev/zero is its own device node.
    replace_with_symlink(
        &agent.rootfs("hostile").join("etc/group"),
        Path::new("/dev/zero"),
    );

    let (code, err) = refused(&agent, &["exec", "hostile", "--", "id"]);

    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("/etc/group in distro hostile is not a regular file"),
        "{err}"
    );
    assert_victim_unharmed(&agent);
}

#[test]
fn cd_into_another_distro_is_refused_with_a_clear_error() {
    if !can_run_agent() {
        return;
    }
    let agent = two_distros();
    let victim_root = agent.rootfs("victim").join("root");
    symlink(&victim_root, agent.rootfs("hostile").join("x")).unwrap();

    let (code, err) = refused(&agent, &["exec", "hostile", "--cd", "/x", "--", "pwd"]);
    let inside = agent.ok(&["exec", "hostile", "--cd", "/tmp", "--", "pwd"]);

    assert_eq!(code, Some(1), "not 127 (command not found): {err}");
    assert!(
        err.contains("directory /x does not exist in distro hostile"),
        "{err}"
    );
    assert_eq!(text(&inside.stdout).trim(), "/tmp", "mounts inside count");
    assert_victim_unharmed(&agent);
}

#[test]
fn configure_refuses_unknown_user_zero_limits_and_missing_systemd() {
    if !can_run_agent() {
        return;
    }
    let agent = two_distros();
    let settings = agent.data().join("distros/hostile/settings.json");
    let before = std::fs::read(&settings).ok();

    let user = refused(
        &agent,
        &["configure", "hostile", "--default-user", "nosuch"],
    );
    let cpu = refused(&agent, &["configure", "hostile", "--cpu-max", "0"]);
    let pids = refused(&agent, &["configure", "hostile", "--pids-max", "0"]);
    let negative = refused(&agent, &["configure", "hostile", "--pids-max", "-1"]);
    let systemd = refused(&agent, &["configure", "hostile", "--systemd", "true"]);

    assert!(
        user.1
            .contains("user nosuch does not exist in distro hostile"),
        "{user:?}"
    );
    for (flag, (code, err)) in [
        ("--cpu-max", &cpu),
        ("--pids-max", &pids),
        ("--pids-max", &negative),
    ] {
        assert_eq!(*code, Some(2), "{err}");
        assert!(err.contains(flag) && err.contains("`none`"), "{err}");
    }
    assert!(systemd.1.contains("has no systemd"), "{systemd:?}");
    assert_eq!(std::fs::read(&settings).ok(), before, "settings unchanged");
    assert_eq!(agent.sh("hostile", "id -u").trim(), "0");
    assert_victim_unharmed(&agent);
}

#[test]
fn configure_of_a_running_distro_says_truly_when_each_setting_applies() {
    if !can_run_agent() {
        return;
    }
    let agent = two_distros();

    let user = agent.ok(&["configure", "victim", "--default-user", "nobody"]);
    let whoami = agent.sh("victim", "id -un");
    let systemd_off = agent.ok(&[
        "configure",
        "victim",
        "--network",
        "shared",
        "--systemd",
        "false",
    ]);

    assert!(
        text(&user.stderr).contains("next exec or shell"),
        "{}",
        text(&user.stderr)
    );
    assert_eq!(whoami.trim(), "nobody", "the default user applies at once");
    assert!(
        !text(&systemd_off.stderr).contains("next starts"),
        "nothing changed: {}",
        text(&systemd_off.stderr)
    );
}

#[test]
fn import_with_systemd_of_a_root_without_systemd_is_refused() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    let archive = common::debian_rootfs().to_str().unwrap();

    let (code, err) = {
        let out = agent.run(&["import", "--systemd", "nosystemd", archive]);
        (out.status.code(), text(&out.stderr))
    };
    let list = text(&agent.ok(&["list"]).stdout);

    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("has no systemd"), "{err}");
    assert!(!list.contains("nosystemd"), "{list}");
    assert!(!agent.data().join("distros/nosystemd").exists());
}

#[test]
fn distro_pid1_command_line_is_plain_init() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("plain");

    let cmdline = agent.sh("plain", "tr '\\0' ' ' < /proc/1/cmdline");

    assert_eq!(cmdline.trim(), "init");
}

fn host_has_process(cmdline: &[u8]) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| c == cmdline)
}

fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn killed_exec_client_gets_its_process_group_hung_up_then_killed() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("hangup");
    agent.import_debian("victim");
    agent.ok(&["start", "victim"]);
    // One process that dies of SIGHUP, one that ignores it.
    let mut plain = agent.spawn(&["exec", "hangup", "--", "sleep", "4711"]);
    let mut stubborn = agent.spawn(&[
        "exec",
        "hangup",
        "--",
        "sh",
        "-c",
        "trap '' HUP; exec sleep 4712",
    ]);
    assert!(wait_until(Duration::from_secs(10), || host_has_process(
        b"sleep\x004711\x00"
    )
        && host_has_process(b"sleep\x004712\x00")));

    plain.kill().unwrap();
    stubborn.kill().unwrap();
    let _ = plain.wait();
    let _ = stubborn.wait();

    assert!(
        wait_until(Duration::from_secs(2), || !host_has_process(
            b"sleep\x004711\x00"
        )),
        "SIGHUP did not reach the process"
    );
    assert!(
        wait_until(Duration::from_secs(8), || !host_has_process(
            b"sleep\x004712\x00"
        )),
        "a process ignoring SIGHUP was not killed after the grace period"
    );
    assert_victim_unharmed(&agent);
}

/// A block device that root on this host can open, as `(major, minor)`:
/// the disk the data directory is on (every distro's files), else a loop
/// device. The filter is only seen to work where the device would open
/// without it; `None`, with the reason printed, where no block device
/// opens for root here (a sandbox of the host's own).
fn openable_block_device(agent: &TestAgent) -> Option<(u64, u64)> {
    let disk = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(agent.data()).unwrap());
    let loop0 = nix::sys::stat::makedev(7, 0);
    let probe = agent.dir.path().join("probe-node");
    for dev in [disk, loop0] {
        let _ = std::fs::remove_file(&probe);
        nix::sys::stat::mknod(
            &probe,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            dev,
        )
        .unwrap();
        let opens = std::fs::File::open(&probe).is_ok();
        std::fs::remove_file(&probe).unwrap();
        if opens {
            return Some((nix::sys::stat::major(dev), nix::sys::stat::minor(dev)));
        }
    }
    eprintln!("SKIP: root on this host can open neither the data disk nor /dev/loop0");
    None
}

#[test]
fn distro_root_cannot_read_the_disk_through_a_device_node_it_made() {
    if !can_run_agent() {
        return;
    }
    let Some(cgroups) = common::cgroup2_root() else {
        return;
    };
    let agent = TestAgent::start_with_cgroups(Some(&cgroups));
    let Some((major, minor)) = openable_block_device(&agent) else {
        return;
    };
    agent.import_debian("rawdisk");
    agent.import_debian("victim");
    agent.ok(&["start", "victim"]);
    let script = format!(
        "mknod /root/disk b {major} {minor} && head -c 512 /root/disk >/dev/null && echo disk-opened; \
         head -c 4 /dev/urandom | wc -c; echo ok > /dev/null && echo null-ok"
    );

    let out = agent.run(&["exec", "rawdisk", "--", "sh", "-c", &script]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));

    assert!(
        stderr.contains("Operation not permitted"),
        "reading the disk was not refused: {stdout} {stderr}"
    );
    assert!(!stdout.contains("disk-opened"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "4"), "urandom: {stdout}");
    assert!(stdout.contains("null-ok"), "{stdout}");
    assert_victim_unharmed(&agent);
}

/// Root in a distro trying to lift its device filter with `bpf(2)` (perl
/// is in every Debian): detach what is attached to the cgroup it sees,
/// then load an allow-everything program and attach it there, with each
/// attach mode.
const LIFT_DEVICE_FILTER: &str = r#"
use strict;
my $SYS_BPF = 321;
sysopen(my $group, "/sys/fs/cgroup", 0) or die "open /sys/fs/cgroup: $!\n";
my $fd = fileno($group);
my $detach = pack("LLLLL", $fd, 0, 6, 0, 0);
my $r = syscall($SYS_BPF, 9, $detach, length($detach));
print "detach: ", ($r < 0 ? "refused ($!)" : "done"), "\n";
my $insns = pack("CCsl", 0xb7, 0, 0, 1) . pack("CCsl", 0x95, 0, 0, 0);
my $license = "GPL\0";
my $load = pack("LLQQLLQLL", 15, 2, unpack("J", pack("P", $insns)),
    unpack("J", pack("p", $license)), 0, 0, 0, 0, 0) . ("\0" x 24);
my $prog = syscall($SYS_BPF, 5, $load, length($load));
print "load: ", ($prog < 0 ? "refused ($!)" : "done"), "\n";
exit 0 if $prog < 0;
for my $flags (0, 1, 2) {
    my $attach = pack("LLLLL", $fd, $prog, 6, $flags, 0);
    my $a = syscall($SYS_BPF, 8, $attach, length($attach));
    print "attach flags=$flags: ", ($a < 0 ? "refused ($!)" : "done"), "\n";
}
"#;

#[test]
fn distro_root_cannot_detach_or_override_its_device_filter() {
    if !can_run_agent() {
        return;
    }
    let Some(cgroups) = common::cgroup2_root() else {
        return;
    };
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIP: the script calls bpf(2) by its x86_64 number");
        return;
    }
    let agent = TestAgent::start_with_cgroups(Some(&cgroups));
    let Some((major, minor)) = openable_block_device(&agent) else {
        return;
    };
    agent.import_debian("unfilter");
    agent.import_debian("bystander");
    agent.ok(&["start", "bystander"]);
    std::fs::write(
        agent.rootfs("unfilter").join("root/lift.pl"),
        LIFT_DEVICE_FILTER,
    )
    .unwrap();
    let script = format!(
        "perl /root/lift.pl; mknod /root/disk b {major} {minor} && \
         head -c 512 /root/disk >/dev/null && echo disk-opened"
    );

    let out = agent.run(&["exec", "unfilter", "--", "sh", "-c", &script]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));

    // Root could load BPF programs, so the attempts below were real.
    assert!(stdout.contains("load: done"), "{stdout} {stderr}");
    assert!(
        stdout.contains("detach: refused"),
        "the distro detached a filter from its own group: {stdout}"
    );
    assert!(
        !stdout.contains("disk-opened"),
        "the disk opened after the filter was fought: {stdout} {stderr}"
    );
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    // The filtered group is not one the distro can open: its processes
    // are below its cgroup namespace root, itself one level below it.
    let group = cgroups.join("distroctl/unfilter");
    let direct = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
    let init = std::fs::read_to_string(group.join("distro/init.scope/cgroup.procs")).unwrap();
    assert!(
        direct.trim().is_empty(),
        "processes in the filtered group: {direct}"
    );
    assert!(!init.trim().is_empty(), "no PID 1 below the filtered group");
    assert_eq!(
        agent.sh("unfilter", "grep '^0::' /proc/self/cgroup").trim(),
        "0::/distroctl-exec"
    );
    assert_unharmed(&agent, "bystander");
}

#[test]
fn a_start_that_stalls_holds_up_only_its_own_distro() {
    if !can_run_agent() {
        return;
    }
    let Some(cgroups) = common::cgroup2_root() else {
        return;
    };
    let agent = TestAgent::start_with_cgroups(Some(&cgroups));
    agent.import_debian("stalled");
    agent.import_debian("quick");
    agent.ok(&["start", "quick"]);
    // A group the agent cannot clear (a process is left in it), frozen:
    // the stalled distro's init stops as soon as it joins, mid-start.
    let group = cgroups.join("distroctl/stalled");
    std::fs::create_dir_all(&group).unwrap();
    let mut leftover = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    std::fs::write(group.join("cgroup.procs"), leftover.id().to_string()).unwrap();
    std::fs::write(group.join("cgroup.freeze"), "1").unwrap();
    let mut start = agent.spawn(&["start", "stalled"]);
    std::thread::sleep(Duration::from_secs(1));

    let started = Instant::now();
    let quick = agent.sh("quick", "echo alive");
    let quick_took = started.elapsed();
    let list = text(&agent.ok(&["list"]).stdout);
    let still_starting = start.try_wait().unwrap().is_none();
    std::fs::write(group.join("cgroup.freeze"), "0").unwrap();
    let start_out = start.wait_with_output().unwrap();
    let _ = leftover.kill();
    let _ = leftover.wait();

    assert!(
        still_starting,
        "the stalled start ended early: {}",
        text(&start_out.stderr)
    );
    assert_eq!(quick.trim(), "alive");
    assert!(
        quick_took < VICTIM_DEADLINE,
        "exec in quick took {quick_took:?}"
    );
    assert!(
        common::list_row(&list, "quick").contains("running"),
        "{list}"
    );
    assert!(
        start_out.status.success(),
        "the start did not finish once thawed: {}",
        text(&start_out.stderr)
    );
    assert!(agent.is_running(), "the agent died: {}", agent.log_tail());
}

/// PID 1 of a running distro as the host sees it, and its start time.
fn pid1_of(agent: &TestAgent, distro: &str) -> String {
    agent
        .sh(distro, "cut -d' ' -f22 /proc/1/stat")
        .trim()
        .to_string()
}

#[test]
fn restarted_agent_takes_running_distros_back_instead_of_killing_them() {
    if !can_run_agent() {
        return;
    }
    let cgroups = common::cgroup2_root();
    let mut agent = TestAgent::start_with_cgroups(cgroups.as_deref());
    agent.import_debian("survivor");
    agent.sh("survivor", "setsid sleep 4848 </dev/null >/dev/null 2>&1 &");
    let started_at = pid1_of(&agent, "survivor");

    agent.kill_and_restart();

    let after = pid1_of(&agent, "survivor");
    let processes = agent.sh("survivor", "ps -eo args");
    let list = text(&agent.ok(&["list"]).stdout);
    assert_eq!(after, started_at, "PID 1 was restarted");
    assert!(processes.contains("sleep 4848"), "{processes}");
    assert!(
        common::list_row(&list, "survivor").contains("running"),
        "{list}"
    );
    assert!(
        !agent.log_tail().contains("stopping what is left"),
        "{}",
        agent.log_tail()
    );
    // It is still managed: terminate stops it, and it starts afresh.
    agent.ok(&["terminate", "survivor"]);
    let list = text(&agent.ok(&["list"]).stdout);
    assert!(
        common::list_row(&list, "survivor").contains("stopped"),
        "{list}"
    );
    assert!(!host_has_process(b"sleep\x004848\x00"));
    assert!(!agent.sh("survivor", "ps -eo args").contains("sleep 4848"));
}

#[test]
fn distro_whose_proc_points_outside_fails_to_start_and_touches_nothing() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("hostile");
    agent.import_debian("victim");
    agent.ok(&["start", "victim"]);
    let target = agent.rootfs("victim").join("planted");
    let proc_dir = agent.rootfs("hostile").join("proc");
    std::fs::remove_dir(&proc_dir).unwrap();
    symlink(&target, &proc_dir).unwrap();

    let (code, err) = refused(&agent, &["start", "hostile"]);

    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/proc: it is not a directory"), "{err}");
    assert!(!target.exists(), "a directory was made in the victim");
    assert_victim_unharmed(&agent);
}

#[test]
fn idle_connections_that_never_say_hello_do_not_lock_out_commands() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("victim");
    agent.ok(&["start", "victim"]);
    let idle: Vec<_> = (0..300)
        .map(|_| std::os::unix::net::UnixStream::connect(&agent.socket).unwrap())
        .collect();

    assert_victim_unharmed(&agent);
    let mut oldest = &idle[0];
    oldest
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    let read = std::io::Read::read(&mut oldest, &mut buf);
    assert_eq!(read.unwrap(), 0, "the oldest idle connection was closed");
}

#[test]
fn a_connection_that_never_says_hello_is_closed_after_the_handshake_limit() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    let mut silent = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    let connected = Instant::now();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let list = agent.run(&["list"]);
    let served_after = connected.elapsed();
    let mut buf = [0u8; 1];
    let read = std::io::Read::read(&mut silent, &mut buf);
    let closed_after = connected.elapsed();

    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(
        served_after < VICTIM_DEADLINE,
        "another client waited {served_after:?}"
    );
    assert_eq!(
        read.unwrap(),
        0,
        "the silent connection got bytes or an error"
    );
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&closed_after),
        "closed after {closed_after:?}, not after about 10 s"
    );
    assert!(agent.is_running(), "the agent died: {}", agent.log_tail());
}
