//! Networking of the utility VM under QEMU: the guest reaches the outside
//! through passt (name resolution, `apt-get update`), listening ports in a
//! distro are forwarded to the host's loopback, `distroctl proxy` relays
//! stdio to a distro port, and OpenSSH works through the generated config.

mod common;

use common::vm::TestVm;
use common::{debian_rootfs, text, Cli};

/// The host name of the first apt source of the distro (taken from the
/// host's apt configuration when the test rootfs was built).
const APT_HOST: &str =
    "sed -n 's|.*https\\?://\\([^/ ]*\\).*|\\1|p' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -n1";

fn debian_vm(name: &str) -> TestVm {
    let vm = TestVm::new("");
    vm.ok(&["import", name, debian_rootfs().to_str().unwrap()]);
    vm
}

#[test]
fn vm_resolves_names_and_runs_apt_get_update() {
    let vm = debian_vm("net");

    let resolv = vm.sh("net", "cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.0.2.3"), "{resolv}");
    let host = vm.sh("net", APT_HOST);
    let host = host.trim();
    assert!(!host.is_empty(), "no apt source in the test rootfs");
    let resolved = vm.sh("net", &format!("getent hosts {host}"));
    assert!(resolved.contains(host), "{resolved}");

    let out = vm.run(&["exec", "net", "--", "apt-get", "update"]);
    assert!(
        out.status.success(),
        "apt-get update failed: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        vm.console_tail()
    );
    assert!(text(&out.stdout).contains("Reading package lists"));
}
