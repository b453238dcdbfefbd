//! The whole stack in the utility VM under QEMU (TCG on hosts without
//! hardware virtualization): boot, agent handshake over our vsock device,
//! distros, shells, shutdown, persistence, crash safety and bad input.

mod common;

use common::vm::TestVm;
use common::{debian_rootfs, list_row, stats_json, stats_of, stats_workload, text, Cli};

fn host_kernel() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn vm_runs_distros_and_keeps_them_across_shutdown() {
    let vm = TestVm::new("");
    let tar = debian_rootfs().to_str().unwrap();

    vm.ok(&["import", "alpha", tar]);
    vm.ok(&["import", "beta", tar]);
    let kernel = vm.sh("alpha", "uname -r");
    assert!(kernel.trim().ends_with("cloud-amd64"), "{kernel}");
    assert_ne!(kernel.trim(), host_kernel(), "runs on the guest kernel");
    assert_eq!(vm.sh("alpha", "hostname").trim(), "alpha");
    let state = vm.state().expect("vm.json while running");
    assert_eq!(state["backend"], common::vm::test_backend().as_str());

    // The distro's cgroup root holds no process and has every controller,
    // so a runtime in it (systemd, Docker, Podman) delegates as on a
    // machine of its own.
    let cgroups = vm.sh(
        "alpha",
        "cat /sys/fs/cgroup/cgroup.controllers; cat /sys/fs/cgroup/cgroup.procs; \
         echo '+memory +pids +cpu +cpuset' >/sys/fs/cgroup/cgroup.subtree_control && echo delegated",
    );
    for controller in ["cpuset", "cpu", "io", "memory", "pids"] {
        assert!(
            cgroups
                .lines()
                .next()
                .unwrap()
                .split(' ')
                .any(|c| c == controller),
            "{cgroups}"
        );
    }
    assert_eq!(cgroups.lines().nth(1), Some("delegated"), "{cgroups}");
    vm.sh("alpha", "echo kept > /root/note");
    vm.sh("beta", "setsid sleep 4646 </dev/null >/dev/null 2>&1 &");
    assert_stats_follow_the_workload(&vm, "beta");
    vm.ok(&["terminate", "alpha"]);
    let list = text(&vm.ok(&["list"]).stdout);
    let row = |n: &str| list_row(&list, n).to_string();
    assert!(row("alpha").contains("stopped"), "{list}");
    assert!(row("beta").contains("running"), "{list}");
    assert!(vm.sh("beta", "ps -eo args").contains("sleep 4646"));

    vm.ok(&["shutdown"]);
    assert!(vm.wait_stopped(), "VM still running after shutdown");
    assert!(
        vm.console_tail().contains("reboot: Power down"),
        "{}",
        vm.console_tail()
    );

    let stopped = vm.run(&["stats"]);
    let err = text(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not running"), "{err}");
    assert!(vm.state().is_none(), "stats must not boot the VM");

    // The next command boots a new VM; files and both distros persist.
    assert_eq!(vm.sh("alpha", "cat /root/note"), "kept\n");
    let list = text(&vm.ok(&["list"]).stdout);
    assert!(list.contains("alpha") && list.contains("beta"), "{list}");
}

/// `stats` of a running distro in the VM: allocating, forking and writing
/// move its values, which agree with its cgroup files as the distro sees
/// them (read after, so counters are at least as high), and the VM's host
/// side is sane. A bad name is one line.
fn assert_stats_follow_the_workload(vm: &common::vm::TestVm, name: &str) {
    let first = stats_json(vm, &[name]);
    vm.sh(name, &stats_workload(20_000));
    let doc = stats_json(vm, &[name]);
    let files = vm.sh(
        name,
        "cd /sys/fs/cgroup && sed -n 's/^usage_usec //p' cpu.stat && cat memory.peak memory.max \
         && awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^wbytes=/) s += substr($i, 8) }
                 END { printf \"%.0f\\n\", s }' io.stat",
    );
    let bad = vm.run(&["stats", name, "nosuch"]);
    let table = text(&vm.ok(&["stats"]).stdout);

    let (was, now) = (stats_of(&first, name), stats_of(&doc, name));
    let value = |d: &serde_json::Value, key: &str| {
        d[key].as_u64().unwrap_or_else(|| panic!("no {key} in {d}"))
    };
    assert!(
        value(now, "cpu_usage_usec") > value(was, "cpu_usage_usec"),
        "{was} {now}"
    );
    assert!(value(now, "pids") >= value(was, "pids") + 3, "{was} {now}");
    assert!(
        value(now, "memory_current_bytes") >= value(was, "memory_current_bytes") + (30 << 20),
        "{was} {now}"
    );
    assert!(
        value(now, "memory_peak_bytes") >= value(now, "memory_current_bytes"),
        "{now}"
    );
    assert!(
        value(now, "io_write_bytes") >= value(was, "io_write_bytes") + (8 << 20),
        "{was} {now}"
    );
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(files.len(), 4, "{files:?}");
    let file = |i: usize| files[i].trim().parse::<u64>().unwrap();
    assert!(file(0) >= value(now, "cpu_usage_usec"), "{files:?} {now}");
    // `stats` reads the distro's group, the distro sees its processes'
    // child group: the parent's peak may exceed the child's by the few
    // pages charged to the parent itself.
    assert!(
        file(1) + (1 << 20) >= value(now, "memory_peak_bytes"),
        "{files:?} {now}"
    );
    assert_eq!(files[2], "max");
    assert!(now.get("memory_max_bytes").is_none(), "no limit: {now}");
    assert!(file(3) >= value(now, "io_write_bytes"), "{files:?} {now}");

    let vm_side = &doc["vm"];
    assert_eq!(vm_side["backend"], common::vm::test_backend().as_str());
    assert!(value(vm_side, "monitor_rss_bytes") > 0, "{vm_side}");
    let apparent = value(vm_side, "data_disk_apparent_bytes");
    assert_eq!(apparent, 8 << 30, "{vm_side}");
    assert!(
        value(vm_side, "data_disk_allocated_bytes") <= apparent,
        "{vm_side}"
    );
    let returned = &vm_side["memory_returned_bytes"];
    assert!(returned.is_null() || returned.is_u64(), "{vm_side}");
    let guest = &doc["guest_memory"];
    assert!(value(guest, "total_bytes") <= 1 << 30, "{guest}");
    assert!(value(guest, "used_bytes") > 32 << 20, "{guest}");

    let err = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("nosuch"), "{err}");
    assert!(table.contains("monitor RSS"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(name) && l.contains("running")),
        "{table}"
    );
}

#[test]
fn vm_shell_works_on_a_real_terminal() {
    let vm = TestVm::new("");
    vm.ok(&["import", "term", debian_rootfs().to_str().unwrap()]);
    let mut cmd = vm.cli();
    cmd.args(["shell", "term"]);

    common::assert_interactive_shell(cmd);
}

#[test]
fn vm_exec_streams_are_binary_safe() {
    let vm = TestVm::new("");
    vm.ok(&["import", "bytes", debian_rootfs().to_str().unwrap()]);
    let mut data = vec![0u8; 8 << 20];
    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);

    let out = vm.round_trip_through_cat("bytes", &data);

    assert!(out.status.success());
    assert!(
        out.stdout == data,
        "8 MiB differ after the round trip through the VM"
    );
    let code = vm.run(&["exec", "bytes", "--", "sh", "-c", "exit 42"]);
    assert_eq!(code.status.code(), Some(42));
}

