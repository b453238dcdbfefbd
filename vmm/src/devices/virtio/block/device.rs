//! The virtio-blk device: features, configuration space and the request
//! queue, running parsed requests against the [`DiskFile`].

use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::defs::{
    config_offset, CONFIG_SPACE_SIZE, DEVICE_ID_LEN, DISCARD_ALIGNMENT_SECTORS, MAX_RANGES,
    MAX_RANGE_SECTORS, NUM_QUEUES, QUEUE_SIZE, SECTOR_SIZE, STATUS_IOERR, STATUS_OK,
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
};
use super::disk::{DiskError, DiskFile};
use super::request::{parse_request, DiskLimits, Operation, Segment};
use crate::devices::virtio::VirtioDevice;

/// Why the block device could not be created, activated or run.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image could not be opened.
    #[error("cannot set up the block device")]
    Disk(#[source] DiskError),
    /// Activation got the wrong number of queues.
    #[error("the block device needs {NUM_QUEUES} queue, got {0}")]
    QueueCount(usize),
    /// The request queue handed over at activation is not ready.
    #[error("the block request queue is not ready")]
    QueueNotReady,
    /// Queue work was asked of a device that owns no queue.
    #[error("the block device is not activated")]
    NotActivated,
    /// Returning a buffer to the guest failed.
    #[error("cannot return a buffer on the block request queue")]
    AddUsed(#[source] virtio_queue::Error),
    /// Checking whether the guest wants an interrupt failed.
    #[error("cannot check the block queue's notification state")]
    Notification(#[source] virtio_queue::Error),
}

/// How to set up a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The disk image on the host.
    pub path: PathBuf,
    /// The guest may not write (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// The serial string `GET_ID` answers (first 20 bytes count).
    pub serial: String,
    /// Open the image with `O_DIRECT`, bypassing the host page cache. The
    /// device then advertises 4096-byte blocks so requests stay aligned.
    pub direct_io: bool,
}

impl BlockConfig {
    /// A writable disk at `path`, serial = the file name, through the host
    /// page cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let serial = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            path,
            read_only: false,
            serial,
            direct_io: false,
        }
    }
}

#[derive(Debug)]
struct ActiveQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
}

/// A virtio block device backed by a host file.
#[derive(Debug)]
pub struct BlockDevice {
    disk: DiskFile,
    config: BlockConfig,
    avail_features: u64,
    acked_features: u64,
    active: Option<ActiveQueue>,
}

impl BlockDevice {
    /// Opens the image and creates an unactivated device.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        let disk = DiskFile::open(&config.path, config.read_only, config.direct_io)
            .map_err(BlockError::Disk)?;
        let mut avail_features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        Ok(Self {
            disk,
            config,
            avail_features,
            acked_features: 0,
            active: None,
        })
    }

    /// The disk image on the host.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// Whether the device owns an activated queue.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// What requests are checked against, given the negotiated features.
    pub fn limits(&self) -> DiskLimits {
        DiskLimits {
            capacity_sectors: self.disk.capacity_sectors(),
            read_only: self.config.read_only,
            discard: self.acked_features & 1 << VIRTIO_BLK_F_DISCARD != 0,
            write_zeroes: self.acked_features & 1 << VIRTIO_BLK_F_WRITE_ZEROES != 0,
            max_range_sectors: MAX_RANGE_SECTORS,
            max_ranges: MAX_RANGES,
        }
    }

    /// The configuration space (`struct virtio_blk_config`).
    fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut space = [0u8; CONFIG_SPACE_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            space[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        let block_size: u32 = if self.config.direct_io {
            4096
        } else {
            SECTOR_SIZE as u32
        };
        put(
            config_offset::CAPACITY,
            &self.capacity_sectors().to_le_bytes(),
        );
        // Two descriptors of a chain carry the header and the status.
        put(
            config_offset::SEG_MAX,
            &(u32::from(QUEUE_SIZE) - 2).to_le_bytes(),
        );
        put(config_offset::BLK_SIZE, &block_size.to_le_bytes());
        put(
            config_offset::MAX_DISCARD_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(config_offset::MAX_DISCARD_SEG, &MAX_RANGES.to_le_bytes());
        put(
            config_offset::DISCARD_SECTOR_ALIGNMENT,
            &DISCARD_ALIGNMENT_SECTORS.to_le_bytes(),
        );
        put(
            config_offset::MAX_WRITE_ZEROES_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(
            config_offset::MAX_WRITE_ZEROES_SEG,
            &MAX_RANGES.to_le_bytes(),
        );
        put(config_offset::WRITE_ZEROES_MAY_UNMAP, &[1]);
        space
    }

    /// Runs every request the guest queued. Returns whether the guest wants
    /// an interrupt.
    pub fn process_requests(&mut self) -> Result<bool, BlockError> {
        let mut active = self.active.take().ok_or(BlockError::NotActivated)?;
        let result = self.drain_queue(&mut active);
        self.active = Some(active);
        result
    }

    fn drain_queue(&mut self, active: &mut ActiveQueue) -> Result<bool, BlockError> {
        let ActiveQueue { mem, queue } = active;
        let limits = self.limits();
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let segments: Vec<Segment> = chain
                .map(|desc| Segment {
                    addr: desc.addr(),
                    len: desc.len(),
                    writable: desc.is_write_only(),
                })
                .collect();
            let len = self.run_chain(mem, &segments, &limits);
            queue
                .add_used(&*mem, head, len)
                .map_err(BlockError::AddUsed)?;
            used = true;
        }
        if !used {
            return Ok(false);
        }
        queue
            .needs_notification(&*mem)
            .map_err(BlockError::Notification)
    }

    /// Parses and runs one chain and writes its status. Returns the bytes
    /// written into the chain (the used length).
    fn run_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        segments: &[Segment],
        limits: &DiskLimits,
    ) -> u32 {
        let request = match parse_request(mem, segments, limits) {
            Ok(request) => request,
            Err(e) => {
                tracing::debug!(error = %e, "virtio-blk: returned a chain without a status byte");
                return 0;
            }
        };
        let (status, data_len) = match request.operation {
            Ok(operation) => match self.execute(mem, &operation) {
                Ok(len) => (STATUS_OK, len),
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-blk: request failed");
                    (STATUS_IOERR, 0)
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "virtio-blk: refused a request");
                (e.status(), 0)
            }
        };
        if let Err(e) = mem.write_obj(status, request.status) {
            tracing::debug!(error = %e, "virtio-blk: cannot write a request status");
            return 0;
        }
        data_len.saturating_add(1)
    }

    /// Runs a checked operation. Returns the bytes written to guest memory.
    fn execute(&mut self, mem: &GuestMemoryMmap, operation: &Operation) -> Result<u32, DiskError> {
        match operation {
            Operation::Read { sector, buffers } => self.disk.read(mem, *sector, buffers),
            Operation::Write { sector, buffers } => {
                self.disk.write(mem, *sector, buffers).map(|_| 0)
            }
            Operation::Flush => self.disk.flush().map(|()| 0),
            Operation::GetId { buffers } => {
                Ok(write_id(mem, &device_id(&self.config.serial), buffers))
            }
            Operation::Discard(ranges) => self.disk.punch_holes(ranges).map(|()| 0),
            Operation::WriteZeroes { ranges, unmap } => {
                self.disk.write_zeroes(ranges, *unmap).map(|()| 0)
            }
        }
    }
}

