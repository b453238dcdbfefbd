//! Constants of the virtio-vsock device.
//!
//! Values from the virtio 1.2 specification, section 5.10 ("Socket Device"),
//! as spelled in Linux's `include/uapi/linux/virtio_vsock.h`,
//! `include/uapi/linux/virtio_ids.h` and `include/uapi/linux/virtio_config.h`.
//! Only the values this device uses are listed; the names keep the header's
//! spelling minus the `VIRTIO_VSOCK_` prefix so they can be looked up there.

/// Device ID of a socket device (`VIRTIO_ID_VSOCK`).
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// Well-known CID of the host (`VMADDR_CID_HOST`, linux/vm_sockets.h).
pub const VSOCK_HOST_CID: u64 = 2;

/// Port wildcard (`VMADDR_PORT_ANY`): never a valid connection endpoint.
pub const VSOCK_PORT_ANY: u32 = u32::MAX;

/// Index of the receive queue (device writes, guest reads).
pub const RXQ_INDEX: usize = 0;
/// Index of the transmit queue (guest writes, device reads).
pub const TXQ_INDEX: usize = 1;
/// Index of the event queue (device-to-guest notifications).
pub const EVQ_INDEX: usize = 2;
/// Number of virtqueues of the device.
pub const NUM_QUEUES: usize = 3;
/// Largest queue size the device offers to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bit: the device conforms to virtio 1.0 or later (`VIRTIO_F_VERSION_1`).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: stream sockets (`VIRTIO_VSOCK_F_STREAM`, virtio 1.2). Drivers
/// that predate it assume streams when no type bit is offered, which is why
/// the device does not offer it.
pub const VIRTIO_VSOCK_F_STREAM: u32 = 0;
/// Feature bit: seqpacket sockets (`VIRTIO_VSOCK_F_SEQPACKET`); not supported.
pub const VIRTIO_VSOCK_F_SEQPACKET: u32 = 1;

/// Socket type: stream (`VIRTIO_VSOCK_TYPE_STREAM`), the only one supported.
pub const TYPE_STREAM: u16 = 1;
/// Socket type: seqpacket (`VIRTIO_VSOCK_TYPE_SEQPACKET`); refused with RST.
pub const TYPE_SEQPACKET: u16 = 2;

/// Operation: invalid, never sent (`VIRTIO_VSOCK_OP_INVALID`).
pub const OP_INVALID: u16 = 0;
/// Operation: connection request (`VIRTIO_VSOCK_OP_REQUEST`).
pub const OP_REQUEST: u16 = 1;
/// Operation: connection accepted (`VIRTIO_VSOCK_OP_RESPONSE`).
pub const OP_RESPONSE: u16 = 2;
/// Operation: connection reset or refused (`VIRTIO_VSOCK_OP_RST`).
pub const OP_RST: u16 = 3;
/// Operation: half or full close (`VIRTIO_VSOCK_OP_SHUTDOWN`).
pub const OP_SHUTDOWN: u16 = 4;
/// Operation: payload bytes (`VIRTIO_VSOCK_OP_RW`).
pub const OP_RW: u16 = 5;
/// Operation: unsolicited credit information (`VIRTIO_VSOCK_OP_CREDIT_UPDATE`).
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Operation: ask the peer for its credit (`VIRTIO_VSOCK_OP_CREDIT_REQUEST`).
pub const OP_CREDIT_REQUEST: u16 = 7;

/// Shutdown flag: the sender will receive no more data (`VIRTIO_VSOCK_SHUTDOWN_RCV`).
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data (`VIRTIO_VSOCK_SHUTDOWN_SEND`).
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags: the connection is closing.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Event ID on the event queue: all connections were dropped
/// (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Size in bytes of the device configuration space (`struct virtio_vsock_config`,
/// a single little-endian `guest_cid`).
pub const CONFIG_SPACE_SIZE: usize = 8;

/// Largest payload accepted in one guest packet. Matches Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`; a guest never sends more in one packet.
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;

/// Receive buffer each host-side connection advertises to the guest
/// (`buf_alloc`): how many guest bytes may wait for the host socket.
pub const DEFAULT_CONN_BUF_SIZE: u32 = 256 * 1024;
