//! virtio-rng (entropy device): fills the guest's buffers from the host's
//! `getrandom(2)` (the `/dev/urandom` pool), so the guest kernel's CRNG is
//! seeded early in boot.
//!
//! - [`defs`]: spec constants;
//! - [`device`]: the virtio device and its one request queue;
//! - [`event_handler`]: the device on the VMM's event loop.

pub mod defs;
pub mod device;
pub mod event_handler;

pub use device::{RngDevice, RngError};
