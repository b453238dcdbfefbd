//! A guest driver for tests: programs the virtio-mmio registers in the order
//! Linux's `virtio_mmio` and `virtio` core do, and plays the guest's side of
//! split virtqueues with `virtio_queue::mock::MockSplitQueue`.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::defs::*;
use super::MmioTransport;
use crate::devices::virtio::VirtioDevice;

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// Guest memory for a test: 32 MiB from address 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap()
}

/// The guest's side of one split virtqueue.
pub struct GuestQueue<'m> {
    mock: MockSplitQueue<'m, GuestMemoryMmap>,
    size: u16,
    next_desc: u16,
    used_seen: u16,
}

impl<'m> GuestQueue<'m> {
    /// Lays out a queue of `size` entries at `base`.
    ///
    /// The mock places the used ring `len` bytes after the start of the
    /// available ring's entries instead of `2 * len`; laying out a mock twice
    /// the size and using only the first half of each ring keeps them apart.
    pub fn new(mem: &'m GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        Self {
            mock: MockSplitQueue::create(mem, base, 2 * size),
            size,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// Puts a chain on the available ring. Each descriptor is
    /// `(addr, len, device_writable)`; returns the head index.
    pub fn add_chain(&mut self, descs: &[(GuestAddress, u32, bool)]) -> u16 {
        let count = descs.len() as u16;
        let head = if self.next_desc + count > self.size {
            0
        } else {
            self.next_desc
        };
        let raw: Vec<(GuestAddress, u32, u16, u16)> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= F_NEXT;
                }
                (addr, len, flags, head + i as u16 + 1)
            })
            .collect();
        self.add_raw_chain(&raw)
    }

    /// Puts descriptors exactly as given — `(addr, len, flags, next)`, as a
    /// buggy or hostile driver might write them — into consecutive table
    /// slots and their first slot on the available ring; returns that slot.
    pub fn add_raw_chain(&mut self, descs: &[(GuestAddress, u32, u16, u16)]) -> u16 {
        let count = descs.len() as u16;
        if self.next_desc + count > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let desc = SplitDescriptor::new(addr.0, len, flags, next);
            self.mock
                .desc_table()
                .store(head + i as u16, RawDescriptor::from(desc))
                .unwrap();
        }
        self.next_desc += count;
        self.push_avail(head);
        head
    }

    /// Puts `head` on the available ring as it is, even when it names no
    /// descriptor of the table.
    pub fn push_avail(&mut self, head: u16) {
        let avail_idx = self.mock.avail().idx().load();
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(avail_idx % self.size))
            .unwrap()
            .store(head);
        self.mock.avail().idx().store(avail_idx.wrapping_add(1));
    }

    /// `(head, len)` of every chain the device returned since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let used_idx = self.mock.used().idx().load();
        let mut out = Vec::new();
        while self.used_seen != used_idx {
            let slot = usize::from(self.used_seen % self.size);
            let elem = self.mock.used().ring().ref_at(slot).unwrap().load();
            out.push((elem.id() as u16, elem.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Ring addresses: descriptor table, available ring, used ring.
    pub fn ring_addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (
            self.mock.desc_table_addr(),
            self.mock.avail_addr(),
            self.mock.used_addr(),
        )
    }

    /// A device-side `Queue` set up as this driver would, for tests that
    /// activate a device without a transport.
    pub fn device_queue(&self) -> Queue {
        let mut queue: Queue = self.mock.create_queue().unwrap();
        queue.set_size(self.size);
        queue
    }

    /// The queue size the driver uses.
    pub fn size(&self) -> u16 {
        self.size
    }
}

/// Reads a 32-bit register.
pub fn read_reg<D: VirtioDevice>(transport: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    transport.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Writes a 32-bit register.
pub fn write_reg<D: VirtioDevice>(transport: &mut MmioTransport<D>, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

fn add_status<D: VirtioDevice>(transport: &mut MmioTransport<D>, bits: u32) {
    let status = read_reg(transport, REG_STATUS);
    write_reg(transport, REG_STATUS, status | bits);
}

/// Linux's `virtio_mmio` probe plus `virtio_dev_probe` up to FEATURES_OK:
/// checks magic and version, resets, acknowledges, negotiates `wanted`
/// features. Returns the negotiated features, or `None` when the device
/// refused FEATURES_OK.
pub fn negotiate<D: VirtioDevice>(transport: &mut MmioTransport<D>, wanted: u64) -> Option<u64> {
    assert_eq!(read_reg(transport, REG_MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(read_reg(transport, REG_VERSION), MMIO_VERSION);
    write_reg(transport, REG_STATUS, 0);
    add_status(transport, STATUS_ACKNOWLEDGE);
    add_status(transport, STATUS_DRIVER);
    write_reg(transport, REG_DEVICE_FEATURES_SEL, 1);
    let mut offered = u64::from(read_reg(transport, REG_DEVICE_FEATURES)) << 32;
    write_reg(transport, REG_DEVICE_FEATURES_SEL, 0);
    offered |= u64::from(read_reg(transport, REG_DEVICE_FEATURES));
    let features = offered & wanted;
    write_reg(transport, REG_DRIVER_FEATURES_SEL, 1);
    write_reg(transport, REG_DRIVER_FEATURES, (features >> 32) as u32);
    write_reg(transport, REG_DRIVER_FEATURES_SEL, 0);
    write_reg(transport, REG_DRIVER_FEATURES, features as u32);
    add_status(transport, STATUS_FEATURES_OK);
    (read_reg(transport, REG_STATUS) & STATUS_FEATURES_OK != 0).then_some(features)
}

/// Linux's `vm_setup_vq` for queue `index`.
pub fn setup_queue<D: VirtioDevice>(
    transport: &mut MmioTransport<D>,
    index: u32,
    queue: &GuestQueue<'_>,
) {
    write_reg(transport, REG_QUEUE_SEL, index);
    assert_eq!(
        read_reg(transport, REG_QUEUE_READY),
        0,
        "queue already live"
    );
    let max = read_reg(transport, REG_QUEUE_NUM_MAX);
    assert!(max >= u32::from(queue.size()), "queue {index} too small");
    write_reg(transport, REG_QUEUE_NUM, u32::from(queue.size()));
    let (desc, avail, used) = queue.ring_addresses();
    for (low, addr) in [
        (REG_QUEUE_DESC_LOW, desc),
        (REG_QUEUE_DRIVER_LOW, avail),
        (REG_QUEUE_DEVICE_LOW, used),
    ] {
        write_reg(transport, low, addr.0 as u32);
        write_reg(transport, low + 4, (addr.0 >> 32) as u32);
    }
    write_reg(transport, REG_QUEUE_READY, 1);
}

/// The whole initialisation: negotiate, set up every queue, DRIVER_OK.
/// Returns the negotiated features.
pub fn initialize<D: VirtioDevice>(
    transport: &mut MmioTransport<D>,
    wanted: u64,
    queues: &[&GuestQueue<'_>],
) -> u64 {
    let features = negotiate(transport, wanted).expect("device refused FEATURES_OK");
    for (index, queue) in queues.iter().enumerate() {
        setup_queue(transport, index as u32, queue);
    }
    add_status(transport, STATUS_DRIVER_OK);
    features
}

/// `vm_interrupt`: reads `InterruptStatus` and acknowledges what it saw.
pub fn take_interrupt<D: VirtioDevice>(transport: &mut MmioTransport<D>) -> u32 {
    let status = read_reg(transport, REG_INTERRUPT_STATUS);
    write_reg(transport, REG_INTERRUPT_ACK, status);
    status
}

/// `vm_notify`: writes the queue index to `QueueNotify`.
pub fn notify<D: VirtioDevice>(transport: &mut MmioTransport<D>, index: u32) {
    write_reg(transport, REG_QUEUE_NOTIFY, index);
}

/// `VIRTIO_F_VERSION_1` as a feature mask.
pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
/// A device-specific feature the [`RecordingDevice`] offers.
pub const FEATURE_A: u64 = 1 << 3;

/// `(ready, size, desc, avail, used)` of a queue.
pub type QueueLayout = (bool, u16, u64, u64, u64);

/// A device that records what the transport did to it.
#[derive(Debug)]
pub struct RecordingDevice {
    /// What `queue_max_sizes` reports.
    pub max_sizes: Vec<u16>,
    /// The acked features.
    pub acked: u64,
    /// Each queue at activation.
    pub activated_with: Option<Vec<QueueLayout>>,
    /// How often it was reset.
    pub resets: u32,
    /// Make `activate` fail.
    pub refuse_activation: bool,
}

impl Default for RecordingDevice {
    fn default() -> Self {
        Self {
            max_sizes: vec![16, 8],
            acked: 0,
            activated_with: None,
            resets: 0,
            refuse_activation: false,
        }
    }
}

/// Why the [`RecordingDevice`] refused activation.
#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

impl VirtioDevice for RecordingDevice {
    type Error = Refused;

    fn device_type(&self) -> u32 {
        42
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn avail_features(&self) -> u64 {
        VERSION_1 | FEATURE_A
    }

    fn acked_features(&self) -> u64 {
        self.acked
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (offset as u8).wrapping_add(i as u8);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, _mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), Refused> {
        if self.refuse_activation {
            return Err(Refused);
        }
        self.activated_with = Some(
            queues
                .iter()
                .map(|q| {
                    (
                        q.ready(),
                        q.size(),
                        q.desc_table(),
                        q.avail_ring(),
                        q.used_ring(),
                    )
                })
                .collect(),
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.resets += 1;
        self.acked = 0;
        self.activated_with = None;
    }
}
