//! A probe ELF with a PVH note, entered through the PVH boot path (32-bit
//! protected mode, `ebx` = `hvm_start_info`), as a kernel and as firmware.
//! It reports the start info and what it points at.

mod probe_guest;

use std::path::PathBuf;

use probe_guest::{elf, kvm_unavailable, probe_config, write_file, Probe, Report, ELF_LOAD_ADDR};
use vmm::arch::pvh::XEN_HVM_START_MAGIC;
use vmm::arch::regs::BootProtocol;
use vmm::boot::BootSource;
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

const MARKER: &[u8] = b"PROBE-PVH:";
const CMDLINE: &str = "console=ttyS0 probe=pvh";

/// The report: ebx, CR0, magic, memmap entry count, the entries (24 bytes
/// each), the command line with its NUL, module count, the first module's
/// address and size, the RSDP address (u32 fields unless noted), "END".
fn pvh_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::with_mode(32, ELF_LOAD_ADDR);
    // A stack for the emit subroutine: PVH enters without one.
    p.asm.mov(esp, 0x8ff0u32).unwrap();
    p.asm.mov(edi, ebx).unwrap();
    p.emit_literal(MARKER);
    let emit_eax = |p: &mut Probe| {
        p.asm.push(eax).unwrap();
        p.asm.mov(esi, esp).unwrap();
        p.asm.mov(ecx, 4u32).unwrap();
        p.asm.call(p.emit).unwrap();
        p.asm.pop(eax).unwrap();
    };
    p.asm.mov(eax, edi).unwrap();
    emit_eax(&mut p);
    p.asm.mov(eax, cr0).unwrap();
    emit_eax(&mut p);
    p.asm.mov(eax, dword_ptr(edi)).unwrap(); // magic
    emit_eax(&mut p);
    p.asm.mov(eax, dword_ptr(edi + 0x30)).unwrap(); // memmap_entries
    emit_eax(&mut p);
    p.asm.imul_3(ecx, eax, 24).unwrap();
    p.asm.mov(esi, dword_ptr(edi + 0x28)).unwrap(); // memmap_paddr (low half)
    p.asm.call(p.emit).unwrap();
    p.asm.mov(esi, dword_ptr(edi + 0x18)).unwrap(); // cmdline_paddr
    let mut next = p.asm.create_label();
    p.asm.set_label(&mut next).unwrap();
    p.asm.mov(al, byte_ptr(esi)).unwrap();
    p.asm.out(dx, al).unwrap();
    p.asm.inc(esi).unwrap();
    p.asm.test(al, al).unwrap();
    p.asm.jnz(next).unwrap();
    p.asm.mov(eax, dword_ptr(edi + 0x0c)).unwrap(); // nr_modules
    emit_eax(&mut p);
    p.asm.mov(ebx, dword_ptr(edi + 0x10)).unwrap(); // modlist_paddr (low half)
    p.asm.mov(eax, dword_ptr(ebx)).unwrap(); // module paddr
    emit_eax(&mut p);
    p.asm.mov(eax, dword_ptr(ebx + 8)).unwrap(); // module size
    emit_eax(&mut p);
    p.asm.mov(eax, dword_ptr(edi + 0x20)).unwrap(); // rsdp_paddr
    emit_eax(&mut p);
    p.emit_literal(b"END");
    p.finish()
}

/// Runs the probe as `boot` and checks its report against the boot plan.
fn run_pvh_probe(make_source: impl FnOnce(PathBuf, PathBuf) -> BootSource) {
    let dir = tempfile::tempdir().unwrap();
    let image = write_file(dir.path(), "probe.elf", &elf(&pvh_probe(), true));
    let initramfs = write_file(dir.path(), "initramfs.cpio", &[0x42; 3000]);
    let mut config = probe_config(dir.path(), image.clone(), None, CMDLINE);
    config.boot = make_source(image, initramfs);

    let vm = Vm::new(config).unwrap();
    let plan = vm.boot_plan().clone();
    let reason = vm.run().unwrap();

    assert_eq!(reason, ExitReason::PowerOff);
    let BootProtocol::Pvh { start_info } = plan.entry.protocol else {
        panic!("a PVH note must select the PVH boot protocol");
    };
    assert_eq!(plan.entry.entry, ELF_LOAD_ADDR);
    let console = std::fs::read(dir.path().join("console.log")).unwrap();
    let mut report = Report::find(&console, MARKER);
    assert_eq!(u64::from(report.u32()), start_info, "ebx");
    let cr0 = report.u32();
    assert_eq!(
        (cr0 & 1, cr0 >> 31),
        (1, 0),
        "protected mode without paging: {cr0:#x}"
    );
    assert_eq!(report.u32(), XEN_HVM_START_MAGIC);
    assert_eq!(report.u32() as usize, plan.memory_map.len());
    for expected in &plan.memory_map {
        let (addr, size, kind, _reserved) =
            (report.u64(), report.u64(), report.u32(), report.u32());
        assert_eq!(
            (addr, size, kind),
            (expected.addr, expected.size, expected.kind)
        );
    }
    assert_eq!(report.c_string(), CMDLINE.as_bytes());
    match plan.initramfs {
        Some((addr, size)) => {
            assert_eq!(report.u32(), 1, "one module: the initramfs");
            assert_eq!(
                (u64::from(report.u32()), u64::from(report.u32())),
                (addr, size)
            );
        }
        None => {
            assert_eq!(report.u32(), 0, "no modules");
            report.take(8);
        }
    }
    assert_eq!(u64::from(report.u32()), plan.rsdp_addr);
    assert_eq!(report.take(3), b"END");
}

#[test]
fn probe_pvh_kernel_gets_start_info_memmap_cmdline_and_initramfs() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }

    run_pvh_probe(|kernel, initramfs| BootSource::Kernel {
        kernel,
        initramfs: Some(initramfs),
        cmdline: CMDLINE.into(),
    });
}

#[test]
fn probe_pvh_firmware_is_entered_like_a_pvh_kernel() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }

    run_pvh_probe(|firmware, _| BootSource::Firmware {
        firmware,
        cmdline: CMDLINE.into(),
    });
}
