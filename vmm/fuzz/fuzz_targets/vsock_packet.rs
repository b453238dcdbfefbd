//! Plays a hostile guest (and a hostile host client) against the vsock
//! device: arbitrary bytes become descriptor chains, packet headers and
//! payloads on the mock virtqueues, and arbitrary host bytes arrive on the
//! hybrid-vsock socket. The device must never panic, whatever the order.
//!
//! The input is a little program; each step starts with an opcode byte:
//!
//! - 0: a packet on the transmit queue: 44 header bytes, then a payload
//!   length byte and the payload, split over one or two descriptors. One
//!   flag bit fixes the addressing so the packet reaches the muxer's state
//!   machine instead of bouncing off the CID check.
//! - 1: a raw chain of up to 4 descriptors with arbitrary addresses,
//!   lengths, flags and next indices on the receive or transmit queue.
//! - 2: a well-formed receive buffer.
//! - 3: a host client connects to the hybrid socket and writes bytes.
//! - 4: host sockets get a chance to run.

#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::vsock::{VsockDevice, VsockEvent};
use vmm::devices::virtio::VirtioDevice;
use vmm_fuzz::push_chain;

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const BUFFERS: u64 = 0x1_0000;
const HEADER_SIZE: usize = 44;
const GUEST_CID: u64 = 3;
const RXQ: usize = 0;
const TXQ: usize = 1;

struct Host {
    dir: tempfile::TempDir,
    /// A host service on port 1024, so guest connections can be accepted.
    service: UnixListener,
}

static HOST: OnceLock<Host> = OnceLock::new();

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
}

struct Guest<'m> {
    // Twice the queue size: the mock's used ring overlaps the upper half
    // of its available ring.
    queues: Vec<MockSplitQueue<'m, GuestMemoryMmap>>,
    next_desc: [u16; 3],
    next_addr: u64,
}

impl<'m> Guest<'m> {
    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.clamp(16, 0x1_0000).next_multiple_of(16);
        if self.next_addr + len > MEM_SIZE {
            self.next_addr = BUFFERS;
        }
        let addr = self.next_addr;
        self.next_addr += len;
        addr
    }

    /// Writes `descs` into the table from the next free index and makes the
    /// first one available; flags and `next` are the caller's, unchecked.
    fn push(&mut self, queue: usize, descs: &[(u64, u32, u16, u16)]) {
        push_chain(
            &self.queues[queue],
            QUEUE_SIZE,
            &mut self.next_desc[queue],
            descs,
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let host = HOST.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let service = UnixListener::bind(dir.path().join("vsock_1024")).unwrap();
        service.set_nonblocking(true).unwrap();
        Host { dir, service }
    });
    // Connections from earlier runs would fill the service's backlog.
    while host.service.accept().is_ok() {}

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut guest = Guest {
        queues: (0..3u64)
            .map(|i| MockSplitQueue::create(&mem, GuestAddress(i * 0x1000), 2 * QUEUE_SIZE))
            .collect(),
        next_desc: [0; 3],
        next_addr: BUFFERS,
    };
    let uds = host.dir.path().join("vsock");
    let mut device = VsockDevice::with_buffer_size(GUEST_CID, &uds, 4096).unwrap();
    let queues = guest
        .queues
        .iter()
        .map(|mock| {
            let mut queue: Queue = mock.create_queue().unwrap();
            queue.set_size(QUEUE_SIZE);
            queue
        })
        .collect();
    device.activate(mem.clone(), queues).unwrap();
    let mut clients = Vec::new();

    let mut input = Input(data);
    while let Some(op) = input.u8() {
        let event = match op % 5 {
            0 => {
                let Some(raw) = input.take(HEADER_SIZE) else {
                    break;
                };
                let mut header = raw.to_vec();
                if op & 0x80 != 0 {
                    header[0..8].copy_from_slice(&GUEST_CID.to_le_bytes());
                    header[8..16].copy_from_slice(&2u64.to_le_bytes());
                    header[20..24].copy_from_slice(&1024u32.to_le_bytes());
                    header[28..30].copy_from_slice(&1u16.to_le_bytes());
                    header[30] %= 8;
                    header[31] = 0;
                }
                let len = usize::from(input.u8().unwrap_or(0));
                let payload = input.take(len.min(input.0.len())).unwrap_or(&[]).to_vec();
                let hdr_addr = guest.alloc((HEADER_SIZE + payload.len()) as u64);
                mem.write_slice(&header, GuestAddress(hdr_addr)).unwrap();
                if op & 0x40 != 0 {
                    // Header and payload in one descriptor, as Linux 6.2+.
                    mem.write_slice(&payload, GuestAddress(hdr_addr + HEADER_SIZE as u64))
                        .unwrap();
                    let total = (HEADER_SIZE + payload.len()) as u32;
                    guest.push(TXQ, &[(hdr_addr, total, 0, 0)]);
                } else {
                    let data_addr = guest.alloc(payload.len() as u64);
                    mem.write_slice(&payload, GuestAddress(data_addr)).unwrap();
                    let next = guest.next_desc[TXQ] + 1;
                    guest.push(
                        TXQ,
                        &[
                            (hdr_addr, HEADER_SIZE as u32, 1, next),
                            (data_addr, payload.len() as u32, 0, 0),
                        ],
                    );
                }
                VsockEvent::TxQueue
            }
            1 => {
                let queue = if op & 0x80 != 0 { RXQ } else { TXQ };
                let count = usize::from(op >> 4 & 0x3) + 1;
                let mut descs = Vec::new();
                for _ in 0..count {
                    let (Some(addr), Some(len), Some(flags), Some(next)) =
                        (input.u32(), input.u32(), input.u16(), input.u16())
                    else {
                        break;
                    };
                    descs.push((u64::from(addr), len, flags & 0x7, next));
                }
                if descs.is_empty() {
                    break;
                }
                guest.push(queue, &descs);
                if queue == RXQ {
                    VsockEvent::RxQueue
                } else {
                    VsockEvent::TxQueue
                }
            }
            2 => {
                let hdr_addr = guest.alloc(HEADER_SIZE as u64);
                let data_addr = guest.alloc(4096);
                let next = guest.next_desc[RXQ] + 1;
                guest.push(
                    RXQ,
                    &[
                        (hdr_addr, HEADER_SIZE as u32, 1 | 2, next),
                        (data_addr, 4096, 2, 0),
                    ],
                );
                VsockEvent::RxQueue
            }
            3 => {
                let len = usize::from(input.u8().unwrap_or(0));
                let bytes = input.take(len.min(input.0.len())).unwrap_or(&[]);
                if let Ok(mut client) = UnixStream::connect(&uds) {
                    let _ = client.write_all(bytes);
                    clients.push(client);
                }
                VsockEvent::Backend
            }
            _ => VsockEvent::Backend,
        };
        // Errors are fine (a broken ring is the guest's problem); panics
        // are not.
        let _ = device.handle_event(event);
    }
});
