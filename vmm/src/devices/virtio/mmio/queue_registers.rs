//! The per-queue registers of the virtio-mmio transport and how they
//! become a `virtio_queue::Queue` at DRIVER_OK.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Why the driver's queues could not be handed to the device at DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub(super) enum ActivationError {
    #[error("queue {0} has an invalid size or ring address")]
    QueueSetup(usize, #[source] virtio_queue::Error),
    #[error("queue {0} is ready but its rings lie outside guest memory")]
    QueueOutsideMemory(usize),
    #[error("the device refused activation: {0}")]
    Device(String),
}

/// The `Queue*` registers of one queue, as the driver wrote them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct QueueRegisters {
    pub(super) max_size: u16,
    pub(super) size: u16,
    pub(super) ready: bool,
    pub(super) desc: u64,
    pub(super) driver: u64,
    pub(super) device: u64,
}

impl QueueRegisters {
    pub(super) fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ..Self::default()
        }
    }

    /// The `Queue` the device gets at DRIVER_OK; a queue the driver did not
    /// make ready stays unconfigured.
    pub(super) fn to_queue(
        self,
        index: usize,
        mem: &GuestMemoryMmap,
        event_idx: bool,
    ) -> Result<Queue, ActivationError> {
        let setup = |e| ActivationError::QueueSetup(index, e);
        let mut queue = Queue::new(self.max_size).map_err(setup)?;
        if !self.ready {
            return Ok(queue);
        }
        queue.try_set_size(self.size).map_err(setup)?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(setup)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(setup)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .map_err(setup)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(ActivationError::QueueOutsideMemory(index));
        }
        Ok(queue)
    }
}

/// Sets the low or high half of a 64-bit register.
pub(super) fn set_half(register: &mut u64, high: bool, value: u32) {
    *register = if high {
        (*register & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*register & !0xffff_ffff) | u64::from(value)
    };
}
