//! A probe guest entered through the Linux 64-bit boot path reports what it
//! was handed — `rsi`, control registers, EFER, the zero page's e820 map,
//! initramfs and command line, the RSDP — and the test compares that with
//! what the VMM meant to set.

mod probe_guest;

use std::path::PathBuf;

use probe_guest::{
    bzimage, elf, kvm_unavailable, probe_config, write_file, Probe, Report, ELF_LOAD_ADDR, ENTRY,
};
use vmm::arch::regs::{BootProtocol, EFER_LMA, EFER_LME, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE};
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

const MARKER: &[u8] = b"PROBE-BOOT:";
const CMDLINE: &str = "console=ttyS0 panic=-1 probe=boot_params";

/// Assembles the boot-params probe. The report is, in order: rsi, CR0,
/// CR4, EFER (u64 each); e820 count (u8) and entries (20 bytes each); the
/// header magic (u32); ramdisk image/size and their high halves (u32 each);
/// the byte sum of the initramfs (u64); the command line pointer (u64) and
/// the command line with its NUL; the RSDP address (u64) and the first 8
/// bytes there; "END".
fn boot_params_probe(entry: u64) -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::with_mode(64, entry);
    p.asm.mov(r15, rsi).unwrap();
    p.emit_literal(MARKER);
    p.asm.mov(rax, r15).unwrap();
    p.emit_rax();
    p.asm.mov(rax, cr0).unwrap();
    p.emit_rax();
    p.asm.mov(rax, cr4).unwrap();
    p.emit_rax();
    p.asm.mov(ecx, 0xc000_0080u32).unwrap(); // IA32_EFER
    p.asm.rdmsr().unwrap();
    p.asm.shl(rdx, 32).unwrap();
    p.asm.or(rax, rdx).unwrap();
    p.asm.mov(edx, probe_guest::COM1).unwrap();
    p.emit_rax();

    // e820: the count, then count * 20 bytes from 0x2d0.
    p.emit_memory(r15, 0x1e8, 1);
    p.asm.movzx(ecx, byte_ptr(r15 + 0x1e8)).unwrap();
    p.asm.imul_3(ecx, ecx, 20).unwrap();
    p.asm.lea(rsi, ptr(r15 + 0x2d0)).unwrap();
    p.asm.call(p.emit).unwrap();

    p.emit_memory(r15, 0x202, 4); // "HdrS"
    p.emit_memory(r15, 0x218, 8); // ramdisk_image, ramdisk_size
    p.emit_memory(r15, 0xc0, 8); // ext_ramdisk_image, ext_ramdisk_size

    // Sum the initramfs bytes where the zero page says it is.
    p.asm.mov(esi, dword_ptr(r15 + 0x218)).unwrap();
    p.asm.mov(ecx, dword_ptr(r15 + 0x21c)).unwrap();
    p.asm.xor(ebx, ebx).unwrap();
    let mut sum = p.asm.create_label();
    let mut summed = p.asm.create_label();
    p.asm.test(rcx, rcx).unwrap();
    p.asm.jz(summed).unwrap();
    p.asm.set_label(&mut sum).unwrap();
    p.asm.movzx(eax, byte_ptr(rsi)).unwrap();
    p.asm.add(rbx, rax).unwrap();
    p.asm.inc(rsi).unwrap();
    p.asm.dec(rcx).unwrap();
    p.asm.jnz(sum).unwrap();
    p.asm.set_label(&mut summed).unwrap();
    p.asm.mov(rax, rbx).unwrap();
    p.emit_rax();

    // The command line: pointer (with ext_cmd_line_ptr), then the bytes up
    // to and including the NUL.
    p.asm.mov(eax, dword_ptr(r15 + 0xc8)).unwrap();
    p.asm.shl(rax, 32).unwrap();
    p.asm.mov(ebx, dword_ptr(r15 + 0x228)).unwrap();
    p.asm.or(rax, rbx).unwrap();
    p.emit_rax();
    p.asm.mov(rsi, rax).unwrap();
    let mut next = p.asm.create_label();
    p.asm.set_label(&mut next).unwrap();
    p.asm.mov(al, byte_ptr(rsi)).unwrap();
    p.asm.out(dx, al).unwrap();
    p.asm.inc(rsi).unwrap();
    p.asm.test(al, al).unwrap();
    p.asm.jnz(next).unwrap();

    // The RSDP: the address, then its signature read from guest memory.
    p.asm.mov(rax, qword_ptr(r15 + 0x70)).unwrap();
    p.emit_rax();
    p.asm.mov(rax, qword_ptr(rax)).unwrap();
    p.emit_rax();
    p.emit_literal(b"END");
    p.finish()
}

