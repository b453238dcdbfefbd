//! The virtio-mmio (version 2) register state machine in front of one
//! [`VirtioDevice`].
//!
//! Runs on vCPU threads: the bus owner calls [`MmioTransport::read`] and
//! [`MmioTransport::write`] for each MMIO exit in the device's window. Queue
//! work happens elsewhere (the event loop), reached through the per-queue
//! notification eventfds; the device itself sits behind a mutex both sides
//! share.

use std::io;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::*;
use super::event_handler::VirtioEventHandler;
use super::interrupt::{InterruptError, InterruptLine, InterruptReason};
use super::queue_registers::{set_half, ActivationError, QueueRegisters};
use super::{lock_device, MMIO_WINDOW_SIZE};
use crate::devices::virtio::{EventDrivenDevice, VirtioDevice};

/// Why a transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device reports no queue or an unusable queue size.
    #[error("queue {0} has maximum size {1}; it must be a power of two from 1 to 32768")]
    QueueMaxSize(usize, u16),
    /// A queue notification eventfd could not be created or duplicated.
    #[error("cannot create the notification eventfd for queue {0}")]
    QueueEvent(usize, #[source] io::Error),
    /// The interrupt line could not be created.
    #[error("cannot create the interrupt line")]
    Interrupt(#[source] InterruptError),
    /// The device supplied a notification eventfd count that differs from
    /// its queue count.
    #[error("the device has {queues} queues but supplied {events} notification eventfds")]
    QueueEventCount {
        /// Queues the device has.
        queues: usize,
        /// Eventfds it supplied.
        events: usize,
    },
}

/// One virtio device behind the virtio-mmio version 2 register interface.
///
/// See the [module documentation](super) for how a bus owner wires it.
#[derive(Debug)]
pub struct MmioTransport<D> {
    device: Arc<Mutex<D>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<InterruptLine>,
    queue_events: Vec<EventFd>,
    queues: Vec<QueueRegisters>,
    device_type: u32,
    avail_features: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a transport for a guest with memory `mem`.
    /// The device must be freshly created or reset.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<D>>) -> Result<Self, MmioError> {
        Self::build(mem, device, None)
    }

    /// Like [`MmioTransport::new`], with queue notification eventfds the
    /// device supplies (one per queue, in order) instead of new ones: for a
    /// device whose queues another process serves (vhost-user), which waits
    /// on these eventfds itself.
    pub fn with_queue_events(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<D>>,
        queue_events: Vec<EventFd>,
    ) -> Result<Self, MmioError> {
        Self::build(mem, device, Some(queue_events))
    }

    fn build(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<D>>,
        supplied_events: Option<Vec<EventFd>>,
    ) -> Result<Self, MmioError> {
        let (device_type, avail_features, max_sizes) = {
            let device = lock_device(&device);
            (
                device.device_type(),
                device.avail_features(),
                device.queue_max_sizes().to_vec(),
            )
        };
        let mut queues = Vec::with_capacity(max_sizes.len());
        let mut queue_events = Vec::with_capacity(max_sizes.len());
        for (index, max_size) in max_sizes.into_iter().enumerate() {
            if !max_size.is_power_of_two() || max_size > 32768 {
                return Err(MmioError::QueueMaxSize(index, max_size));
            }
            queues.push(QueueRegisters::new(max_size));
            if supplied_events.is_none() {
                queue_events
                    .push(EventFd::new(EFD_NONBLOCK).map_err(|e| MmioError::QueueEvent(index, e))?);
            }
        }
        if let Some(events) = supplied_events {
            if events.len() != queues.len() {
                return Err(MmioError::QueueEventCount {
                    queues: queues.len(),
                    events: events.len(),
                });
            }
            queue_events = events;
        }
        let interrupt = Arc::new(InterruptLine::new().map_err(MmioError::Interrupt)?);
        Ok(Self {
            device,
            mem,
            interrupt,
            queue_events,
            queues,
            device_type,
            avail_features,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
        })
    }

    /// The size of the MMIO window the device occupies.
    pub const fn window_size() -> u64 {
        MMIO_WINDOW_SIZE
    }

    /// The eventfd written when the driver notifies each queue, in queue
    /// order. Register each as a KVM ioeventfd at `base +`
    /// [`QUEUE_NOTIFY_OFFSET`](super::QUEUE_NOTIFY_OFFSET), 4 bytes, datamatch = its index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device's interrupt line.
    pub fn interrupt(&self) -> &Arc<InterruptLine> {
        &self.interrupt
    }

    /// The device, shared with the event handler.
    pub fn device(&self) -> &Arc<Mutex<D>> {
        &self.device
    }

    /// The device status register as the driver last left it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// For the owner after the device's configuration space changed (a disk
    /// resized): bumps `ConfigGeneration` and interrupts the driver.
    pub fn notify_config_change(&mut self) -> Result<(), InterruptError> {
        self.interrupt.config_changed()
    }

    /// An MMIO read of `data.len()` bytes at `offset` within the window.
    /// Registers below the configuration space answer only aligned 4-byte
    /// reads; anything else, and configuration space the device does not
    /// have, reads as zeros.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE_OFFSET {
            lock_device(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(out) = <&mut [u8; 4]>::try_from(data) else {
            tracing::debug!(
                offset,
                "virtio-mmio: ignored a register read that is not 4 bytes"
            );
            return;
        };
        if offset % 4 != 0 {
            tracing::debug!(offset, "virtio-mmio: ignored an unaligned register read");
            return;
        }
        *out = self.read_register(offset).to_le_bytes();
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.selected_queue();
        match offset {
            REG_MAGIC_VALUE => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: every region reads as length -1.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                tracing::debug!(
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        }
    }

    /// An MMIO write of `data` at `offset` within the window. Registers
    /// below the configuration space take only aligned 4-byte writes.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock_device(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) else {
            tracing::debug!(
                offset,
                len = data.len(),
                "virtio-mmio: ignored a register write that is not aligned 4 bytes"
            );
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => self.update_queue(|q| q.size = value as u16),
            REG_QUEUE_READY => self.update_queue(|q| q.ready = value == 1),
            REG_QUEUE_DESC_LOW => self.update_queue(|q| set_half(&mut q.desc, false, value)),
            REG_QUEUE_DESC_HIGH => self.update_queue(|q| set_half(&mut q.desc, true, value)),
            REG_QUEUE_DRIVER_LOW => self.update_queue(|q| set_half(&mut q.driver, false, value)),
            REG_QUEUE_DRIVER_HIGH => self.update_queue(|q| set_half(&mut q.driver, true, value)),
            REG_QUEUE_DEVICE_LOW => self.update_queue(|q| set_half(&mut q.device, false, value)),
            REG_QUEUE_DEVICE_HIGH => self.update_queue(|q| set_half(&mut q.device, true, value)),
            REG_QUEUE_NOTIFY => self.notify_queue(value),
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.write_status(value),
            REG_SHM_SEL => {}
            _ => tracing::debug!(
                offset,
                value,
                "virtio-mmio: write to a read-only or unknown register"
            ),
        }
    }

    fn selected_queue(&self) -> Option<&QueueRegisters> {
        self.queues.get(self.queue_sel as usize)
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
            tracing::debug!(
                status = self.status,
                "virtio-mmio: ignored features outside negotiation"
            );
            return;
        }
        match self.driver_features_sel {
            0 => set_half(&mut self.driver_features, false, value),
            1 => set_half(&mut self.driver_features, true, value),
            page => tracing::debug!(
                page,
                value,
                "virtio-mmio: ignored driver features beyond bit 63"
            ),
        }
    }

    /// Queue registers change only between FEATURES_OK and DRIVER_OK, and
    /// only while the queue is not ready (except for clearing ready).
    fn update_queue(&mut self, change: impl FnOnce(&mut QueueRegisters)) {
        let negotiating =
            self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) == STATUS_FEATURES_OK;
        let index = self.queue_sel as usize;
        match self.queues.get_mut(index) {
            Some(queue) if negotiating => {
                let was_ready = queue.ready;
                let before = *queue;
                change(queue);
                if was_ready && queue.ready {
                    // Only QueueReady=0 may touch a live queue.
                    *queue = before;
                    tracing::debug!(index, "virtio-mmio: ignored a change to a ready queue");
                }
            }
            _ => tracing::debug!(
                index,
                status = self.status,
                "virtio-mmio: ignored a queue register write"
            ),
        }
    }

    fn notify_queue(&self, index: u32) {
        let Some(event) = self.queue_events.get(index as usize) else {
            tracing::debug!(
                index,
                "virtio-mmio: notification for a queue that does not exist"
            );
            return;
        };
        if let Err(e) = event.write(1) {
            tracing::warn!(index, error = %e, "virtio-mmio: cannot signal a queue notification");
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit: a driver write without it
        // neither clears nor sets it.
        let driver_bits = self.status & !STATUS_DEVICE_NEEDS_RESET;
        if value & driver_bits != driver_bits {
            tracing::debug!(
                old = self.status,
                new = value,
                "virtio-mmio: ignored a status write that clears bits without a reset"
            );
            return;
        }
        let added = value & !self.status & !STATUS_DEVICE_NEEDS_RESET;
        if added & STATUS_ACKNOWLEDGE != 0 {
            self.status |= STATUS_ACKNOWLEDGE;
        }
        if added & STATUS_DRIVER != 0 && self.status & STATUS_ACKNOWLEDGE != 0 {
            self.status |= STATUS_DRIVER;
        }
        if added & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER != 0 {
            self.accept_features();
        }
        if added & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            tracing::warn!(
                device_type = self.device_type,
                "virtio-mmio: the driver gave up on the device"
            );
        }
        let can_run = self.status & (STATUS_FEATURES_OK | STATUS_FAILED) == STATUS_FEATURES_OK;
        if added & STATUS_DRIVER_OK != 0 && can_run {
            self.status |= STATUS_DRIVER_OK;
            self.activate();
        }
    }

    /// FEATURES_OK sticks only if the driver took VERSION_1 (this is a
    /// modern-only transport) and nothing the device did not offer; the
    /// driver reads the status back to find out.
    fn accept_features(&mut self) {
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        let unknown = self.driver_features & !self.avail_features;
        if self.driver_features & version_1 == 0 || unknown != 0 {
            tracing::warn!(
                acked = self.driver_features,
                offered = self.avail_features,
                "virtio-mmio: refused the driver's features"
            );
            return;
        }
        lock_device(&self.device).ack_features(self.driver_features);
        self.status |= STATUS_FEATURES_OK;
    }

    fn activate(&mut self) {
        let result = self.activate_device();
        match result {
            Ok(()) => {
                // Buffers the driver queued (and notified) before DRIVER_OK
                // were not looked at; one notification per queue makes the
                // event loop look now.
                for index in 0..self.queue_events.len() {
                    self.notify_queue(index as u32);
                }
            }
            Err(e) => {
                tracing::error!(device_type = self.device_type, error = %e, "virtio-mmio: activation failed");
                self.status |= STATUS_DEVICE_NEEDS_RESET;
                if let Err(e) = self.interrupt.trigger(InterruptReason::ConfigChange) {
                    tracing::warn!(error = %e, "virtio-mmio: cannot tell the driver the device needs a reset");
                }
            }
        }
    }

    fn activate_device(&mut self) -> Result<(), ActivationError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, registers) in self.queues.iter().enumerate() {
            queues.push(registers.to_queue(index, &self.mem, event_idx)?);
        }
        lock_device(&self.device)
            .activate(self.mem.clone(), queues)
            .map_err(|e| ActivationError::Device(e.to_string()))
    }

    fn reset(&mut self) {
        lock_device(&self.device).reset();
        for queue in &mut self.queues {
            *queue = QueueRegisters::new(queue.max_size);
        }
        for event in &self.queue_events {
            // Drop notifications meant for the old queues.
            let _ = event.read();
        }
        self.interrupt.clear();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
    }
}

