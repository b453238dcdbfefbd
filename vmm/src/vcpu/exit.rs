//! What a vCPU does after each KVM exit. A plain function of the exit and
//! the buses, so tests can feed it made-up exits.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::devices::bus::Bus;
use crate::vm_exit::ExitReason;

/// The next step of the vCPU loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuAction {
    /// Enter the guest again.
    Continue,
    /// The guest halted and KVM handed the halt to us: there is no in-kernel
    /// local APIC that could wake it.
    Halt,
    /// End the VM.
    Exit(ExitReason),
    /// The vCPU cannot go on (entry failure, emulation error, guest crash).
    Fail(String),
}

/// Completes the exit (device access) and says what happens next.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                tracing::trace!(
                    port = format_args!("{port:#x}"),
                    "read from an unclaimed port"
                );
                data.fill(0xff);
            }
            VcpuAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                tracing::trace!(
                    port = format_args!("{port:#x}"),
                    "write to an unclaimed port"
                );
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                tracing::debug!(addr = format_args!("{addr:#x}"), "read from unclaimed MMIO");
                data.fill(0xff);
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::debug!(addr = format_args!("{addr:#x}"), "write to unclaimed MMIO");
            }
            VcpuAction::Continue
        }
        VcpuExit::Hlt => VcpuAction::Halt,
        // A triple fault: a PC resets, but this is a guest crash and the
        // VMM's owner should hear of it as one.
        VcpuExit::Shutdown => VcpuAction::Exit(ExitReason::TripleFault),
        VcpuExit::SystemEvent(kind, data) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VcpuAction::Exit(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => VcpuAction::Exit(ExitReason::Reset),
            KVM_SYSTEM_EVENT_CRASH => VcpuAction::Fail(format!("guest crashed ({data:x?})")),
            other => VcpuAction::Fail(format!("unknown system event {other}")),
        },
        VcpuExit::FailEntry(reason, cpu) => VcpuAction::Fail(format!(
            "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
        )),
        VcpuExit::InternalError => VcpuAction::Fail("KVM internal error (emulation failed)".into()),
        // A signal arrived while entering; the loop checks why.
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => VcpuAction::Continue,
        other => VcpuAction::Fail(format!("unexpected vCPU exit {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Scratch(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(0x40 + offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Scratch>>) {
        let dev = Arc::new(Mutex::new(Scratch::default()));
        let mut pio = Bus::new();
        pio.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(dev.clone(), 0xd000_0000, 0x1000).unwrap();
        (pio, mmio, dev)
    }

    #[test]
    fn port_reads_and_writes_reach_the_pio_bus() {
        let (pio, mmio, dev) = buses();
        let mut data = [0u8; 1];

        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3fd, &mut data), &pio, &mmio),
            VcpuAction::Continue
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"A"), &pio, &mmio),
            VcpuAction::Continue
        );

        assert_eq!(data, [0x45]);
        assert_eq!(dev.lock().unwrap().0, vec![(0, b"A".to_vec())]);
    }

    #[test]
    fn mmio_accesses_reach_the_mmio_bus_and_unclaimed_reads_float_high() {
        let (pio, mmio, dev) = buses();
        let mut claimed = [0u8; 4];
        let mut unclaimed = [0u8; 4];

        handle_exit(VcpuExit::MmioRead(0xd000_0008, &mut claimed), &pio, &mmio);
        handle_exit(VcpuExit::MmioRead(0xd000_1000, &mut unclaimed), &pio, &mmio);
        handle_exit(VcpuExit::MmioWrite(0xd000_0070, &[1, 0, 0, 0]), &pio, &mmio);

        assert_eq!(claimed, [0x48; 4]);
        assert_eq!(unclaimed, [0xff; 4]);
        assert_eq!(dev.lock().unwrap().0, vec![(0x70, vec![1, 0, 0, 0])]);
    }

    #[test]
    fn unclaimed_port_reads_float_high() {
        let (pio, mmio, _) = buses();
        let mut data = [0u8; 2];

        handle_exit(VcpuExit::IoIn(0x80, &mut data), &pio, &mmio);

        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn power_events_end_the_vm_with_the_matching_reason() {
        let (pio, mmio, _) = buses();

        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &pio,
                &mmio
            ),
            VcpuAction::Exit(ExitReason::PowerOff)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                &pio,
                &mmio
            ),
            VcpuAction::Exit(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio),
            VcpuAction::Exit(ExitReason::TripleFault)
        );
        assert_eq!(handle_exit(VcpuExit::Hlt, &pio, &mmio), VcpuAction::Halt);
    }

    #[test]
    fn entry_failures_and_crashes_stop_the_vcpu_with_a_reason() {
        let (pio, mmio, _) = buses();

        let fail = handle_exit(VcpuExit::FailEntry(0x21, 3), &pio, &mmio);
        let crash = handle_exit(
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[7]),
            &pio,
            &mmio,
        );

        assert!(matches!(fail, VcpuAction::Fail(m) if m.contains("0x21")));
        assert!(matches!(crash, VcpuAction::Fail(m) if m.contains("crashed")));
    }
}
