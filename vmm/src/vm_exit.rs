//! Why a VM ended, and the one-shot signal devices and vCPUs use to end it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How the guest (or the host) ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5, or KVM's shutdown system event).
    PowerOff,
    /// The guest asked for a reset (i8042, ACPI reset register, triple
    /// fault). The VMM ends; whoever started it decides about a restart.
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN): the guest kernel took a
    /// fault it could not handle, without a word on its console. Ends the
    /// VM like a reset, but is told apart because it is a crash.
    TripleFault,
    /// Every vCPU halted with nothing that could wake it (no in-kernel
    /// interrupt controller).
    Halted,
    /// The host stopped the VM ([`crate::vm::VmHandle::stop`]).
    Stopped,
}

/// First-come exit request shared by devices, vCPU threads and the host.
/// Only the first reason counts: a reset caused by a shutdown in progress
/// must not turn a power-off into a reboot.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl ExitSignal {
    /// A signal nobody has raised yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Asks for the VM to end with `reason` (ignored if already asked).
    pub fn request(&self, reason: ExitReason) {
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            tracing::info!(?reason, "VM exit requested");
            *current = Some(reason);
            // The counter cannot overflow from one write per VM.
            let _ = self.event.write(1);
        }
    }

    /// The reason asked for, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Readable once an exit was requested (for epoll).
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_the_event_fires_once() {
        let signal = ExitSignal::new().unwrap();

        signal.request(ExitReason::PowerOff);
        signal.request(ExitReason::Reset);

        assert_eq!(signal.reason(), Some(ExitReason::PowerOff));
        assert_eq!(signal.event().read().unwrap(), 1);
        assert!(signal.event().read().is_err(), "no second write");
    }
}
