//! Giving guest RAM back to the host: ranges [`request`](super::request)
//! checked against guest memory, dropped in the way the memory behind them
//! needs (see `vm::guest_ram` for where guest RAM comes from).
//!
//! - Private anonymous memory (the default): `MADV_DONTNEED` frees the
//!   pages at once, 4 KiB at a time (a transparent huge page is split);
//!   the guest reads zeros if it touches them again.
//! - Memory shared with another process (a memfd, as vhost-user frontends
//!   need): `MADV_DONTNEED` would only drop this process's mapping while
//!   the file keeps the pages, so `MADV_REMOVE` punches a hole in the file.
//! - Pages reserved in the hugetlbfs pool (`--hugepages`): kept. Freeing a
//!   2 MiB page only hands it back to the pool the administrator set aside
//!   for this VM (recent kernels even keep it reserved for the mapping), so
//!   the rest of the host gains nothing, while older kernels let another
//!   process take it and the guest's next touch is a SIGBUS. The device
//!   then offers no free page reporting, so the guest does not even try.

use std::io;

use super::request::HostRange;
use crate::vm::guest_ram::{RamBacking, RamSharing};

/// How the host drops the pages behind a range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// `MADV_DONTNEED`: private anonymous memory.
    Private,
    /// `MADV_REMOVE`: a shared file mapping (memfd, tmpfs), whose pages
    /// belong to the file.
    Shared,
    /// Nothing: the memory is not the host's to take back.
    Keep,
}

/// Why the host did not take a range back.
#[derive(Debug, thiserror::Error)]
#[error("cannot give {len:#x} bytes at host address {addr:#x} back to the host")]
pub struct DiscardError {
    /// Host virtual address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// Bytes of the ranges before this one, which did go back.
    pub freed_before: u64,
    /// madvise's error.
    #[source]
    pub source: io::Error,
}

impl Discard {
    /// The method that fits guest RAM mapped with `backing`, private or
    /// shared (a memfd, when a vhost-user backend maps it too).
    pub fn for_backing(backing: RamBacking, sharing: RamSharing) -> Discard {
        match (backing, sharing) {
            (RamBacking::TransparentHugePages, RamSharing::Private) => Discard::Private,
            (RamBacking::TransparentHugePages, RamSharing::Shared) => Discard::Shared,
            (RamBacking::HugeTlb, _) => Discard::Keep,
        }
    }

    /// Whether discarding frees anything (and so whether the device offers
    /// free page reporting).
    pub fn gives_back(self) -> bool {
        self != Discard::Keep
    }

