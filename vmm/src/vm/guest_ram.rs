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
//!
//! When a vhost-user backend (virtiofsd) serves a device, it must map guest
//! RAM itself: then the mapping is a memfd mapped `MAP_SHARED`
//! ([`RamSharing::Shared`]), whose fd and offsets go to the backend. The
//! same alignment holds: the file is mapped at a 2 MiB-aligned address from
//! offset 0, so file offsets, host addresses and guest addresses all agree
//! modulo 2 MiB and huge pages of the file line up with KVM's.

use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use thiserror::Error;
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

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

/// Whether guest RAM is this process's alone or shared with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RamSharing {
    /// Private anonymous memory: nobody else needs to see it.
    #[default]
    Private,
    /// A memfd mapped `MAP_SHARED`, so vhost-user backends can map the same
    /// pages (`VHOST_USER_SET_MEM_TABLE` passes the fd). With
    /// [`RamBacking::HugeTlb`] the memfd is a hugetlbfs file
    /// (`MFD_HUGETLB | MFD_HUGE_2MB`). With
    /// [`RamBacking::TransparentHugePages`] it is shmem, and `MADV_HUGEPAGE`
    /// gets huge pages only where
    /// `/sys/kernel/mm/transparent_hugepage/shmem_enabled` allows it
    /// (`advise`, `within_size` or `always`; the usual default `never`
    /// leaves 4 KiB pages, which work, only slower).
    Shared,
}

/// One guest RAM range as seen in the shared file: what a vhost-user
/// backend needs to map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedRamRegion {
    /// Guest physical address of the range.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where this process maps it.
    pub host_addr: u64,
    /// Where it starts in the memfd.
    pub file_offset: u64,
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
    /// The memfd for shared guest RAM could not be created or sized.
    #[error("cannot create a {mib} MiB memfd for shared guest RAM")]
    Memfd {
        /// Size of the file.
        mib: usize,
        /// The system call's error.
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
    /// The memfd behind a shared mapping, mapped from offset 0.
    file: Option<OwnedFd>,
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
    /// Maps `ranges` (guest address and length, sorted and disjoint) as
    /// private memory.
    pub fn new(
        ranges: &[(GuestAddress, usize)],
        backing: RamBacking,
    ) -> Result<GuestRam, GuestRamError> {
        GuestRam::with_sharing(ranges, backing, RamSharing::Private)
    }

    /// Maps `ranges` (guest address and length, sorted and disjoint),
    /// shared with other processes or not.
    pub fn with_sharing(
        ranges: &[(GuestAddress, usize)],
        backing: RamBacking,
        sharing: RamSharing,
    ) -> Result<GuestRam, GuestRamError> {
        let offsets = host_offsets(ranges).ok_or(GuestRamError::BadRanges)?;
        let (last_offset, last_len) = (offsets[offsets.len() - 1], ranges[ranges.len() - 1].1);
        let len = round_up(last_offset + last_len, HUGE_PAGE_SIZE);
        let mapping = Arc::new(match sharing {
            RamSharing::Private => map(len, backing)?,
            RamSharing::Shared => map_shared(len, backing)?,
        });
        let region_flags = match sharing {
            RamSharing::Private => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            RamSharing::Shared => libc::MAP_SHARED,
        };
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
                    region_flags,
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

    /// Whether guest RAM is shared with other processes.
    pub fn sharing(&self) -> RamSharing {
        match self.mapping.file {
            Some(_) => RamSharing::Shared,
            None => RamSharing::Private,
        }
    }

    /// The memfd behind shared guest RAM; `None` for private RAM.
    pub fn shared_file(&self) -> Option<BorrowedFd<'_>> {
        self.mapping.file.as_ref().map(AsFd::as_fd)
    }

    /// Every range with its offset in [`GuestRam::shared_file`], in guest
    /// address order; empty for private RAM.
    pub fn shared_regions(&self) -> Vec<SharedRamRegion> {
        if self.mapping.file.is_none() {
            return Vec::new();
        }
        self.memory
            .iter()
            .filter_map(|region| {
                let host = region.get_host_address(MemoryRegionAddress(0)).ok()? as u64;
                Some(SharedRamRegion {
                    guest_addr: region.start_addr().0,
                    size: region.len(),
                    host_addr: host,
                    file_offset: host - self.mapping.addr as u64,
                })
            })
            .collect()
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
        let addr = raw_mmap(len, prot, hugetlb, None).map_err(|source| GuestRamError::HugeTlb {
            mib,
            pages: len / HUGE_PAGE_SIZE,
            source,
        })?;
        return Ok(Mapping {
            addr,
            len,
            file: None,
        });
    }
    let addr = aligned_mmap(len, prot, flags, None)
        .map_err(|source| GuestRamError::Map { mib, source })?;
    advise_huge_pages(addr, len);
    Ok(Mapping {
        addr,
        len,
        file: None,
    })
}

