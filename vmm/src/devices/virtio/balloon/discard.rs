//! Giving guest RAM back to the host: `madvise(MADV_DONTNEED)` on ranges
//! [`request`](super::request) checked against guest memory.
//!
//! Our guest RAM is private anonymous memory (see `vm::guest_ram`), so the
//! host frees the pages at once and the guest reads zeros if it touches
//! them again. Memory shared with another process (a memfd for vhost-user)
//! would need `fallocate(FALLOC_FL_PUNCH_HOLE)` or `MADV_REMOVE` instead;
//! on such a mapping `MADV_DONTNEED` frees nothing but does no harm.

use std::io;

use super::request::HostRange;

/// Why the host did not take a range back.
#[derive(Debug, thiserror::Error)]
#[error("cannot give {len:#x} bytes at host address {addr:#x} back to the host")]
pub struct DiscardError {
    /// Host virtual address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// madvise's error.
    #[source]
    pub source: io::Error,
}

/// Drops the host pages behind each range. Stops at the first failure.
///
/// Every range must come from [`request`](super::request)'s parsers for
/// guest memory that is still mapped: the caller holds that memory (a
/// `GuestMemoryMmap` clone) while this runs.
pub fn discard(ranges: &[HostRange]) -> Result<(), DiscardError> {
    for range in ranges {
        // SAFETY: the range lies inside a guest RAM mapping that the caller
        // keeps alive (checked by `request::host_ranges`) and is 4 KiB
        // aligned. No Rust reference points into guest RAM: all access goes
        // through vm-memory's volatile accessors, so pages that read as
        // zeros afterwards break no invariant of this process. The guest
        // gave the pages up; what it reads later is its own business.
        let rc = unsafe {
            libc::madvise(
                range.addr as *mut libc::c_void,
                range.len,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(DiscardError {
                addr: range.addr,
                len: range.len,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