impl<D: EventDrivenDevice + Send> MmioTransport<D> {
    /// The event-loop side of this device: add it to an
    /// `event_manager::EventManager`.
    pub fn event_handler(&self) -> Result<VirtioEventHandler<D>, MmioError> {
        let queue_events = self
            .queue_events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                event
                    .try_clone()
                    .map_err(|e| MmioError::QueueEvent(index, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioEventHandler::new(
            Arc::clone(&self.device),
            queue_events,
            Arc::clone(&self.interrupt),
        ))
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::mmio::test_driver::{
        initialize, negotiate, read_reg, setup_queue, take_interrupt, test_memory, write_reg,
        GuestQueue, RecordingDevice, FEATURE_A, VERSION_1,
    };

    fn transport(mem: &GuestMemoryMmap) -> MmioTransport<RecordingDevice> {
        MmioTransport::new(
            mem.clone(),
            Arc::new(Mutex::new(RecordingDevice::default())),
        )
        .unwrap()
    }

    fn device(
        transport: &MmioTransport<RecordingDevice>,
    ) -> std::sync::MutexGuard<'_, RecordingDevice> {
        transport.device().lock().unwrap()
    }

    /// Sets ACKNOWLEDGE and DRIVER: feature negotiation may start.
    fn acknowledge(transport: &mut MmioTransport<RecordingDevice>) {
        write_reg(transport, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    }

    /// Initialises `transport` as Linux would, with a 16- and an 8-entry
    /// queue.
    fn start<'m>(
        transport: &mut MmioTransport<RecordingDevice>,
        mem: &'m GuestMemoryMmap,
    ) -> [GuestQueue<'m>; 2] {
        let queues = [
            GuestQueue::new(mem, GuestAddress(0x1_0000), 16),
            GuestQueue::new(mem, GuestAddress(0x2_0000), 8),
        ];
        initialize(transport, VERSION_1, &[&queues[0], &queues[1]]);
        queues
    }

    #[test]
    fn identity_registers_read_magic_version_and_ids() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        assert_eq!(read_reg(&mut transport, REG_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read_reg(&mut transport, REG_VERSION), 2);
        assert_eq!(read_reg(&mut transport, REG_DEVICE_ID), 42);
        assert_eq!(read_reg(&mut transport, REG_VENDOR_ID), VENDOR_ID);
    }

    #[test]
    fn device_features_are_paged_by_the_selector() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        write_reg(&mut transport, REG_DEVICE_FEATURES_SEL, 0);
        let low = read_reg(&mut transport, REG_DEVICE_FEATURES);
        write_reg(&mut transport, REG_DEVICE_FEATURES_SEL, 1);
        let high = read_reg(&mut transport, REG_DEVICE_FEATURES);
        write_reg(&mut transport, REG_DEVICE_FEATURES_SEL, 2);
        let beyond = read_reg(&mut transport, REG_DEVICE_FEATURES);

        assert_eq!(low, FEATURE_A as u32);
        assert_eq!(high, 1);
        assert_eq!(beyond, 0);
    }

