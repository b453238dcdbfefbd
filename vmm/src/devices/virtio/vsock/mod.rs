//! virtio-vsock with a Firecracker-style hybrid-vsock host side.
//!
//! The layers, from the guest outwards:
//!
//! - [`device`]: the virtio device (features, config space, queues) that
//!   moves packets between the virtqueues and the muxer;
//! - [`packet`]: packets read from and written to descriptor chains;
//! - [`muxer`] and [`connection`]: the connection table, per-connection state
//!   machine and credit-based flow control;
//! - [`hybrid`]: the host side, Unix sockets and the `CONNECT` handshake;
//! - [`event_handler`]: runs an activated device from readiness events.
//!
//! None of these depends on vhost-user or on a particular event loop; the
//! vhost-user backend in `crate::vhost_user` drives [`VsockDevice`] through
//! [`VsockDevice::handle_event_with`].

pub mod connection;
pub mod defs;
pub mod device;
pub mod event_handler;
pub mod hybrid;
pub mod muxer;
pub mod packet;
#[cfg(test)]
pub(crate) mod test_driver;

pub use device::{DeviceError, QueuesMut, UsedQueues, VsockDevice, VsockEvent};
pub use event_handler::{
    EventHandlerError, EventSource, InterruptSignal, VsockEventHandler, VsockWaker,
};
pub use muxer::{MuxerError, VsockMuxer};