    /// Drops the host pages behind each range and returns how many bytes
    /// went back (0 for [`Discard::Keep`]). Stops at the first failure;
    /// the ranges before it stay dropped.
    ///
    /// Every range must come from [`request`](super::request)'s parsers for
    /// guest memory that is still mapped: the caller holds that memory (a
    /// `GuestMemoryMmap` clone) while this runs.
    pub fn discard(self, ranges: &[HostRange]) -> Result<u64, DiscardError> {
        let advice = match self {
            Discard::Private => libc::MADV_DONTNEED,
            Discard::Shared => libc::MADV_REMOVE,
            Discard::Keep => return Ok(0),
        };
        let mut freed = 0u64;
        for range in ranges {
            // SAFETY: the range lies inside a guest RAM mapping that the
            // caller keeps alive (checked by `request::host_ranges`) and is
            // 4 KiB aligned. No Rust reference points into guest RAM: all
            // access goes through vm-memory's volatile accessors, so pages
            // that read as zeros afterwards break no invariant of this
            // process. The guest gave the pages up; what it reads later is
            // its own business.
            let rc = unsafe { libc::madvise(range.addr as *mut libc::c_void, range.len, advice) };
            if rc != 0 {
                return Err(DiscardError {
                    addr: range.addr,
                    len: range.len,
                    freed_before: freed,
                    source: io::Error::last_os_error(),
                });
            }
            freed += range.len as u64;
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    const MIB: usize = 1 << 20;

    /// A mapping of `len` bytes, filled with 0xa5, and the memfd behind it
    /// when `shared`.
    struct Filled {
        addr: *mut libc::c_void,
        len: usize,
        file: Option<OwnedFd>,
    }

    impl Filled {
        fn new(len: usize, shared: bool) -> Filled {
            let file = shared.then(|| {
                // SAFETY: a new memfd; the name is a NUL-terminated literal.
                let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), 0) };
                assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
                // SAFETY: `fd` was just created and is owned by nothing else.
                let file = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: resizing the memfd just created.
                assert_eq!(unsafe { libc::ftruncate(fd, len as libc::off_t) }, 0);
                file
            });
            let (flags, fd) = match &file {
                Some(f) => (libc::MAP_SHARED, f.as_raw_fd()),
                None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
            };
            // SAFETY: a new mapping at an address the kernel chooses.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    fd,
                    0,
                )
            };
            assert_ne!(addr, libc::MAP_FAILED);
            // SAFETY: the mapping just created is `len` bytes, writable.
            unsafe { std::ptr::write_bytes(addr.cast::<u8>(), 0xa5, len) };
            Filled { addr, len, file }
        }

        fn range(&self, offset: usize, len: usize) -> HostRange {
            HostRange {
                addr: self.addr as usize + offset,
                len,
            }
        }

        fn byte(&self, offset: usize) -> u8 {
            assert!(offset < self.len);
            // SAFETY: inside the live mapping.
            unsafe { std::ptr::read_volatile(self.addr.cast::<u8>().add(offset)) }
        }

        /// Bytes the memfd holds in memory.
        fn file_bytes(&self) -> u64 {
            let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
            let fd = self.file.as_ref().unwrap().as_raw_fd();
            // SAFETY: `stat` is a valid out-pointer for fstat.
            assert_eq!(unsafe { libc::fstat(fd, stat.as_mut_ptr()) }, 0);
            // SAFETY: fstat succeeded and filled it.
            unsafe { stat.assume_init() }.st_blocks as u64 * 512
        }
    }

    impl Drop for Filled {
        fn drop(&mut self) {
            // SAFETY: the mapping this value created.
            unsafe { libc::munmap(self.addr, self.len) };
        }
    }

    #[test]
    fn private_discard_zeroes_the_range_and_keeps_its_neighbours() {
        let mem = Filled::new(4 * MIB, false);

        let freed = Discard::Private
            .discard(&[mem.range(MIB, 2 * MIB)])
            .unwrap();

        assert_eq!(freed, 2 * MIB as u64);
        assert_eq!(mem.byte(MIB), 0);
        assert_eq!(mem.byte(3 * MIB - 1), 0);
        assert_eq!(mem.byte(MIB - 1), 0xa5);
        assert_eq!(mem.byte(3 * MIB), 0xa5);
    }

    #[test]
    fn shared_discard_punches_a_hole_in_the_file() {
        let mem = Filled::new(4 * MIB, true);
        let before = mem.file_bytes();

        let freed = Discard::Shared.discard(&[mem.range(0, 2 * MIB)]).unwrap();

        assert_eq!(freed, 2 * MIB as u64);
        assert_eq!(before, 4 * MIB as u64);
        assert_eq!(mem.file_bytes(), 2 * MIB as u64);
        assert_eq!(mem.byte(0), 0);
        assert_eq!(mem.byte(2 * MIB), 0xa5);
    }

    #[test]
    fn private_discard_of_shared_memory_would_free_nothing() {
        // Why `Shared` exists: the file keeps pages only unmapped here.
        let mem = Filled::new(2 * MIB, true);

        Discard::Private.discard(&[mem.range(0, 2 * MIB)]).unwrap();

        assert_eq!(mem.file_bytes(), 2 * MIB as u64);
        assert_eq!(mem.byte(0), 0xa5);
    }

    #[test]
    fn keep_touches_nothing_and_reports_nothing_returned() {
        let mem = Filled::new(2 * MIB, false);

        let freed = Discard::Keep.discard(&[mem.range(0, 2 * MIB)]).unwrap();

        assert_eq!(freed, 0);
        assert_eq!(mem.byte(0), 0xa5);
        assert!(!Discard::Keep.gives_back());
    }

    #[test]
    fn each_backing_gets_its_method() {
        assert_eq!(
            Discard::for_backing(RamBacking::TransparentHugePages, RamSharing::Private),
            Discard::Private
        );
        assert_eq!(
            Discard::for_backing(RamBacking::TransparentHugePages, RamSharing::Shared),
            Discard::Shared
        );
        assert_eq!(
            Discard::for_backing(RamBacking::HugeTlb, RamSharing::Private),
            Discard::Keep
        );
        assert_eq!(
            Discard::for_backing(RamBacking::HugeTlb, RamSharing::Shared),
            Discard::Keep
        );
    }

    #[test]
    fn discarding_shared_guest_ram_frees_the_memfd_blocks() {
        use std::os::fd::BorrowedFd;

        use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

        use crate::vm::guest_ram::GuestRam;

        fn allocated(file: BorrowedFd<'_>) -> u64 {
            let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: `stat` is a valid out-pointer for fstat.
            let rc = unsafe { libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) };
            assert_eq!(rc, 0);
            // SAFETY: fstat succeeded and filled it.
            unsafe { stat.assume_init() }.st_blocks as u64 * 512
        }
        let ram = GuestRam::with_sharing(
            &[(GuestAddress(0), 8 * MIB)],
            RamBacking::TransparentHugePages,
            RamSharing::Shared,
        )
        .unwrap();
        ram.write_slice(&vec![0xa5u8; 8 * MIB], GuestAddress(0))
            .unwrap();
        let file = ram.shared_file().unwrap();
        let before = allocated(file);
        let host = ram.get_host_address(GuestAddress(2 * MIB as u64)).unwrap() as usize;
        let discard = Discard::for_backing(RamBacking::TransparentHugePages, ram.sharing());

        let freed = discard
            .discard(&[HostRange {
                addr: host,
                len: 4 * MIB,
            }])
            .unwrap();

        assert_eq!(before, 8 * MIB as u64);
        assert_eq!(freed, 4 * MIB as u64);
        assert_eq!(allocated(file), 4 * MIB as u64);
        assert_eq!(ram.read_obj::<u8>(GuestAddress(2 * MIB as u64)).unwrap(), 0);
        assert_eq!(
            ram.read_obj::<u8>(GuestAddress(6 * MIB as u64)).unwrap(),
            0xa5
        );
    }

    #[test]
    fn a_failed_range_stops_the_discard_with_its_address() {
        let mem = Filled::new(2 * MIB, false);
        let unaligned = HostRange {
            addr: mem.addr as usize + 1,
            len: 4096,
        };

        let err = Discard::Private
            .discard(&[mem.range(0, 4096), unaligned])
            .unwrap_err();

        assert_eq!(err.addr, unaligned.addr);
        assert_eq!(err.freed_before, 4096);
        assert_eq!(mem.byte(0), 0, "the range before the failure stays dropped");
    }
}
