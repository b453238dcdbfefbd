//! The virtio-vsock device: features, configuration space and the three
//! virtqueues, moving packets between them and the [`VsockMuxer`].
//!
//! The queue work is written against `virtio_queue::Queue` borrowed from the
//! caller ([`VsockDevice::handle_event_with`]) so the same code serves two
//! owners: our own VMM, where the device owns its queues after
//! [`VirtioDevice::activate`], and the vhost-user backend, where the queues
//! live in the vhost-user framework's vrings.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::defs::{
    CONFIG_SPACE_SIZE, DEFAULT_CONN_BUF_SIZE, EVENT_TRANSPORT_RESET, EVQ_INDEX, NUM_QUEUES,
    QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX, VIRTIO_F_VERSION_1, VIRTIO_ID_VSOCK, VSOCK_HOST_CID,
};
use super::muxer::{MuxerError, VsockMuxer};
use super::packet::{read_tx_packet, RxBuffer};
use crate::devices::virtio::VirtioDevice;

/// Why the vsock device could not be created, activated or run.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The guest CID is one of the reserved ones or does not fit 32 bits.
    #[error("guest CID {0} is reserved or out of range (valid: 3 to 4294967294)")]
    InvalidCid(u64),
    /// The host side could not be set up or polled.
    #[error("the vsock host backend failed")]
    Backend(#[source] MuxerError),
    /// Activation got the wrong number of queues.
    #[error("the vsock device needs {NUM_QUEUES} queues, got {0}")]
    QueueCount(usize),
    /// A queue handed over at activation is not usable.
    #[error("queue {0} is not ready or lies outside guest memory")]
    InvalidQueue(usize),
    /// Queue work was asked of a device that owns no queues.
    #[error("the vsock device is not activated")]
    NotActivated,
    /// Returning a buffer to the guest failed (the used ring is unreachable).
    #[error("cannot return a buffer on the {0} queue")]
    AddUsed(&'static str, #[source] virtio_queue::Error),
    /// Checking whether the guest wants an interrupt failed.
    #[error("cannot check the {0} queue's notification state")]
    Notification(&'static str, #[source] virtio_queue::Error),
}

/// What woke the device up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsockEvent {
    /// The guest added receive buffers.
    RxQueue,
    /// The guest added packets to send.
    TxQueue,
    /// The guest added event buffers.
    EventQueue,
    /// A host socket is ready (the muxer's fd is readable).
    Backend,
}

impl VsockEvent {
    /// The event for a notification of queue `index`, if there is such a
    /// queue.
    pub fn for_queue(index: usize) -> Option<Self> {
        match index {
            RXQ_INDEX => Some(VsockEvent::RxQueue),
            TXQ_INDEX => Some(VsockEvent::TxQueue),
            EVQ_INDEX => Some(VsockEvent::EventQueue),
            _ => None,
        }
    }
}

/// Which queues the device returned buffers on, so the caller knows which
/// interrupts may be due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedQueues {
    /// The receive queue.
    pub rx: bool,
    /// The transmit queue.
    pub tx: bool,
    /// The event queue.
    pub event: bool,
}

impl UsedQueues {
    /// Whether any queue got used buffers.
    pub fn any(self) -> bool {
        self.rx || self.tx || self.event
    }
}

/// The device's queues, borrowed from whoever owns them. A queue the owner
/// may not use right now (not set up, or disabled by the front end) is
/// `None`; work for it waits.
#[derive(Default)]
pub struct QueuesMut<'q> {
    /// The receive queue (index 0).
    pub rx: Option<&'q mut Queue>,
    /// The transmit queue (index 1).
    pub tx: Option<&'q mut Queue>,
    /// The event queue (index 2).
    pub event: Option<&'q mut Queue>,
}

#[derive(Debug)]
struct ActiveQueues {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
}

/// A virtio-vsock device whose host side is hybrid vsock.
#[derive(Debug)]
pub struct VsockDevice {
    cid: u64,
    acked_features: u64,
    muxer: VsockMuxer,
    active: Option<ActiveQueues>,
    /// Transmit processing stopped because replies were backing up.
    tx_stalled: bool,
    /// A TRANSPORT_RESET event waits for an event-queue buffer.
    reset_event_pending: bool,
}

