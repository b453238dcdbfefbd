//! Tiny 64-bit probe guests packaged as bzImages, so the VMM loads and
//! enters them exactly as it does Linux (same loader, zero page, GDT, page
//! tables and registers). They report over COM1, which the VMM writes to
//! the console file, and end the VM through the ACPI sleep register.

#![allow(dead_code)]

pub mod virtio_driver;

use std::io::Write;
use std::path::{Path, PathBuf};

use iced_x86::code_asm::*;
use vmm::boot::BootSource;
use vmm::config::VmConfig;

/// Where a bzImage's protected-mode part is loaded (its `code32_start`).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// The 64-bit entry point: load address + 0x200.
pub const ENTRY: u64 = LOAD_ADDR + 0x200;
/// COM1's data register.
pub const COM1: u32 = 0x3f8;

/// Why probes cannot run here, if they cannot: no /dev/kvm, or KVM refuses
/// to create a VM.
pub fn kvm_unavailable() -> Option<String> {
    match kvm_ioctls::Kvm::new() {
        Err(e) => Some(format!("/dev/kvm cannot be opened: {e}")),
        Ok(kvm) => kvm
            .create_vm()
            .err()
            .map(|e| format!("KVM cannot create a VM: {e}")),
    }
}

/// Wraps 64-bit code assembled for [`ENTRY`] in a bzImage: a boot sector
/// and one setup sector carrying the setup header (boot protocol 2.15,
/// 64-bit entry, relocatable), then the protected-mode part, whose first
/// 0x200 bytes (the 32-bit entry, unused) are `hlt`s.
pub fn bzimage(code64: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 2 * 512];
    let header: &mut [u8] = &mut image;
    header[0x1f1] = 1; // setup_sects
    header[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    header[0x202..0x206].copy_from_slice(b"HdrS");
    header[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    header[0x211] = 0x01; // loadflags: LOADED_HIGH
    header[0x214..0x218].copy_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    header[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    header[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    header[0x234] = 1; // relocatable_kernel
    header[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes()); // XLF_KERNEL_64
    header[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    image.extend_from_slice(&[0xf4; 0x200]);
    image.extend_from_slice(code64);
    image
}

/// Writes `bytes` to a file in `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap();
    path
}

/// A one-vCPU VM booting `kernel` with its console in `dir/console.log`.
pub fn probe_config(
    dir: &Path,
    kernel: PathBuf,
    initramfs: Option<PathBuf>,
    cmdline: &str,
) -> VmConfig {
    VmConfig {
        boot: BootSource::Kernel {
            kernel,
            initramfs,
            cmdline: cmdline.into(),
        },
        memory_mib: 256,
        cpus: 1,
        disk: None,
        vsock: None,
        rng: false,
        balloon: false,
        net: None,
        console: Some(dir.join("console.log")),
        ram_backing: Default::default(),
        stats_file: None,
        fs: Vec::new(),
    }
}

/// Assembler helpers shared by the probes. Register conventions: `dx`
/// holds the COM1 port; `emit` sends `rcx` bytes from `[rsi]`.
pub struct Probe {
    /// The assembler.
    pub asm: CodeAssembler,
    /// The `emit` subroutine.
    pub emit: CodeLabel,
    /// Where the code runs.
    base: u64,
}

impl Probe {
    /// A 64-bit probe entered at [`ENTRY`] whose first instructions point
    /// `dx` at COM1.
    pub fn new() -> Self {
        Self::with_mode(64, ENTRY)
    }

    /// A probe of `bitness` (32 or 64) assembled for `base`.
    pub fn with_mode(bitness: u32, base: u64) -> Self {
        let mut asm = CodeAssembler::new(bitness).unwrap();
        let emit = asm.create_label();
        asm.mov(edx, COM1).unwrap();
        Self { asm, emit, base }
    }

    /// Sends `len` bytes starting at `[base + offset]`.
    pub fn emit_memory(&mut self, base: AsmRegister64, offset: i32, len: u32) {
        let a = &mut self.asm;
        a.lea(rsi, ptr(base + offset)).unwrap();
        a.mov(ecx, len).unwrap();
        a.call(self.emit).unwrap();
    }

    /// Sends the 8 bytes of `rax`, little-endian.
    pub fn emit_rax(&mut self) {
        let a = &mut self.asm;
        a.push(rax).unwrap();
        a.mov(rsi, rsp).unwrap();
        a.mov(ecx, 8u32).unwrap();
        a.call(self.emit).unwrap();
        a.pop(rax).unwrap();
    }

    /// Polls the u16 at `[base + offset]` until it reaches `value` or
    /// `limit` rounds pass; leaves the last value read in `eax`.
    pub fn wait_for_u16(&mut self, base: AsmRegister64, offset: i32, value: u32, limit: u32) {
        let a = &mut self.asm;
        a.mov(ecx, limit).unwrap();
        let mut poll = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut poll).unwrap();
        a.movzx(eax, word_ptr(base + offset)).unwrap();
        a.cmp(eax, value).unwrap();
        a.je(done).unwrap();
        a.pause().unwrap();
        a.dec(ecx).unwrap();
        a.jnz(poll).unwrap();
        a.set_label(&mut done).unwrap();
    }

    /// Sends literal bytes (a marker).
    pub fn emit_literal(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.asm.mov(al, b as u32).unwrap();
            self.asm.out(dx, al).unwrap();
        }
    }

    /// Powers off through the ACPI sleep control register (S5 | SLP_EN),
    /// then halts in case that did not end the VM; assembles the probe.
    pub fn finish(mut self) -> Vec<u8> {
        let a = &mut self.asm;
        a.mov(edx, 0x600u32).unwrap();
        a.mov(al, (5u32 << 2) | 0x20).unwrap();
        a.out(dx, al).unwrap();
        let mut halt = a.create_label();
        a.set_label(&mut halt).unwrap();
        a.hlt().unwrap();
        a.jmp(halt).unwrap();

        // emit: rcx (ecx) bytes from [rsi] ([esi]) to port dx.
        a.set_label(&mut self.emit).unwrap();
        let mut next = a.create_label();
        let mut done = a.create_label();
        a.test(ecx, ecx).unwrap();
        a.jz(done).unwrap();
        a.set_label(&mut next).unwrap();
        if a.bitness() == 64 {
            a.mov(al, byte_ptr(rsi)).unwrap();
        } else {
            a.mov(al, byte_ptr(esi)).unwrap();
        }
        a.out(dx, al).unwrap();
        a.inc(esi).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(next).unwrap();
        a.set_label(&mut done).unwrap();
        a.ret().unwrap();
        a.assemble(self.base).unwrap()
    }
}

/// Reads a report: fixed-size little-endian fields in order.
pub struct Report<'a> {
    bytes: &'a [u8],
}

