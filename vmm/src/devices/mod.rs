//! Devices the guest sees.

pub mod bus;
pub mod legacy;
pub mod virtio;