/// The answer to `GET_ID`: the serial's first 20 bytes, zero-padded (no
/// terminating NUL when it is exactly 20 bytes long).
pub fn device_id(serial: &str) -> [u8; DEVICE_ID_LEN] {
    let mut id = [0u8; DEVICE_ID_LEN];
    let bytes = serial.as_bytes();
    let len = bytes.len().min(DEVICE_ID_LEN);
    id[..len].copy_from_slice(&bytes[..len]);
    id
}

/// Writes the ID across the buffers. Returns the bytes written.
fn write_id(mem: &GuestMemoryMmap, id: &[u8; DEVICE_ID_LEN], buffers: &[Segment]) -> u32 {
    let mut left: &[u8] = id;
    for buffer in buffers {
        let n = left.len().min(buffer.len as usize);
        if n == 0 || mem.write_slice(&left[..n], buffer.addr).is_err() {
            break;
        }
        left = &left[n..];
    }
    (DEVICE_ID_LEN - left.len()) as u32
}

impl VirtioDevice for BlockDevice {
    type Error = BlockError;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.config_space();
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(data.len())?))
            .filter(|range| range.end <= CONFIG_SPACE_SIZE);
        match range {
            Some(range) => data.copy_from_slice(&space[range]),
            None => tracing::debug!(
                offset,
                len = data.len(),
                "virtio-blk: config read out of range"
            ),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // `writeback` needs VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
        tracing::debug!(
            offset,
            len = data.len(),
            "virtio-blk: ignored a config write"
        );
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), BlockError> {
        let [queue]: [Queue; NUM_QUEUES] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| BlockError::QueueCount(q.len()))?;
        if !queue.ready() {
            return Err(BlockError::QueueNotReady);
        }
        self.active = Some(ActiveQueue { mem, queue });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;

    #[test]
    fn id_spreads_over_short_buffers_and_stops_at_twenty_bytes() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let id = device_id("abcdefghijklmnopqrstuvwxyz");
        let buffers = [
            Segment {
                addr: GuestAddress(0x100),
                len: 8,
                writable: true,
            },
            Segment {
                addr: GuestAddress(0x200),
                len: 64,
                writable: true,
            },
        ];
        mem.write_slice(&[0xff; 64], GuestAddress(0x200)).unwrap();

        let written = write_id(&mem, &id, &buffers);
        let only_short = write_id(&mem, &id, &buffers[..1]);

        let mut first = [0u8; 8];
        let mut second = [0u8; 13];
        mem.read_slice(&mut first, GuestAddress(0x100)).unwrap();
        mem.read_slice(&mut second, GuestAddress(0x200)).unwrap();
        assert_eq!(written, 20);
        assert_eq!(only_short, 8);
        assert_eq!(&first, b"abcdefgh");
        assert_eq!(&second, b"ijklmnopqrst\xff");
    }

    #[test]
    fn device_id_is_truncated_or_zero_padded_to_twenty_bytes() {
        assert_eq!(&device_id("data")[..5], b"data\0");
        assert_eq!(
            &device_id("abcdefghijklmnopqrstuvwxyz"),
            b"abcdefghijklmnopqrst"
        );
    }
}
