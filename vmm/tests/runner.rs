//! The `distroctl-vmm` binary: flags, exit status and the one-line error,
//! with probe guests under real KVM.

mod probe_guest;

use std::process::{Command, Output};

use probe_guest::{bzimage, kvm_unavailable, write_file, Probe};

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distroctl-vmm"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Boots a probe that prints `greeting` and then runs `ending`.
fn run_probe(greeting: &[u8], ending: impl FnOnce(&mut Probe)) -> (Output, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut probe = Probe::new();
    probe.emit_literal(greeting);
    ending(&mut probe);
    let kernel = write_file(dir.path(), "probe.bzImage", &bzimage(&probe.finish()));
    let console = dir.path().join("console.log");

    let out = vmm()
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--memory-mib",
            "128",
            "--cpus",
            "2",
            "--cmdline",
            "console=ttyS0",
        ])
        .arg("--console")
        .arg(&console)
        .output()
        .unwrap();

    (out, std::fs::read(&console).unwrap_or_default())
}

#[test]
fn probe_runner_exits_0_when_the_guest_powers_off() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }

    let (out, console) = run_probe(b"hello from the probe", |_| {});

    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("guest powered off"),
        "{}",
        stderr(&out)
    );
    assert_eq!(console, b"hello from the probe");
}

#[test]
fn probe_runner_exits_0_when_the_guest_resets_through_the_i8042() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }

    let (out, console) = run_probe(b"rebooting", |p| {
        use iced_x86::code_asm::*;
        p.asm.mov(edx, 0x64u32).unwrap();
        p.asm.mov(al, 0xfeu32).unwrap();
        p.asm.out(dx, al).unwrap();
    });

    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("guest reset"), "{}", stderr(&out));
    assert_eq!(console, b"rebooting");
}

#[test]
fn probe_runner_names_a_missing_kernel_in_one_line() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }

    let out = vmm()
        .args(["--kernel", "/nonexistent/vmlinuz", "--memory-mib", "128"])
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/vmlinuz"), "{err}");
}

#[test]
fn runner_refuses_a_kernel_and_firmware_together() {
    let out = vmm()
        .args(["--kernel", "/k", "--firmware", "/f"])
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn runner_needs_a_kernel_or_firmware() {
    let out = vmm().output().unwrap();

    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--kernel"), "{}", stderr(&out));
}

#[test]
fn probe_runner_names_a_missing_net_socket_and_passt_in_one_line() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "probe.bzImage",
        &bzimage(&Probe::new().finish()),
    );
    let socket = dir.path().join("net.sock");

    let out = vmm()
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "128", "--net-socket"])
        .arg(&socket)
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("passt"), "{err}");
}

#[test]
fn runner_refuses_a_malformed_mac_in_one_line() {
    let out = vmm()
        .args([
            "--kernel",
            "/k",
            "--net-socket",
            "/n.sock",
            "--mac",
            "52:54:00:12:34",
        ])
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.lines().next().unwrap().contains("52:54:00:12:34"),
        "{err}"
    );
    assert!(err.contains("six hex bytes"), "{err}");
}