impl VsockDevice {
    /// Creates the device for guest `cid`, with host clients connecting to
    /// `uds_path` and host services listening at `<uds_path>_<port>`.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, DeviceError> {
        Self::with_buffer_size(cid, uds_path, DEFAULT_CONN_BUF_SIZE)
    }

    /// Like [`VsockDevice::new`] with a chosen per-connection receive buffer
    /// (`buf_alloc`); small buffers make flow control easy to exercise.
    pub fn with_buffer_size(
        cid: u64,
        uds_path: &Path,
        buf_alloc: u32,
    ) -> Result<Self, DeviceError> {
        // 0, 1 and 2 are the hypervisor, loopback and host; u32::MAX is
        // VMADDR_CID_ANY; Linux keeps CIDs in 32 bits.
        if cid <= VSOCK_HOST_CID || cid >= u64::from(u32::MAX) {
            return Err(DeviceError::InvalidCid(cid));
        }
        let muxer = VsockMuxer::new(cid, uds_path, buf_alloc).map_err(DeviceError::Backend)?;
        Ok(Self {
            cid,
            acked_features: 0,
            muxer,
            active: None,
            tx_stalled: false,
            reset_event_pending: false,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The connection table, for inspection.
    pub fn muxer(&self) -> &VsockMuxer {
        &self.muxer
    }

    /// Whether the device owns activated queues.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Drops every connection and queues a TRANSPORT_RESET event, which the
    /// guest gets with the next event-queue processing. For when the host
    /// side loses its state (restore, or the front end restarting the device).
    pub fn reset_transport(&mut self) {
        self.muxer.reset();
        self.reset_event_pending = true;
    }

    /// Runs the device for one wake-up on queues the device owns (after
    /// [`VirtioDevice::activate`]). Returns the queues whose guest wants an
    /// interrupt now.
    pub fn handle_event(&mut self, event: VsockEvent) -> Result<UsedQueues, DeviceError> {
        let mut active = self.active.take().ok_or(DeviceError::NotActivated)?;
        let result = self.notify_needed(event, &mut active);
        self.active = Some(active);
        result
    }

    fn notify_needed(
        &mut self,
        event: VsockEvent,
        active: &mut ActiveQueues,
    ) -> Result<UsedQueues, DeviceError> {
        let used = self.handle_event_with(
            event,
            &active.mem,
            QueuesMut {
                rx: Some(&mut active.rx),
                tx: Some(&mut active.tx),
                event: Some(&mut active.event),
            },
        )?;
        let mem = &active.mem;
        let wants = |used: bool, queue: &mut Queue, name| -> Result<bool, DeviceError> {
            if !used {
                return Ok(false);
            }
            queue
                .needs_notification(mem)
                .map_err(|e| DeviceError::Notification(name, e))
        };
        Ok(UsedQueues {
            rx: wants(used.rx, &mut active.rx, "receive")?,
            tx: wants(used.tx, &mut active.tx, "transmit")?,
            event: wants(used.event, &mut active.event, "event")?,
        })
    }

    /// Runs the device for one wake-up on queues the caller owns. Returns the
    /// queues that got used buffers; the caller decides on interrupts.
    pub fn handle_event_with(
        &mut self,
        event: VsockEvent,
        mem: &GuestMemoryMmap,
        queues: QueuesMut<'_>,
    ) -> Result<UsedQueues, DeviceError> {
        let QueuesMut {
            rx,
            mut tx,
            event: evq,
        } = queues;
        let mut used = UsedQueues::default();
        match (event, tx.as_deref_mut()) {
            (VsockEvent::Backend, _) => self.process_backend()?,
            (VsockEvent::TxQueue, Some(tx)) => used.tx |= self.process_tx(mem, tx)?,
            // New receive or event buffers are used below.
            _ => {}
        }
        // Any event can leave packets for the guest, and draining them can
        // unblock a transmit queue that stopped for lack of room for replies.
        if let Some(rx) = rx {
            loop {
                used.rx |= self.fill_rx(mem, rx)?;
                let Some(tx) = tx.as_deref_mut() else {
                    break;
                };
                if !self.tx_stalled || self.muxer.rx_backlog_full() {
                    break;
                }
                used.tx |= self.process_tx(mem, tx)?;
            }
        }
        if let Some(evq) = evq {
            used.event |= self.deliver_events(mem, evq)?;
        }
        Ok(used)
    }

    /// Handles host socket readiness without touching any queue; packets for
    /// the guest wait in the muxer. For front ends whose queues are not set
    /// up yet: the readiness must still be consumed, or the level-triggered
    /// fd would wake the caller again at once.
    pub fn process_backend(&mut self) -> Result<(), DeviceError> {
        self.muxer.process_events().map_err(DeviceError::Backend)
    }

    /// Takes every packet the guest queued for sending, until replies back
    /// up. Returns whether any buffer was used.
    pub fn process_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        txq: &mut Queue,
    ) -> Result<bool, DeviceError> {
        if !txq.ready() {
            return Ok(false);
        }
        let mut used = false;
        loop {
            if self.muxer.rx_backlog_full() {
                self.tx_stalled = true;
                return Ok(used);
            }
            let Some(mut chain) = txq.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match read_tx_packet(mem, &mut chain) {
                Ok(packet) => self.muxer.handle_guest_packet(packet),
                // A malformed chain is the guest's bug: drop it, keep going.
                Err(e) => tracing::debug!(error = %e, "vsock: dropped a transmit buffer"),
            }
            txq.add_used(mem, head, 0)
                .map_err(|e| DeviceError::AddUsed("transmit", e))?;
            used = true;
        }
        self.tx_stalled = false;
        Ok(used)
    }

    /// Fills guest receive buffers with pending packets. Returns whether any
    /// buffer was used.
    pub fn fill_rx(&mut self, mem: &GuestMemoryMmap, rxq: &mut Queue) -> Result<bool, DeviceError> {
        if !rxq.ready() {
            return Ok(false);
        }
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(mut chain) = rxq.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::from_chain(mem, &mut chain) {
                Ok(buffer) => {
                    let Some(packet) = self.muxer.next_rx_packet(buffer.capacity()) else {
                        // Nothing fits right now; keep the buffer for later.
                        rxq.go_to_previous_position();
                        break;
                    };
                    buffer.write(&packet).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "vsock: lost a packet for the guest");
                        0
                    })
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: returned an unusable receive buffer");
                    0
                }
            };
            rxq.add_used(mem, head, len)
                .map_err(|e| DeviceError::AddUsed("receive", e))?;
            used = true;
        }
        Ok(used)
    }

    /// Writes a pending TRANSPORT_RESET into an event buffer. Returns
    /// whether a buffer was used.
    pub fn deliver_events(
        &mut self,
        mem: &GuestMemoryMmap,
        evq: &mut Queue,
    ) -> Result<bool, DeviceError> {
        if !self.reset_event_pending || !evq.ready() {
            return Ok(false);
        }
        let Some(chain) = evq.pop_descriptor_chain(mem) else {
            return Ok(false);
        };
        let head = chain.head_index();
        // `struct virtio_vsock_event` is a single le32 id.
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = chain
            .writable()
            .find(|desc| desc.len() as usize >= event.len())
            .is_some_and(|desc| mem.write_slice(&event, desc.addr()).is_ok());
        let len = if written {
            self.reset_event_pending = false;
            event.len() as u32
        } else {
            tracing::debug!("vsock: returned an unusable event buffer");
            0
        };
        evq.add_used(mem, head, len)
            .map_err(|e| DeviceError::AddUsed("event", e))?;
        Ok(true)
    }
}

