//! virtio-net constants, from the virtio 1.2 specification, section 5.1
//! ("Network Device"), as spelled in Linux's
//! `include/uapi/linux/virtio_net.h` and `virtio_ids.h`, plus the framing
//! of QEMU's `-netdev stream` (`net/stream.c`), which passt speaks on its
//! `--socket`.

/// `VIRTIO_ID_NET`.
pub const VIRTIO_ID_NET: u32 = 1;

/// Index of the receive queue (`receiveq1`): the device writes frames.
pub const RXQ_INDEX: usize = 0;
/// Index of the transmit queue (`transmitq1`): the guest's frames.
pub const TXQ_INDEX: usize = 1;
/// One queue pair and no control queue.
pub const NUM_QUEUES: usize = 2;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// `VIRTIO_NET_F_MTU`: the configuration space's `mtu` is the maximum MTU.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// `VIRTIO_NET_F_MAC`: the configuration space's `mac` is the address.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// `VIRTIO_NET_F_STATUS`: the configuration space's `status` is valid.
pub const VIRTIO_NET_F_STATUS: u32 = 16;

/// `VIRTIO_NET_S_LINK_UP` in the `status` field.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Size of `struct virtio_net_hdr_v1`, which precedes every frame on both
/// queues once `VIRTIO_F_VERSION_1` is negotiated (`num_buffers` included
/// even without `VIRTIO_NET_F_MRG_RXBUF`).
pub const NET_HDR_SIZE: usize = 12;
/// Offset of `num_buffers` (little endian) in the header: how many
/// receive chains the frame spans, always 1 without
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const NET_HDR_NUM_BUFFERS_OFFSET: usize = 10;

/// `struct virtio_net_config` up to `mtu`: `mac[6]`, `status`,
/// `max_virtqueue_pairs`, `mtu` (each field little endian).
pub const CONFIG_SPACE_SIZE: usize = 12;
/// Offset of `mac` in the configuration space.
pub const CONFIG_MAC_OFFSET: usize = 0;
/// Offset of `status`.
pub const CONFIG_STATUS_OFFSET: usize = 6;
/// Offset of `max_virtqueue_pairs`.
pub const CONFIG_MAX_QUEUE_PAIRS_OFFSET: usize = 8;
/// Offset of `mtu`.
pub const CONFIG_MTU_OFFSET: usize = 10;

/// Ethernet header length (`ETH_HLEN`).
pub const ETH_HLEN: usize = 14;
/// Largest frame either side may send: a 65535-byte packet (the largest
/// MTU) behind an Ethernet header. A longer length prefix from the backend
/// is a protocol error; a longer transmit chain is dropped.
pub const MAX_FRAME_LEN: usize = 65_535 + ETH_HLEN;
/// Size of the big-endian frame length before each frame on the stream.
pub const STREAM_LENGTH_SIZE: usize = 4;

/// Smallest MTU Linux accepts for IPv4 (`ETH_MIN_MTU`).
pub const MIN_MTU: u16 = 68;
/// passt's largest MTU, which the utility VM uses so bulk transfers take
/// few frames.
pub const DEFAULT_MTU: u16 = 65_520;
/// The MAC address unless configured: QEMU's familiar `52:54:00:12:34:56`,
/// locally administered (bit 1 of the first byte) and unicast (bit 0 clear).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
