//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst), and the initramfs placement rule.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use thiserror::Error;

use super::layout::MemoryMapEntry;

/// "HdrS", the setup header magic.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature expected in `boot_flag`.
pub const BOOT_FLAG: u16 = 0xaa55;
/// Loader type "undefined" (we have no assigned ID).
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags`: the protected-mode code is loaded at 1 MiB.
pub const LOADED_HIGH: u8 = 0x1;
/// `xloadflags`: the kernel has the 64-bit entry point at +0x200.
pub const XLF_KERNEL_64: u16 = 0x1;
/// Highest initramfs address old kernels accept (protocol < 2.03).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Alignment we place ELF kernels at when no header says otherwise.
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Entries the zero page holds.
pub const E820_MAX_ENTRIES: usize = 128;

/// Why the zero page or the initramfs placement could not be built.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BootParamsError {
    /// The memory map does not fit in the zero page.
    #[error("the memory map has {0} entries, the zero page holds {E820_MAX_ENTRIES}")]
    TooManyMemoryMapEntries(usize),
    /// The command line is longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes, the kernel accepts {max}")]
    CmdlineTooLong {
        /// Length including the terminating NUL.
        len: usize,
        /// The kernel's `cmdline_size` plus the NUL.
        max: usize,
    },
    /// No room for the initramfs between the kernel and the highest address
    /// the kernel accepts.
    #[error("no room for an initramfs of {size} bytes between the kernel end {kernel_end:#x} and {limit:#x}")]
    NoRoomForInitramfs {
        /// Initramfs size.
        size: u64,
        /// First byte after the kernel.
        kernel_end: u64,
        /// Exclusive upper limit.
        limit: u64,
    },
}

/// What the zero page is made from.
#[derive(Debug, Clone)]
pub struct ZeroPageSpec<'a> {
    /// The bzImage's setup header, or `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Command line length including the NUL.
    pub cmdline_len: usize,
    /// Initramfs address and size.
    pub initramfs: Option<(u64, u64)>,
    /// The e820 map.
    pub memory_map: &'a [MemoryMapEntry],
    /// Guest address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

/// The highest address (inclusive) the kernel accepts for the initramfs.
pub fn initrd_addr_max(header: Option<&setup_header>) -> u64 {
    match header {
        Some(hdr) if hdr.version >= 0x203 && hdr.initrd_addr_max != 0 => {
            u64::from(hdr.initrd_addr_max)
        }
        _ => DEFAULT_INITRD_ADDR_MAX,
    }
}

