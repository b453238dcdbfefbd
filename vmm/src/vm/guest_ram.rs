//! Guest RAM, mapped so that KVM can back it with 2 MiB pages.
//!
//! KVM maps a guest page with a huge nested page only when the guest
//! physical address and the host virtual address agree modulo 2 MiB, and
//! the host backs that range with a huge page. `mmap` of anonymous memory
//! returns 4 KiB-aligned addresses (older kernels never align it further),
//! so every guest page would get a 4 KiB nested mapping and every TLB miss
//! a longer walk: measured on nested KVM, the guest's memory-touching boot
//! phases ran up to 16x slower than under QEMU, whose RAM is 2 MiB-aligned.
//! Here all ranges live in one mapping whose start is 2 MiB-aligned, each
//! range at an offset congruent to its guest address, with
//! `MADV_HUGEPAGE` (transparent huge pages) or from hugetlbfs.

use std::io;
use std::ops::Deref;
use std::sync::Arc;

use thiserror::Error;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// The huge page size KVM and the host use on x86_64.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Where guest RAM pages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RamBacking {
    /// Anonymous memory, transparent huge pages requested (`MADV_HUGEPAGE`).
    #[default]
    TransparentHugePages,
    /// Pre-reserved 2 MiB pages from hugetlbfs (`/proc/sys/vm/nr_hugepages`);
    /// never swapped or split, fails when too few are reserved.
    HugeTlb,
}

/// What failed while mapping guest RAM.
#[derive(Debug, Error)]
pub enum GuestRamError {
    /// The guest RAM ranges overlap, are unsorted or are empty.
    #[error("the guest RAM ranges are not sorted, disjoint and non-empty")]
    BadRanges,
    /// The host refused the mapping.
    #[error("cannot map {mib} MiB of guest RAM")]
    Map {
        /// Size of the whole mapping.
        mib: usize,
        /// mmap's error.
        #[source]
        source: io::Error,
    },
    /// hugetlbfs has too few free 2 MiB pages.
    #[error("cannot map {mib} MiB of guest RAM from hugetlbfs; reserve {pages} huge pages first (echo {pages} > /proc/sys/vm/nr_hugepages)")]
    HugeTlb {
        /// Size of the whole mapping.
        mib: usize,
        /// 2 MiB pages needed.
        pages: usize,
        /// mmap's error.
        #[source]
        source: io::Error,
    },
    /// vm-memory refused a piece of the mapping as a region.
    #[error("cannot describe guest RAM to vm-memory")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    /// vm-memory refused the set of regions.
    #[error("cannot describe guest RAM to vm-memory")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

/// The host mapping that holds every RAM range; unmapped when the last
/// [`GuestRam`] clone is gone.
#[derive(Debug)]
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory; all access goes through vm-memory's
// volatile accessors, which are safe to use from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself is never mutated after creation.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` is a mapping this struct created and owns;
        // every region referring to it holds the Arc that is dropping now.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Guest RAM: a [`GuestMemoryMmap`] (deref to use it) whose regions stay
/// mapped for as long as any clone of this value lives.
#[derive(Debug, Clone)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    mapping: Arc<Mapping>,
}

impl Deref for GuestRam {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}

impl GuestRam {
    /// Maps `ranges` (guest address and length, sorted and disjoint).
    pub fn new(
        ranges: &[(GuestAddress, usize)],
        backing: RamBacking,
    ) -> Result<GuestRam, GuestRamError> {
        let offsets = host_offsets(ranges).ok_or(GuestRamError::BadRanges)?;
        let (last_offset, last_len) = (offsets[offsets.len() - 1], ranges[ranges.len() - 1].1);
        let len = round_up(last_offset + last_len, HUGE_PAGE_SIZE);
        let mapping = Arc::new(map(len, backing)?);
        let mut regions = Vec::with_capacity(ranges.len());
        for (&(guest, size), offset) in ranges.iter().zip(offsets) {
            // SAFETY: `offset + size <= len`, so the region lies inside the
            // live mapping, which outlives it: `GuestRam` keeps the Arc next
            // to the regions and vm-memory never unmaps a raw region.
            let region = unsafe {
                MmapRegion::build_raw(
                    mapping.addr.cast::<u8>().add(offset),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                )
            }
            .map_err(GuestRamError::Region)?;
            let region = GuestRegionMmap::new(region, guest).ok_or(GuestRamError::BadRanges)?;
            regions.push(region);
        }
        let memory = GuestMemoryMmap::from_regions(regions).map_err(GuestRamError::Regions)?;
        Ok(GuestRam { memory, mapping })
    }

    /// The host address where guest RAM begins (2 MiB-aligned).
    pub fn host_base(&self) -> usize {
        self.mapping.addr as usize
    }
}

/// Offsets of each range in the host mapping: congruent to its guest
/// address modulo 2 MiB, in order, never overlapping. `None` for ranges
/// that are empty, unsorted or overlapping.
fn host_offsets(ranges: &[(GuestAddress, usize)]) -> Option<Vec<usize>> {
    let mut offsets = Vec::with_capacity(ranges.len());
    let mut next = 0usize;
    let mut guest_end = 0u64;
    for (index, &(guest, size)) in ranges.iter().enumerate() {
        if size == 0 || (index > 0 && guest.0 < guest_end) {
            return None;
        }
        guest_end = guest.0.checked_add(size as u64)?;
        let phase = (guest.0 % HUGE_PAGE_SIZE as u64) as usize;
        let offset = round_up(next, HUGE_PAGE_SIZE) + phase;
        offsets.push(offset);
        next = offset.checked_add(size)?;
    }
    (!offsets.is_empty()).then_some(offsets)
}

