//! The first serial port (COM1, 0x3f8, IRQ 4): a 16550A from vm-superio
//! whose output goes to the console log. The guest's `console=ttyS0`
//! writes here.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// Base port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Registers of a 16550.
pub const SERIAL_PORTS: u64 = 8;

/// COM1 on the PIO bus.
pub struct SerialConsole {
    inner: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A port that raises its interrupt through `irq` and writes what the
    /// guest transmits to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Serial::new(irq, out),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [byte] = data {
            *byte = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [byte] = data {
            if let Err(e) = self.inner.write(offset as u8, *byte) {
                tracing::warn!(error = ?e, "serial console write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_console_and_raise_the_irq_when_enabled() {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = SerialConsole::new(
            EventFdTrigger(irq.try_clone().unwrap()),
            Box::new(out.clone()),
        );

        serial.write(1, &[0x02]); // IER: transmitter-empty interrupt
        serial.write(0, b"o");
        serial.write(0, b"k");

        assert_eq!(out.0.lock().unwrap().as_slice(), b"ok");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn line_status_reports_an_empty_transmitter() {
        let mut serial = SerialConsole::new(
            EventFdTrigger(EventFd::new(EFD_NONBLOCK).unwrap()),
            Box::new(std::io::sink()),
        );
        let mut lsr = [0u8];

        serial.read(5, &mut lsr);

        assert_eq!(lsr[0] & 0x60, 0x60);
    }
}
