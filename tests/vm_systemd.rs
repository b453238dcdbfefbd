//! A distro that runs its own systemd as PID 1 in the utility VM: it boots
//! to `running` with no failed unit, `exec` and `systemctl` work from the
//! first command on, services enabled in it start again after a terminate,
//! journald and logind run, its console is `distroctl logs NAME`, and
//! terminate lets it power off.

mod common;

use common::vm::TestVm;
use common::{debian_rootfs, debian_systemd_rootfs, text, Cli};

const HELLO_UNIT: &str = "[Unit]\nDescription=a service enabled in the distro\n\n\
[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";

#[test]
fn systemd_distro_boots_keeps_its_services_and_powers_off() {
    let vm = TestVm::new("");
    let tar = debian_systemd_rootfs().to_str().unwrap();
    vm.ok(&["import", "--systemd", "sd", tar]);

    // The first command after the start already reaches systemd.
    let state = vm.sh("sd", "systemctl is-system-running --wait; true");
    let failed = vm.sh("sd", "systemctl --failed --no-legend --plain");
    let pid1 = vm.sh(
        "sd",
        "cat /proc/1/comm /proc/1/cgroup; tr '\\0' '\\n' </proc/1/environ | grep ^container=",
    );
    let services = vm.sh(
        "sd",
        "for s in systemd-journald systemd-logind dbus ssh; do systemctl is-active $s; done",
    );
    let journal = vm.sh(
        "sd",
        "logger -t probe written-to-the-journal; sleep 1; journalctl -b --no-pager -t probe -o cat",
    );

    assert_eq!(state.trim(), "running", "failed units: {failed}");
    assert_eq!(failed.trim(), "", "no failed unit");
    assert_eq!(pid1, "systemd\n0::/init.scope\ncontainer=distroctl\n");
    assert_eq!(services, "active\n".repeat(4), "{services}");
    assert!(journal.contains("written-to-the-journal"), "{journal}");

    // A shell is a login session of the distro's logind, with the user's
    // own systemd and runtime directory.
    let mut shell = vm.cli();
    shell.args(["shell", "sd"]);
    common::assert_interactive_shell(shell);
    let mut shell = vm.cli();
    shell.args(["shell", "sd"]);
    let session = common::shell_transcript(
        shell,
        "echo sessions=$(loginctl list-sessions --no-legend | wc -l) runtime=$XDG_RUNTIME_DIR; \
         systemctl --user show-environment >/dev/null && echo user-manager-up",
    );
    assert!(
        session.contains("sessions=1 runtime=/run/user/0"),
        "{session}"
    );
    assert!(session.contains("user-manager-up\r\n"), "{session}");

    // Its console: what systemd printed as it booted.
    let console = text(&vm.ok(&["logs", "sd", "-n", "200"]).stdout);
    assert!(console.contains("Welcome to Debian"), "{console}");

    // A service enabled in the distro starts again at its next start.
    let enabled = vm.sh(
        "sd",
        &format!(
            "cat >/etc/systemd/system/hello.service <<'EOF'\n{HELLO_UNIT}EOF\n\
             systemctl enable --now hello 2>/dev/null; systemctl is-active hello"
        ),
    );
    assert_eq!(enabled, "active\n");
    vm.ok(&["terminate", "sd"]);
    let logs = text(&vm.ok(&["logs", "-n", "400"]).stdout);
    assert!(
        logs.contains("distro's systemd powered off"),
        "terminate let systemd stop its services: {logs}"
    );
    assert_eq!(
        vm.sh(
            "sd",
            "systemctl is-system-running --wait >/dev/null; systemctl is-active hello ssh"
        ),
        "active\nactive\n"
    );
    let console = text(&vm.ok(&["logs", "sd", "-n", "1000"]).stdout);
    assert!(
        console.contains("Welcome to Debian"),
        "a new console log: {console}"
    );

    // A distro without its own systemd has no console; a bad name is one
    // line.
    vm.ok(&["import", "plain", debian_rootfs().to_str().unwrap()]);
    vm.ok(&["start", "plain"]);
    for (name, needle) in [("plain", "has no console log"), ("nosuch", "nosuch")] {
        let out = vm.run(&["logs", name]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
}
