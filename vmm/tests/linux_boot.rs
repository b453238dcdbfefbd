//! Boots a real Linux kernel (Debian's cloud kernel by default) on hosts
//! with hardware virtualization: the kernel must find our e820 map, ACPI
//! tables (hardware-reduced FADT, MADT, DSDT with COM1) and serial console,
//! then — with no root file system and `panic=-1` — panic and reboot, which
//! ends the VMM with a reset.
//!
//! Skipped with a printed reason on hosts without VT-x/AMD-V: under PVM
//! (paravirtual KVM) a stock kernel runs, slowly, until the KVM instruction
//! emulator meets an instruction it cannot emulate (seen: `cmpxchg16b`,
//! `xrstor`).
//!
//! The kernel: `$DISTROCTL_TEST_KERNEL`, else the newest one distroctl
//! cached under `~/.cache/distroctl/kernels/*/vmlinuz`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vmm::boot::BootSource;
use vmm::config::VmConfig;
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

fn hardware_virtualization() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.split_whitespace().any(|w| w == "vmx" || w == "svm");
    let module = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    if flags && module {
        Ok(())
    } else {
        Err("no hardware virtualization (VT-x/AMD-V with kvm_intel/kvm_amd)".into())
    }
}

fn test_kernel() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("DISTROCTL_TEST_KERNEL") {
        return Ok(path.into());
    }
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let cache = Path::new(&home).join(".cache/distroctl/kernels");
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map_err(|_| format!("no kernel cache at {}", cache.display()))?
        .filter_map(|entry| Some(entry.ok()?.path().join("vmlinuz")))
        .filter(|path| path.is_file())
        .collect();
    kernels.sort();
    kernels.pop().ok_or_else(|| {
        format!(
            "no kernel in {}; set DISTROCTL_TEST_KERNEL",
            cache.display()
        )
    })
}

#[test]
fn linux_finds_acpi_and_serial_then_reboots_on_panic() {
    let kernel = match hardware_virtualization().and_then(|()| test_kernel()) {
        Ok(kernel) => kernel,
        Err(reason) => {
            eprintln!("skipping linux_finds_acpi_and_serial_then_reboots_on_panic: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let config = VmConfig {
        boot: BootSource::Kernel {
            kernel,
            initramfs: None,
            cmdline: "console=ttyS0 panic=-1 loglevel=7 pci=off".into(),
        },
        memory_mib: 512,
        cpus: 2,
        disk: None,
        vsock: None,
        rng: false,
        balloon: false,
        net: None,
        console: Some(console.clone()),
        ram_backing: Default::default(),
        stats_file: None,
        fs: Vec::new(),
    };
    let vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(120)).is_err() {
            handle.stop();
        }
    });

    let reason = vm.run().unwrap();
    drop(done);
    watchdog.join().unwrap();

    let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    assert_eq!(reason, ExitReason::Reset, "{log}");
    for expected in [
        "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: DSDT",
        "smpboot: Allowing 2 CPUs",
        "ttyS0 at I/O 0x3f8 (irq = 4",
        "Kernel panic",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
}
