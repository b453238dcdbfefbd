//! virtio-fs constants, from the virtio 1.2 specification, section 5.11,
//! Linux's `include/uapi/linux/virtio_fs.h`, `virtio_ids.h`,
//! `virtio_config.h` and `virtio_ring.h`, and the vhost-user specification
//! (QEMU's `docs/interop/vhost-user.rst`).

/// `VIRTIO_ID_FS`.
pub const VIRTIO_ID_FS: u32 = 26;
/// Longest tag: the `tag` field of `struct virtio_fs_config`.
pub const FS_TAG_MAX_LEN: usize = 36;
/// Request queues offered (`num_request_queues`); queue 0 is `hiprio`.
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// All queues: `hiprio` and the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;
/// Largest size of each queue (what `virtiofsd` accepts).
pub const QUEUE_SIZE: u16 = 1024;
/// Bytes of `struct virtio_fs_config`: the tag, then `le32
/// num_request_queues`.
pub const CONFIG_SPACE_SIZE: usize = FS_TAG_MAX_LEN + 4;

/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit in the virtio feature
/// word, never offered to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// The virtio features the guest may get, when the daemon offers them too:
/// this transport builds split queues only and relays nothing else
/// (`VIRTIO_F_RING_PACKED`, `VIRTIO_F_NOTIFICATION_DATA`, `LOG_ALL` and the
/// like stay out).
pub const GUEST_FEATURES_SUPPORTED: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);
