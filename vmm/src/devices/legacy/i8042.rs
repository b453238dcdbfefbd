//! The i8042 keyboard controller at ports 0x60–0x64: only its reset line
//! (command 0xfe on port 0x64), which Linux uses for `reboot=k` and as a
//! fallback when ACPI reset fails.

use vm_superio::I8042Device;

use super::ExitTrigger;
use crate::devices::bus::BusDevice;

/// First port of the controller.
pub const I8042_PORT: u64 = 0x60;
/// Ports covered (0x60 data through 0x64 command/status).
pub const I8042_PORTS: u64 = 5;

/// The controller on the PIO bus.
pub struct I8042 {
    inner: I8042Device<ExitTrigger>,
}

impl I8042 {
    /// A controller whose reset command fires `reset`.
    pub fn new(reset: ExitTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let [byte] = data {
            *byte = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [byte] = data {
            // The only error is the trigger's, which cannot fail.
            let _ = self.inner.write(offset as u8, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_exit::{ExitReason, ExitSignal};
    use std::sync::Arc;

    #[test]
    fn reset_command_on_port_0x64_ends_the_vm_with_reset() {
        let signal = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(ExitTrigger::new(signal.clone(), ExitReason::Reset));

        dev.write(4, &[0x01]);
        assert_eq!(signal.reason(), None);
        dev.write(4, &[0xfe]);

        assert_eq!(signal.reason(), Some(ExitReason::Reset));
    }
}
