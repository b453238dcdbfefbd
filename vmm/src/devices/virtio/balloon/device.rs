//! The virtio-balloon device: features, configuration space and the three
//! queues. The balloon's target stays at zero, so a driver never inflates;
//! what matters is free page reporting, where the guest hands over ranges
//! of free memory and the host drops the pages behind them.

use std::collections::HashSet;
use std::mem::Discriminant;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::defs::{
    config_offset, CONFIG_SPACE_SIZE, DEFLATE_QUEUE, INFLATE_QUEUE, NUM_QUEUES, QUEUE_SIZE,
    REPORTING_QUEUE, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
    VIRTIO_F_VERSION_1, VIRTIO_ID_BALLOON,
};
use super::discard::Discard;
use super::request::{parse_page_list, parse_report, RequestError, Segment};
use crate::devices::virtio::VirtioDevice;

/// Why the balloon device could not be activated or run.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// Activation got the wrong number of queues.
    #[error("the balloon device needs {NUM_QUEUES} queues, got {0}")]
    QueueCount(usize),
    /// A queue the negotiated features need is not ready.
    #[error("balloon queue {0} is not ready")]
    QueueNotReady(usize),
    /// Queue work was asked of a device that owns no queues.
    #[error("the balloon device is not activated")]
    NotActivated,
    /// Returning a buffer to the guest failed.
    #[error("cannot return a buffer on balloon queue {0}")]
    AddUsed(usize, #[source] virtio_queue::Error),
    /// Checking whether the guest wants an interrupt failed.
    #[error("cannot check the notification state of balloon queue {0}")]
    Notification(usize, #[source] virtio_queue::Error),
}

#[derive(Debug)]
struct ActiveQueues {
    mem: GuestMemoryMmap,
    queues: [Queue; NUM_QUEUES],
}

/// A virtio balloon whose only job is free page reporting (plus the
/// inflate and deflate queues the specification requires).
#[derive(Debug)]
pub struct BalloonDevice {
    /// How the memory behind reported ranges goes back to the host.
    discard: Discard,
    acked_features: u64,
    /// `actual`, as the driver last wrote it.
    actual_pages: u32,
    active: Option<ActiveQueues>,
    /// Bytes of guest RAM given back to the host since the device was made,
    /// shared with whoever publishes it (`--stats-file`).
    returned_bytes: Arc<AtomicU64>,
    /// Kinds of refused chains already logged: a guest that keeps sending
    /// bad ones must not flood the log.
    logged: HashSet<Discriminant<RequestError>>,
    discard_failure_logged: bool,
}

impl BalloonDevice {
    /// Creates an unactivated device that gives memory back with `discard`.
    /// With [`Discard::Keep`] it offers no free page reporting.
    pub fn new(discard: Discard) -> Self {
        Self {
            discard,
            acked_features: 0,
            actual_pages: 0,
            active: None,
            returned_bytes: Arc::default(),
            logged: HashSet::new(),
            discard_failure_logged: false,
        }
    }

    /// Whether the device owns activated queues.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Bytes of guest RAM handed back to the host so far (reported free
    /// pages and inflated ones), across guest resets.
    pub fn returned_bytes(&self) -> u64 {
        self.returned_bytes.load(Ordering::Relaxed)
    }

    /// The counter behind [`BalloonDevice::returned_bytes`], to read from
    /// elsewhere while the device runs.
    pub fn returned_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.returned_bytes)
    }

    /// The balloon size the driver reports, in 4 KiB pages.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// Handles every chain the guest queued on queue `index`. Each chain is
    /// returned with nothing written (used length 0), whether its ranges
    /// were given back or it was refused. Returns whether the guest wants an
    /// interrupt.
    pub fn process_queue(&mut self, index: usize) -> Result<bool, BalloonError> {
        let active = self.active.as_mut().ok_or(BalloonError::NotActivated)?;
        let Some(queue) = active.queues.get_mut(index) else {
            tracing::debug!(index, "virtio-balloon: notification for an unknown queue");
            return Ok(false);
        };
        let mem = &active.mem;
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // The iterator just stops at a descriptor it cannot follow; a
            // chain is whole only when its last descriptor says it is last.
            let mut whole = false;
            let segments: Vec<Segment> = chain
                .map(|desc| {
                    whole = !desc.has_next();
                    Segment {
                        addr: desc.addr(),
                        len: desc.len(),
                        writable: desc.is_write_only(),
                    }
                })
                .collect();
            let parsed = match index {
                _ if !whole => Err(RequestError::BrokenChain),
                REPORTING_QUEUE => parse_report(mem, &segments),
                _ => parse_page_list(mem, &segments),
            };
            match parsed {
                // Deflated pages need nothing from the host: they fault back
                // in when the guest touches them.
                Ok(_) if index == DEFLATE_QUEUE => {}
                Ok(ranges) => match self.discard.discard(&ranges) {
                    Ok(freed) => {
                        self.returned_bytes.fetch_add(freed, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.returned_bytes
                            .fetch_add(e.freed_before, Ordering::Relaxed);
                        if !self.discard_failure_logged {
                            self.discard_failure_logged = true;
                            tracing::warn!(error = %e, "virtio-balloon: the host kept reported memory (logged once)");
                        } else {
                            tracing::debug!(error = %e, "virtio-balloon: the host kept reported memory");
                        }
                    }
                },
                Err(e) => {
                    if self.logged.insert(e.kind()) {
                        tracing::warn!(queue = index, error = %e, "virtio-balloon: refused a chain (logged once per kind)");
                    } else {
                        tracing::debug!(queue = index, error = %e, "virtio-balloon: refused a chain");
                    }
                }
            }
            queue
                .add_used(mem, head, 0)
                .map_err(|e| BalloonError::AddUsed(index, e))?;
            used = true;
        }
        if !used {
            return Ok(false);
        }
        queue
            .needs_notification(mem)
            .map_err(|e| BalloonError::Notification(index, e))
    }

    /// The configuration space (`struct virtio_balloon_config`): a target of
    /// zero pages, the driver's `actual`, no hint command, no poison value.
    fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut space = [0u8; CONFIG_SPACE_SIZE];
        space[config_offset::ACTUAL..config_offset::ACTUAL + 4]
            .copy_from_slice(&self.actual_pages.to_le_bytes());
        space
    }
}