    #[test]
    fn linux_init_sequence_activates_device_with_the_driver_queues() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        let q0 = GuestQueue::new(&mem, GuestAddress(0x1_0000), 16);
        let q1 = GuestQueue::new(&mem, GuestAddress(0x2_0000), 4);

        let features = initialize(&mut transport, VERSION_1 | FEATURE_A | 1 << 40, &[&q0, &q1]);

        assert_eq!(features, VERSION_1 | FEATURE_A);
        assert_eq!(transport.status(), 0xf);
        let device = device(&transport);
        assert_eq!(device.acked, VERSION_1 | FEATURE_A);
        let activated = device.activated_with.clone().unwrap();
        let (d0, a0, u0) = q0.ring_addresses();
        let (d1, a1, u1) = q1.ring_addresses();
        assert_eq!(activated[0], (true, 16, d0.0, a0.0, u0.0));
        assert_eq!(activated[1], (true, 4, d1.0, a1.0, u1.0));
    }

    #[test]
    fn queue_num_max_is_zero_past_the_last_queue() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        write_reg(&mut transport, REG_QUEUE_SEL, 1);
        let last = read_reg(&mut transport, REG_QUEUE_NUM_MAX);
        write_reg(&mut transport, REG_QUEUE_SEL, 2);
        let beyond = read_reg(&mut transport, REG_QUEUE_NUM_MAX);

        assert_eq!(last, 8);
        assert_eq!(beyond, 0);
    }

    #[test]
    fn features_ok_is_refused_without_version_1() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        let result = negotiate(&mut transport, FEATURE_A);

        assert_eq!(result, None);
        assert_eq!(transport.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert_eq!(device(&transport).acked, 0);
    }

    #[test]
    fn features_ok_is_refused_for_features_not_offered() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        acknowledge(&mut transport);
        write_reg(&mut transport, REG_DRIVER_FEATURES_SEL, 1);
        write_reg(&mut transport, REG_DRIVER_FEATURES, 1 | 1 << 8);

        write_reg(
            &mut transport,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );

        assert_eq!(read_reg(&mut transport, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_features_are_ignored_outside_negotiation() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        write_reg(&mut transport, REG_DRIVER_FEATURES_SEL, 1);
        write_reg(&mut transport, REG_DRIVER_FEATURES, 1);

        let refused = negotiate(&mut transport, FEATURE_A);

        assert_eq!(
            refused, None,
            "features written before DRIVER must not count"
        );
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        let [q0, _q1] = start(&mut transport, &mem);

        write_reg(&mut transport, REG_QUEUE_SEL, 0);
        write_reg(&mut transport, REG_QUEUE_READY, 0);
        write_reg(&mut transport, REG_QUEUE_DESC_LOW, 0x5000);

        assert_eq!(read_reg(&mut transport, REG_QUEUE_READY), 1);
        assert_eq!(transport.queues[0].desc, q0.ring_addresses().0 .0);
    }

    #[test]
    fn queue_registers_before_features_ok_are_ignored() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        acknowledge(&mut transport);

        write_reg(&mut transport, REG_QUEUE_READY, 1);

        assert_eq!(read_reg(&mut transport, REG_QUEUE_READY), 0);
    }

    #[test]
    fn status_zero_resets_device_and_transport() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        start(&mut transport, &mem);
        transport
            .interrupt()
            .trigger(InterruptReason::UsedRing)
            .unwrap();
        let resets_before = device(&transport).resets;

        write_reg(&mut transport, REG_STATUS, 0);

        assert_eq!(read_reg(&mut transport, REG_STATUS), 0);
        assert_eq!(read_reg(&mut transport, REG_INTERRUPT_STATUS), 0);
        assert_eq!(read_reg(&mut transport, REG_QUEUE_READY), 0);
        // Notifications left over from DRIVER_OK are dropped.
        assert!(transport.queue_events()[0].read().is_err());
        let device = device(&transport);
        assert_eq!(device.resets, resets_before + 1);
        assert!(device.activated_with.is_none());
    }

    #[test]
    fn status_write_that_clears_bits_is_ignored() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        negotiate(&mut transport, VERSION_1).unwrap();

        write_reg(&mut transport, REG_STATUS, STATUS_ACKNOWLEDGE);

        assert_eq!(transport.status(), 0xb);
    }

    #[test]
    fn needs_reset_stays_until_reset_and_the_driver_cannot_set_it() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        device(&transport).refuse_activation = true;
        start(&mut transport, &mem);

        write_reg(&mut transport, REG_STATUS, 0xf | STATUS_FAILED);
        let after_failed = read_reg(&mut transport, REG_STATUS);
        write_reg(&mut transport, REG_STATUS, 0);
        write_reg(
            &mut transport,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DEVICE_NEEDS_RESET,
        );

        assert_eq!(
            after_failed,
            0xf | STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET
        );
        assert_eq!(read_reg(&mut transport, REG_STATUS), STATUS_ACKNOWLEDGE);
    }

    #[test]
    fn driver_ok_without_features_ok_does_not_activate() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        write_reg(
            &mut transport,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );

        assert_eq!(transport.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert!(device(&transport).activated_with.is_none());
    }

    #[test]
    fn failed_activation_sets_needs_reset_and_raises_config_interrupt() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        device(&transport).refuse_activation = true;

        start(&mut transport, &mem);

        assert_ne!(
            read_reg(&mut transport, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(take_interrupt(&mut transport), INT_CONFIG_CHANGE);
        assert_eq!(read_reg(&mut transport, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn ready_queue_outside_guest_memory_fails_activation() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        negotiate(&mut transport, VERSION_1).unwrap();
        let q0 = GuestQueue::new(&mem, GuestAddress(0x1_0000), 16);
        setup_queue(&mut transport, 0, &q0);
        write_reg(&mut transport, REG_QUEUE_SEL, 1);
        write_reg(&mut transport, REG_QUEUE_DESC_HIGH, 0x10);
        write_reg(&mut transport, REG_QUEUE_READY, 1);

        write_reg(&mut transport, REG_STATUS, 0xf);

        assert_ne!(transport.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(device(&transport).activated_with.is_none());
    }

    #[test]
    fn queue_notify_signals_the_queue_eventfd() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        write_reg(&mut transport, REG_QUEUE_NOTIFY, 1);
        write_reg(&mut transport, REG_QUEUE_NOTIFY, 7);

        assert!(transport.queue_events()[0].read().is_err());
        assert_eq!(transport.queue_events()[1].read().unwrap(), 1);
    }

    #[test]
    fn driver_ok_signals_every_queue_once() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        start(&mut transport, &mem);

        assert_eq!(transport.queue_events()[0].read().unwrap(), 1);
        assert_eq!(transport.queue_events()[1].read().unwrap(), 1);
    }

    #[test]
    fn interrupt_ack_clears_the_acknowledged_bits() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        transport
            .interrupt()
            .trigger(InterruptReason::UsedRing)
            .unwrap();
        transport.notify_config_change().unwrap();

        write_reg(&mut transport, REG_INTERRUPT_ACK, INT_USED_RING);

        assert_eq!(
            read_reg(&mut transport, REG_INTERRUPT_STATUS),
            INT_CONFIG_CHANGE
        );
        assert_eq!(read_reg(&mut transport, REG_CONFIG_GENERATION), 1);
    }

    #[test]
    fn short_or_unaligned_register_accesses_read_zero_and_write_nothing() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        let mut two = [0xffu8; 2];
        let mut four = [0xffu8; 4];

        transport.read(REG_MAGIC_VALUE, &mut two);
        transport.read(REG_MAGIC_VALUE + 1, &mut four);
        transport.write(REG_STATUS, &[1]);
        transport.write(REG_STATUS + 2, &[1, 0, 0, 0]);

        assert_eq!(two, [0, 0]);
        assert_eq!(four, [0; 4]);
        assert_eq!(transport.status(), 0);
    }

    #[test]
    fn config_space_accesses_reach_the_device_at_its_offset() {
        let mem = test_memory();
        let mut transport = transport(&mem);
        let mut data = [0u8; 3];

        transport.read(CONFIG_SPACE_OFFSET + 5, &mut data);

        assert_eq!(data, [5, 6, 7]);
    }

    #[test]
    fn config_space_the_device_lacks_reads_as_zeros() {
        let mem = test_memory();
        let rng = Arc::new(Mutex::new(crate::devices::virtio::rng::RngDevice::new()));
        let mut transport = MmioTransport::new(mem, rng).unwrap();
        let mut data = [0xffu8; 4];

        transport.read(CONFIG_SPACE_OFFSET, &mut data);

        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn shared_memory_regions_read_as_absent() {
        let mem = test_memory();
        let mut transport = transport(&mem);

        write_reg(&mut transport, REG_SHM_SEL, 0);

        assert_eq!(read_reg(&mut transport, REG_SHM_LEN_LOW), u32::MAX);
        assert_eq!(read_reg(&mut transport, REG_SHM_LEN_HIGH), u32::MAX);
    }

    #[test]
    fn queue_max_size_that_is_not_a_power_of_two_is_refused() {
        let mem = test_memory();
        let device = RecordingDevice {
            max_sizes: vec![16, 12],
            ..RecordingDevice::default()
        };

        let result = MmioTransport::new(mem, Arc::new(Mutex::new(device)));

        assert!(matches!(result, Err(MmioError::QueueMaxSize(1, 12))));
    }
}