/// Places the initramfs page-aligned as high as allowed: below both
/// `addr_max` (inclusive) and `low_ram_end` (exclusive, the MMIO hole), and
/// above `kernel_end`. Returns its address.
pub fn initramfs_address(
    size: u64,
    addr_max: u64,
    low_ram_end: u64,
    kernel_end: u64,
) -> Result<u64, BootParamsError> {
    let limit = low_ram_end.min(addr_max.saturating_add(1));
    let err = BootParamsError::NoRoomForInitramfs {
        size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or(err.clone())? & !0xfff;
    if start < kernel_end {
        return Err(err);
    }
    Ok(start)
}

/// Builds the zero page.
pub fn build_zero_page(spec: &ZeroPageSpec<'_>) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = spec.setup_header {
        params.hdr = hdr;
        if hdr.version >= 0x206 && spec.cmdline_len > hdr.cmdline_size as usize + 1 {
            return Err(BootParamsError::CmdlineTooLong {
                len: spec.cmdline_len,
                max: hdr.cmdline_size as usize + 1,
            });
        }
    } else {
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = spec.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (spec.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = spec.cmdline_len.saturating_sub(1) as u32;
    if let Some((addr, size)) = spec.initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if spec.memory_map.len() > E820_MAX_ENTRIES {
        return Err(BootParamsError::TooManyMemoryMapEntries(
            spec.memory_map.len(),
        ));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(spec.memory_map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = spec.memory_map.len() as u8;
    params.acpi_rsdp_addr = spec.rsdp_addr;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{memory_map, E820_RAM};
    use vm_memory::ByteValued;

    fn header(version: u16, initrd_addr_max: u32) -> setup_header {
        setup_header {
            header: HDRS_MAGIC,
            version,
            initrd_addr_max,
            cmdline_size: 2047,
            xloadflags: XLF_KERNEL_64,
            ..Default::default()
        }
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn zero_page_fields_sit_at_the_documented_offsets() {
        let map = memory_map(256 << 20).unwrap();
        let spec = ZeroPageSpec {
            setup_header: Some(header(0x20f, 0x7fff_ffff)),
            cmdline_addr: 0x20000,
            cmdline_len: 12,
            initramfs: Some((0x0f00_0000, 0x12345)),
            memory_map: &map,
            rsdp_addr: 0xe0000,
        };

        let params = build_zero_page(&spec).unwrap();
        let bytes = params.as_slice();

        assert_eq!(bytes.len(), 4096);
        assert_eq!(u32_at(bytes, 0x202), HDRS_MAGIC);
        assert_eq!(bytes[0x210], LOADER_TYPE_UNDEFINED);
        assert_eq!(u32_at(bytes, 0x218), 0x0f00_0000);
        assert_eq!(u32_at(bytes, 0x21c), 0x12345);
        assert_eq!(u32_at(bytes, 0x228), 0x20000);
        assert_eq!(u32_at(bytes, 0x238), 11);
        assert_eq!(bytes[0x1e8] as usize, map.len());
        assert_eq!(u32_at(bytes, 0x70), 0xe0000);
        assert_eq!(u32_at(bytes, 0x2d0 + 20 + 16), map[1].kind);
        assert_eq!(u32_at(bytes, 0x2d0 + 2 * 20 + 16), E820_RAM);
    }

    #[test]
    fn elf_kernels_get_a_synthesized_header() {
        let map = memory_map(128 << 20).unwrap();
        let spec = ZeroPageSpec {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_len: 1,
            initramfs: None,
            memory_map: &map,
            rsdp_addr: 0,
        };

        let params = build_zero_page(&spec).unwrap();

        assert_eq!({ params.hdr.header }, HDRS_MAGIC);
        assert_eq!({ params.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ params.hdr.ramdisk_size }, 0);
    }

    #[test]
    fn command_line_longer_than_the_kernel_accepts_is_rejected() {
        let mut hdr = header(0x20f, 0);
        hdr.cmdline_size = 10;
        let spec = ZeroPageSpec {
            setup_header: Some(hdr),
            cmdline_addr: 0x20000,
            cmdline_len: 20,
            initramfs: None,
            memory_map: &[],
            rsdp_addr: 0,
        };

        assert_eq!(
            build_zero_page(&spec).unwrap_err(),
            BootParamsError::CmdlineTooLong { len: 20, max: 11 }
        );
    }

    #[test]
    fn initramfs_goes_page_aligned_below_the_lowest_limit() {
        let addr = initramfs_address(0x1800, 0x37ff_ffff, 0x1000_0000, 0x200_0000).unwrap();
        assert_eq!(addr, 0x1000_0000 - 0x2000);

        let capped = initramfs_address(0x1000, 0x0fff_ffff, 0xd000_0000, 0x200_0000).unwrap();
        assert_eq!(capped, 0x0fff_f000);
    }

    #[test]
    fn initramfs_that_would_overlap_the_kernel_is_rejected() {
        let err = initramfs_address(0x100_0000, 0x37ff_ffff, 0x200_0000, 0x180_0000);

        assert!(matches!(
            err,
            Err(BootParamsError::NoRoomForInitramfs { .. })
        ));
    }

    #[test]
    fn initrd_limit_comes_from_new_headers_only() {
        assert_eq!(
            initrd_addr_max(Some(&header(0x20f, 0x7fff_ffff))),
            0x7fff_ffff
        );
        assert_eq!(
            initrd_addr_max(Some(&header(0x202, 0x7fff_ffff))),
            DEFAULT_INITRD_ADDR_MAX
        );
        assert_eq!(initrd_addr_max(None), DEFAULT_INITRD_ADDR_MAX);
    }
}
