//! Hardware-reduced ACPI power management (ACPI 6.5, 4.8.3.7–4.8.3.8): the
//! sleep control/status registers and the reset register, three byte-wide
//! ports that the FADT points at. Writing S5 ends the VM with a power-off,
//! writing the reset value ends it with a reset.

use crate::devices::bus::BusDevice;
use crate::vm_exit::{ExitReason, ExitSignal};
use std::sync::Arc;

/// Port of the sleep control register.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// Port of the sleep status register.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// Port of the reset register.
pub const RESET_PORT: u16 = 0x602;
/// Ports covered.
pub const ACPI_PM_PORTS: u64 = 3;
/// The value the guest writes to the reset register (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x1;
/// The S5 (soft-off) sleep type the DSDT's `\_S5` package announces.
pub const S5_SLEEP_TYPE: u8 = 5;

/// SLP_EN: the write starts the transition.
const SLP_EN: u8 = 1 << 5;

/// The three registers on the PIO bus at [`SLEEP_CONTROL_PORT`].
pub struct AcpiPowerManagement {
    exit: Arc<ExitSignal>,
}

impl AcpiPowerManagement {
    /// Registers that end the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPowerManagement {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing is ever pending: the guest never wakes from a sleep state.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset as u16 + SLEEP_CONTROL_PORT {
            SLEEP_CONTROL_PORT if value & SLP_EN != 0 => {
                let sleep_type = (value >> 2) & 0x7;
                if sleep_type == S5_SLEEP_TYPE {
                    self.exit.request(ExitReason::PowerOff);
                } else {
                    tracing::warn!(sleep_type, "guest asked for an unsupported sleep state");
                }
            }
            RESET_PORT if *value == RESET_VALUE => self.exit.request(ExitReason::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (Arc<ExitSignal>, AcpiPowerManagement) {
        let signal = Arc::new(ExitSignal::new().unwrap());
        (signal.clone(), AcpiPowerManagement::new(signal))
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (signal, mut pm) = device();

        pm.write(0, &[S5_SLEEP_TYPE << 2]);
        assert_eq!(signal.reason(), None, "SLP_EN not set");
        pm.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);

        assert_eq!(signal.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn other_sleep_states_are_ignored() {
        let (signal, mut pm) = device();

        pm.write(0, &[(3 << 2) | SLP_EN]);

        assert_eq!(signal.reason(), None);
    }

    #[test]
    fn reset_value_on_the_reset_register_resets() {
        let (signal, mut pm) = device();

        pm.write(u64::from(RESET_PORT - SLEEP_CONTROL_PORT), &[RESET_VALUE]);

        assert_eq!(signal.reason(), Some(ExitReason::Reset));
    }
}
