//! The vCPU state at the kernel's entry point: general registers, segment
//! and control registers, FPU, MSRs, and the local APIC's LINT pins.
//!
//! The values are built by pure functions so tests can check them against
//! the boot protocols; [`configure_vcpu`] only hands them to KVM.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::gdt::{
    boot_gdt, segment_from_descriptor, CODE32_INDEX, CODE64_INDEX, DATA_INDEX, TSS_INDEX,
};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START};

/// CR0: protection enable.
pub const X86_CR0_PE: u64 = 0x1;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 0x10;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 0x8000_0000;
/// CR4: physical address extension.
pub const X86_CR4_PAE: u64 = 0x20;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 0x100;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 0x400;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, paging on, `rsi` = zero page.
    Linux64 {
        /// Guest address of `boot_params`.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh {
        /// Guest address of `hvm_start_info`.
        start_info: u64,
    },
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// The instruction pointer at entry.
    pub entry: u64,
    /// The protocol the entry point expects.
    pub protocol: BootProtocol,
}

/// What failed while loading the initial vCPU state.
#[derive(Debug, Error)]
pub enum RegsError {
    /// Writing the GDT or IDT into guest memory.
    #[error("cannot write the boot GDT/IDT into guest memory")]
    WriteDescriptorTables(#[source] GuestMemoryError),
    /// A KVM register ioctl.
    #[error("cannot set the vCPU's {what}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_MSRS` accepted fewer MSRs than given.
    #[error("KVM accepted {set} of {wanted} boot MSRs")]
    PartialMsrs {
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// General registers at entry.
pub fn boot_regs(boot: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rip: boot.entry,
        // Bit 1 of RFLAGS is reserved and must be set.
        rflags: 0x2,
        ..Default::default()
    };
    match boot.protocol {
        BootProtocol::Linux64 { zero_page } => {
            regs.rsi = zero_page;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        BootProtocol::Pvh { start_info } => regs.rbx = start_info,
    }
    regs
}

/// Segment, descriptor-table and control registers at entry, starting from
/// the vCPU's current `sregs` (which carry KVM's APIC base and the like).
pub fn boot_sregs(mut sregs: kvm_sregs, boot: &BootEntry) -> kvm_sregs {
    let gdt = boot_gdt();
    let code_index = match boot.protocol {
        BootProtocol::Linux64 { .. } => CODE64_INDEX,
        BootProtocol::Pvh { .. } => CODE32_INDEX,
    };
    let data = segment_from_descriptor(gdt[DATA_INDEX as usize], DATA_INDEX);
    sregs.cs = segment_from_descriptor(gdt[code_index as usize], code_index);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_descriptor(gdt[TSS_INDEX as usize], TSS_INDEX);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    match boot.protocol {
        BootProtocol::Linux64 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// FPU state after a reset (x87 control word and MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs a kernel expects in a known state: the syscall/sysenter MSRs
/// cleared, the TSC at zero, fast string operations enabled.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Offset of LVT LINT0 in the local APIC register page.
const APIC_LVT0: usize = 0x350;
/// Offset of LVT LINT1.
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn lapic_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

/// Wires LINT0 to ExtINT (the legacy PIC) and LINT1 to NMI, as a BIOS does
/// for the bootstrap processor; the delivery mode sits in bits 8–10.
pub fn set_lint_pins(lapic: &mut kvm_lapic_state) {
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let value = lapic_register(lapic, offset);
        set_lapic_register(lapic, offset, (value & !0x700) | (mode << 8));
    }
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_descriptor_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    for (index, entry) in boot_gdt().into_iter().enumerate() {
        mem.write_obj(entry, GuestAddress(GDT_START + index as u64 * 8))
            .map_err(RegsError::WriteDescriptorTables)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(RegsError::WriteDescriptorTables)
}

/// Loads the full boot state into a vCPU. `boot` is `None` for application
/// processors, which Linux starts itself through INIT/SIPI; they only get
/// MSRs, FPU and LINT pins.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    boot: Option<&BootEntry>,
    irqchip: bool,
) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).expect("the boot MSR list is short");
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::PartialMsrs {
            set,
            wanted: entries.len(),
        });
    }
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("FPU"))?;
    if let Some(boot) = boot {
        let sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
        vcpu.set_sregs(&boot_sregs(sregs, boot))
            .map_err(kvm("special registers"))?;
        vcpu.set_regs(&boot_regs(boot)).map_err(kvm("registers"))?;
    }
    if irqchip {
        let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
        set_lint_pins(&mut lapic);
        vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX: BootEntry = BootEntry {
        entry: 0x100200,
        protocol: BootProtocol::Linux64 { zero_page: 0x7000 },
    };
    const PVH: BootEntry = BootEntry {
        entry: 0x1000000,
        protocol: BootProtocol::Pvh { start_info: 0x6000 },
    };

    #[test]
    fn linux_entry_passes_zero_page_in_rsi_with_a_stack() {
        let regs = boot_regs(&LINUX);

        assert_eq!((regs.rip, regs.rsi, regs.rflags), (0x100200, 0x7000, 2));
        assert_eq!(regs.rsp, BOOT_STACK_POINTER);
    }

    #[test]
    fn pvh_entry_passes_start_info_in_rbx() {
        let regs = boot_regs(&PVH);

        assert_eq!((regs.rip, regs.rbx, regs.rsi), (0x1000000, 0x6000, 0));
    }

    #[test]
    fn linux_entry_is_in_long_mode_with_paging() {
        let sregs = boot_sregs(kvm_sregs::default(), &LINUX);

        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x10, 1));
        assert_eq!(sregs.ds.selector, 0x18);
        assert_eq!(sregs.gdt.base, GDT_START);
    }

    #[test]
    fn pvh_entry_is_32_bit_protected_mode_without_paging() {
        let sregs = boot_sregs(kvm_sregs::default(), &PVH);

        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cr0 & X86_CR0_PE, X86_CR0_PE);
        assert_eq!((sregs.efer, sregs.cr4), (0, 0));
        assert_eq!((sregs.cs.l, sregs.cs.db, sregs.cs.selector), (0, 1, 0x8));
    }

    #[test]
    fn boot_sregs_keep_the_apic_base_kvm_chose() {
        let before = kvm_sregs {
            apic_base: 0xfee0_0900,
            ..Default::default()
        };

        assert_eq!(boot_sregs(before, &LINUX).apic_base, 0xfee0_0900);
    }

    #[test]
    fn lint_pins_become_extint_and_nmi_without_touching_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_register(&mut lapic, APIC_LVT0, 0x0001_0000);

        set_lint_pins(&mut lapic);

        assert_eq!(lapic_register(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_register(&lapic, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_clear_syscall_entry() {
        let msrs = boot_msrs();

        assert!(msrs.iter().any(|m| m.index == 0x1a0 && m.data == 1));
        assert!(msrs.iter().any(|m| m.index == 0xc000_0082 && m.data == 0));
    }
}
