//! Which VM monitor and accelerator run the utility VM on this host.
//!
//! `/dev/kvm` alone is not enough: on a PVM host (a paravirtual KVM without
//! VT-x/AMD-V, module `kvm_pvm`) stock kernels cannot boot, so there only a
//! PVM guest kernel runs under KVM, and QEMU must emulate (TCG) otherwise.
//! Our own VMM is preferred wherever KVM can boot the kernel.

use std::path::Path;

/// The accelerator and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accel {
    /// Hardware virtualization through KVM.
    pub kvm: bool,
    /// One sentence for `distroctl status` and logs.
    pub reason: String,
}

/// Facts the decision is made from, gathered from the host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// `/dev/kvm` can be opened read-write.
    pub kvm_usable: bool,
    /// The CPU flags include `vmx` or `svm`.
    pub hw_virt_flag: bool,
    /// The `kvm_pvm` module is loaded.
    pub pvm: bool,
}

impl HostFacts {
    /// Reads the facts of this host.
    pub fn probe() -> HostFacts {
        let kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw_virt_flag = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        HostFacts {
            kvm_usable,
            hw_virt_flag,
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
        }
    }
}

/// The host's TSC frequency in kHz, measured over a short interval.
///
/// Under TCG the guest's TSC runs at the host's rate, and the guest kernel's
/// own calibration against the emulated PIT sometimes fails on a loaded
/// host, stalling boot; passing `tsc_early_khz` skips that calibration.
pub fn tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let start = std::time::Instant::now();
        // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        let micros = start.elapsed().as_micros() as u64;
        (micros > 0 && t1 > t0).then(|| (t1 - t0) * 1000 / micros)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Chooses KVM when it can run a stock kernel, else TCG.
pub fn choose(facts: &HostFacts) -> Accel {
    let (kvm, reason) = if !facts.kvm_usable {
        (
            false,
            "/dev/kvm is missing or not accessible; QEMU emulates the CPU (TCG, slower)",
        )
    } else if facts.pvm {
        (false, "/dev/kvm is PVM (paravirtual KVM), which cannot boot stock kernels; QEMU emulates the CPU (TCG, slower)")
    } else if !facts.hw_virt_flag {
        (
            false,
            "the CPU reports no VT-x/AMD-V; QEMU emulates the CPU (TCG, slower)",
        )
    } else {
        (true, "hardware virtualization through /dev/kvm")
    };
    Accel {
        kvm,
        reason: reason.to_string(),
    }
}

/// The VM monitor that runs the utility VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// Our own VMM on `/dev/kvm`.
    OwnVmm,
    /// QEMU, with KVM when `kvm`, else TCG emulation.
    Qemu {
        /// Hardware virtualization through KVM.
        kvm: bool,
    },
}

/// The monitor and why it was chosen (shown by `distroctl status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPlan {
    /// The monitor.
    pub monitor: Monitor,
    /// One sentence for `distroctl status` and logs.
    pub reason: String,
}

/// What the user's setup asks of the backend.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// `backend` from the config or the command line.
    pub choice: crate::config::BackendChoice,
    /// The kernel to boot is a PVM guest kernel.
    pub pvm_guest_kernel: bool,
    /// `distroctl-vmm` is installed beside `distroctl`.
    pub own_vmm_installed: bool,
}

