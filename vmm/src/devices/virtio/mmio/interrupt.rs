//! The interrupt line of one virtio-mmio device: the `InterruptStatus` bits
//! and an eventfd the VMM routes to the guest's interrupt controller.
//!
//! The event-loop thread raises bits when a device returns buffers; vCPU
//! threads read and acknowledge them through the transport registers. The
//! bits are one atomic word so neither side takes a lock for them.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::{INT_CONFIG_CHANGE, INT_USED_RING};

/// Why an interrupt could not be raised.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// The eventfd could not be created.
    #[error("cannot create the interrupt eventfd")]
    Create(#[source] io::Error),
    /// Writing the eventfd failed.
    #[error("cannot signal the interrupt eventfd")]
    Signal(#[source] io::Error),
}

/// What an interrupt tells the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptReason {
    /// A queue has used buffers (`InterruptStatus` bit 0).
    UsedRing,
    /// The configuration space changed or the device needs a reset
    /// (`InterruptStatus` bit 1).
    ConfigChange,
}

impl InterruptReason {
    fn status_bit(self) -> u32 {
        match self {
            InterruptReason::UsedRing => INT_USED_RING,
            InterruptReason::ConfigChange => INT_CONFIG_CHANGE,
        }
    }
}

/// One device's interrupt: `InterruptStatus` plus the eventfd that fires on
/// every [`InterruptLine::trigger`].
///
/// Wiring: register [`InterruptLine::event`] as a KVM irqfd for the
/// device's GSI (KVM then pulses the line, which suits the edge-triggered
/// interrupt the device is described with). Without irqfd, poll the eventfd
/// and raise the line yourself; a level-triggered line stays up while
/// [`InterruptLine::is_asserted`] holds, which a vCPU thread can re-check
/// after each write to the transport (the driver lowers it with
/// `InterruptACK`).
#[derive(Debug)]
pub struct InterruptLine {
    status: AtomicU32,
    event: EventFd,
    /// `ConfigGeneration`: here rather than in the transport because the
    /// event-loop side changes it too (a device's own configuration
    /// change) and must bump it before interrupting.
    config_generation: AtomicU32,
}

impl InterruptLine {
    /// Creates a line with no bits raised.
    pub fn new() -> Result<Self, InterruptError> {
        Ok(Self {
            status: AtomicU32::new(0),
            event: EventFd::new(EFD_NONBLOCK).map_err(InterruptError::Create)?,
            config_generation: AtomicU32::new(0),
        })
    }

    /// The configuration space changed: bumps `ConfigGeneration`, then
    /// raises the configuration-change interrupt.
    pub fn config_changed(&self) -> Result<(), InterruptError> {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        self.trigger(InterruptReason::ConfigChange)
    }

    /// The `ConfigGeneration` register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// Raises `reason`'s status bit and fires the eventfd.
    pub fn trigger(&self, reason: InterruptReason) -> Result<(), InterruptError> {
        // Release: the used ring written before this must be visible to the
        // vCPU that reads `InterruptStatus` afterwards.
        self.status.fetch_or(reason.status_bit(), Ordering::Release);
        self.event.write(1).map_err(InterruptError::Signal)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// `InterruptACK`: clears the given bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Whether any status bit is raised (the level of a level-triggered line).
    pub fn is_asserted(&self) -> bool {
        self.status() != 0
    }

    /// Clears every bit, for a device reset.
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }

    /// The eventfd to register as a KVM irqfd (or to poll).
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_raises_bit_and_fires_eventfd() {
        let line = InterruptLine::new().unwrap();

        line.trigger(InterruptReason::UsedRing).unwrap();

        assert_eq!(line.status(), INT_USED_RING);
        assert_eq!(line.event().read().unwrap(), 1);
        assert!(line.is_asserted());
    }

    #[test]
    fn config_change_bumps_the_generation_before_interrupting() {
        let line = InterruptLine::new().unwrap();

        line.config_changed().unwrap();
        line.config_changed().unwrap();

        assert_eq!(line.config_generation(), 2);
        assert_eq!(line.status(), INT_CONFIG_CHANGE);
        assert_eq!(line.event().read().unwrap(), 2);
    }

    #[test]
    fn acknowledge_clears_only_the_written_bits() {
        let line = InterruptLine::new().unwrap();
        line.trigger(InterruptReason::UsedRing).unwrap();
        line.trigger(InterruptReason::ConfigChange).unwrap();

        line.acknowledge(INT_USED_RING);

        assert_eq!(line.status(), INT_CONFIG_CHANGE);
        line.acknowledge(INT_CONFIG_CHANGE);
        assert!(!line.is_asserted());
    }
}
