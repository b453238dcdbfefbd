//! The manager daemon and the complete CLI, through the real daemon and
//! the QEMU backend: idle shutdown, crash recovery, shutdown under an open
//! session, concurrent commands, the default distro, per-distro settings
//! and bad input.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::vm::TestVm;
use common::{assert_interactive_shell, debian_rootfs, list_row, text, Cli};

fn tar() -> &'static str {
    debian_rootfs().to_str().unwrap()
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `exec NAME -- sleep 300` in the background and waits until the
/// sleep runs in the distro.
fn background_sleep(vm: &TestVm, name: &str) -> Child {
    let child = vm.spawn(&["exec", name, "--", "sleep", "300"]);
    wait_for("the sleep to run", Duration::from_secs(30), || {
        vm.sh(name, "ps -eo args").contains("sleep 300")
    });
    child
}

fn wait_with_timeout(child: Child, limit: Duration) -> std::process::Output {
    let pid = child.id() as i32;
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        process_alive(pid)
    });
    let out = child.wait_with_output().unwrap();
    assert!(!killer.join().unwrap(), "command did not end in {limit:?}");
    out
}

fn manager_log(vm: &TestVm) -> String {
    std::fs::read_to_string(vm.data_dir().join("manager.log")).unwrap_or_default()
}

#[test]
fn first_distro_becomes_the_default_and_shell_opens_it_on_a_terminal() {
    let vm = TestVm::new("");
    let out = vm.run(&["shell"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no default distro"), "{out:?}");
    assert!(vm.state().is_none(), "nothing booted for a usage mistake");

    let out = vm.ok(&["import", "debian", tar()]);
    assert!(text(&out.stderr).contains("default distro"), "{out:?}");
    vm.ok(&["import", "other", tar()]);
    let list = text(&vm.ok(&["list"]).stdout);
    assert!(list.lines().any(|l| l.starts_with("* debian")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("  other")), "{list}");

    let mut shell = vm.cli();
    shell.arg("shell");
    assert_interactive_shell(shell);

    vm.ok(&["set-default", "other"]);
    let list = text(&vm.ok(&["list"]).stdout);
    assert!(list.lines().any(|l| l.starts_with("* other")), "{list}");
    let out = vm.run(&["set-default", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no distro named nosuch"),
        "{out:?}"
    );
}

#[test]
fn idle_vm_stops_and_the_next_command_boots_it_again() {
    let vm = TestVm::new("idle_timeout = 3\n");
    vm.ok(&["import", "idle", tar()]);
    let runner = vm.runner_pid().expect("runner running");
    let qemu = vm.qemu_pid().expect("qemu running");
    let manager = vm.manager_pid().expect("manager running");

    // A process left running in a distro keeps the VM up.
    vm.sh("idle", "setsid sleep 8 </dev/null >/dev/null 2>&1 &");
    std::thread::sleep(Duration::from_secs(6));
    assert!(process_alive(qemu), "stopped while a distro process ran");

    wait_for("the idle VM to stop", Duration::from_secs(40), || {
        !process_alive(qemu) && !process_alive(runner)
    });
    wait_for("the manager to exit", Duration::from_secs(10), || {
        !process_alive(manager)
    });
    assert!(
        manager_log(&vm).contains("idle for 3s"),
        "{}",
        manager_log(&vm)
    );

    assert_eq!(vm.sh("idle", "echo again"), "again\n");
    assert_ne!(vm.qemu_pid(), Some(qemu), "a new VM was booted");
}

#[test]
fn shutdown_ends_an_open_session_with_a_message() {
    let vm = TestVm::new("");
    vm.ok(&["import", "s", tar()]);
    let session = background_sleep(&vm, "s");

    vm.ok(&["shutdown"]);

    let out = wait_with_timeout(session, Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("the utility VM was shut down (distroctl shutdown)"),
        "{err}"
    );
    assert!(vm.wait_stopped());
}

#[test]
fn killed_vmm_is_reported_and_the_next_command_works() {
    let vm = TestVm::new("");
    vm.ok(&["import", "k", tar()]);
    let session = background_sleep(&vm, "k");
    let qemu = vm.qemu_pid().unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // Generous: under nested emulation noticing the death and answering
    // the session takes far longer than on hardware.
    let out = wait_with_timeout(session, Duration::from_secs(120));
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("stopped unexpectedly"), "{err}");
    assert_eq!(vm.sh("k", "echo back"), "back\n");
    assert!(
        manager_log(&vm).contains("stopped unexpectedly"),
        "{}",
        manager_log(&vm)
    );
}

#[test]
fn distros_run_side_by_side_and_unregister_frees_disk_space() {
    let vm = TestVm::new("");
    vm.ok(&["import", "left", tar()]);
    vm.ok(&["import", "right", tar()]);
    for name in ["left", "right"] {
        vm.sh(name, "setsid sleep 1000 </dev/null >/dev/null 2>&1 &");
    }
    let list = text(&vm.ok(&["list", "-v"]).stdout);
    assert!(list_row(&list, "left").contains("running"), "{list}");
    assert!(list_row(&list, "right").contains("running"), "{list}");

    vm.ok(&["terminate", "left"]);
    let list = text(&vm.ok(&["list", "-v"]).stdout);
    assert!(list_row(&list, "left").contains("stopped"), "{list}");
    assert!(list_row(&list, "right").contains("running"), "{list}");

    let disk = vm.data_dir().join("data.img");
    let allocated = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&disk).unwrap().blocks() * 512
    };
    let before = allocated();
    vm.ok(&["unregister", "--yes", "right"]);
    // ext4 mounted with `discard` trims freed blocks after its journal
    // commit; QEMU turns that into holes in the image file.
    wait_for(
        "the freed space to reach the host",
        Duration::from_secs(60),
        || {
            vm.sh("left", "sync");
            before.saturating_sub(allocated()) > 100 << 20
        },
    );
    let list = text(&vm.ok(&["list"]).stdout);
    assert!(!list.contains("right"), "{list}");
}

