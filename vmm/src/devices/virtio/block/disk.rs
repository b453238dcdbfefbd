//! The host file behind a virtio-blk device and the operations requests
//! map to: positioned reads and writes straight between the file and guest
//! memory, `fdatasync`, and `fallocate` for discard and write-zeroes.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags, OFlag};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::defs::{SECTOR_SHIFT, SECTOR_SIZE};
use super::request::{SectorRange, Segment};

/// Why a disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image could not be opened.
    #[error("cannot open the disk image {path}")]
    Open {
        /// The image.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The image's size could not be read.
    #[error("cannot read the size of the disk image")]
    Size(#[source] io::Error),
    /// Positioning in the file failed.
    #[error("cannot seek to byte {0} of the disk image")]
    Seek(u64, #[source] io::Error),
    /// Moving data between the file and guest memory failed.
    #[error("cannot transfer {len} bytes at byte {offset} of the disk image")]
    Transfer {
        /// Offset in the file.
        offset: u64,
        /// Bytes asked for.
        len: u32,
        /// The cause (I/O or guest memory).
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Writing zeros (where the file system cannot zero a range) failed.
    #[error("cannot write zeros from byte {0} of the disk image")]
    ZeroFill(u64, #[source] io::Error),
    /// `fdatasync` failed.
    #[error("cannot flush the disk image")]
    Flush(#[source] io::Error),
    /// `fallocate` failed.
    #[error("cannot {what} sectors {sector}+{count} of the disk image")]
    Fallocate {
        /// Punch a hole or zero a range.
        what: &'static str,
        /// First sector.
        sector: u64,
        /// Sector count.
        count: u32,
        /// What the OS said.
        #[source]
        source: Errno,
    },
}

/// Which way data moves in a transfer.
#[derive(Clone, Copy, Debug)]
enum Direction {
    ToGuest,
    FromGuest,
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    capacity_sectors: u64,
}

impl DiskFile {
    /// Opens the image at `path`, read-write unless `read_only`, bypassing
    /// the host page cache if `direct` (then guest buffers and offsets must
    /// be aligned to the host's logical block size).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, DiskError> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        if direct {
            options.custom_flags(OFlag::O_DIRECT.bits());
        }
        let file = options.open(path).map_err(|source| DiskError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let size = file.metadata().map_err(DiskError::Size)?.len();
        Ok(Self {
            file,
            // A partial last sector is not addressable.
            capacity_sectors: size >> SECTOR_SHIFT,
        })
    }

    /// The disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    fn seek(&mut self, offset: u64) -> Result<(), DiskError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map(drop)
            .map_err(|e| DiskError::Seek(offset, e))
    }

    /// Reads from `sector` into the guest buffers. Returns the bytes read.
    pub fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        buffers: &[Segment],
    ) -> Result<u32, DiskError> {
        self.transfer(mem, sector, buffers, Direction::ToGuest)
    }

    /// Writes the guest buffers at `sector`. Returns the bytes written.
    pub fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        buffers: &[Segment],
    ) -> Result<u32, DiskError> {
        self.transfer(mem, sector, buffers, Direction::FromGuest)
    }

    /// Moves each buffer between guest memory and the file, from `sector`
    /// on. The parser bounded the total by the capacity, so offsets fit.
    fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        buffers: &[Segment],
        direction: Direction,
    ) -> Result<u32, DiskError> {
        let mut offset = sector << SECTOR_SHIFT;
        self.seek(offset)?;
        let mut moved = 0u32;
        for segment in buffers {
            let len = segment.len as usize;
            match direction {
                Direction::ToGuest => {
                    mem.read_exact_volatile_from(segment.addr, &mut self.file, len)
                }
                Direction::FromGuest => {
                    mem.write_all_volatile_to(segment.addr, &mut self.file, len)
                }
            }
            .map_err(|source| DiskError::Transfer {
                offset,
                len: segment.len,
                source,
            })?;
            offset += u64::from(segment.len);
            moved = moved.saturating_add(segment.len);
        }
        Ok(moved)
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(DiskError::Flush)
    }

    /// Deallocates the ranges; they read back as zeros and the file keeps
    /// its size.
    pub fn punch_holes(&self, ranges: &[SectorRange]) -> Result<(), DiskError> {
        for range in ranges {
            self.fallocate(
                range,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE,
                "punch a hole in",
            )?;
        }
        Ok(())
    }

    /// Zeroes the ranges, deallocating them if `unmap`. Without `unmap`
    /// the blocks stay allocated (`FALLOC_FL_ZERO_RANGE`); host file
    /// systems without it get the zeros written.
    pub fn write_zeroes(&mut self, ranges: &[SectorRange], unmap: bool) -> Result<(), DiskError> {
        if unmap {
            return self.punch_holes(ranges);
        }
        for range in ranges {
            match self.fallocate(range, FallocateFlags::FALLOC_FL_ZERO_RANGE, "zero") {
                Err(DiskError::Fallocate {
                    source: Errno::EOPNOTSUPP,
                    ..
                }) => self.write_zero_bytes(range)?,
                other => other?,
            }
        }
        Ok(())
    }

    fn fallocate(
        &self,
        range: &SectorRange,
        mode: FallocateFlags,
        what: &'static str,
    ) -> Result<(), DiskError> {
        let error = |source| DiskError::Fallocate {
            what,
            sector: range.sector,
            count: range.num_sectors,
            source,
        };
        // The parser bounded ranges by the capacity, itself a file size,
        // so both fit off_t.
        let offset =
            i64::try_from(range.sector << SECTOR_SHIFT).map_err(|_| error(Errno::EFBIG))?;
        let len = i64::from(range.num_sectors) << SECTOR_SHIFT;
        fallocate(
            self.file.as_raw_fd(),
            mode | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .map(drop)
        .map_err(error)
    }

    fn write_zero_bytes(&mut self, range: &SectorRange) -> Result<(), DiskError> {
        const CHUNK_SECTORS: u64 = 128;
        let zeros = vec![0u8; (CHUNK_SECTORS * SECTOR_SIZE) as usize];
        let offset = range.sector << SECTOR_SHIFT;
        self.seek(offset)?;
        let mut left = u64::from(range.num_sectors);
        while left > 0 {
            let sectors = left.min(CHUNK_SECTORS);
            let chunk = &zeros[..(sectors * SECTOR_SIZE) as usize];
            io::Write::write_all(&mut self.file, chunk)
                .map_err(|e| DiskError::ZeroFill(offset, e))?;
            left -= sectors;
        }
        Ok(())
    }
}