fn round_up(value: usize, to: usize) -> usize {
    value.div_ceil(to) * to
}

/// One read-write private anonymous mapping of `len` bytes (a multiple of
/// 2 MiB) starting at a 2 MiB-aligned address.
fn map(len: usize, backing: RamBacking) -> Result<Mapping, GuestRamError> {
    let mib = len >> 20;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if backing == RamBacking::HugeTlb {
        // hugetlbfs mappings are aligned to their page size by the kernel.
        // Without MAP_NORESERVE the pages are reserved now: too few fail
        // here, not as SIGBUS when the guest first touches them.
        let hugetlb =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        let addr = raw_mmap(len, prot, hugetlb).map_err(|source| GuestRamError::HugeTlb {
            mib,
            pages: len / HUGE_PAGE_SIZE,
            source,
        })?;
        return Ok(Mapping { addr, len });
    }
    // Map 2 MiB more than needed, then give back the unaligned head and the
    // rest of the tail.
    let padded = len + HUGE_PAGE_SIZE;
    let start =
        raw_mmap(padded, prot, flags).map_err(|source| GuestRamError::Map { mib, source })?;
    let aligned = round_up(start as usize, HUGE_PAGE_SIZE);
    let head = aligned - start as usize;
    let tail = padded - head - len;
    // SAFETY: both pieces lie inside the mapping just created and nothing
    // refers to them yet.
    unsafe {
        if head > 0 {
            libc::munmap(start, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    let addr = aligned as *mut libc::c_void;
    // Without THP on the host this fails harmlessly and 4 KiB pages remain.
    // SAFETY: `addr`/`len` is exactly the mapping kept above.
    if unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "transparent huge pages not available for guest RAM");
    }
    Ok(Mapping { addr, len })
}

fn raw_mmap(len: usize, prot: i32, flags: i32) -> io::Result<*mut libc::c_void> {
    // SAFETY: a new anonymous mapping at an address the kernel chooses
    // touches no existing memory.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if addr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    const MIB: usize = 1 << 20;

    #[test]
    fn every_range_is_congruent_to_its_guest_address_modulo_2_mib() {
        let ranges = [
            (GuestAddress(0), 64 * MIB + 4096),
            (GuestAddress(0x1_0000_0000), 3 * MIB),
        ];
        let ram = GuestRam::new(&ranges, RamBacking::TransparentHugePages).unwrap();

        assert_eq!(ram.host_base() % HUGE_PAGE_SIZE, 0);
        for region in ram.iter() {
            let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
            assert_eq!(
                host % HUGE_PAGE_SIZE,
                (region.start_addr().0 % HUGE_PAGE_SIZE as u64) as usize
            );
        }
    }

    #[test]
    fn ranges_are_separate_memory_and_readable_through_clones() {
        let ranges = [
            (GuestAddress(0), 4 * MIB),
            (GuestAddress(0x1_0000_0000), 4 * MIB),
        ];
        let ram = GuestRam::new(&ranges, RamBacking::TransparentHugePages).unwrap();
        ram.write_obj(0x1122_3344u32, GuestAddress(4 * MIB as u64 - 4))
            .unwrap();
        ram.write_obj(0x5566_7788u32, GuestAddress(0x1_0000_0000))
            .unwrap();
        let clone = ram.clone();
        drop(ram);

        assert_eq!(
            clone
                .read_obj::<u32>(GuestAddress(4 * MIB as u64 - 4))
                .unwrap(),
            0x1122_3344
        );
        assert_eq!(
            clone.read_obj::<u32>(GuestAddress(0x1_0000_0000)).unwrap(),
            0x5566_7788
        );
        assert!(clone.read_obj::<u32>(GuestAddress(4 * MIB as u64)).is_err());
    }

    #[test]
    fn an_unaligned_guest_range_keeps_its_phase() {
        let offsets = host_offsets(&[
            (GuestAddress(0), 3 * MIB),
            (GuestAddress(5 * MIB as u64 + 4096), MIB),
        ])
        .unwrap();
        assert_eq!(offsets, vec![0, 4 * MIB + MIB + 4096]);
    }

    #[test]
    fn overlapping_unsorted_or_empty_ranges_are_refused() {
        let overlapping = [(GuestAddress(0), 4 * MIB), (GuestAddress(MIB as u64), MIB)];
        assert!(host_offsets(&overlapping).is_none());
        assert!(host_offsets(&[(GuestAddress(0), 0)]).is_none());
        assert!(host_offsets(&[]).is_none());
        assert!(matches!(
            GuestRam::new(&overlapping, RamBacking::TransparentHugePages),
            Err(GuestRamError::BadRanges)
        ));
    }

    #[test]
    fn hugetlb_without_reserved_pages_names_the_sysctl() {
        let reserved = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap_or_default();
        if reserved.trim() != "0" {
            eprintln!(
                "SKIP: this host has huge pages reserved ({})",
                reserved.trim()
            );
            return;
        }
        let err = GuestRam::new(&[(GuestAddress(0), 64 * MIB)], RamBacking::HugeTlb).unwrap_err();
        assert!(err.to_string().contains("nr_hugepages"), "{err}");
    }
}