#[test]
fn synced_file_survives_killing_qemu() {
    let vm = TestVm::new("");
    vm.ok(&["import", "crash", debian_rootfs().to_str().unwrap()]);
    vm.sh("crash", "echo durable > /root/synced && sync");
    let qemu = vm.qemu_pid().expect("QEMU pid");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(vm.wait_stopped(), "runner did not notice QEMU died");

    assert_eq!(vm.sh("crash", "cat /root/synced"), "durable\n");
}

#[test]
fn concurrent_commands_boot_one_vm_and_a_second_runner_is_refused() {
    let vm = TestVm::new("");

    let children: Vec<_> = (0..4).map(|_| vm.spawn(&["list"])).collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let runner_log = std::fs::read_to_string(vm.runtime_dir().join("runner.log")).unwrap();
    assert_eq!(
        runner_log.matches("VM monitor started").count(),
        1,
        "{runner_log}"
    );

    let second = vm
        .cli()
        .args([
            "vm-run",
            "--qemu",
            "/usr/bin/qemu-system-x86_64",
            "--reason",
            "test",
        ])
        .args([
            "--memory-mib",
            "256",
            "--cpus",
            "1",
            "--kernel",
            "/k",
            "--kernel-version",
            "x",
        ])
        .args(["--initrd", "/i", "--disk", "/d", "--console-log", "/tmp/x"])
        .arg("--runtime-dir")
        .arg(vm.runtime_dir())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("already running"),
        "{}",
        text(&second.stderr)
    );
    assert!(vm.qemu_pid().is_some(), "the first VM keeps running");
}