#[test]
fn twenty_concurrent_commands_share_one_vm() {
    let vm = TestVm::new("");
    vm.ok(&["import", "c", tar()]);
    vm.ok(&["shutdown"]);
    assert!(vm.wait_stopped() && vm.wait_manager_gone());
    let boots_before = manager_log(&vm).matches("Starting the utility VM").count();

    let children: Vec<_> = (0..20)
        .map(|i| vm.spawn(&["exec", "c", "--", "echo", &format!("n{i}")]))
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = wait_with_timeout(child, Duration::from_secs(120));
        assert!(out.status.success(), "command {i}: {out:?}");
        assert_eq!(text(&out.stdout), format!("n{i}\n"));
    }

    let boots = manager_log(&vm).matches("Starting the utility VM").count() - boots_before;
    assert_eq!(boots, 1, "{}", manager_log(&vm));
}

#[test]
fn distro_settings_are_stored_and_applied() {
    let vm = TestVm::new("");
    vm.ok(&["import", "conf", tar()]);

    vm.ok(&[
        "configure",
        "conf",
        "--default-user",
        "nobody",
        "--pids-max",
        "200",
    ]);
    vm.ok(&["terminate", "conf"]);

    assert_eq!(vm.sh("conf", "id -un"), "nobody\n");
    let list = text(&vm.ok(&["list", "-v"]).stdout);
    assert!(list_row(&list, "conf").contains("nobody"), "{list}");
    let out = vm.run(&["configure", "nosuch", "--systemd", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no distro named nosuch"));
}

#[test]
fn bad_input_gets_one_clear_line() {
    let vm = TestVm::new("");
    let usage = |args: &[&str], needle: &str| {
        let out = vm.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(text(&out.stderr).contains(needle), "{args:?}: {out:?}");
    };
    usage(&["frobnicate"], "unrecognized subcommand");
    usage(&["exec", "--bogus", "x", "--", "true"], "--bogus");
    usage(&["list", "--verbose=maybe"], "verbose");

    vm.ok(&["import", "keep", tar()]);
    let out = vm.run(&["exec", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("nosuch") && err.lines().count() == 1, "{err}");

    let out = vm.run(&["import", "notatar", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).lines().count() == 1, "{out:?}");
    let list = text(&vm.ok(&["list"]).stdout);
    assert!(!list.contains("notatar") && list.contains("keep"), "{list}");
}

#[test]
fn unusable_data_dir_and_foreign_runtime_dir_are_refused() {
    let vm = TestVm::new("");

    let out = vm
        .cli()
        .env("XDG_DATA_HOME", "/etc/hostname/data")
        .args(["exec", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("/etc/hostname/data"), "{err}");

    // Someone else's runtime directory (and manager socket) is never used.
    let foreign = vm.home.path().join("foreign");
    let dir = foreign.join("distroctl");
    std::fs::create_dir_all(&dir).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("manager.sock")).unwrap();
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    nix::unistd::chown(&dir, nobody, None).unwrap();
    nix::unistd::chown(&dir.join("manager.sock"), nobody, None).unwrap();
    let out = vm
        .cli()
        .env("XDG_RUNTIME_DIR", &foreign)
        .args(["list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("belongs to uid 65534"), "{err}");
    assert!(vm.state().is_none(), "no VM was started");
}
