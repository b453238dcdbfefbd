//! The virtio-net device: features, configuration space, and the two
//! queues, moving frames between them and the [`StreamBackend`].
//!
//! Transmit: each chain is a 12-byte `virtio_net_hdr_v1` and a frame; the
//! header is skipped (no offloads are offered, so it carries nothing) and
//! the frame goes to the backend. While the backend's outgoing buffer is
//! full no chain is taken; the socket becoming writable resumes.
//!
//! Receive: without `VIRTIO_NET_F_MRG_RXBUF` each frame fills one chain,
//! which with an MTU above 1500 Linux builds from many page-sized
//! descriptors ("big packets"); the header (all zeros but
//! `num_buffers = 1`) and the frame are written across them. A frame that
//! does not fit the chain is dropped and counted, and the chain is kept
//! for the next frame.

use std::io::{self, Read, Write};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::defs::{
    CONFIG_MAC_OFFSET, CONFIG_MAX_QUEUE_PAIRS_OFFSET, CONFIG_MTU_OFFSET, CONFIG_SPACE_SIZE,
    CONFIG_STATUS_OFFSET, ETH_HLEN, MAX_FRAME_LEN, NET_HDR_NUM_BUFFERS_OFFSET, NET_HDR_SIZE,
    NUM_QUEUES, QUEUE_SIZE, VIRTIO_F_VERSION_1, VIRTIO_ID_NET, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use super::stream_backend::{BackendError, Received, StreamBackend};
use crate::config::NetConfig;
use crate::devices::virtio::VirtioDevice;

/// Why the network device could not be created, activated or run.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The backend socket could not be set up.
    #[error("cannot reach the network backend")]
    Backend(#[source] BackendError),
    /// Activation got the wrong number of queues.
    #[error("the network device needs {NUM_QUEUES} queues, got {0}")]
    QueueCount(usize),
    /// A queue handed over at activation is not ready.
    #[error("network queue {0} is not ready")]
    QueueNotReady(usize),
    /// Returning a buffer to the guest failed (the used ring is unreachable).
    #[error("cannot return a buffer on the {0} queue")]
    AddUsed(&'static str, #[source] virtio_queue::Error),
    /// Checking whether the guest wants an interrupt failed.
    #[error("cannot check the {0} queue's notification state")]
    Notification(&'static str, #[source] virtio_queue::Error),
}

/// Why one chain's frame was not used.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("the chain cannot be mapped")]
    Chain(#[source] virtio_queue::Error),
    #[error("the chain holds {0} bytes, less than a header")]
    TooShort(usize),
    #[error("the frame of {0} bytes is longer than the largest frame")]
    TooLong(usize),
    #[error("the chain holds {capacity} bytes, the frame and header need {needed}")]
    TooSmall { capacity: usize, needed: usize },
    #[error("cannot copy the frame")]
    Copy(#[source] io::Error),
}

/// A receive chain smaller than a header and an Ethernet header can hold
/// no frame at all: it is returned empty instead of making frames wait.
const MIN_RX_CHAIN: usize = NET_HDR_SIZE + ETH_HLEN;

/// Frame counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames from the backend dropped because the guest's chain was too
    /// small for them.
    pub rx_dropped: u64,
    /// Frames the guest sent that went to the backend.
    pub tx_frames: u64,
    /// Chains the guest sent that were dropped (malformed, too long, or
    /// the backend is gone).
    pub tx_dropped: u64,
}

#[derive(Debug)]
struct ActiveQueues {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
}

/// A virtio network device whose frames go to and come from a
/// [`StreamBackend`] (passt).
#[derive(Debug)]
pub struct NetDevice {
    mac: [u8; 6],
    mtu: u16,
    acked_features: u64,
    backend: StreamBackend,
    active: Option<ActiveQueues>,
    /// The link state the driver was last told about.
    link_up: bool,
    config_changed: bool,
    stats: NetStats,
}

impl NetDevice {
    /// Connects to the backend socket `config` names.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        let backend = StreamBackend::connect(&config.socket).map_err(NetError::Backend)?;
        Ok(Self::with_backend(backend, config.mac, config.mtu))
    }

    /// A device on an already connected backend.
    pub fn with_backend(backend: StreamBackend, mac: [u8; 6], mtu: u16) -> Self {
        Self {
            mac,
            mtu,
            acked_features: 0,
            backend,
            active: None,
            link_up: true,
            config_changed: false,
            stats: NetStats::default(),
        }
    }

    /// Whether the device owns activated queues.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The backend.
    pub fn backend(&self) -> &StreamBackend {
        &self.backend
    }

    /// Frame counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Whether the link went down since the last call (the backend is
    /// gone and the driver should hear of it through a configuration
    /// change).
    pub fn take_config_change(&mut self) -> bool {
        std::mem::take(&mut self.config_changed)
    }

    /// Sends the guest's queued frames to the backend, as many as its
    /// buffer takes. Returns whether the guest wants an interrupt.
    pub fn process_tx(&mut self) -> Result<bool, NetError> {
        self.backend.flush();
        let Some(ActiveQueues { mem, tx, .. }) = self.active.as_mut() else {
            return Ok(false);
        };
        let mut used = false;
        while !self.backend.is_connected() || self.backend.has_room() {
            let Some(chain) = tx.pop_descriptor_chain(&*mem) else {
                break;
            };
            let head = chain.head_index();
            match send_chain(mem, chain, &mut self.backend) {
                Ok(()) => self.stats.tx_frames += 1,
                Err(e) => {
                    self.stats.tx_dropped += 1;
                    tracing::debug!(error = %e, "net: dropped a frame from the guest");
                }
            }
            tx.add_used(&*mem, head, 0)
                .map_err(|e| NetError::AddUsed("transmit", e))?;
            used = true;
        }
        let wants_interrupt = used
            && tx
                .needs_notification(&*mem)
                .map_err(|e| NetError::Notification("transmit", e))?;
        self.note_link_state();
        Ok(wants_interrupt)
    }

    /// Does the work the backend socket is ready for: resumes transmitting
    /// when it takes data again, receives when data (or the end of the
    /// stream) arrived. Returns whether the guest wants an interrupt.
    pub fn process_backend(&mut self) -> Result<bool, NetError> {
        let ready = self.backend.take_readiness();
        let gone = EventSet::HANG_UP | EventSet::ERROR;
        let mut wants_interrupt = false;
        if ready.intersects(EventSet::OUT | gone) {
            wants_interrupt |= self.process_tx()?;
        }
        if ready.intersects(EventSet::IN | gone) {
            wants_interrupt |= self.process_rx()?;
        }
        Ok(wants_interrupt)
    }

    /// Delivers received frames into the guest's receive chains and reads
    /// the socket while they have room. Stops reading when a whole frame
    /// waits and the guest has no chain for it. Returns whether the guest
    /// wants an interrupt.
    pub fn process_rx(&mut self) -> Result<bool, NetError> {
        let mut used = false;
        let paused = loop {
            if self.backend.next_frame().is_some() {
                match self.deliver_frame()? {
                    Some(delivered) => used |= delivered,
                    None => break true,
                }
                continue;
            }
            match self.backend.receive() {
                Received::Bytes => {}
                Received::WouldBlock | Received::Closed => break false,
            }
        };
        self.backend.pause_rx(paused);
        self.note_link_state();
        match self.active.as_mut() {
            Some(ActiveQueues { mem, rx, .. }) if used => rx
                .needs_notification(&*mem)
                .map_err(|e| NetError::Notification("receive", e)),
            _ => Ok(false),
        }
    }

    /// Puts the frame at the front into the next receive chain. Returns
    /// `None` when the guest has no chain, else whether a chain was used
    /// (a dropped frame keeps its chain).
    fn deliver_frame(&mut self) -> Result<Option<bool>, NetError> {
        let Some(ActiveQueues { mem, rx, .. }) = self.active.as_mut() else {
            return Ok(None);
        };
        let Some(frame) = self.backend.next_frame() else {
            return Ok(Some(false));
        };
        let Some(chain) = rx.pop_descriptor_chain(&*mem) else {
            return Ok(None);
        };
        let head = chain.head_index();
        let len = match write_frame(mem, chain, frame) {
            Ok(len) => {
                self.stats.rx_frames += 1;
                self.backend.consume_frame();
                len
            }
            Err(e @ ChainError::TooSmall { capacity, .. }) if capacity >= MIN_RX_CHAIN => {
                self.stats.rx_dropped += 1;
                tracing::debug!(error = %e, "net: dropped a frame for the guest");
                self.backend.consume_frame();
                // The chain is fine for a smaller frame.
                rx.go_to_previous_position();
                return Ok(Some(false));
            }
            Err(e) => {
                // The guest's bug: give the chain back empty, keep the
                // frame for the next one.
                tracing::debug!(error = %e, "net: returned an unusable receive chain");
                0
            }
        };
        rx.add_used(&*mem, head, len)
            .map_err(|e| NetError::AddUsed("receive", e))?;
        Ok(Some(true))
    }

    /// After the backend went away: the driver sees the link down.
    fn note_link_state(&mut self) {
        if self.link_up && !self.backend.is_connected() {
            self.link_up = false;
            self.config_changed =
                self.active.is_some() && self.acked_features & (1 << VIRTIO_NET_F_STATUS) != 0;
        }
    }

    fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut config = [0u8; CONFIG_SPACE_SIZE];
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        config[CONFIG_MAC_OFFSET..CONFIG_MAC_OFFSET + 6].copy_from_slice(&self.mac);
        config[CONFIG_STATUS_OFFSET..CONFIG_STATUS_OFFSET + 2]
            .copy_from_slice(&status.to_le_bytes());
        config[CONFIG_MAX_QUEUE_PAIRS_OFFSET..CONFIG_MAX_QUEUE_PAIRS_OFFSET + 2]
            .copy_from_slice(&1u16.to_le_bytes());
        config[CONFIG_MTU_OFFSET..CONFIG_MTU_OFFSET + 2].copy_from_slice(&self.mtu.to_le_bytes());
        config
    }
}

/// Reads the frame after the header of a transmit chain into the backend.
fn send_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    backend: &mut StreamBackend,
) -> Result<(), ChainError> {
    let mut reader = chain.reader(mem).map_err(ChainError::Chain)?;
    let total = reader.available_bytes();
    let Some(len) = total.checked_sub(NET_HDR_SIZE) else {
        return Err(ChainError::TooShort(total));
    };
    if len > MAX_FRAME_LEN {
        return Err(ChainError::TooLong(len));
    }
    let mut header = [0u8; NET_HDR_SIZE];
    reader.read_exact(&mut header).map_err(ChainError::Copy)?;
    if !backend.is_connected() {
        return Err(ChainError::Copy(io::ErrorKind::NotConnected.into()));
    }
    backend
        .send_frame(len, |buf| reader.read_exact(buf))
        .map_err(ChainError::Copy)
}

