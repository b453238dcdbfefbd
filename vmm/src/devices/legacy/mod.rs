//! The PC devices a Linux guest expects at fixed port addresses: the first
//! serial port (console), the i8042 (its reset line), and the
//! hardware-reduced ACPI sleep/reset registers (power-off and reboot).

pub mod acpi_pm;
pub mod i8042;
pub mod serial;

use std::sync::Arc;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::vm_exit::{ExitReason, ExitSignal};

/// Raises an interrupt by writing an eventfd (a KVM irqfd, or one the event
/// loop polls to set the IRQ line).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Ends the VM with a fixed reason when a device fires it.
#[derive(Debug, Clone)]
pub struct ExitTrigger {
    signal: Arc<ExitSignal>,
    reason: ExitReason,
}

impl ExitTrigger {
    /// A trigger that requests `reason` on `signal`.
    pub fn new(signal: Arc<ExitSignal>, reason: ExitReason) -> Self {
        Self { signal, reason }
    }
}

impl Trigger for ExitTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.signal.request(self.reason);
        Ok(())
    }
}