/// Picks the VM monitor: our VMM where KVM can boot the kernel (hardware
/// virtualization, or a PVM host with a PVM guest kernel), QEMU otherwise.
/// An explicit `backend = "kvm"` that cannot work is an error saying why.
pub fn choose_backend(facts: &HostFacts, wanted: &Wanted) -> Result<BackendPlan, String> {
    use crate::config::BackendChoice;
    let accel = choose(facts);
    let kvm_boots_it = facts.kvm_usable
        && if facts.pvm {
            wanted.pvm_guest_kernel
        } else {
            facts.hw_virt_flag && !wanted.pvm_guest_kernel
        };
    let own = |why: &str| BackendPlan {
        monitor: Monitor::OwnVmm,
        reason: format!("{why}; our own VMM runs the VM"),
    };
    let qemu = |why: String| BackendPlan {
        monitor: Monitor::Qemu { kvm: accel.kvm },
        reason: why,
    };
    let kvm_why = if facts.pvm {
        "/dev/kvm is PVM and the kernel is a PVM guest kernel"
    } else {
        "hardware virtualization (VT-x/AMD-V) through /dev/kvm"
    };
    match wanted.choice {
        BackendChoice::Qemu => Ok(qemu(format!("backend = \"qemu\" is configured; {}", accel.reason))),
        BackendChoice::Kvm if !wanted.own_vmm_installed => Err(
            "backend = \"kvm\" needs distroctl-vmm installed beside distroctl; build the workspace (cargo build --workspace)".into(),
        ),
        BackendChoice::Kvm if !kvm_boots_it => Err(format!(
            "backend = \"kvm\" cannot run here: {}; use backend = \"auto\" (QEMU){}",
            accel.reason.split(';').next().unwrap_or_default(),
            if facts.pvm { ", or configure a PVM guest kernel (kernel = …, kvm_flavor = \"pvm\")" } else { "" }
        )),
        BackendChoice::Kvm => Ok(own(kvm_why)),
        BackendChoice::Auto if kvm_boots_it && wanted.own_vmm_installed => Ok(own(kvm_why)),
        BackendChoice::Auto if kvm_boots_it => Ok(qemu(format!(
            "{}; distroctl-vmm is not installed, so QEMU runs the VM",
            accel.reason
        ))),
        BackendChoice::Auto => Ok(qemu(accel.reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendChoice;

    fn wanted(choice: BackendChoice, pvm_guest_kernel: bool) -> Wanted {
        Wanted {
            choice,
            pvm_guest_kernel,
            own_vmm_installed: true,
        }
    }

    const VTX: HostFacts = HostFacts {
        kvm_usable: true,
        hw_virt_flag: true,
        pvm: false,
    };
    const PVM: HostFacts = HostFacts {
        kvm_usable: true,
        hw_virt_flag: false,
        pvm: true,
    };

    #[test]
    fn auto_prefers_our_vmm_with_hardware_virtualization() {
        let plan = choose_backend(&VTX, &wanted(BackendChoice::Auto, false)).unwrap();

        assert_eq!(plan.monitor, Monitor::OwnVmm);
        assert!(plan.reason.contains("VT-x"), "{}", plan.reason);
    }

    #[test]
    fn pvm_host_runs_our_vmm_only_with_a_pvm_guest_kernel() {
        let stock = choose_backend(&PVM, &wanted(BackendChoice::Auto, false)).unwrap();
        let pvm = choose_backend(&PVM, &wanted(BackendChoice::Auto, true)).unwrap();

        assert_eq!(stock.monitor, Monitor::Qemu { kvm: false });
        assert!(stock.reason.contains("PVM"), "{}", stock.reason);
        assert_eq!(pvm.monitor, Monitor::OwnVmm);
        assert!(pvm.reason.contains("PVM guest kernel"), "{}", pvm.reason);
    }

    #[test]
    fn forced_kvm_that_cannot_run_says_why() {
        let err = choose_backend(&PVM, &wanted(BackendChoice::Kvm, false)).unwrap_err();
        assert!(err.contains("kvm_flavor"), "{err}");

        let no_kvm = HostFacts::default();
        let err = choose_backend(&no_kvm, &wanted(BackendChoice::Kvm, false)).unwrap_err();
        assert!(err.contains("/dev/kvm"), "{err}");

        let mut missing = wanted(BackendChoice::Kvm, false);
        missing.own_vmm_installed = false;
        assert!(choose_backend(&VTX, &missing)
            .unwrap_err()
            .contains("distroctl-vmm"));
    }

    #[test]
    fn qemu_when_configured_or_when_our_vmm_is_missing() {
        let plan = choose_backend(&VTX, &wanted(BackendChoice::Qemu, false)).unwrap();
        assert_eq!(plan.monitor, Monitor::Qemu { kvm: true });

        let mut missing = wanted(BackendChoice::Auto, false);
        missing.own_vmm_installed = false;
        let plan = choose_backend(&VTX, &missing).unwrap();
        assert_eq!(plan.monitor, Monitor::Qemu { kvm: true });
        assert!(plan.reason.contains("not installed"), "{}", plan.reason);
    }

    #[test]
    fn kvm_needs_device_flag_and_no_pvm() {
        let good = HostFacts {
            kvm_usable: true,
            hw_virt_flag: true,
            pvm: false,
        };

        assert!(choose(&good).kvm);
        assert!(
            !choose(&HostFacts {
                pvm: true,
                ..good.clone()
            })
            .kvm
        );
        assert!(
            !choose(&HostFacts {
                kvm_usable: false,
                ..good.clone()
            })
            .kvm
        );
        assert!(
            !choose(&HostFacts {
                hw_virt_flag: false,
                ..good
            })
            .kvm
        );
    }

    #[test]
    fn pvm_reason_says_why() {
        let accel = choose(&HostFacts {
            kvm_usable: true,
            hw_virt_flag: false,
            pvm: true,
        });

        assert!(accel.reason.contains("PVM"), "{}", accel.reason);
    }
}
