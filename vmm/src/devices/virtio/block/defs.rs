//! virtio-blk constants, from the virtio 1.2 specification, section 5.2,
//! and Linux's `include/uapi/linux/virtio_blk.h`.

/// `VIRTIO_ID_BLOCK`.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// The device has one request queue.
pub const NUM_QUEUES: usize = 1;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Bytes per sector: request offsets and the capacity count 512-byte units
/// whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;
/// Size of `struct virtio_blk_outhdr` (type, reserved, sector).
pub const REQUEST_HEADER_SIZE: usize = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const RANGE_ENTRY_SIZE: usize = 16;
/// Length of the `GET_ID` answer.
pub const DEVICE_ID_LEN: usize = 20;

/// `VIRTIO_BLK_T_IN`: read.
pub const REQ_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write.
pub const REQ_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const REQ_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`: the serial string.
pub const REQ_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`.
pub const REQ_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`.
pub const REQ_WRITE_ZEROES: u32 = 13;

/// `VIRTIO_BLK_S_OK`.
pub const STATUS_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
pub const STATUS_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const STATUS_UNSUPP: u8 = 2;

/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: the zeroed range may be deallocated.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Feature: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: the device has a write cache and takes `FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature: `DISCARD` requests.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature: `WRITE_ZEROES` requests.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Size of the configuration space we expose (`struct virtio_blk_config`
/// up to `write_zeroes_may_unmap`, padded to 8 bytes).
pub const CONFIG_SPACE_SIZE: usize = 64;
/// Offsets of the `struct virtio_blk_config` fields we fill.
pub mod config_offset {
    /// `le64 capacity`, in sectors.
    pub const CAPACITY: usize = 0;
    /// `le32 seg_max`.
    pub const SEG_MAX: usize = 12;
    /// `le32 blk_size`.
    pub const BLK_SIZE: usize = 20;
    /// `le32 max_discard_sectors`.
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// `le32 max_discard_seg`.
    pub const MAX_DISCARD_SEG: usize = 40;
    /// `le32 discard_sector_alignment`.
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// `le32 max_write_zeroes_sectors`.
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// `le32 max_write_zeroes_seg`.
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// `u8 write_zeroes_may_unmap`.
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// Most sectors one discard or write-zeroes range may cover (2 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;
/// Most ranges in one discard or write-zeroes request.
pub const MAX_RANGES: u32 = 32;
/// Discard granularity we ask for, in sectors: the host file system's 4 KiB
/// blocks, below which a punched hole frees nothing.
pub const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