/// One read-write shared mapping of a new memfd of `len` bytes (a multiple
/// of 2 MiB), from file offset 0 at a 2 MiB-aligned address.
fn map_shared(len: usize, backing: RamBacking) -> Result<Mapping, GuestRamError> {
    let mib = len >> 20;
    let memfd_flags = match backing {
        RamBacking::TransparentHugePages => libc::MFD_CLOEXEC,
        RamBacking::HugeTlb => libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
    };
    let memfd_error = |source| GuestRamError::Memfd { mib, source };
    // SAFETY: creates a new fd; the name is a NUL-terminated literal.
    let fd = unsafe { libc::memfd_create(c"distroctl-guest-ram".as_ptr(), memfd_flags) };
    if fd < 0 {
        return Err(memfd_error(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sizes the memfd just created; no mapping of it exists yet.
    if unsafe { libc::ftruncate(file.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(memfd_error(io::Error::last_os_error()));
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let addr = match backing {
        RamBacking::HugeTlb => {
            // hugetlbfs files map at 2 MiB-aligned addresses by themselves;
            // a shared mapping reserves its huge pages at mmap time, so too
            // few fail here and not as SIGBUS at the guest's first touch.
            raw_mmap(len, prot, libc::MAP_SHARED, Some(file.as_fd())).map_err(|source| {
                GuestRamError::HugeTlb {
                    mib,
                    pages: len / HUGE_PAGE_SIZE,
                    source,
                }
            })?
        }
        RamBacking::TransparentHugePages => {
            let addr = aligned_mmap(len, prot, libc::MAP_SHARED, Some(file.as_fd()))
                .map_err(|source| GuestRamError::Map { mib, source })?;
            // Shared memory (shmem) gets huge pages only where
            // /sys/kernel/mm/transparent_hugepage/shmem_enabled allows it.
            advise_huge_pages(addr, len);
            addr
        }
    };
    Ok(Mapping {
        addr,
        len,
        file: Some(file),
    })
}

/// Maps `len` bytes (of `file` from offset 0, or anonymous memory) at a
/// 2 MiB-aligned address: reserves 2 MiB more address space than needed,
/// maps over its aligned part and gives back the unaligned head and the
/// rest of the tail.
fn aligned_mmap(
    len: usize,
    prot: i32,
    flags: i32,
    file: Option<BorrowedFd<'_>>,
) -> io::Result<*mut libc::c_void> {
    let padded = len + HUGE_PAGE_SIZE;
    let reserve_flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let (reserve_prot, reserve_flags) = match file {
        // Address space only: the file is mapped over it below.
        Some(_) => (libc::PROT_NONE, reserve_flags),
        None => (prot, flags),
    };
    let start = raw_mmap(padded, reserve_prot, reserve_flags, None)?;
    let aligned = round_up(start as usize, HUGE_PAGE_SIZE);
    if let Some(file) = file {
        // SAFETY: MAP_FIXED replaces only part of the reservation just
        // made, which nothing else refers to.
        let mapped = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                len,
                prot,
                flags | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            // SAFETY: the whole reservation, still unused.
            unsafe { libc::munmap(start, padded) };
            return Err(error);
        }
    }
    let head = aligned - start as usize;
    let tail = padded - head - len;
    // SAFETY: both pieces lie inside the reservation just created, outside
    // the part kept, and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(start, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned as *mut libc::c_void)
}

/// Asks for transparent huge pages; without THP on the host this fails
/// harmlessly and 4 KiB pages remain.
fn advise_huge_pages(addr: *mut libc::c_void, len: usize) {
    // SAFETY: `addr`/`len` is a mapping the caller just created and owns.
    if unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "transparent huge pages not available for guest RAM");
    }
}

fn raw_mmap(
    len: usize,
    prot: i32,
    flags: i32,
    file: Option<BorrowedFd<'_>>,
) -> io::Result<*mut libc::c_void> {
    let fd = file.map_or(-1, |f| f.as_raw_fd());
    // SAFETY: a new mapping at an address the kernel chooses touches no
    // existing memory.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
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

    /// Maps `len` bytes of `file` at `offset` in a mapping of its own, as
    /// a vhost-user backend would.
    fn map_like_a_backend(file: BorrowedFd<'_>, offset: u64, len: usize) -> *mut libc::c_void {
        // SAFETY: a new shared mapping of a live memfd at an address the
        // kernel chooses.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
        addr
    }

    #[test]
    fn shared_ram_keeps_the_2_mib_congruence_and_file_offsets_match_host_offsets() {
        let ranges = [
            (GuestAddress(0), 64 * MIB + 4096),
            (GuestAddress(0x1_0000_0000 + MIB as u64), 3 * MIB),
        ];

        let ram = GuestRam::with_sharing(
            &ranges,
            RamBacking::TransparentHugePages,
            RamSharing::Shared,
        )
        .unwrap();

        assert_eq!(ram.sharing(), RamSharing::Shared);
        assert_eq!(ram.host_base() % HUGE_PAGE_SIZE, 0);
        let regions = ram.shared_regions();
        assert_eq!(regions.len(), 2);
        for (region, &(guest, size)) in regions.iter().zip(&ranges) {
            assert_eq!(region.guest_addr, guest.0);
            assert_eq!(region.size, size as u64);
            assert_eq!(
                region.host_addr - ram.host_base() as u64,
                region.file_offset
            );
            assert_eq!(
                region.host_addr % HUGE_PAGE_SIZE as u64,
                guest.0 % HUGE_PAGE_SIZE as u64
            );
            assert_eq!(
                region.file_offset % HUGE_PAGE_SIZE as u64,
                guest.0 % HUGE_PAGE_SIZE as u64
            );
        }
    }

    #[test]
    fn another_mapping_of_the_shared_file_sees_guest_writes_and_the_other_way_round() {
        let guest = GuestAddress(0x1_0000_0000 + 0x1234);
        let ranges = [
            (GuestAddress(0), 4 * MIB),
            (GuestAddress(0x1_0000_0000), 4 * MIB),
        ];
        let ram = GuestRam::with_sharing(
            &ranges,
            RamBacking::TransparentHugePages,
            RamSharing::Shared,
        )
        .unwrap();
        let region = ram.shared_regions()[1];
        let backend = map_like_a_backend(ram.shared_file().unwrap(), region.file_offset, 4 * MIB);
        let at = (guest.0 - region.guest_addr) as usize;

        ram.write_obj(0xfeed_beefu32, guest).unwrap();
        // SAFETY: `at + 8` lies inside the 4 MiB just mapped.
        let seen = unsafe { std::ptr::read_volatile(backend.cast::<u8>().add(at).cast::<u32>()) };
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(backend.cast::<u8>().add(at + 4).cast::<u32>(), 0x600d) };

        assert_eq!(seen, 0xfeed_beef);
        assert_eq!(
            ram.read_obj::<u32>(GuestAddress(guest.0 + 4)).unwrap(),
            0x600d
        );
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(backend, 4 * MIB) };
    }

    #[test]
    fn private_ram_has_no_shared_file() {
        let ram = GuestRam::new(
            &[(GuestAddress(0), 4 * MIB)],
            RamBacking::TransparentHugePages,
        )
        .unwrap();

        assert_eq!(ram.sharing(), RamSharing::Private);
        assert!(ram.shared_file().is_none());
        assert!(ram.shared_regions().is_empty());
    }

    #[test]
    fn shared_hugetlb_ram_is_aligned_or_names_the_sysctl() {
        let result = GuestRam::with_sharing(
            &[(GuestAddress(0), 4 * MIB)],
            RamBacking::HugeTlb,
            RamSharing::Shared,
        );
        match result {
            Ok(ram) => {
                assert_eq!(ram.host_base() % HUGE_PAGE_SIZE, 0);
                assert!(ram.shared_file().is_some());
            }
            Err(err) => assert!(
                matches!(
                    err,
                    GuestRamError::HugeTlb { pages: 2, .. } | GuestRamError::Memfd { .. }
                ),
                "{err:?}"
            ),
        }
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
