//! Vsock packets between the virtqueues and the muxer.
//!
//! Parsing and building go through `virtio_vsock::packet::VsockPacket`, which
//! checks the descriptor chain against the header (`len` within the buffers,
//! buffer directions, one header per chain). On top of that this module
//! checks what the crate leaves to the device: the socket type, the
//! operation and the CIDs. Everything here treats guest memory as hostile:
//! any mismatch is an error value, never a panic.
//!
//! The muxer works on owned [`Packet`]s so that it needs no guest memory and
//! its state machine can be tested, and fuzzed, on plain values.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemoryMmap, VolatileMemoryError};

use super::defs::{
    MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, TYPE_STREAM, VSOCK_HOST_CID,
};

/// Size in bytes of a packet header on the wire (`struct virtio_vsock_hdr`).
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;

/// Why a packet could not be read from, or written to, a descriptor chain, or
/// why a header read from the guest is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The chain does not hold a packet the way the spec lays it out.
    #[error("the descriptor chain does not hold a well-formed vsock packet")]
    Chain(#[source] virtio_vsock::packet::Error),
    /// Copying the payload out of guest memory failed.
    #[error("cannot read the packet payload from guest memory")]
    ReadPayload(#[source] VolatileMemoryError),
    /// Copying the payload into guest memory failed.
    #[error("cannot write the packet payload to guest memory")]
    WritePayload(#[source] VolatileMemoryError),
    /// The receive buffer is smaller than the packet's payload.
    #[error("a {len}-byte payload does not fit a {capacity}-byte receive buffer")]
    PayloadTooLarge {
        /// Payload length of the packet.
        len: usize,
        /// Data capacity of the buffer.
        capacity: usize,
    },
    /// The header names a socket type other than stream.
    #[error("socket type {0} is not supported")]
    UnsupportedType(u16),
    /// The header names an operation the spec does not define.
    #[error("operation {0} is not a vsock operation")]
    UnknownOp(u16),
    /// The header claims to come from another CID than the guest's.
    #[error("source CID {0} is not the guest's")]
    ForeignSource(u64),
    /// The header is addressed to another CID than the host.
    #[error("destination CID {0} is not the host")]
    ForeignDestination(u64),
}

/// A vsock packet header (`struct virtio_vsock_hdr`) in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Socket type (`TYPE_*`).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (the `SHUTDOWN_*` bits for `OP_SHUTDOWN`).
    pub flags: u32,
    /// Receive buffer size of the sender, for credit.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, for credit.
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Encodes the header as it sits in guest memory (little endian).
    pub fn to_le_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.type_.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// Decodes a header laid out as in guest memory (little endian).
    pub fn from_le_bytes(raw: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&raw[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let u16_at = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Checks the parts of a guest header that the device relies on and that
    /// `VsockPacket` does not check: addressing, type and operation.
    pub fn check_from_guest(&self, guest_cid: u64) -> Result<(), PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::ForeignSource(self.src_cid));
        }
        if self.dst_cid != VSOCK_HOST_CID {
            return Err(PacketError::ForeignDestination(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::UnsupportedType(self.type_));
        }
        match self.op {
            OP_REQUEST | OP_RESPONSE | OP_RST | OP_SHUTDOWN | OP_RW | OP_CREDIT_UPDATE
            | OP_CREDIT_REQUEST => Ok(()),
            other => Err(PacketError::UnknownOp(other)),
        }
    }

    fn from_vsock_packet(pkt: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }
}

/// A packet with its payload copied out of (or not yet into) guest memory.
///
/// For packets the device builds, `header.len` is ignored: the payload's
/// length is what goes on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// The header.
    pub header: VsockHeader,
    /// The payload; empty for everything but `OP_RW`.
    pub data: Vec<u8>,
}

/// Reads one packet from a transmit-queue descriptor chain.
///
/// The payload is copied so the chain can go back to the guest at once; the
/// guest may reuse that memory as soon as it sees the chain used.
pub fn read_tx_packet(
    mem: &GuestMemoryMmap,
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
) -> Result<Packet, PacketError> {
    let pkt = VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_PAYLOAD)
        .map_err(PacketError::Chain)?;
    let header = VsockHeader::from_vsock_packet(&pkt);
    let data = match pkt.data_slice() {
        // `from_tx_virtq_chain` sizes the slice to exactly `len` bytes.
        Some(slice) => {
            let mut data = vec![0u8; slice.len()];
            slice
                .read_slice(&mut data, 0)
                .map_err(PacketError::ReadPayload)?;
            data
        }
        None => Vec::new(),
    };
    Ok(Packet { header, data })
}