impl<'a> Report<'a> {
    /// A report starting after `marker` in the console output.
    pub fn find(console: &'a [u8], marker: &[u8]) -> Self {
        let start = console
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap_or_else(|| panic!("no {marker:?} in console output {console:?}"));
        Self {
            bytes: &console[start + marker.len()..],
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.bytes.len() >= n, "report ends early");
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        head
    }

    /// The next u8.
    pub fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    /// The next u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }

    /// The next u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }

    /// Bytes up to and including a NUL, returned without it.
    pub fn c_string(&mut self) -> &'a [u8] {
        let end = self.bytes.iter().position(|&b| b == 0).expect("no NUL");
        let s = &self.bytes[..end];
        self.bytes = &self.bytes[end + 1..];
        s
    }
}

/// Where an ELF probe's only segment is loaded and entered.
pub const ELF_LOAD_ADDR: u64 = 0x10_0000;

/// Wraps code assembled for [`ELF_LOAD_ADDR`] in an ELF64 file with one
/// `PT_LOAD` segment there, entered at its start. With `pvh_note`, a
/// `PT_NOTE` carries the Xen `XEN_ELFNOTE_PHYS32_ENTRY` note (the code is
/// then 32-bit): the shape of a PVH-capable vmlinux or of
/// rust-hypervisor-firmware. Without it, the shape of a plain vmlinux.
pub fn elf(code: &[u8], pvh_note: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum = if pvh_note { 2 } else { 1 };
    let note_offset = EHDR + phnum * PHDR;
    let mut note = Vec::new();
    if pvh_note {
        note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz ("Xen\0")
        note.extend_from_slice(&4u32.to_le_bytes()); // n_descsz
        note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&(ELF_LOAD_ADDR as u32).to_le_bytes());
    }
    let code_offset = (note_offset + note.len()).next_multiple_of(16);

    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&ELF_LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(phnum as u16).to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let mut phdr = |kind: u32, flags: u32, offset: usize, addr: u64, size: usize, align: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&(offset as u64).to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        elf.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        elf.extend_from_slice(&(size as u64).to_le_bytes()); // p_filesz
        elf.extend_from_slice(&(size as u64).to_le_bytes()); // p_memsz
        elf.extend_from_slice(&align.to_le_bytes());
    };
    phdr(1, 5, code_offset, ELF_LOAD_ADDR, code.len(), 16); // PT_LOAD, R+X
    if pvh_note {
        phdr(4, 4, note_offset, 0, note.len(), 4); // PT_NOTE
    }
    elf.extend_from_slice(&note);
    elf.resize(code_offset, 0);
    elf.extend_from_slice(code);
    elf
}
