//! The PVH start info (`hvm_start_info`, Xen's `arch-x86/hvm/start_info.h`)
//! for kernels and firmware entered through their PVH ELF note.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams, Error as ConfiguratorError};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{MemoryMapEntry, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START};

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Builds the start info, memory map and module list (the initramfs, if
/// any) for a PVH entry.
pub fn build_start_info(
    cmdline_addr: u64,
    rsdp_addr: u64,
    memory_map: &[MemoryMapEntry],
    initramfs: Option<(u64, u64)>,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = memory_map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initramfs
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        ..Default::default()
    };
    (info, memmap, modules)
}

/// Writes the start info and its tables at their fixed addresses.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    info: &hvm_start_info,
    memmap: &[hvm_memmap_table_entry],
    modules: &[hvm_modlist_entry],
) -> Result<(), ConfiguratorError> {
    let mut params = BootParams::new(info, GuestAddress(PVH_INFO_START));
    params.set_sections(memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::memory_map;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn start_info_points_at_memmap_cmdline_and_initramfs_module() {
        let map = memory_map(256 << 20).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();

        let (info, memmap, modules) =
            build_start_info(0x20000, 0xe0000, &map, Some((0x0800_0000, 0x4000)));
        write_start_info(&mem, &info, &memmap, &modules).unwrap();

        let read: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(read.magic, XEN_HVM_START_MAGIC);
        assert_eq!(read.memmap_entries as usize, map.len());
        assert_eq!((read.cmdline_paddr, read.rsdp_paddr), (0x20000, 0xe0000));
        let entry: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!((entry.addr, entry.type_), (map[1].addr, map[1].kind));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(read.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x0800_0000, 0x4000));
    }

    #[test]
    fn no_initramfs_means_no_modules() {
        let (info, _, modules) = build_start_info(0x20000, 0, &[], None);

        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert!(modules.is_empty());
    }
}
