//! The virtio-mmio transport (virtio 1.2, section 4.2; version 2 only, no
//! legacy interface) and the event-loop side of the devices behind it.
//!
//! # Wiring a device (for the owner of the MMIO bus)
//!
//! Each device gets its own window of [`MMIO_WINDOW_SIZE`] bytes in guest
//! physical memory, its own interrupt line, and is described to the guest in
//! the ACPI DSDT (or on the kernel command line as
//! `virtio_mmio.device=<size>@<base>:<irq>`).
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//!
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm::devices::virtio::block::{BlockConfig, BlockDevice};
//! use vmm::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let guest_memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 30)])?;
//! # let (base, gsi) = (0xd000_0000u64, 5u32);
//! // 1. The device, shared by the transport (vCPU threads) and the event
//! //    handler (event-loop thread).
//! let block = BlockDevice::new(BlockConfig::new("/path/to/data.img"))?;
//! // 2. The transport: the register state machine.
//! let transport = MmioTransport::new(guest_memory.clone(), Arc::new(Mutex::new(block)))?;
//! // 3. Queue notifications without an exit to user space: one KVM ioeventfd
//! //    per queue, 4 bytes at base + QUEUE_NOTIFY_OFFSET, datamatch = the
//! //    queue index. Without them, the MMIO write to QueueNotify reaches
//! //    `write`, which signals the same eventfd.
//! for (index, event) in transport.queue_events().iter().enumerate() {
//!     // vm_fd.register_ioevent(event, &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), index as u32)?;
//! #   let _ = (index, event, base + QUEUE_NOTIFY_OFFSET);
//! }
//! // 4. The interrupt: a KVM irqfd on the device's GSI (edge-triggered in
//! //    the DSDT). Without irqfd, poll `interrupt().event()` and raise the
//! //    line yourself (see `InterruptLine`).
//! // vm_fd.register_irqfd(transport.interrupt().event(), gsi)?;
//! # let _ = (transport.interrupt().event(), gsi);
//! // 5. The queue work: add the handler to the event loop (any thread).
//! let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()?;
//! events.add_subscriber(Arc::new(Mutex::new(transport.event_handler()?)));
//! // 6. The registers: route MMIO exits in [base, base + MMIO_WINDOW_SIZE)
//! //    to the transport with the offset inside the window.
//! let transport = Arc::new(Mutex::new(transport));
//! // ...on a vCPU thread, for VcpuExit::MmioRead(addr, data):
//! let (addr, mut data) = (base, [0u8; 4]);
//! transport.lock().unwrap().read(addr - base, &mut data);
//! // ...and for VcpuExit::MmioWrite(addr, data):
//! transport.lock().unwrap().write(addr - base, &data);
//! # let _ = MMIO_WINDOW_SIZE;
//! # Ok(())
//! # }
//! ```
//!
//! # Threads
//!
//! [`MmioTransport::read`]/[`MmioTransport::write`] run on whichever vCPU
//! thread exited; put the transport behind a mutex. The device is an
//! `Arc<Mutex<D>>` that the transport locks for configuration space,
//! feature negotiation, activation and reset, and the
//! [`VirtioEventHandler`] locks for queue work. The lock order is always
//! transport, then device; the event loop never takes the transport's lock,
//! so the two cannot deadlock. `InterruptStatus` is an atomic in the shared
//! [`InterruptLine`], read and acknowledged without the device lock.
//!
//! # What the guest sees
//!
//! The register state machine follows the driver's initialisation sequence:
//! `Status` = 0 resets the device; ACKNOWLEDGE, DRIVER, then feature
//! negotiation through `DriverFeatures`/`DriverFeaturesSel` (accepted only
//! in that phase); FEATURES_OK sticks only if the driver accepted
//! VERSION_1 and nothing the device did not offer; the `Queue*` registers
//! are writable between FEATURES_OK and DRIVER_OK; DRIVER_OK hands the ready
//! queues to [`VirtioDevice::activate`](crate::devices::virtio::VirtioDevice::activate)
//! as `virtio_queue::Queue`s. If activation fails the device sets
//! DEVICE_NEEDS_RESET and raises a configuration-change interrupt. Writes
//! that would clear status bits without a reset are ignored.

pub mod defs;
pub mod event_handler;
pub mod interrupt;
mod queue_registers;
#[cfg(test)]
pub(crate) mod test_driver;
pub mod transport;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use event_handler::VirtioEventHandler;
pub use interrupt::{InterruptError, InterruptLine, InterruptReason};
pub use transport::{MmioError, MmioTransport};

/// Bytes of guest physical address space one device occupies: the
/// registers, then the configuration space at 0x100. A page, so windows can
/// sit next to each other page-aligned.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Offset of `QueueNotify` in the window: where to register queue ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = defs::REG_QUEUE_NOTIFY;

/// Locks a device shared between the transport and the event loop. A panic
/// on the other side poisons the mutex; the device state is still the best
/// there is, and the guest can reset it, so the lock is taken anyway.
pub(crate) fn lock_device<D>(device: &Mutex<D>) -> MutexGuard<'_, D> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}
