//! virtio-net, with passt as the backend: frames travel over a Unix stream
//! socket in the framing of QEMU's `-netdev stream` (a 4-byte big-endian
//! length before each frame), the same socket QEMU uses with passt.
//!
//! - [`defs`]: spec constants;
//! - [`framing`]: reassembling and queueing length-prefixed frames;
//! - [`stream_backend`]: the socket, its private epoll and what it waits for;
//! - [`device`]: the virtio device, its configuration space and two queues;
//! - [`event_handler`]: the device on the VMM's event loop.
//!
//! The device offers only `VIRTIO_NET_F_MAC`, `VIRTIO_NET_F_MTU` and
//! `VIRTIO_NET_F_STATUS` besides `VIRTIO_F_VERSION_1`: no checksum or
//! segmentation offloads, no mergeable receive buffers, one queue pair.

pub mod defs;
pub mod device;
pub mod event_handler;
pub mod framing;
pub mod stream_backend;
#[cfg(test)]
pub(crate) mod test_driver;

pub use device::{NetDevice, NetError, NetStats};
pub use stream_backend::{BackendError, StreamBackend};