/// Boots `image` (a probe built by [`boot_params_probe`]) and checks its
/// report against the boot plan.
fn check_boot_params(image: &[u8], expected_entry: u64) {
    let dir = tempfile::tempdir().unwrap();
    let kernel: PathBuf = write_file(dir.path(), "probe.kernel", image);
    let initramfs_bytes: Vec<u8> = (0..12_345u32).map(|i| (i * 7 + 3) as u8).collect();
    let initramfs = write_file(dir.path(), "initramfs.cpio", &initramfs_bytes);
    let config = probe_config(dir.path(), kernel, Some(initramfs), CMDLINE);

    let vm = Vm::new(config).unwrap();
    let plan = vm.boot_plan().clone();
    eprintln!("in-kernel irqchip: {}", vm.has_irqchip());
    let reason = vm.run().unwrap();

    assert_eq!(reason, ExitReason::PowerOff);
    let console = std::fs::read(dir.path().join("console.log")).unwrap();
    let mut report = Report::find(&console, MARKER);
    let BootProtocol::Linux64 { zero_page } = plan.entry.protocol else {
        panic!("the image must be entered through the Linux boot protocol");
    };
    assert_eq!(plan.entry.entry, expected_entry);
    assert_eq!(report.u64(), zero_page, "rsi");
    let (cr0, cr4, efer) = (report.u64(), report.u64(), report.u64());
    assert_eq!(
        cr0 & (X86_CR0_PE | X86_CR0_PG),
        X86_CR0_PE | X86_CR0_PG,
        "CR0 {cr0:#x}"
    );
    assert_eq!(cr4 & X86_CR4_PAE, X86_CR4_PAE, "CR4 {cr4:#x}");
    assert_eq!(
        efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "EFER {efer:#x}"
    );

    let entries = report.u8() as usize;
    assert_eq!(entries, plan.memory_map.len());
    for expected in &plan.memory_map {
        let (addr, size, kind) = (report.u64(), report.u64(), report.u32());
        assert_eq!(
            (addr, size, kind),
            (expected.addr, expected.size, expected.kind)
        );
    }
    assert_eq!(report.take(4), b"HdrS");

    let (initrd_addr, initrd_size) = plan.initramfs.unwrap();
    let (image, size, ext_image, ext_size) =
        (report.u32(), report.u32(), report.u32(), report.u32());
    assert_eq!(u64::from(image) | (u64::from(ext_image) << 32), initrd_addr);
    assert_eq!(u64::from(size) | (u64::from(ext_size) << 32), initrd_size);
    assert_eq!(initrd_size, initramfs_bytes.len() as u64);
    assert!(initrd_addr >= plan.kernel_end && initrd_addr + initrd_size <= 256 << 20);
    let expected_sum: u64 = initramfs_bytes.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(
        report.u64(),
        expected_sum,
        "initramfs contents as the guest reads them"
    );

    assert_eq!(report.u64(), plan.cmdline_addr);
    assert_eq!(report.c_string(), CMDLINE.as_bytes());
    assert_eq!(report.u64(), plan.rsdp_addr);
    assert_eq!(report.take(8), b"RSD PTR ");
    assert_eq!(report.take(3), b"END");
}

#[test]
fn probe_boot_params() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping probe_boot_params: {reason}");
        return;
    }

    check_boot_params(&bzimage(&boot_params_probe(ENTRY)), ENTRY);
}

#[test]
fn probe_boot_params_of_an_elf_vmlinux_without_pvh_note() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }

    check_boot_params(
        &elf(&boot_params_probe(ELF_LOAD_ADDR), false),
        ELF_LOAD_ADDR,
    );
}