/// A receive-queue buffer the guest offered, ready to take one packet.
pub struct RxBuffer<'a> {
    pkt: VsockPacket<'a, ()>,
}

impl<'a> RxBuffer<'a> {
    /// Maps the buffers of a receive-queue descriptor chain.
    pub fn from_chain(
        mem: &'a GuestMemoryMmap,
        chain: &mut DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let pkt = VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_PAYLOAD)
            .map_err(PacketError::Chain)?;
        Ok(Self { pkt })
    }

    /// How many payload bytes fit after the header.
    pub fn capacity(&self) -> usize {
        self.pkt.data_slice().map_or(0, |slice| slice.len())
    }

    /// Writes `packet` into the buffer and returns how many bytes of the chain
    /// were written, the length the used ring reports.
    pub fn write(mut self, packet: &Packet) -> Result<u32, PacketError> {
        let len = packet.data.len();
        if len > self.capacity() {
            return Err(PacketError::PayloadTooLarge {
                len,
                capacity: self.capacity(),
            });
        }
        if let Some(slice) = self.pkt.data_slice() {
            slice
                .write_slice(&packet.data, 0)
                .map_err(PacketError::WritePayload)?;
        }
        let mut header = packet.header;
        // Checked above against a capacity that `from_rx_virtq_chain` bounds
        // by MAX_PKT_PAYLOAD, so this cannot truncate.
        header.len = len as u32;
        self.pkt
            .set_header_from_raw(&header.to_le_bytes())
            .map_err(PacketError::Chain)?;
        Ok((HEADER_SIZE + len) as u32)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::virtio::vsock::defs::{OP_RW, TYPE_SEQPACKET};

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const GUEST_CID: u64 = 3;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn rw_header(len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: GUEST_CID,
            dst_cid: VSOCK_HOST_CID,
            src_port: 5000,
            dst_port: 1024,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    fn tx_chain_read(
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
    ) -> Result<Packet, PacketError> {
        let vq = MockSplitQueue::new(mem, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        vq.add_desc_chains(descs, 0).unwrap();
        let mut chain = queue.pop_descriptor_chain(mem).unwrap();
        read_tx_packet(mem, &mut chain)
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    #[test]
    fn header_round_trips_through_bytes() {
        let header = rw_header(12);

        let decoded = VsockHeader::from_le_bytes(&header.to_le_bytes());

        assert_eq!(decoded, header);
    }

    #[test]
    fn tx_packet_with_separate_data_descriptor_is_read_whole() {
        let mem = memory();
        mem.write_slice(&rw_header(5).to_le_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x11_0000)).unwrap();

        let pkt = tx_chain_read(
            &mem,
            &[
                desc(0x10_0000, HEADER_SIZE as u32, 1, 1),
                desc(0x11_0000, 5, 0, 0),
            ],
        )
        .unwrap();

        assert_eq!(pkt.header, rw_header(5));
        assert_eq!(pkt.data, b"hello");
    }

    #[test]
    fn tx_packet_with_header_and_data_in_one_descriptor_is_read_whole() {
        let mem = memory();
        mem.write_slice(&rw_header(3).to_le_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(b"abc", GuestAddress(0x10_0000 + HEADER_SIZE as u64))
            .unwrap();

        let pkt = tx_chain_read(&mem, &[desc(0x10_0000, HEADER_SIZE as u32 + 3, 0, 0)]).unwrap();

        assert_eq!(pkt.data, b"abc");
    }

    #[test]
    fn tx_packet_longer_than_its_buffer_is_rejected() {
        let mem = memory();
        mem.write_slice(&rw_header(100).to_le_bytes(), GuestAddress(0x10_0000))
            .unwrap();

        let err = tx_chain_read(
            &mem,
            &[
                desc(0x10_0000, HEADER_SIZE as u32, 1, 1),
                desc(0x11_0000, 10, 0, 0),
            ],
        )
        .unwrap_err();

        assert!(matches!(err, PacketError::Chain(_)), "{err:?}");
    }

    #[test]
    fn tx_packet_beyond_the_payload_limit_is_rejected() {
        let mem = memory();
        mem.write_slice(
            &rw_header(MAX_PKT_PAYLOAD + 1).to_le_bytes(),
            GuestAddress(0x10_0000),
        )
        .unwrap();

        let err = tx_chain_read(
            &mem,
            &[
                desc(0x10_0000, HEADER_SIZE as u32, 1, 1),
                desc(0x11_0000, MAX_PKT_PAYLOAD + 1, 0, 0),
            ],
        )
        .unwrap_err();

        assert!(matches!(err, PacketError::Chain(_)), "{err:?}");
    }

    #[test]
    fn tx_header_outside_guest_memory_is_rejected() {
        let mem = memory();

        let err = tx_chain_read(&mem, &[desc(0x40_0000, HEADER_SIZE as u32, 0, 0)]).unwrap_err();

        assert!(matches!(err, PacketError::Chain(_)), "{err:?}");
    }

    #[test]
    fn tx_header_in_writable_descriptor_is_rejected() {
        let mem = memory();

        let err =
            tx_chain_read(&mem, &[desc(0x10_0000, HEADER_SIZE as u32, WRITE, 0)]).unwrap_err();

        assert!(matches!(err, PacketError::Chain(_)), "{err:?}");
    }

    #[test]
    fn guest_header_of_seqpacket_type_is_refused() {
        let mut header = rw_header(0);
        header.type_ = TYPE_SEQPACKET;

        let result = header.check_from_guest(GUEST_CID);

        assert!(matches!(result, Err(PacketError::UnsupportedType(2))));
    }

    #[test]
    fn guest_header_with_unknown_op_is_refused() {
        let mut header = rw_header(0);
        header.op = 42;

        let result = header.check_from_guest(GUEST_CID);

        assert!(matches!(result, Err(PacketError::UnknownOp(42))));
    }

    #[test]
    fn guest_header_with_spoofed_source_cid_is_refused() {
        let header = rw_header(0);

        let result = header.check_from_guest(GUEST_CID + 1);

        assert!(matches!(result, Err(PacketError::ForeignSource(3))));
    }

    #[test]
    fn guest_header_to_another_cid_is_refused() {
        let mut header = rw_header(0);
        header.dst_cid = 7;

        let result = header.check_from_guest(GUEST_CID);

        assert!(matches!(result, Err(PacketError::ForeignDestination(7))));
    }

    #[test]
    fn rx_buffer_takes_header_and_payload() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        vq.add_desc_chains(
            &[
                desc(0x10_0000, HEADER_SIZE as u32, WRITE | 1, 1),
                desc(0x11_0000, 64, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut chain = queue.pop_descriptor_chain(&mem).unwrap();
        let buffer = RxBuffer::from_chain(&mem, &mut chain).unwrap();
        let packet = Packet {
            header: rw_header(999),
            data: b"payload".to_vec(),
        };

        let used = buffer.write(&packet).unwrap();

        let mut raw = [0u8; HEADER_SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
        let mut data = [0u8; 7];
        mem.read_slice(&mut data, GuestAddress(0x11_0000)).unwrap();
        assert_eq!(used, HEADER_SIZE as u32 + 7);
        assert_eq!(VsockHeader::from_le_bytes(&raw), rw_header(7));
        assert_eq!(&data, b"payload");
    }

    #[test]
    fn rx_buffer_refuses_payload_larger_than_itself() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        vq.add_desc_chains(
            &[
                desc(0x10_0000, HEADER_SIZE as u32, WRITE | 1, 1),
                desc(0x11_0000, 4, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut chain = queue.pop_descriptor_chain(&mem).unwrap();
        let buffer = RxBuffer::from_chain(&mem, &mut chain).unwrap();
        let packet = Packet {
            header: rw_header(0),
            data: vec![1; 5],
        };

        let result = buffer.write(&packet);

        assert!(matches!(
            result,
            Err(PacketError::PayloadTooLarge {
                len: 5,
                capacity: 4
            })
        ));
    }
}