impl VirtioDevice for BalloonDevice {
    type Error = BalloonError;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        let reporting = if self.discard.gives_back() {
            1 << VIRTIO_BALLOON_F_FREE_PAGE_REPORTING
        } else {
            0
        };
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM | reporting
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.config_space();
        match usize::try_from(offset)
            .ok()
            .and_then(|start| space.get(start..start.checked_add(data.len())?))
        {
            Some(bytes) => data.copy_from_slice(bytes),
            None => {
                tracing::debug!(
                    offset,
                    len = data.len(),
                    "virtio-balloon: config read out of range"
                )
            }
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        match (offset, <[u8; 4]>::try_from(data)) {
            (o, Ok(bytes)) if o == config_offset::ACTUAL as u64 => {
                self.actual_pages = u32::from_le_bytes(bytes);
            }
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "virtio-balloon: ignored a config write"
            ),
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), BalloonError> {
        let queues: [Queue; NUM_QUEUES] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| BalloonError::QueueCount(q.len()))?;
        let reporting = self.acked_features & 1 << VIRTIO_BALLOON_F_FREE_PAGE_REPORTING != 0;
        for index in [INFLATE_QUEUE, DEFLATE_QUEUE] {
            if !queues[index].ready() {
                return Err(BalloonError::QueueNotReady(index));
            }
        }
        if reporting && !queues[REPORTING_QUEUE].ready() {
            return Err(BalloonError::QueueNotReady(REPORTING_QUEUE));
        }
        self.active = Some(ActiveQueues { mem, queues });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.actual_pages = 0;
    }
}