/// Writes the receive header and `frame` into a receive chain; returns the
/// bytes written.
fn write_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Result<u32, ChainError> {
    let mut writer = chain.writer(mem).map_err(ChainError::Chain)?;
    let needed = NET_HDR_SIZE + frame.len();
    let capacity = writer.available_bytes();
    if capacity < needed {
        return Err(ChainError::TooSmall { capacity, needed });
    }
    let mut header = [0u8; NET_HDR_SIZE];
    header[NET_HDR_NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
    writer.write_all(&header).map_err(ChainError::Copy)?;
    writer.write_all(frame).map_err(ChainError::Copy)?;
    Ok(needed as u32)
}

impl VirtioDevice for NetDevice {
    type Error = NetError;

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_STATUS
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        let start = offset as usize;
        match config.get(start..start.saturating_add(data.len())) {
            Some(bytes) => data.copy_from_slice(bytes),
            _ => tracing::debug!(offset, len = data.len(), "net: config read out of range"),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only through the legacy interface.
        tracing::debug!(offset, len = data.len(), "net: ignored a config write");
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), NetError> {
        let [rx, tx]: [Queue; NUM_QUEUES] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| NetError::QueueCount(q.len()))?;
        for (index, queue) in [&rx, &tx].into_iter().enumerate() {
            if !queue.ready() {
                return Err(NetError::QueueNotReady(index));
            }
        }
        self.active = Some(ActiveQueues { mem, rx, tx });
        Ok(())
    }

    fn reset(&mut self) {
        // The backend connection and its framing survive: passt serves one
        // connection only, and the guest driver resets the device whenever
        // it probes it.
        self.active = None;
        self.acked_features = 0;
        self.config_changed = false;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::devices::virtio::mmio::test_driver::test_memory;
    use crate::devices::virtio::net::defs::{DEFAULT_MAC, DEFAULT_MTU};
    use crate::devices::virtio::net::test_driver::{
        activated_device, backend_pair, frame, peer_sends, record, rx_header, unread_by_device,
        GuestNet,
    };
    use crate::devices::virtio::vsock::test_driver::wait_readable;

    fn read_exactly(peer: &mut std::os::unix::net::UnixStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        peer.read_exact(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn tx_chain_reaches_the_peer_as_length_prefix_and_frame() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let sent = frame(1000, 1);
        let head = guest.send(&[0xee; NET_HDR_SIZE], &sent, 300);

        let wants_interrupt = device.process_tx().unwrap();

        assert!(wants_interrupt);
        assert_eq!(guest.tx.take_used(), vec![(head, 0)]);
        assert_eq!(read_exactly(&mut peer, 4 + 1000), record(&sent));
        assert_eq!(device.stats().tx_frames, 1);
        assert_eq!(device.backend().pending_tx(), 0);
    }

    #[test]
    fn tx_header_sharing_a_descriptor_with_the_frame_is_skipped() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let sent = frame(60, 2);
        let mut bytes = vec![0u8; NET_HDR_SIZE];
        bytes.extend_from_slice(&sent);
        guest.send(&bytes, &[], 0);

        device.process_tx().unwrap();

        assert_eq!(read_exactly(&mut peer, 4 + 60), record(&sent));
    }

    #[test]
    fn tx_chains_shorter_than_a_header_or_longer_than_a_frame_are_dropped() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let short = guest.send(&[0; 8], &[], 0);
        let long = guest.send(&[0; NET_HDR_SIZE], &vec![0; MAX_FRAME_LEN + 1], 0);
        let good = guest.send(&[0; NET_HDR_SIZE], &frame(20, 3), 0);

        device.process_tx().unwrap();

        assert_eq!(guest.tx.take_used(), vec![(short, 0), (long, 0), (good, 0)]);
        assert_eq!(device.stats().tx_dropped, 2);
        assert_eq!(read_exactly(&mut peer, 24), record(&frame(20, 3)));
    }

    #[test]
    fn rx_frame_is_written_across_small_descriptors() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let head = guest.offer_rx(&[64; 5]);
        let received = frame(300, 4);
        peer_sends(&mut peer, &record(&received));

        let wants_interrupt = device.process_rx().unwrap();

        assert!(wants_interrupt);
        let used = guest.take_rx();
        assert_eq!(used.len(), 1);
        let (used_head, len, bytes) = &used[0];
        assert_eq!((*used_head, *len), (head, 312));
        assert_eq!(bytes[..NET_HDR_SIZE], rx_header());
        assert_eq!(bytes[NET_HDR_SIZE..], received[..]);
        assert_eq!(device.stats().rx_frames, 1);
    }

    #[test]
    fn frame_arriving_in_pieces_is_delivered_once_whole() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        guest.offer_rx(&[4096]);
        let received = frame(200, 5);
        let bytes = record(&received);

        let mut used_after_each = Vec::new();
        for piece in [&bytes[..2], &bytes[2..10], &bytes[10..]] {
            peer_sends(&mut peer, piece);
            assert!(wait_readable(device.backend().as_raw_fd(), 1000));
            device.process_backend().unwrap();
            used_after_each.push(guest.take_rx());
        }

        assert!(used_after_each[0].is_empty() && used_after_each[1].is_empty());
        assert_eq!(used_after_each[2].len(), 1);
        assert_eq!(used_after_each[2][0].2[NET_HDR_SIZE..], received[..]);
    }

    #[test]
    fn without_rx_buffers_the_socket_is_left_unread_until_the_queue_is_notified() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let frames = [frame(100, 6), frame(120, 7), frame(140, 8)];
        peer_sends(&mut peer, &record(&frames[0]));
        device.process_backend().unwrap();

        peer_sends(
            &mut peer,
            &[record(&frames[1]), record(&frames[2])].concat(),
        );
        let woke_while_paused = wait_readable(device.backend().as_raw_fd(), 100);
        let unread_while_paused = unread_by_device(&peer);
        let interest_while_paused = device.backend().interest();
        for _ in 0..3 {
            guest.offer_rx(&[1024]);
        }
        // What a notification of the receive queue runs.
        device.process_rx().unwrap();

        assert!(!woke_while_paused, "the event loop would spin");
        assert!(unread_while_paused > 0, "the device read without buffers");
        assert_eq!(interest_while_paused, Some(EventSet::empty()));
        let delivered: Vec<_> = guest
            .take_rx()
            .into_iter()
            .map(|(_, _, bytes)| bytes[NET_HDR_SIZE..].to_vec())
            .collect();
        assert_eq!(delivered, frames.to_vec());
        assert_eq!(unread_by_device(&peer), 0);
        assert_eq!(device.backend().interest(), Some(EventSet::IN));
    }

    #[test]
    fn frame_larger_than_the_chain_is_dropped_and_the_chain_takes_the_next() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let head = guest.offer_rx(&[64, 64]);
        let small = frame(100, 9);
        peer_sends(
            &mut peer,
            &[record(&frame(117, 10)), record(&small)].concat(),
        );

        device.process_rx().unwrap();

        let used = guest.take_rx();
        assert_eq!(used.len(), 1);
        assert_eq!((used[0].0, used[0].1), (head, 112));
        assert_eq!(used[0].2[NET_HDR_SIZE..], small[..]);
        assert_eq!(device.stats().rx_dropped, 1);
        assert_eq!(device.stats().rx_frames, 1);
    }

    #[test]
    fn chain_too_small_for_any_frame_is_returned_empty_and_the_frame_waits() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let tiny = guest.offer_rx(&[16]);
        let usable = guest.offer_rx(&[512]);
        let sent = frame(100, 15);
        peer_sends(&mut peer, &record(&sent));

        device.process_rx().unwrap();

        let used = guest.take_rx();
        assert_eq!((used[0].0, used[0].1), (tiny, 0));
        assert_eq!((used[1].0, used[1].1), (usable, 112));
        assert_eq!(used[1].2[NET_HDR_SIZE..], sent[..]);
        assert_eq!(device.stats().rx_dropped, 0);
    }

    #[test]
    fn length_prefix_beyond_the_largest_frame_drops_the_backend() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        guest.offer_rx(&[4096]);
        peer_sends(&mut peer, &(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        peer_sends(&mut peer, &[0u8; 64]);

        device.process_backend().unwrap();

        assert!(!device.backend().is_connected());
        assert!(guest.take_rx().is_empty());
        assert_eq!(peer.read(&mut [0u8; 1]).unwrap(), 0, "socket still open");
        assert!(device.take_config_change());
        let mut status = [0xffu8; 2];
        device.read_config(CONFIG_STATUS_OFFSET as u64, &mut status);
        assert_eq!(status, [0, 0]);
        assert!(!wait_readable(device.backend().as_raw_fd(), 50), "spins");
    }

    #[test]
    fn backend_closing_takes_the_link_down_once_and_tx_chains_are_still_returned() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, peer) = activated_device(&guest, &mem);
        drop(peer);

        assert!(wait_readable(device.backend().as_raw_fd(), 1000));
        device.process_backend().unwrap();
        let first = device.take_config_change();
        let head = guest.send(&[0; NET_HDR_SIZE], &frame(40, 11), 0);
        device.process_tx().unwrap();

        assert!(first);
        assert!(!device.take_config_change(), "told twice");
        assert!(!device.backend().is_connected());
        assert_eq!(guest.tx.take_used(), vec![(head, 0)]);
        assert_eq!(device.stats().tx_dropped, 1);
        assert!(!wait_readable(device.backend().as_raw_fd(), 50), "spins");
    }

    #[test]
    fn frames_sent_before_a_hang_up_reach_a_guest_that_had_no_buffers() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let last = frame(80, 12);
        peer_sends(&mut peer, &record(&last));
        drop(peer);

        device.process_backend().unwrap();
        let woke = wait_readable(device.backend().as_raw_fd(), 50);
        guest.offer_rx(&[1024]);
        device.process_rx().unwrap();

        assert!(!woke, "a hung-up socket with input paused spins");
        let used = guest.take_rx();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].2[NET_HDR_SIZE..], last[..]);
        assert!(!device.backend().is_connected());
    }

    #[test]
    fn tx_pauses_while_the_backend_buffer_is_full_and_resumes_when_writable() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);
        let frames: Vec<_> = (0..16).map(|i| frame(60_000, i)).collect();
        for sent in &frames {
            guest.send(&[0; NET_HDR_SIZE], sent, 0);
        }

        device.process_tx().unwrap();
        let used_while_full = guest.tx.take_used().len();
        let interest_while_full = device.backend().interest();
        let reader = std::thread::spawn(move || {
            let mut bytes = vec![0u8; 16 * (4 + 60_000)];
            peer.read_exact(&mut bytes).unwrap();
            bytes
        });
        let mut used = used_while_full;
        while used < 16 || device.backend().pending_tx() > 0 {
            assert!(
                wait_readable(device.backend().as_raw_fd(), 2000),
                "no EPOLLOUT"
            );
            device.process_backend().unwrap();
            used += guest.tx.take_used().len();
        }
        let received = reader.join().unwrap();

        assert!(used_while_full < 16, "the buffer never filled");
        assert_eq!(interest_while_full, Some(EventSet::IN | EventSet::OUT));
        let expected: Vec<u8> = frames.iter().flat_map(|f| record(f)).collect();
        assert!(received == expected, "frames reordered or corrupted");
        assert_eq!(device.stats().tx_frames, 16);
    }

    #[test]
    fn config_space_holds_mac_link_status_and_mtu() {
        let (backend, _peer) = backend_pair();
        let device = NetDevice::with_backend(backend, [2, 0, 0, 0, 0, 9], 9000);
        let mut config = [0u8; CONFIG_SPACE_SIZE];

        device.read_config(0, &mut config);

        assert_eq!(config, [2, 0, 0, 0, 0, 9, 1, 0, 1, 0, 0x28, 0x23]);
        let mut beyond = [0xffu8; 4];
        device.read_config(10, &mut beyond);
        assert_eq!(beyond, [0xff; 4]);
        assert_eq!(device.device_type(), 1);
        assert_eq!(device.avail_features(), 1 << 32 | 1 << 3 | 1 << 5 | 1 << 16);
    }

    #[test]
    fn missing_socket_is_named_with_a_hint_to_start_passt() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("net.sock");

        let error = NetDevice::new(&NetConfig::new(&socket)).unwrap_err();

        let NetError::Backend(cause) = &error else {
            panic!("unexpected error {error:?}");
        };
        let text = cause.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("passt"), "{text}");
    }

    #[test]
    fn reset_keeps_the_backend_connection() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (mut device, mut peer) = activated_device(&guest, &mem);

        device.reset();
        device.activate(mem.clone(), guest.device_queues()).unwrap();
        guest.send(&[0; NET_HDR_SIZE], &frame(30, 13), 0);
        device.process_tx().unwrap();

        assert!(device.backend().is_connected());
        assert_eq!(read_exactly(&mut peer, 34), record(&frame(30, 13)));
    }

    #[test]
    fn frames_before_activation_wait_without_spinning() {
        let mem = test_memory();
        let mut guest = GuestNet::new(&mem);
        let (backend, mut peer) = backend_pair();
        let mut device = NetDevice::with_backend(backend, DEFAULT_MAC, DEFAULT_MTU);
        peer_sends(&mut peer, &record(&frame(50, 14)));

        device.process_backend().unwrap();
        let woke = wait_readable(device.backend().as_raw_fd(), 50);
        device.activate(mem.clone(), guest.device_queues()).unwrap();
        guest.offer_rx(&[256]);
        device.process_rx().unwrap();

        assert!(!woke);
        assert_eq!(guest.take_rx()[0].2[NET_HDR_SIZE..], frame(50, 14)[..]);
    }
}
