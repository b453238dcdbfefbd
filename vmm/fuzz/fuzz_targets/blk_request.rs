//! Plays a hostile guest against the virtio-blk device: fuzzed request
//! headers (known and unknown types, any sector), data, range lists and
//! descriptor layouts go on the request queue, and the device runs them
//! against a small sparse disk image. Nothing may panic, and every request
//! the parser accepts must lie inside the disk.
//!
//! Each step builds one chain: a header, up to three data or range-list
//! descriptors with fuzzed lengths and directions, and a status descriptor
//! (sometimes missing, sometimes shared with the data).

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::block::{parse_request, BlockConfig, BlockDevice, Operation, Segment};
use vmm::devices::virtio::{EventDrivenDevice, VirtioDevice};
use vmm_fuzz::{push_chain, sparse_disk};

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const BUFFERS: u64 = 0x1_0000;
const DISK_SIZE: u64 = 1 << 20;
const KNOWN_TYPES: [u32; 7] = [0, 1, 4, 8, 11, 13, 0xffff_ffff];

/// One chain: `(addr, len, writable)` per descriptor, contents written.
fn build_chain(mem: &GuestMemoryMmap, u: &mut Unstructured<'_>) -> Result<Vec<Segment>> {
    let mut next_addr = BUFFERS;
    let mut place = |len: u32| {
        let addr = next_addr;
        next_addr += u64::from(len).next_multiple_of(16).max(16);
        GuestAddress(addr)
    };
    let request_type = if u.arbitrary()? {
        *u.choose(&KNOWN_TYPES)?
    } else {
        u.arbitrary()?
    };
    let sector: u64 = if u.arbitrary()? {
        u.int_in_range(0..=DISK_SIZE / 512 + 4)?
    } else {
        u.arbitrary()?
    };
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&request_type.to_le_bytes());
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    let header_len = if u.ratio(1, 8)? {
        u.int_in_range(0..=32u32)?
    } else {
        16
    };
    let header_addr = place(header_len.max(16));
    mem.write_slice(&header, header_addr).unwrap();
    let mut segments = vec![Segment {
        addr: header_addr,
        len: header_len,
        writable: false,
    }];
    for _ in 0..u.int_in_range(0..=3u8)? {
        let len = if u.arbitrary()? {
            u32::from(u.int_in_range(0..=16u8)?) * 512
        } else {
            u.int_in_range(0..=0x4000u32)?
        };
        let addr = if u.ratio(1, 16)? {
            GuestAddress(u.arbitrary()?)
        } else {
            place(len)
        };
        // Range lists and write data come from the input.
        let fill = u.bytes((len as usize).min(u.len()).min(64))?;
        let _ = mem.write_slice(fill, addr);
        segments.push(Segment {
            addr,
            len,
            writable: u.arbitrary()?,
        });
    }
    if !u.ratio(1, 16)? {
        segments.push(Segment {
            addr: place(1),
            len: u.int_in_range(1..=2u32)?,
            writable: !u.ratio(1, 16)?,
        });
    }
    Ok(segments)
}

fn step(
    mem: &GuestMemoryMmap,
    device: &mut BlockDevice,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    next_desc: &mut u16,
    u: &mut Unstructured<'_>,
) -> Result<()> {
    let segments = build_chain(mem, u)?;
    // The parser alone: whatever it accepts fits the disk.
    let capacity = device.capacity_sectors();
    if let Ok(request) = parse_request(mem, &segments, &device.limits()) {
        match request.operation {
            Ok(Operation::Read { sector, buffers } | Operation::Write { sector, buffers }) => {
                let len: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
                assert_eq!(len % 512, 0);
                assert!(
                    sector + len / 512 <= capacity,
                    "{sector}+{len} past {capacity}"
                );
            }
            Ok(Operation::Discard(ranges) | Operation::WriteZeroes { ranges, .. }) => {
                for range in ranges {
                    assert!(range.sector + u64::from(range.num_sectors) <= capacity);
                }
            }
            _ => {}
        }
    }
    // The device: the same chain through the queue.
    let last = segments.len() - 1;
    let descs: Vec<_> = segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            let write = if segment.writable { 2 } else { 0 };
            let next = if i < last { 1 } else { 0 };
            (
                segment.addr.0,
                segment.len,
                write | next,
                *next_desc + i as u16 + 1,
            )
        })
        .collect();
    push_chain(mock, QUEUE_SIZE, next_desc, &descs);
    let _ = device.process_queue(0);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut u = Unstructured::new(data);
    let read_only = u.ratio(1, 8).unwrap_or(false);
    let config = BlockConfig {
        read_only,
        ..BlockConfig::new(sparse_disk())
    };
    let mut device = BlockDevice::new(config).unwrap();
    device.ack_features(device.avail_features());
    // Twice the size: the mock's used ring overlaps the upper half of its
    // available ring.
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), 2 * QUEUE_SIZE);
    let mut queue: Queue = mock.create_queue().unwrap();
    queue.set_size(QUEUE_SIZE);
    device.activate(mem.clone(), vec![queue]).unwrap();
    let mut next_desc = 0u16;
    while !u.is_empty() {
        if step(&mem, &mut device, &mock, &mut next_desc, &mut u).is_err() {
            break;
        }
    }
});
