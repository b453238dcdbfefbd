//! virtio-balloon, for free page reporting: the guest tells the host which
//! ranges of its RAM are free, and the host drops the pages behind them, so
//! memory the guest no longer uses stops counting against the host.
//!
//! The guest's kernel reports only free blocks of at least pageblock order
//! (2 MiB on x86_64), a couple of seconds after they became free. The
//! balloon's target stays at zero: nothing is taken from the guest.
//!
//! - [`defs`]: spec constants;
//! - [`request`]: a chain turned into checked host ranges, touching nothing;
//! - [`discard`]: handing those ranges back to the host, the way guest RAM
//!   is mapped needs (kept when it is reserved hugetlbfs memory);
//! - [`device`]: the virtio device, its configuration space and queues;
//! - [`event_handler`]: the device on the VMM's event loop.

pub mod defs;
pub mod device;
pub mod discard;
pub mod event_handler;
pub mod request;

pub use device::{BalloonDevice, BalloonError};
