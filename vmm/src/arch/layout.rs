//! Where things live in the guest's physical address space (x86_64).
//!
//! RAM starts at 0 and stops at the 32-bit MMIO hole (3.25–4 GiB); what does
//! not fit below the hole continues at 4 GiB. The hole holds the virtio-mmio
//! windows, the IOAPIC and the local APICs. The first MiB holds the boot
//! structures the VMM writes (GDT, page tables, zero page, command line, PVH
//! start info) and the ACPI tables in the BIOS area, where a guest that scans
//! for the RSDP also finds it.

use thiserror::Error;
use vm_memory::GuestAddress;

/// One MiB: where the protected-mode kernel is loaded and the first RAM range
/// above the legacy BIOS area begins.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the extended BIOS data area; usable RAM below 1 MiB ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// The GDT (a handful of 8-byte descriptors).
pub const GDT_START: u64 = 0x500;
/// An empty IDT, so the guest takes no interrupt through stale memory.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (the initramfs), after room for 42 memory map entries.
pub const PVH_MODLIST_START: u64 = 0x6440;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the identity map.
pub const PML4_START: u64 = 0x9000;
/// The one page-directory-pointer table of the identity map.
pub const PDPTE_START: u64 = 0xa000;
/// The four page directories (2 MiB pages) of the identity map.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line we hand over (Linux's x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The RSDP, in the BIOS read-only area where guests scan for it.
pub const RSDP_START: u64 = 0xe_0000;
/// End of the BIOS area reserved for ACPI tables.
pub const ACPI_END: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; low RAM ends here at the latest.
pub const MMIO_HOLE_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO hole; high RAM starts here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_START: u64 = MMIO_HOLE_START;
/// Size of one virtio-mmio window (registers plus config space).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const APIC_START: u64 = 0xfee0_0000;

/// First GSI handed to virtio-mmio devices (0–4 are the legacy ISA lines the
/// PIT, keyboard, cascade, and serial ports use).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last GSI the IOAPIC routes (it has 24 pins).
pub const IRQ_MAX: u32 = 23;
/// GSI of the first serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

// The boot stack grows down between the zero page and the page tables, and
// the command line ends below the EBDA.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);

/// What went wrong laying out guest memory.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Too little memory to hold the kernel and boot structures.
    #[error("guest memory of {0} MiB is too small (at least 64 MiB)")]
    TooSmall(u64),
    /// More memory than the layout supports.
    #[error("guest memory of {0} MiB is too large")]
    TooLarge(u64),
}

/// One e820 map entry as the VMM describes it (independent of the boot
/// protocol's struct, which differ between Linux and PVH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The guest RAM ranges for `mem_size` bytes: one below the MMIO hole, and
/// one above 4 GiB for the rest.
pub fn ram_ranges(mem_size: u64) -> Result<Vec<(GuestAddress, usize)>, LayoutError> {
    let mib = mem_size >> 20;
    if mem_size < 64 << 20 {
        return Err(LayoutError::TooSmall(mib));
    }
    // 1 TiB keeps every address well inside a 4-level identity map and the
    // host's mmap limits.
    if mem_size > 1 << 40 {
        return Err(LayoutError::TooLarge(mib));
    }
    let low = mem_size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if mem_size > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), (mem_size - low) as usize));
    }
    Ok(ranges)
}

/// The e820 map matching [`ram_ranges`]: conventional memory up to the
/// EBDA, the BIOS area (holding the ACPI tables) reserved, then RAM.
pub fn memory_map(mem_size: u64) -> Result<Vec<MemoryMapEntry>, LayoutError> {
    let ranges = ram_ranges(mem_size)?;
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (index, (start, len)) in ranges.iter().enumerate() {
        let begin = if index == 0 { HIMEM_START } else { start.0 };
        map.push(MemoryMapEntry {
            addr: begin,
            size: start.0 + *len as u64 - begin,
            kind: E820_RAM,
        });
    }
    Ok(map)
}

/// The end of RAM below the MMIO hole (exclusive).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_below_the_hole() {
        let ranges = ram_ranges(512 << 20).unwrap();

        assert_eq!(ranges, vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn memory_beyond_the_hole_continues_at_4_gib() {
        let ranges = ram_ranges(4 << 30).unwrap();

        assert_eq!(ranges[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(
            ranges[1],
            (
                GuestAddress(MMIO_HOLE_END),
                ((4 << 30) - MMIO_HOLE_START) as usize
            )
        );
    }

    #[test]
    fn tiny_memory_is_rejected() {
        assert_eq!(ram_ranges(16 << 20), Err(LayoutError::TooSmall(16)));
    }

    #[test]
    fn memory_map_reserves_the_bios_area_and_covers_all_ram() {
        let map = memory_map(4 << 30).unwrap();

        assert_eq!(map.len(), 4);
        assert_eq!(map[1].kind, E820_RESERVED);
        assert!(map[1].addr <= RSDP_START && map[1].addr + map[1].size >= ACPI_END);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
        assert_eq!(map[3].addr, MMIO_HOLE_END);
    }

    #[test]
    fn boot_structures_fit_below_the_ebda_and_do_not_overlap() {
        let mut areas = [
            (GDT_START, 0x20),
            (IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MEMMAP_START, 0x400),
            (PVH_MODLIST_START, 0x20),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x4000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        areas.sort();

        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
    }
}
