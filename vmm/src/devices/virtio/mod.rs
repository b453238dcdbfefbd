//! Virtio devices.
//!
//! Each device lives in its own folder with the same files (`mod`, `defs`,
//! `device`, `event_handler`, and the device's own parts), so a reader who
//! knows one knows where everything is in the next.

pub mod vsock;

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
