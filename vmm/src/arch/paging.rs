//! Identity page tables for entering the kernel in long mode.
//!
//! The Linux 64-bit boot protocol needs the kernel, the zero page and the
//! command line identity-mapped; the kernel builds its own tables right away.
//! We map the whole first 4 GiB with 2 MiB pages (one PML4 entry, four PDPT
//! entries, four page directories), which also covers the MMIO hole, so a
//! guest can reach device registers before it sets up paging of its own.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// Present | writable.
const PRESENT_RW: u64 = 0x3;
/// Present | writable | page size (a 2 MiB leaf in a page directory).
const LARGE_PAGE: u64 = 0x83;
/// Page directories written (each maps 1 GiB).
pub const PAGE_DIRECTORIES: u64 = 4;

/// The tables as (guest address, entry) pairs, in the order written.
pub fn identity_map_entries() -> Vec<(u64, u64)> {
    let mut entries = vec![(PML4_START, PDPTE_START | PRESENT_RW)];
    for dir in 0..PAGE_DIRECTORIES {
        let pd = PDE_START + dir * 0x1000;
        entries.push((PDPTE_START + dir * 8, pd | PRESENT_RW));
        for slot in 0..512u64 {
            let phys = ((dir << 9) + slot) << 21;
            entries.push((pd + slot * 8, phys | LARGE_PAGE));
        }
    }
    entries
}

/// Writes the identity map into guest memory; returns the value for CR3.
pub fn write_identity_map<M: GuestMemoryBackend>(mem: &M) -> Result<u64, GuestMemoryError> {
    for (addr, entry) in identity_map_entries() {
        mem.write_obj(entry, GuestAddress(addr))?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the written tables the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, virt: u64) -> Option<u64> {
        let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).unwrap();
        let pml4e = read(cr3 + ((virt >> 39) & 0x1ff) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read((pml4e & !0xfff) + ((virt >> 30) & 0x1ff) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read((pdpte & !0xfff) + ((virt >> 21) & 0x1ff) * 8);
        if pde & 1 == 0 || pde & 0x80 == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (virt & 0x1f_ffff))
    }

    #[test]
    fn identity_map_translates_every_address_below_4_gib_to_itself() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();

        let cr3 = write_identity_map(&mem).unwrap();

        for virt in [0, 0x1000, 0x10_0200, 0x3fff_ffff, 0xd000_0010, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, virt), Some(virt), "{virt:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }

    #[test]
    fn identity_map_fails_cleanly_without_room() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();

        assert!(write_identity_map(&mem).is_err());
    }
}
