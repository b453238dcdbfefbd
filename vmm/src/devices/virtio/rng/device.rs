//! The virtio-rng device: features, (empty) configuration space and the
//! request queue.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::defs::{
    MAX_BYTES_PER_REQUEST, NUM_QUEUES, QUEUE_SIZE, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG,
};
use crate::devices::virtio::VirtioDevice;

/// Why the rng device could not be activated or run.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Activation got the wrong number of queues.
    #[error("the rng device needs {NUM_QUEUES} queue, got {0}")]
    QueueCount(usize),
    /// The request queue handed over at activation is not ready.
    #[error("the rng request queue is not ready")]
    QueueNotReady,
    /// Queue work was asked of a device that owns no queue.
    #[error("the rng device is not activated")]
    NotActivated,
    /// The host could not produce random bytes.
    #[error("cannot read random bytes from the host")]
    Entropy(#[source] getrandom::Error),
    /// Returning a buffer to the guest failed.
    #[error("cannot return a buffer on the rng request queue")]
    AddUsed(#[source] virtio_queue::Error),
    /// Checking whether the guest wants an interrupt failed.
    #[error("cannot check the rng queue's notification state")]
    Notification(#[source] virtio_queue::Error),
}

#[derive(Debug)]
struct ActiveQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
}

/// A virtio entropy device backed by the host's `getrandom(2)`.
#[derive(Debug, Default)]
pub struct RngDevice {
    acked_features: u64,
    active: Option<ActiveQueue>,
}

impl RngDevice {
    /// Creates an unactivated device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the device owns an activated queue.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Fills every buffer the guest queued. Returns whether the guest wants
    /// an interrupt.
    pub fn process_requests(&mut self) -> Result<bool, RngError> {
        let ActiveQueue { mem, queue } = self.active.as_mut().ok_or(RngError::NotActivated)?;
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let mut budget = MAX_BYTES_PER_REQUEST;
            let mut written = 0u32;
            for desc in chain.writable() {
                let len = desc.len().min(budget);
                if len == 0 {
                    break;
                }
                let mut bytes = vec![0u8; len as usize];
                getrandom::getrandom(&mut bytes).map_err(RngError::Entropy)?;
                if let Err(e) = mem.write_slice(&bytes, desc.addr()) {
                    // The guest's bug: return what was filled so far.
                    tracing::debug!(error = %e, "rng: buffer outside guest memory");
                    break;
                }
                written += len;
                budget -= len;
            }
            queue
                .add_used(&*mem, head, written)
                .map_err(RngError::AddUsed)?;
            used = true;
        }
        if !used {
            return Ok(false);
        }
        queue
            .needs_notification(&*mem)
            .map_err(RngError::Notification)
    }
}

impl VirtioDevice for RngDevice {
    type Error = RngError;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The entropy device has no configuration space.
        tracing::debug!(offset, len = data.len(), "rng: config read out of range");
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "rng: ignored a config write");
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), RngError> {
        let [queue]: [Queue; NUM_QUEUES] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| RngError::QueueCount(q.len()))?;
        if !queue.ready() {
            return Err(RngError::QueueNotReady);
        }
        self.active = Some(ActiveQueue { mem, queue });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}
