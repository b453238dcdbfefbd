//! The boot GDT and the segment registers derived from it.
//!
//! The Linux 64-bit boot protocol wants `__BOOT_CS` = 0x10 and `__BOOT_DS` =
//! 0x18; PVH wants a flat 32-bit code segment. One table serves both: entry 1
//! is 32-bit code (PVH), 2 is 64-bit code, 3 is data, 4 a TSS that KVM needs
//! to be loadable.

use kvm_bindings::kvm_segment;

/// Index of the flat 32-bit code segment (PVH entry).
pub const CODE32_INDEX: u16 = 1;
/// Index of the 64-bit code segment (`__BOOT_CS` = 0x10).
pub const CODE64_INDEX: u16 = 2;
/// Index of the flat data segment (`__BOOT_DS` = 0x18).
pub const DATA_INDEX: u16 = 3;
/// Index of the TSS.
pub const TSS_INDEX: u16 = 4;

/// Builds one descriptor from flags (the access byte in bits 0–7 and the
/// granularity nibble in bits 12–15), base and limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT (null, code32, code64, data, TSS).
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        descriptor(0xc09b, 0, 0xfffff),
        descriptor(0xa09b, 0, 0xfffff),
        descriptor(0xc093, 0, 0xfffff),
        descriptor(0x008b, 0, 0xfffff),
    ]
}

/// The segment register KVM loads for GDT entry `index`.
pub fn segment_from_descriptor(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from((entry >> 47) & 1 == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_is_long_mode_ring0_with_boot_cs_selector() {
        let gdt = boot_gdt();

        let cs = segment_from_descriptor(gdt[CODE64_INDEX as usize], CODE64_INDEX);

        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn data_segment_is_flat_writable_with_boot_ds_selector() {
        let ds = segment_from_descriptor(boot_gdt()[DATA_INDEX as usize], DATA_INDEX);

        assert_eq!(ds.selector, 0x18);
        assert_eq!(ds.type_, 0x3);
        assert_eq!((ds.db, ds.g, ds.unusable), (1, 1, 0));
        assert_eq!(ds.limit, 0xffff_ffff);
    }

    #[test]
    fn code32_segment_is_protected_mode_not_long_mode() {
        let cs = segment_from_descriptor(boot_gdt()[CODE32_INDEX as usize], CODE32_INDEX);

        assert_eq!((cs.l, cs.db, cs.selector), (0, 1, 0x08));
    }

    #[test]
    fn descriptor_round_trips_base_and_byte_granular_limit() {
        let entry = descriptor(0x008b, 0x1234_5678, 0x6_7fff);

        let seg = segment_from_descriptor(entry, TSS_INDEX);

        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0x6_7fff);
        assert_eq!((seg.g, seg.s, seg.type_), (0, 0, 0xb));
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(segment_from_descriptor(0, 0).unusable, 1);
    }
}
