//! A guest driver for tests: sets up the three vsock queues in guest memory
//! with `virtio_queue::mock::MockSplitQueue`, sends packets on the transmit
//! queue, offers receive and event buffers and reads back what the device
//! put in them — what Linux's `vmw_vsock_virtio_transport` does, by hand.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::defs::{
    EVQ_INDEX, NUM_QUEUES, OP_REQUEST, OP_RESPONSE, RXQ_INDEX, TXQ_INDEX, TYPE_STREAM,
    VSOCK_HOST_CID,
};
use super::device::{VsockDevice, VsockEvent};
use super::packet::{Packet, VsockHeader, HEADER_SIZE};
use crate::devices::virtio::mmio::test_driver::GuestQueue;
use crate::devices::virtio::VirtioDevice;

/// Queue size the driver sets up.
pub const QUEUE_SIZE: u16 = 256;
/// The guest's CID in tests.
pub const GUEST_CID: u64 = 3;
/// Bytes of guest memory tests get.
const MEM_SIZE: u64 = 0x200_0000;
/// Where buffers start; below are the rings.
const BUFFERS_START: u64 = 0x10_0000;

/// Guest memory for a test.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Guest memory backed by a file, so another process (or a vhost-user
/// backend) can map it, as QEMU's `memory-backend-memfd,share=on` does.
pub fn shared_test_memory() -> GuestMemoryMmap {
    let file = tempfile::tempfile().unwrap();
    file.set_len(MEM_SIZE).unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM_SIZE as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// Waits up to `timeout_ms` for `fd` to become readable.
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .unwrap();
    let mut events = [EpollEvent::default(); 1];
    epoll.wait(timeout_ms, &mut events).unwrap() > 0
}

/// A header from the guest's side of a connection, with default credit.
pub fn guest_header(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: VSOCK_HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

/// The driver side of the three queues.
pub struct GuestDriver<'m> {
    mem: &'m GuestMemoryMmap,
    queues: Vec<GuestQueue<'m>>,
    /// Receive chains by head index: header address, data address.
    rx_buffers: HashMap<u16, (GuestAddress, GuestAddress)>,
    /// Event chains by head index: buffer address.
    event_buffers: HashMap<u16, GuestAddress>,
    next_addr: u64,
}

impl<'m> GuestDriver<'m> {
    /// Lays out the queues at the bottom of `mem`.
    pub fn new(mem: &'m GuestMemoryMmap) -> Self {
        let queues = (0..NUM_QUEUES as u64)
            .map(|i| GuestQueue::new(mem, GuestAddress(i * 0x1_0000), QUEUE_SIZE))
            .collect();
        Self {
            mem,
            queues,
            rx_buffers: HashMap::new(),
            event_buffers: HashMap::new(),
            next_addr: BUFFERS_START,
        }
    }

    /// Device-side `Queue`s configured as this driver set them up.
    pub fn device_queues(&self) -> Vec<Queue> {
        self.queues.iter().map(GuestQueue::device_queue).collect()
    }

    /// The queues, for a driver that sets them up through a transport.
    pub fn guest_queues(&self) -> Vec<&GuestQueue<'m>> {
        self.queues.iter().collect()
    }

    /// Guest addresses of `queue`'s descriptor table, available ring and
    /// used ring, for front ends that hand rings over themselves.
    pub fn ring_addresses(&self, queue: usize) -> (GuestAddress, GuestAddress, GuestAddress) {
        self.queues[queue].ring_addresses()
    }

    fn alloc(&mut self, len: u64) -> GuestAddress {
        let len = len.max(1).next_multiple_of(16);
        if self.next_addr + len > MEM_SIZE {
            self.next_addr = BUFFERS_START;
        }
        let addr = self.next_addr;
        self.next_addr += len;
        GuestAddress(addr)
    }

    /// Puts a chain on `queue`'s available ring. Each descriptor is
    /// `(addr, len, writable)`; returns the head index.
    pub fn add_chain(&mut self, queue: usize, descs: &[(GuestAddress, u32, bool)]) -> u16 {
        self.queues[queue].add_chain(descs)
    }

    /// Queues a packet for the device, header and payload in separate
    /// descriptors as Linux before 6.2 does. `header.len` is set from `data`.
    pub fn send(&mut self, mut header: VsockHeader, data: &[u8]) {
        header.len = data.len() as u32;
        let hdr_addr = self.alloc(HEADER_SIZE as u64);
        self.mem
            .write_slice(&header.to_le_bytes(), hdr_addr)
            .unwrap();
        let mut descs = vec![(hdr_addr, HEADER_SIZE as u32, false)];
        if !data.is_empty() {
            let data_addr = self.alloc(data.len() as u64);
            self.mem.write_slice(data, data_addr).unwrap();
            descs.push((data_addr, data.len() as u32, false));
        }
        self.add_chain(TXQ_INDEX, &descs);
    }

    /// Queues raw bytes as a one-descriptor transmit chain.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let addr = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, addr).unwrap();
        self.add_chain(TXQ_INDEX, &[(addr, bytes.len() as u32, false)]);
    }

    /// Offers `count` receive buffers of `data_len` payload bytes each.
    pub fn offer_rx(&mut self, count: usize, data_len: u32) {
        for _ in 0..count {
            let hdr_addr = self.alloc(HEADER_SIZE as u64);
            let data_addr = self.alloc(u64::from(data_len));
            let head = self.add_chain(
                RXQ_INDEX,
                &[
                    (hdr_addr, HEADER_SIZE as u32, true),
                    (data_addr, data_len, true),
                ],
            );
            self.rx_buffers.insert(head, (hdr_addr, data_addr));
        }
    }

    /// Offers one event buffer.
    pub fn offer_event(&mut self) {
        let addr = self.alloc(4);
        let head = self.add_chain(EVQ_INDEX, &[(addr, 4, true)]);
        self.event_buffers.insert(head, addr);
    }

    fn take_used(&mut self, queue: usize) -> Vec<(u16, u32)> {
        self.queues[queue].take_used()
    }

    /// Packets the device wrote into receive buffers since the last call.
    pub fn take_rx(&mut self) -> Vec<Packet> {
        self.take_used(RXQ_INDEX)
            .into_iter()
            .map(|(head, len)| {
                let (hdr_addr, data_addr) = self.rx_buffers.remove(&head).unwrap();
                let mut raw = [0u8; HEADER_SIZE];
                self.mem.read_slice(&mut raw, hdr_addr).unwrap();
                let header = VsockHeader::from_le_bytes(&raw);
                assert_eq!(len as usize, HEADER_SIZE + header.len as usize);
                let mut data = vec![0u8; header.len as usize];
                self.mem.read_slice(&mut data, data_addr).unwrap();
                Packet { header, data }
            })
            .collect()
    }

    /// How many transmit chains the device returned since the last call.
    pub fn take_tx_used(&mut self) -> usize {
        self.take_used(TXQ_INDEX).len()
    }

    /// Event IDs the device wrote since the last call.
    pub fn take_events(&mut self) -> Vec<u32> {
        self.take_used(EVQ_INDEX)
            .into_iter()
            .map(|(head, len)| {
                assert_eq!(len, 4);
                let addr = self.event_buffers.remove(&head).unwrap();
                u32::from_le(self.mem.read_obj::<u32>(addr).unwrap())
            })
            .collect()
    }
}

