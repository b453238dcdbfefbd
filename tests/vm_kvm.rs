//! The whole stack on our own VMM: boot, agent over our in-process vsock
//! device, a distro, exec and a shell on a real terminal, clean shutdown.
//! It needs hardware virtualization; elsewhere it prints why it skips.
//! (`DISTROCTL_TEST_BACKEND=kvm cargo test --test vm_qemu --test vm_manager`
//! runs the rest of the VM suite on our VMM too.)

mod common;

use common::vm::TestVm;
use common::{assert_interactive_shell, debian_rootfs, text, Cli};

/// Why our VMM cannot boot a stock kernel here, if it cannot.
fn skip_reason() -> Option<String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = kvm {
        return Some(format!("/dev/kvm is not usable ({e})"));
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Some("/dev/kvm is PVM, which cannot boot the stock Debian kernel".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    (!hw).then(|| "the CPU has no VT-x/AMD-V".to_string())
}

#[test]
fn own_vmm_runs_distros_end_to_end() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP own_vmm_runs_distros_end_to_end: {why}");
        return;
    }
    let vm = TestVm::new("backend = \"kvm\"\n");
    vm.ok(&["import", "debian", debian_rootfs().to_str().unwrap()]);
    assert_eq!(vm.state().unwrap()["backend"], "kvm");
    assert!(vm.sh("debian", "uname -r").trim().ends_with("cloud-amd64"));
    let status = text(&vm.ok(&["status"]).stdout);
    assert!(status.contains("own VMM"), "{status}");
    let mut shell = vm.cli();
    shell.args(["shell", "debian"]);
    assert_interactive_shell(shell);
    vm.ok(&["shutdown"]);
    assert!(vm.wait_stopped());
    assert!(
        vm.console_tail().contains("reboot: Power down"),
        "{}",
        vm.console_tail()
    );
}

#[test]
fn forced_own_vmm_on_this_host_is_a_clear_error_or_works() {
    let vm = TestVm::new("backend = \"kvm\"\n");
    let out = vm.run(&["list"]);
    match skip_reason() {
        Some(_) => {
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let err = text(&out.stderr);
            assert!(err.contains("backend = \"kvm\" cannot run here"), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(vm.state().is_none(), "no VM was started");
        }
        None => assert!(out.status.success(), "{out:?}"),
    }
    let status = text(&vm.ok(&["status"]).stdout);
    assert!(status.contains("Backend:"), "{status}");
}
