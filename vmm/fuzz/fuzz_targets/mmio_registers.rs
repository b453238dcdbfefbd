//! Plays a hostile guest against the virtio-mmio transport: arbitrary
//! register and configuration-space accesses of every width and alignment,
//! interleaved with the Linux initialisation sequence (rings at fuzzed
//! places), hostile descriptor chains and event-loop rounds, for the rng
//! and block devices. Nothing may panic, and the transport's invariants
//! (status bits only set through the rules, magic and version fixed) must
//! hold after every access.
//!
//! The input is a little program read with `arbitrary::Unstructured`; each
//! step picks an operation: a read, a write, a 4-byte write to a known
//! register, a Linux-style initialisation, a hostile chain on the request
//! queue, or an event-loop round.

#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::block::{BlockConfig, BlockDevice};
use vmm::devices::virtio::mmio::defs::*;
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::rng::RngDevice;
use vmm::devices::virtio::EventDrivenDevice;
use vmm_fuzz::{push_chain, sparse_disk};

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const QUEUE_BASE: u64 = 0x1000;

const REGISTERS: [u64; 22] = [
    REG_DEVICE_FEATURES_SEL,
    REG_DRIVER_FEATURES,
    REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_SEL,
    REG_QUEUE_NUM,
    REG_QUEUE_READY,
    REG_QUEUE_NOTIFY,
    REG_INTERRUPT_ACK,
    REG_STATUS,
    REG_QUEUE_DESC_LOW,
    REG_QUEUE_DESC_HIGH,
    REG_QUEUE_DRIVER_LOW,
    REG_QUEUE_DRIVER_HIGH,
    REG_QUEUE_DEVICE_LOW,
    REG_QUEUE_DEVICE_HIGH,
    REG_SHM_SEL,
    REG_MAGIC_VALUE,
    REG_VERSION,
    REG_DEVICE_ID,
    REG_CONFIG_GENERATION,
    REG_INTERRUPT_STATUS,
    CONFIG_SPACE_OFFSET,
];

fn read_u32<D: EventDrivenDevice>(transport: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    transport.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write_u32<D: EventDrivenDevice>(transport: &mut MmioTransport<D>, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

/// The driver's initialisation, with fuzzed features and ring placement.
fn linux_init<D: EventDrivenDevice>(
    transport: &mut MmioTransport<D>,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    u: &mut Unstructured<'_>,
) -> Result<()> {
    write_u32(transport, REG_STATUS, 0);
    write_u32(transport, REG_STATUS, STATUS_ACKNOWLEDGE);
    write_u32(transport, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // Mostly what Linux does: take a subset of the offered features plus
    // VERSION_1; sometimes anything at all.
    let mut offered = 0u64;
    for page in 0..2u32 {
        write_u32(transport, REG_DEVICE_FEATURES_SEL, page);
        offered |= u64::from(read_u32(transport, REG_DEVICE_FEATURES)) << (32 * page);
    }
    let mask: u64 = u.arbitrary()?;
    let features = if u.ratio(1, 4)? {
        mask
    } else {
        offered & (mask | 1 << VIRTIO_F_VERSION_1)
    };
    for page in 0..2u32 {
        write_u32(transport, REG_DRIVER_FEATURES_SEL, page);
        write_u32(
            transport,
            REG_DRIVER_FEATURES,
            (features >> (32 * page)) as u32,
        );
    }
    write_u32(transport, REG_STATUS, 0xb);
    let hostile_rings: bool = u.arbitrary()?;
    let rings = if hostile_rings {
        [u.arbitrary()?, u.arbitrary()?, u.arbitrary()?]
    } else {
        [
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
        ]
    };
    write_u32(transport, REG_QUEUE_SEL, 0);
    write_u32(transport, REG_QUEUE_NUM, u.arbitrary::<u8>()?.into());
    if !hostile_rings {
        write_u32(transport, REG_QUEUE_NUM, QUEUE_SIZE.into());
    }
    for (low, addr) in [
        REG_QUEUE_DESC_LOW,
        REG_QUEUE_DRIVER_LOW,
        REG_QUEUE_DEVICE_LOW,
    ]
    .into_iter()
    .zip(rings)
    {
        write_u32(transport, low, addr as u32);
        write_u32(transport, low + 4, (addr >> 32) as u32);
    }
    write_u32(transport, REG_QUEUE_READY, 1);
    write_u32(transport, REG_STATUS, 0xf);
    Ok(())
}

/// Puts up to four descriptors with fuzzed fields on the request queue.
fn hostile_chain(
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    next_desc: &mut u16,
    u: &mut Unstructured<'_>,
) -> Result<()> {
    let count = u.int_in_range(1..=4u16)?;
    let mut descs = Vec::new();
    for i in 0..count {
        let addr = u.int_in_range(0..=MEM_SIZE + 0x1000)?;
        let len = u.int_in_range(0..=0x2000u32)?;
        let flags = u.int_in_range(0..=7u16)?;
        let next = if u.arbitrary()? {
            *next_desc + i + 1
        } else {
            u.arbitrary()?
        };
        descs.push((addr, len, flags, next));
    }
    push_chain(mock, QUEUE_SIZE, next_desc, &descs);
    Ok(())
}

fn run<D: EventDrivenDevice + Send>(
    mem: &GuestMemoryMmap,
    device: D,
    u: &mut Unstructured<'_>,
) -> Result<()> {
    let mut transport = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(device))).unwrap();
    let mut handler = transport.event_handler().unwrap();
    // Twice the size: the mock's used ring overlaps the upper half of its
    // available ring.
    let mock = MockSplitQueue::create(mem, GuestAddress(QUEUE_BASE), 2 * QUEUE_SIZE);
    let mut next_desc = 0u16;
    while !u.is_empty() {
        let before = transport.status();
        let op = u.int_in_range(0..=5u8)?;
        match op {
            0 => {
                let offset = u.int_in_range(0..=0x1ffu64)?;
                let mut data = [0u8; 8];
                let len = [1, 2, 4, 8][u.int_in_range(0..=3usize)?];
                transport.read(offset, &mut data[..len]);
            }
            1 => {
                let offset = u.int_in_range(0..=0x1ffu64)?;
                let len = [1, 2, 4, 8][u.int_in_range(0..=3usize)?];
                let data = u.bytes(len)?;
                transport.write(offset, data);
            }
            2 => {
                let offset = *u.choose(&REGISTERS)?;
                let value = u.arbitrary()?;
                write_u32(&mut transport, offset, value);
            }
            3 => linux_init(&mut transport, &mock, u)?,
            4 => hostile_chain(&mock, &mut next_desc, u)?,
            _ => {
                for fd in handler.watched_fds() {
                    handler.handle_fd(fd);
                }
            }
        }
        let after = transport.status();
        // Only a reset clears bits (the initialisation starts with one),
        // and DRIVER_OK never comes without FEATURES_OK.
        let single_access = op != 3;
        assert!(
            !single_access || after == 0 || after & before == before,
            "{before:#x} -> {after:#x}"
        );
        assert!(after & STATUS_DRIVER_OK == 0 || after & STATUS_FEATURES_OK != 0);
        assert_eq!(read_u32(&mut transport, REG_MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(read_u32(&mut transport, REG_VERSION), MMIO_VERSION);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut u = Unstructured::new(data);
    let _ = match u.arbitrary::<bool>() {
        Ok(true) => {
            let device = BlockDevice::new(BlockConfig::new(sparse_disk())).unwrap();
            run(&mem, device, &mut u)
        }
        _ => run(&mem, RngDevice::new(), &mut u),
    };
});