/// Host port the guest connects to in scenarios.
pub const HOST_PORT: u32 = 1024;
/// Guest port the guest connects from in scenarios.
pub const GUEST_PORT: u32 = 49152;

/// A device with `buf_alloc` bytes of buffer per connection, activated on
/// the driver's queues, hybrid socket at `<dir>/vsock`.
pub fn activated_device(
    mem: &GuestMemoryMmap,
    guest: &GuestDriver<'_>,
    dir: &Path,
    buf_alloc: u32,
) -> VsockDevice {
    let mut device =
        VsockDevice::with_buffer_size(GUEST_CID, &dir.join("vsock"), buf_alloc).unwrap();
    device.activate(mem.clone(), guest.device_queues()).unwrap();
    device
}

/// Runs the device for a guest notification of `event`.
pub fn notify(device: &mut VsockDevice, event: VsockEvent) {
    device.handle_event(event).unwrap();
}

/// Waits (up to 2 s) for host sockets to report something and lets the
/// device handle it.
pub fn run_host_events(device: &mut VsockDevice) {
    assert!(
        wait_readable(device.as_raw_fd(), 2000),
        "no host socket event within 2 s"
    );
    device.handle_event(VsockEvent::Backend).unwrap();
}

/// Reads exactly `len` bytes from a host socket, failing after 2 s.
pub fn read_host(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Whether the host socket is at EOF (read returns 0 within 2 s).
pub fn host_sees_eof(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0))
}

/// The guest connects from [`GUEST_PORT`] to a host service listening on
/// `P_<HOST_PORT>`; returns the service's end once the guest got RESPONSE.
pub fn guest_connects(
    device: &mut VsockDevice,
    guest: &mut GuestDriver<'_>,
    dir: &Path,
) -> UnixStream {
    let service = UnixListener::bind(dir.join(format!("vsock_{HOST_PORT}"))).unwrap();
    guest.offer_rx(1, 4096);
    guest.send(guest_header(OP_REQUEST, GUEST_PORT, HOST_PORT), &[]);
    notify(device, VsockEvent::TxQueue);
    let reply = guest.take_rx();
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].header.op, OP_RESPONSE);
    service.accept().unwrap().0
}

/// A host client connects with `CONNECT <GUEST_PORT>`, the guest accepts;
/// returns the client after it read `OK <port>`, and that local port.
pub fn host_connects(
    device: &mut VsockDevice,
    guest: &mut GuestDriver<'_>,
    dir: &Path,
) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(dir.join("vsock")).unwrap();
    client
        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .unwrap();
    guest.offer_rx(1, 4096);
    run_host_events(device);
    let request = guest.take_rx();
    assert_eq!(request.len(), 1);
    assert_eq!(request[0].header.op, OP_REQUEST);
    let local_port = request[0].header.src_port;
    guest.send(guest_header(OP_RESPONSE, GUEST_PORT, local_port), &[]);
    notify(device, VsockEvent::TxQueue);
    let ok = read_host(&mut client, format!("OK {local_port}\n").len());
    assert_eq!(ok, format!("OK {local_port}\n").into_bytes());
    (client, local_port)
}
