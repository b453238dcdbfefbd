//! A descriptor chain from one of the balloon's queues turned into the host
//! memory it names, as a pure function of the chain and guest memory:
//! nothing is touched until the whole chain has been checked.
//!
//! - The reporting queue carries free page ranges, one per descriptor, as
//!   device-writable buffers (Linux adds them with `virtqueue_add_inbuf`;
//!   the device writes nothing into them): the descriptor's address and
//!   length are the range.
//! - The inflate and deflate queues carry device-readable arrays of `le32`
//!   page frame numbers of 4 KiB pages.

use std::mem::Discriminant;

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
};

use super::defs::{BALLOON_PAGE_SIZE, PFN_ENTRY_SIZE, VIRTIO_BALLOON_PFN_SHIFT};

/// The most bytes of page frame numbers one descriptor may hold. Linux
/// sends at most 256 entries (1 KiB) per buffer; the cap keeps a guest from
/// making the host allocate what a 32-bit length allows.
pub const MAX_PFN_LIST_BYTES: u32 = 64 * 1024;

/// Why a chain was returned to the guest without touching memory.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A chain that ends in a descriptor the device cannot follow: a next
    /// index outside the queue, an unreadable indirect table, a loop.
    #[error("a descriptor chain is broken (its next descriptor cannot be followed)")]
    BrokenChain,
    /// A reporting-queue descriptor the device could only read.
    #[error("descriptor {0} of a free page report is device-readable; reports are device-writable buffers")]
    ReportNotWritable(usize),
    /// An inflate or deflate descriptor the device could only write.
    #[error(
        "descriptor {0} of a page list is device-writable; page lists are device-readable buffers"
    )]
    PageListNotReadable(usize),
    /// A range that does not start and end on a 4 KiB boundary, or is empty.
    #[error("range {addr:#x}+{len:#x} is empty or not aligned to 4 KiB")]
    Unaligned {
        /// Guest physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A range not wholly inside guest RAM.
    #[error("range {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory {
        /// Guest physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A page list whose length is not whole entries, or too long.
    #[error(
        "a page list of {0} bytes is not whole 4-byte entries up to {MAX_PFN_LIST_BYTES} bytes"
    )]
    PageListLength(u32),
    /// The page list itself could not be read.
    #[error("cannot read a page list")]
    ReadPageList(#[source] GuestMemoryError),
}

impl RequestError {
    /// Which kind of error this is, whatever its values, so that each kind
    /// can be logged once.
    pub fn kind(&self) -> Discriminant<RequestError> {
        std::mem::discriminant(self)
    }
}

/// One descriptor of a chain, as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Its length.
    pub len: u32,
    /// Whether the device may write it (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// Host memory to give back: part of guest RAM's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRange {
    /// Host virtual address, 4 KiB-aligned.
    pub addr: usize,
    /// Length in bytes, a multiple of 4 KiB.
    pub len: usize,
}

/// The host memory behind a free page report (a reporting-queue chain).
pub fn parse_report(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
) -> Result<Vec<HostRange>, RequestError> {
    let mut ranges = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        if !segment.writable {
            return Err(RequestError::ReportNotWritable(index));
        }
        ranges.extend(host_ranges(mem, segment.addr.0, u64::from(segment.len))?);
    }
    Ok(ranges)
}

/// The host memory behind the page frame numbers of an inflate or deflate
/// chain; runs of consecutive pages come back as one range.
pub fn parse_page_list(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
) -> Result<Vec<HostRange>, RequestError> {
    let mut pages: Vec<u64> = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        if segment.writable {
            return Err(RequestError::PageListNotReadable(index));
        }
        if segment.len % PFN_ENTRY_SIZE != 0 || segment.len > MAX_PFN_LIST_BYTES {
            return Err(RequestError::PageListLength(segment.len));
        }
        let mut bytes = vec![0u8; segment.len as usize];
        mem.read_slice(&mut bytes, segment.addr)
            .map_err(RequestError::ReadPageList)?;
        pages.extend(
            bytes
                .chunks_exact(PFN_ENTRY_SIZE as usize)
                .map(|entry| u64::from(u32::from_le_bytes(entry.try_into().unwrap()))),
        );
    }
    let mut ranges = Vec::new();
    for (start, count) in runs(pages) {
        ranges.extend(host_ranges(
            mem,
            start << VIRTIO_BALLOON_PFN_SHIFT,
            count * BALLOON_PAGE_SIZE,
        )?);
    }
    Ok(ranges)
}

