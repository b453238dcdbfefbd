//! Plays a hostile guest and a hostile network backend against the
//! virtio-net device: arbitrary descriptor chains on both queues,
//! well-formed receive and transmit buffers, arbitrary bytes (broken
//! length prefixes included) from the backend's end of the socket, the
//! backend draining or going away, and device resets, in any order. The
//! device must never panic, and the backend socket's epoll fd must not be
//! left ready with nothing to do (which would spin the event loop).

#![no_main]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::net::defs::{DEFAULT_MAC, DEFAULT_MTU, NET_HDR_SIZE};
use vmm::devices::virtio::net::{NetDevice, StreamBackend};
use vmm::devices::virtio::VirtioDevice;
use vmm_fuzz::push_chain;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const BUFFERS: u64 = 0x1_0000;
const RXQ: usize = 0;
const TXQ: usize = 1;

struct Guest<'m> {
    mem: &'m GuestMemoryMmap,
    // Twice the queue size: the mock's used ring overlaps the upper half
    // of its available ring.
    queues: Vec<MockSplitQueue<'m, GuestMemoryMmap>>,
    next_desc: [u16; 2],
    next_addr: u64,
}

impl Guest<'_> {
    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.clamp(16, 0x1_0000).next_multiple_of(16);
        if self.next_addr + len > MEM_SIZE {
            self.next_addr = BUFFERS;
        }
        let addr = self.next_addr;
        self.next_addr += len;
        addr
    }

    fn push(&mut self, queue: usize, descs: &[(u64, u32, u16, u16)]) {
        push_chain(
            &self.queues[queue],
            QUEUE_SIZE,
            &mut self.next_desc[queue],
            descs,
        );
    }

    fn device_queues(&self) -> Vec<Queue> {
        self.queues
            .iter()
            .map(|mock| {
                let mut queue: Queue = mock.create_queue().unwrap();
                queue.set_size(QUEUE_SIZE);
                queue
            })
            .collect()
    }

    /// A chain of up to 4 descriptors as a hostile guest writes them.
    fn hostile_chain(&mut self, u: &mut Unstructured<'_>, queue: usize) -> Result<()> {
        let count = u.int_in_range(1..=4usize)?;
        let mut descs = Vec::new();
        for _ in 0..count {
            let addr = u.int_in_range(0..=MEM_SIZE + 0x1000)?;
            let len = u.int_in_range(0..=0x2_0000u32)?;
            descs.push((addr, len, u.int_in_range(0..=7u16)?, u.arbitrary()?));
        }
        self.push(queue, &descs);
        Ok(())
    }

    /// A receive chain of well-formed writable descriptors.
    fn rx_buffers(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let count = u.int_in_range(1..=4u16)?;
        let first = self.next_desc[RXQ];
        let mut descs = Vec::new();
        for i in 0..count {
            let len = u.int_in_range(1..=0x4000u32)?;
            let addr = self.alloc(len.into());
            let next = (first + i + 1) % QUEUE_SIZE;
            let flags = if i + 1 < count { 1 | 2 } else { 2 };
            descs.push((addr, len, flags, next));
        }
        self.push(RXQ, &descs);
        Ok(())
    }

    /// A transmit chain: a header and a frame of fuzzed bytes.
    fn tx_frame(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let len = u.int_in_range(0..=0x800usize)?;
        let frame = u.bytes(len.min(u.len()))?;
        let addr = self.alloc((NET_HDR_SIZE + frame.len()) as u64);
        self.mem
            .write_slice(&[0; NET_HDR_SIZE], GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(addr + NET_HDR_SIZE as u64))
            .unwrap();
        let total = (NET_HDR_SIZE + frame.len()) as u32;
        self.push(TXQ, &[(addr, total, 0, 0)]);
        Ok(())
    }
}

/// Whether `fd` is readable right now.
fn is_ready(fd: i32) -> bool {
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .unwrap();
    epoll.wait(0, &mut [EpollEvent::default(); 1]).unwrap() > 0
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut guest = Guest {
        mem: &mem,
        queues: (0..2u64)
            .map(|i| MockSplitQueue::create(&mem, GuestAddress(i * 0x1000), 2 * QUEUE_SIZE))
            .collect(),
        next_desc: [0; 2],
        next_addr: BUFFERS,
    };
    let (ours, peer) = UnixStream::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut peer = Some(peer);
    let mut device =
        NetDevice::with_backend(StreamBackend::new(ours).unwrap(), DEFAULT_MAC, DEFAULT_MTU);
    device.ack_features(device.avail_features());
    device.activate(mem.clone(), guest.device_queues()).unwrap();

    while !u.is_empty() {
        // Errors are fine (a broken ring is the guest's problem); panics
        // are not.
        let _ = match u.int_in_range(0..=6u8)? {
            0 => {
                let len = u.int_in_range(0..=0x1000usize)?;
                let bytes = u.bytes(len.min(u.len()))?;
                if let Some(peer) = peer.as_mut() {
                    let _ = peer.write(bytes);
                }
                device.process_backend()
            }
            1 => {
                guest.hostile_chain(u, RXQ)?;
                device.process_rx()
            }
            2 => {
                guest.rx_buffers(u)?;
                device.process_rx()
            }
            3 => {
                guest.hostile_chain(u, TXQ)?;
                device.process_tx()
            }
            4 => {
                guest.tx_frame(u)?;
                device.process_tx()
            }
            5 => {
                if let Some(peer) = peer.as_mut() {
                    let mut sink = [0u8; 0x1_0000];
                    while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
                }
                if u.arbitrary()? {
                    peer = None;
                }
                device.process_backend()
            }
            _ => {
                device.reset();
                device.ack_features(device.avail_features());
                guest.next_desc = [0; 2];
                guest.queues = (0..2u64)
                    .map(|i| MockSplitQueue::create(&mem, GuestAddress(i * 0x1000), 2 * QUEUE_SIZE))
                    .collect();
                device
                    .activate(mem.clone(), guest.device_queues())
                    .map(|()| false)
            }
        };
        // Whatever the socket is ready for now must be consumed by one
        // round; readiness that survives it would spin the event loop.
        let fd = device.backend().as_raw_fd();
        if is_ready(fd) {
            let _ = device.process_backend();
            let _ = device.process_backend();
            assert!(
                !is_ready(fd) || device.backend().pending_tx() > 0,
                "the backend stays ready with nothing to do"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
