//! Virtio devices.
//!
//! Each device lives in its own folder with the same files (`mod`, `defs`,
//! `device`, `event_handler`, and the device's own parts), so a reader who
//! knows one knows where everything is in the next.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::os::fd::RawFd;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// The shape every virtio device has towards its transport (virtio-mmio in
/// our VMM): feature negotiation, a configuration space, and activation with
/// the queues the driver set up.
pub trait VirtioDevice {
    /// What [`VirtioDevice::activate`] can fail with.
    type Error: std::error::Error;

    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// The largest size of each queue, in queue-index order; the slice's
    /// length is the number of queues the device has.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;

    /// Feature bits the driver accepted (a subset of the offered ones).
    fn acked_features(&self) -> u64;

    /// Records the driver's accepted features; bits not offered are dropped.
    fn ack_features(&mut self, features: u64);

    /// Reads the configuration space at `offset` into `data`. Reads outside
    /// the space leave `data` untouched.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with the driver's queues, in queue-index order.
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), Self::Error>;

    /// Returns the device to its state before feature negotiation.
    fn reset(&mut self);
}

/// A device whose queue work runs on the VMM's event loop: the transport's
/// event handler calls it when the guest notifies a queue or a host-side fd
/// becomes readable, and raises the used-ring interrupt when it says so.
///
/// Calls come from the event-loop thread while the transport may call the
/// [`VirtioDevice`] methods from vCPU threads; both go through the same
/// mutex, so the device sees one call at a time.
pub trait EventDrivenDevice: VirtioDevice {
    /// Does the work after the guest notified queue `index`. Returns whether
    /// the driver wants a used-ring interrupt now. Called only on an
    /// activated device.
    fn process_queue(&mut self, index: usize) -> Result<bool, Self::Error>;

    /// Host-side fds to watch for readability (a backend socket, a timer),
    /// fixed for the device's lifetime.
    fn host_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Does the work after host-side `fd` became readable; it must consume
    /// the readiness even when the device is not activated, because the
    /// fds are level-triggered. Returns whether the driver wants a used-ring
    /// interrupt now.
    fn process_host_fd(&mut self, fd: RawFd) -> Result<bool, Self::Error> {
        let _ = fd;
        Ok(false)
    }

    /// Whether the configuration space changed by the device's own doing
    /// (a network link went down) since the last call. The event handler
    /// asks after each piece of work and, if so, bumps `ConfigGeneration`
    /// and raises the configuration-change interrupt.
    fn take_config_change(&mut self) -> bool {
        false
    }

    /// Whether the device holds activated queues.
    fn is_activated(&self) -> bool;
}