/// `(first, count)` of each run of consecutive page numbers, in list order.
fn runs(pages: Vec<u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some((start, count)) if *start + *count == page => *count += 1,
            _ => runs.push((page, 1)),
        }
    }
    runs
}

/// The host pieces of guest range `[addr, addr + len)`: one per guest RAM
/// region it crosses. The whole range must be 4 KiB-aligned and in RAM.
pub fn host_ranges(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: u64,
) -> Result<Vec<HostRange>, RequestError> {
    if len == 0 || addr % BALLOON_PAGE_SIZE != 0 || len % BALLOON_PAGE_SIZE != 0 {
        return Err(RequestError::Unaligned { addr, len });
    }
    let outside = RequestError::OutsideMemory { addr, len };
    let end = addr
        .checked_add(len)
        .ok_or(RequestError::OutsideMemory { addr, len })?;
    let mut ranges = Vec::new();
    let mut cursor = addr;
    while cursor < end {
        let Some((region, offset)) = mem.to_region_addr(GuestAddress(cursor)) else {
            return Err(outside);
        };
        let count = (end - cursor).min(region.len() - offset.0);
        let Ok(host) = region.get_host_address(offset) else {
            return Err(outside);
        };
        let host = host as usize;
        // Guest RAM is mapped at least page-aligned, so this holds unless
        // a region was set up oddly; madvise would refuse such a range.
        if host % BALLOON_PAGE_SIZE as usize != 0 {
            return Err(outside);
        }
        ranges.push(HostRange {
            addr: host,
            len: count as usize,
        });
        cursor += count;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 4 * MIB as usize),
            (GuestAddress(4 * MIB), 4 * MIB as usize),
            (GuestAddress(16 * MIB), MIB as usize),
        ])
        .unwrap()
    }

    #[test]
    fn range_across_adjacent_regions_comes_back_in_pieces() {
        let mem = two_regions();

        let ranges = host_ranges(&mem, 3 * MIB, 2 * MIB).unwrap();

        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].len + ranges[1].len, 2 * MIB as usize);
        assert_eq!(
            ranges[1].addr,
            mem.get_host_address(GuestAddress(4 * MIB)).unwrap() as usize
        );
    }

    #[test]
    fn range_running_into_a_hole_is_outside_memory() {
        let mem = two_regions();

        let err = host_ranges(&mem, 7 * MIB, 2 * MIB).unwrap_err();

        assert!(matches!(err, RequestError::OutsideMemory { .. }), "{err}");
    }

    #[test]
    fn range_that_wraps_the_address_space_is_outside_memory() {
        let mem = two_regions();

        let err = host_ranges(&mem, u64::MAX - 4095, 8192).unwrap_err();

        assert!(matches!(err, RequestError::OutsideMemory { .. }), "{err}");
    }

    #[test]
    fn empty_or_unaligned_ranges_are_refused() {
        let mem = two_regions();

        for (addr, len) in [(0, 0), (512, 4096), (0, 4097)] {
            let err = host_ranges(&mem, addr, len).unwrap_err();
            assert!(matches!(err, RequestError::Unaligned { .. }), "{err}");
        }
    }

    #[test]
    fn consecutive_page_numbers_form_one_run() {
        assert_eq!(
            runs(vec![10, 11, 12, 20, 13, 14]),
            vec![(10, 3), (20, 1), (13, 2)]
        );
    }

    #[test]
    fn oversized_page_list_is_refused_before_reading() {
        let mem = two_regions();
        let segment = Segment {
            addr: GuestAddress(0),
            len: u32::MAX - 3,
            writable: false,
        };

        let err = parse_page_list(&mem, &[segment]).unwrap_err();

        assert!(matches!(err, RequestError::PageListLength(_)), "{err}");
    }
}