impl AsRawFd for VsockDevice {
    /// The fd to poll for [`VsockEvent::Backend`]: readable when host sockets
    /// have something for the device.
    fn as_raw_fd(&self) -> RawFd {
        self.muxer.as_raw_fd()
    }
}

impl VirtioDevice for VsockDevice {
    type Error = DeviceError;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn ack_features(&mut self, features: u64) {
        let unknown = features & !self.avail_features();
        if unknown != 0 {
            tracing::debug!(unknown, "vsock: driver acked features not offered");
        }
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(data.len())?))
            .filter(|range| range.end <= CONFIG_SPACE_SIZE);
        match range {
            Some(range) => data.copy_from_slice(&config[range]),
            None => tracing::debug!(offset, len = data.len(), "vsock: config read out of range"),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The configuration space is read-only for the driver.
        tracing::debug!(offset, len = data.len(), "vsock: ignored a config write");
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), DeviceError> {
        if queues.len() != NUM_QUEUES {
            return Err(DeviceError::QueueCount(queues.len()));
        }
        if let Some(bad) = queues.iter().position(|q| !q.ready() || !q.is_valid(&mem)) {
            return Err(DeviceError::InvalidQueue(bad));
        }
        // Queues come in index order: RXQ_INDEX, TXQ_INDEX, EVQ_INDEX.
        let [rx, tx, event]: [Queue; NUM_QUEUES] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| DeviceError::QueueCount(q.len()))?;
        self.active = Some(ActiveQueues { mem, rx, tx, event });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.tx_stalled = false;
        self.reset_event_pending = false;
        self.muxer.reset();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;
    use crate::devices::virtio::vsock::defs::{
        OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    };
    use crate::devices::virtio::vsock::muxer::MAX_PENDING_RESETS;
    use crate::devices::virtio::vsock::test_driver::{
        activated_device, guest_connects, guest_header, host_connects, host_sees_eof, notify,
        read_host, run_host_events, test_memory, wait_readable, GuestDriver, GUEST_CID, GUEST_PORT,
        HOST_PORT,
    };

    #[test]
    fn config_space_holds_guest_cid_little_endian() {
        let dir = tempfile::tempdir().unwrap();
        let device = VsockDevice::new(0x1_0203, &dir.path().join("vsock")).unwrap();
        let mut low = [0u8; 4];
        let mut high = [0u8; 4];

        device.read_config(0, &mut low);
        device.read_config(4, &mut high);

        assert_eq!(low, [0x03, 0x02, 0x01, 0x00]);
        assert_eq!(high, [0; 4]);
    }

    #[test]
    fn config_read_beyond_the_space_leaves_buffer_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();
        let mut data = [0xaa; 4];

        device.read_config(6, &mut data);
        device.read_config(u64::MAX, &mut data);

        assert_eq!(data, [0xaa; 4]);
    }

    #[test]
    fn device_offers_version_1_and_keeps_only_offered_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();

        device.ack_features(1 << VIRTIO_F_VERSION_1 | 1 << 29 | 1);

        assert_eq!(device.device_type(), 19);
        assert_eq!(device.avail_features(), 1 << VIRTIO_F_VERSION_1);
        assert_eq!(device.acked_features(), 1 << VIRTIO_F_VERSION_1);
    }

    #[test]
    fn reserved_and_oversized_cids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
            let result = VsockDevice::new(cid, &dir.path().join("vsock"));

            assert!(matches!(result, Err(DeviceError::InvalidCid(c)) if c == cid));
        }
    }

    #[test]
    fn activation_needs_three_queues() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let guest = GuestDriver::new(&mem);
        let mut device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();
        let mut queues = guest.device_queues();
        queues.pop();

        let result = device.activate(mem.clone(), queues);

        assert!(matches!(result, Err(DeviceError::QueueCount(2))));
        assert!(!device.is_activated());
    }

    #[test]
    fn unactivated_device_refuses_queue_work() {
        let dir = tempfile::tempdir().unwrap();
        let mut device = VsockDevice::new(3, &dir.path().join("vsock")).unwrap();

        let result = device.handle_event(VsockEvent::TxQueue);

        assert!(matches!(result, Err(DeviceError::NotActivated)));
    }

    #[test]
    fn guest_connect_to_host_listener_gets_response() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);

        let _host = guest_connects(&mut device, &mut guest, dir.path());

        assert_eq!(device.muxer().connection_count(), 1);
        assert_eq!(guest.take_tx_used(), 1);
    }

    #[test]
    fn guest_connect_without_host_listener_gets_rst() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        guest.offer_rx(1, 4096);

        guest.send(guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT), &[]);
        notify(&mut device, VsockEvent::TxQueue);

        let reply = guest.take_rx();
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0].header.op, OP_RST);
        assert_eq!(reply[0].header.dst_port, GUEST_PORT);
        assert_eq!(reply[0].header.src_port, HOST_PORT);
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn host_connect_line_becomes_request_and_ok_after_guest_response() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);

        // `host_connects` checks REQUEST on the rx queue and the `OK` line.
        let (_client, local_port) = host_connects(&mut device, &mut guest, dir.path());

        assert!(local_port >= 1 << 30);
        assert_eq!(device.muxer().connection_count(), 1);
    }

    #[test]
    fn guest_refusing_host_connect_closes_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut client = UnixStream::connect(dir.path().join("vsock")).unwrap();
        client.write_all(b"CONNECT 9999\n").unwrap();
        guest.offer_rx(1, 4096);
        run_host_events(&mut device);
        let request = guest.take_rx().remove(0);

        guest.send(guest_header(OP_RST, 9999, request.header.src_port), &[]);
        notify(&mut device, VsockEvent::TxQueue);

        assert!(host_sees_eof(&mut client));
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn data_flows_both_ways_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 64 * 1024);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());
        let to_host: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let to_guest: Vec<u8> = (0..9_000u32).map(|i| (i * 13 % 241) as u8).collect();

        guest.send(guest_header(OP_RW, GUEST_PORT, HOST_PORT), &to_host);
        notify(&mut device, VsockEvent::TxQueue);
        host.write_all(&to_guest).unwrap();
        guest.offer_rx(8, 4096);
        let mut received = Vec::new();
        while received.len() < to_guest.len() {
            run_host_events(&mut device);
            for packet in guest.take_rx() {
                assert_eq!(packet.header.op, OP_RW);
                assert_eq!(packet.header.dst_port, GUEST_PORT);
                received.extend(packet.data);
            }
        }

        assert_eq!(read_host(&mut host, to_host.len()), to_host);
        assert_eq!(received, to_guest);
    }

    #[test]
    fn bytes_sent_with_the_connect_line_reach_the_guest_after_response() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut client = UnixStream::connect(dir.path().join("vsock")).unwrap();
        client.write_all(b"CONNECT 77\nearly bytes").unwrap();
        guest.offer_rx(2, 4096);
        run_host_events(&mut device);
        let request = guest.take_rx().remove(0);

        guest.send(guest_header(OP_RESPONSE, 77, request.header.src_port), &[]);
        notify(&mut device, VsockEvent::TxQueue);

        let data = guest.take_rx();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].header.op, OP_RW);
        assert_eq!(data[0].data, b"early bytes");
        let mut ok = [0u8; 3];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"OK ");
    }

    #[test]
    fn malformed_tx_chains_are_returned_and_the_device_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        guest.offer_rx(1, 4096);
        guest.send_raw(&[0xff; 10]);
        let mut lying = guest_header(OP_RW, GUEST_PORT, HOST_PORT).to_le_bytes();
        lying[24..28].copy_from_slice(&1000u32.to_le_bytes());
        guest.send_raw(&lying);

        guest.send(guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT), &[]);
        notify(&mut device, VsockEvent::TxQueue);

        assert_eq!(guest.take_tx_used(), 3);
        assert_eq!(guest.take_rx()[0].header.op, OP_RST);
    }

    #[test]
    fn transport_reset_reaches_the_event_queue_and_closes_host_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());

        device.reset_transport();
        guest.offer_event();
        let used = device.handle_event(VsockEvent::EventQueue).unwrap();

        assert!(used.event);
        assert_eq!(guest.take_events(), vec![EVENT_TRANSPORT_RESET]);
        assert!(host_sees_eof(&mut host));
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn transmit_waits_while_replies_back_up_and_resumes_with_rx_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        // Each packet is for an unknown connection and so earns an RST. The
        // ring holds fewer than the backlog limit, hence two rounds.
        let sent = MAX_PENDING_RESETS as u32 + 20;
        for port in 0..200 {
            guest.send(
                guest_header(OP_CREDIT_REQUEST, 40_000 + port, HOST_PORT),
                &[],
            );
        }
        notify(&mut device, VsockEvent::TxQueue);
        for port in 200..sent {
            guest.send(
                guest_header(OP_CREDIT_REQUEST, 40_000 + port, HOST_PORT),
                &[],
            );
        }

        notify(&mut device, VsockEvent::TxQueue);
        let used_while_blocked = guest.take_tx_used();
        let mut resets = Vec::new();
        for _ in 0..3 {
            guest.offer_rx(120, 64);
            notify(&mut device, VsockEvent::RxQueue);
            resets.extend(guest.take_rx());
        }

        assert_eq!(used_while_blocked, MAX_PENDING_RESETS);
        assert_eq!(guest.take_tx_used(), 20);
        assert_eq!(resets.len(), sent as usize);
        assert!(resets.iter().all(|p| p.header.op == OP_RST));
        assert!(resets.iter().all(|p| p.header.dst_cid == GUEST_CID));
    }

    #[test]
    fn credit_update_is_sent_when_guest_view_of_free_space_runs_low() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());
        guest.offer_rx(2, 4096);

        // 4096 - 3000 = 1096 left in the guest's view: still above a quarter.
        guest.send(guest_header(OP_RW, GUEST_PORT, HOST_PORT), &[1; 3000]);
        notify(&mut device, VsockEvent::TxQueue);
        let after_first = guest.take_rx();
        // 896 left: below a quarter, and the host took everything.
        guest.send(guest_header(OP_RW, GUEST_PORT, HOST_PORT), &[2; 200]);
        notify(&mut device, VsockEvent::TxQueue);
        let after_second = guest.take_rx();

        assert!(after_first.is_empty());
        assert_eq!(after_second.len(), 1);
        assert_eq!(after_second[0].header.op, OP_CREDIT_UPDATE);
        assert_eq!(after_second[0].header.fwd_cnt, 3200);
        assert_eq!(after_second[0].header.buf_alloc, 4096);
        assert_eq!(read_host(&mut host, 3200).len(), 3200);
    }

    #[test]
    fn host_data_stops_at_peer_credit_and_resumes_after_credit_update() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let service = UnixListener::bind(dir.path().join(format!("vsock_{HOST_PORT}"))).unwrap();
        let mut request = guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT);
        request.buf_alloc = 1000;
        guest.offer_rx(1, 4096);
        guest.send(request, &[]);
        notify(&mut device, VsockEvent::TxQueue);
        assert_eq!(guest.take_rx()[0].header.op, OP_RESPONSE);
        let (mut host, _) = service.accept().unwrap();
        let sent: Vec<u8> = (0..2500u32).map(|i| (i % 253) as u8).collect();
        host.write_all(&sent).unwrap();
        guest.offer_rx(16, 4096);

        run_host_events(&mut device);
        let stalled = guest.take_rx();
        let woke_while_stalled = wait_readable(device.as_raw_fd(), 100);
        let mut received: Vec<u8> = Vec::new();
        let mut rounds = Vec::new();
        for packet in &stalled {
            if packet.header.op == OP_RW {
                received.extend(&packet.data);
            }
        }
        while received.len() < sent.len() {
            let mut update = guest_header(OP_CREDIT_UPDATE, GUEST_PORT, HOST_PORT);
            update.buf_alloc = 1000;
            update.fwd_cnt = received.len() as u32;
            guest.send(update, &[]);
            notify(&mut device, VsockEvent::TxQueue);
            let round: Vec<u8> = guest
                .take_rx()
                .into_iter()
                .filter(|p| p.header.op == OP_RW)
                .flat_map(|p| p.data)
                .collect();
            assert!(!round.is_empty(), "no data after a credit update");
            rounds.push(round.len());
            received.extend(round);
        }

        assert_eq!(stalled.iter().filter(|p| p.header.op == OP_RW).count(), 1);
        assert_eq!(stalled[0].data.len(), 1000);
        assert_eq!(stalled.last().unwrap().header.op, OP_CREDIT_REQUEST);
        assert!(
            !woke_while_stalled,
            "muxer fd stayed readable without credit"
        );
        assert_eq!(rounds, vec![1000, 500]);
        assert_eq!(received, sent);
    }
}
