//! Which accelerator QEMU can use on this host.
//!
//! `/dev/kvm` alone is not enough: on a PVM host (a paravirtual KVM without
//! VT-x/AMD-V, module `kvm_pvm`) stock kernels cannot boot, so QEMU must
//! emulate (TCG) there.

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

#[cfg(test)]
mod tests {
    use super::*;

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
