//! virtio-blk backed by a host file (the utility VM's data disk, a sparse
//! ext4 image).
//!
//! The layers, from the guest outwards:
//!
//! - [`request`]: a descriptor chain parsed into a checked [`Request`], as a
//!   pure function of the chain, guest memory and the disk's limits;
//! - [`disk`]: the host file and the operations on it (read, write,
//!   `fdatasync`, hole punching);
//! - [`device`]: the virtio device (features, configuration space, the
//!   request queue) that runs requests and writes their status;
//! - [`event_handler`]: the device on the VMM's event loop.

pub mod defs;
pub mod device;
pub mod disk;
pub mod event_handler;
pub mod request;

pub use device::{BlockConfig, BlockDevice, BlockError};
pub use request::{parse_request, DiskLimits, Operation, Request, RequestError, Segment};
