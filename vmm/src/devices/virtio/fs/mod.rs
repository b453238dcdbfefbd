//! virtio-fs (virtio 1.2, section 5.11): a host directory the guest mounts
//! with `mount -t virtiofs TAG /mnt`. The FUSE requests on its queues are
//! served by an external `virtiofsd` over vhost-user; this VMM is the
//! vhost-user *frontend*: it owns the virtio-mmio registers and the
//! configuration space (the tag), and hands the daemon guest RAM (a shared
//! memfd), the rings and two eventfds per queue.
//!
//! - [`defs`]: spec constants;
//! - [`device`]: the virtio device: features, configuration space,
//!   activation and reset;
//! - [`daemon_connection`]: the vhost-user conversation with `virtiofsd`;
//! - [`event_handler`]: the device on the VMM's event loop: the daemon's
//!   used-buffer signals become guest interrupts, and its death is logged.
//!
//! # Notifications
//!
//! Guest → daemon: each queue's kick eventfd is the transport's queue
//! notification eventfd (a KVM ioeventfd on `QueueNotify` with the queue
//! index as datamatch, or written by the transport on the MMIO exit), so
//! the daemon wakes without this process in between.
//!
//! Daemon → guest: the daemon signals a call eventfd per queue. virtio-mmio
//! drivers read `InterruptStatus` and ignore an interrupt whose used-buffer
//! bit is clear, so the call eventfd cannot be the irqfd itself; the event
//! loop reads it, sets the bit and fires the device's interrupt
//! ([`event_handler`]).

pub mod daemon_connection;
pub mod defs;
pub mod device;
pub mod event_handler;

pub use daemon_connection::{DaemonConnection, DaemonError};
pub use device::{FsDevice, FsError};
pub use event_handler::FsEventHandler;