#[test]
fn missing_and_corrupt_kernels_are_clear_errors() {
    let missing = TestVm::new("kernel = \"/nonexistent/vmlinuz\"\n");
    let out = missing.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("/nonexistent/vmlinuz"), "{err}");
    drop(missing);

    let corrupt = TestVm::new("");
    let junk = corrupt.home.path().join("junk-kernel");
    std::fs::write(&junk, vec![0x5a; 64 * 1024]).unwrap();
    std::fs::write(
        corrupt.home.path().join(".config/distroctl/config.toml"),
        format!("memory = \"1G\"\nkernel = \"{}\"\n", junk.display()),
    )
    .unwrap();
    let out = corrupt.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("junk-kernel"), "{err}");
    assert!(corrupt.state().is_none(), "no VM was started");
}

#[test]
fn bad_config_is_a_clear_error() {
    let vm = TestVm::new("memroy = \"2G\"\n");

    let out = vm.run(&["list"]);

    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("memroy"),
        "{err}"
    );
}

#[test]
fn agent_that_never_answers_times_out_with_the_console_tail() {
    // Far too short for any boot: the agent cannot answer in time.
    let vm = TestVm::new("boot_timeout = \"300ms\"\n");

    let out = vm.run(&["list"]);

    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("did not answer within 300ms"), "{err}");
    assert!(err.contains("console log"), "{err}");
    assert!(vm.wait_stopped(), "the stuck VM was stopped");
}

#[test]
fn full_data_disk_fails_the_import_and_keeps_other_distros() {
    let vm = TestVm::new("disk_size = \"300M\"\n");
    let tar = debian_rootfs().to_str().unwrap();
    vm.ok(&["import", "first", tar]);
    vm.sh("first", "echo mine > /root/keep");

    let out = vm.run(&["import", "second", tar]);

    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    let list = text(&vm.ok(&["list"]).stdout);
    assert!(!list.contains("second"), "{list}");
    assert_eq!(vm.sh("first", "cat /root/keep"), "mine\n");
    // The failed import's space is returned.
    let free = vm.sh("first", "echo ok");
    assert_eq!(free, "ok\n");
}

#[test]
fn status_logs_and_config_describe_the_vm_without_booting_it() {
    let vm = TestVm::new("");

    let stopped = text(&vm.ok(&["status"]).stdout);
    assert!(stopped.contains("VM:       stopped"), "{stopped}");
    assert!(vm.state().is_none(), "status must not boot the VM");
    let config = text(&vm.ok(&["config"]).stdout);
    assert!(
        config.contains("memory = \"1024M\"") && config.contains("cpus = 2"),
        "{config}"
    );

    vm.ok(&["list"]);
    let running = text(&vm.ok(&["status"]).stdout);
    let logs = text(&vm.ok(&["logs", "-n", "200"]).stdout);

    assert!(running.contains("VM:       running"), "{running}");
    let backend = format!("Backend:  {}", common::vm::test_backend());
    assert!(running.contains(&backend), "{running}");
    assert!(running.contains("cloud-amd64"), "{running}");
    assert!(logs.contains("distroctl-init: agent started"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "no terminal colour codes in logs");
}

#[test]
fn unregister_without_a_terminal_needs_yes() {
    let vm = TestVm::new("");
    vm.ok(&["import", "keepme", debian_rootfs().to_str().unwrap()]);

    let refused = vm.run(&["unregister", "keepme"]);
    let listed = text(&vm.ok(&["list"]).stdout);
    vm.ok(&["unregister", "--yes", "keepme"]);
    let after = text(&vm.ok(&["list"]).stdout);

    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("pass --yes"),
        "{}",
        text(&refused.stderr)
    );
    assert!(listed.contains("keepme"));
    assert!(!after.contains("keepme"), "{after}");
}
