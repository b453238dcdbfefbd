//! The guest's side of the network device for tests: receive and transmit
//! queues laid out in test memory, chains built as Linux builds them, and
//! the peer end of the backend socket playing passt.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::defs::{DEFAULT_MAC, DEFAULT_MTU, NET_HDR_SIZE};
use super::{NetDevice, StreamBackend};
use crate::devices::virtio::mmio::test_driver::GuestQueue;
use crate::devices::virtio::VirtioDevice;

/// Where the receive queue lives.
pub const RX_RING: GuestAddress = GuestAddress(0x1_0000);
/// Where the transmit queue lives.
pub const TX_RING: GuestAddress = GuestAddress(0x2_0000);
/// Entries of each queue.
pub const RING_SIZE: u16 = 64;
/// Receive buffers are handed out from here.
const RX_BUFFERS: u64 = 0x10_0000;
/// Transmit buffers are handed out from here.
const TX_BUFFERS: u64 = 0x80_0000;

/// `frame` behind its stream length prefix, as it travels on the socket.
pub fn record(frame: &[u8]) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

/// A recognisable frame of `len` bytes.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// The receive header the device must write: zeros, `num_buffers = 1`.
pub fn rx_header() -> [u8; NET_HDR_SIZE] {
    let mut header = [0u8; NET_HDR_SIZE];
    header[10] = 1;
    header
}

/// A backend on one end of a socket pair; the other end plays passt and
/// times out instead of blocking a failing test forever.
pub fn backend_pair() -> (StreamBackend, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (StreamBackend::new(ours).unwrap(), peer)
}

/// Bytes the peer sent that the other end has not read yet (`SIOCOUTQ`).
pub fn unread_by_device(peer: &UnixStream) -> i32 {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) on a socket writes one int through the
    // pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(peer.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ failed");
    queued
}

/// The guest's two queues and its buffers.
pub struct GuestNet<'m> {
    mem: &'m GuestMemoryMmap,
    /// The receive queue.
    pub rx: GuestQueue<'m>,
    /// The transmit queue.
    pub tx: GuestQueue<'m>,
    next_rx: u64,
    next_tx: u64,
    /// Each posted receive chain: head and its descriptors.
    rx_chains: Vec<(u16, Vec<(GuestAddress, u32)>)>,
}

impl<'m> GuestNet<'m> {
    /// Queues at [`RX_RING`] and [`TX_RING`].
    pub fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self {
            mem,
            rx: GuestQueue::new(mem, RX_RING, RING_SIZE),
            tx: GuestQueue::new(mem, TX_RING, RING_SIZE),
            next_rx: RX_BUFFERS,
            next_tx: TX_BUFFERS,
            rx_chains: Vec::new(),
        }
    }

    /// Device-side queues for a device activated without a transport.
    pub fn device_queues(&self) -> Vec<virtio_queue::Queue> {
        vec![self.rx.device_queue(), self.tx.device_queue()]
    }

    /// Posts a receive chain of descriptors of the given sizes (zeroed);
    /// returns its head.
    pub fn offer_rx(&mut self, sizes: &[u32]) -> u16 {
        let mut descs = Vec::new();
        for &size in sizes {
            let addr = GuestAddress(self.next_rx);
            self.mem
                .write_slice(&vec![0u8; size as usize], addr)
                .unwrap();
            self.next_rx += u64::from(size).next_multiple_of(0x100);
            descs.push((addr, size));
        }
        let chain: Vec<_> = descs.iter().map(|&(a, l)| (a, l, true)).collect();
        let head = self.rx.add_chain(&chain);
        self.rx_chains.push((head, descs));
        head
    }

    /// Puts a transmit chain on the queue: `header` then the frame split
    /// into pieces of `split` bytes (the whole frame when 0); returns its head.
    pub fn send(&mut self, header: &[u8], frame: &[u8], split: usize) -> u16 {
        let mut descs = Vec::new();
        let pieces: Vec<&[u8]> = if split == 0 {
            vec![frame]
        } else {
            frame.chunks(split).collect()
        };
        for bytes in std::iter::once(header).chain(pieces) {
            let addr = GuestAddress(self.next_tx);
            self.mem.write_slice(bytes, addr).unwrap();
            self.next_tx += (bytes.len() as u64).next_multiple_of(0x100);
            descs.push((addr, bytes.len() as u32, false));
        }
        self.tx.add_chain(&descs)
    }

    /// `(head, len, bytes)` of every receive chain the device returned
    /// since the last call; `bytes` is what the device wrote, read back
    /// across the chain's descriptors.
    pub fn take_rx(&mut self) -> Vec<(u16, u32, Vec<u8>)> {
        self.rx
            .take_used()
            .into_iter()
            .map(|(head, len)| {
                let descs = &self
                    .rx_chains
                    .iter()
                    .rev()
                    .find(|(h, _)| *h == head)
                    .expect("used chain was posted")
                    .1;
                let mut bytes = Vec::new();
                for &(addr, size) in descs {
                    let mut part = vec![0u8; size as usize];
                    self.mem.read_slice(&mut part, addr).unwrap();
                    bytes.extend(part);
                }
                bytes.truncate(len as usize);
                (head, len, bytes)
            })
            .collect()
    }
}

/// Every feature the device offers, as the test driver acks them.
pub const ALL_FEATURES: u64 = 1 << 32 | 1 << 3 | 1 << 5 | 1 << 16;

/// A device on a socket pair, activated with `guest`'s queues.
pub fn activated_device(guest: &GuestNet<'_>, mem: &GuestMemoryMmap) -> (NetDevice, UnixStream) {
    let (backend, peer) = backend_pair();
    let mut device = NetDevice::with_backend(backend, DEFAULT_MAC, DEFAULT_MTU);
    device.ack_features(ALL_FEATURES);
    device.activate(mem.clone(), guest.device_queues()).unwrap();
    (device, peer)
}

/// Writes `bytes` as the peer.
pub fn peer_sends(peer: &mut UnixStream, bytes: &[u8]) {
    peer.write_all(bytes).unwrap();
}
