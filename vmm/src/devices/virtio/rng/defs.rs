//! virtio-rng constants, from the virtio 1.2 specification, section 5.4,
//! and Linux's `include/uapi/linux/virtio_ids.h`.

/// `VIRTIO_ID_RNG`.
pub const VIRTIO_ID_RNG: u32 = 4;
/// The device has one queue, `requestq`.
pub const NUM_QUEUES: usize = 1;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// The most bytes one request gets: Linux asks for at most a page or so at
/// a time, and a cap keeps a guest from making the host fill gigabytes.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
