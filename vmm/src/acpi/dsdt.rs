//! The DSDT: AML describing the devices a guest cannot discover by itself.
//!
//! Each virtio-mmio window becomes a `LNRO0005` device with its registers as
//! a 32-bit fixed memory resource and its GSI as an edge-triggered, active-high
//! interrupt — the form Linux's `virtio_mmio` driver binds to through ACPI,
//! which is how QEMU `microvm` and Firecracker describe theirs. COM1 is a
//! `PNP0501`, and `\_S5` gives the sleep type the FADT's sleep control
//! register expects for power-off.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::Aml;

use crate::devices::legacy::acpi_pm::S5_SLEEP_TYPE;

/// One virtio-mmio device as the guest must see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// First byte of its register window.
    pub base: u64,
    /// Window size.
    pub len: u64,
    /// Its GSI.
    pub irq: u32,
}

/// A legacy port device (COM1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortDeviceInfo {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u8,
    /// Its GSI.
    pub irq: u32,
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

fn virtio_mmio_device(index: usize, dev: &MmioDeviceInfo) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &"LNRO0005");
    let uid = Name::new("_UID".into(), &(index as u32));
    let window = Memory32Fixed::new(true, dev.base as u32, dev.len as u32);
    let irq = Interrupt::new(true, true, false, false, dev.irq);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&window, &irq]));
    let name = format!("V{index:03X}");
    aml_bytes(&Device::new(name.as_str().into(), vec![&hid, &uid, &crs]))
}

fn serial_device(index: usize, dev: &PortDeviceInfo) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &(index as u32));
    let ports = IO::new(dev.base, dev.base, 1, dev.len);
    let irq = Interrupt::new(true, true, false, false, dev.irq);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ports, &irq]));
    let name = format!("COM{}", index + 1);
    aml_bytes(&Device::new(name.as_str().into(), vec![&hid, &uid, &crs]))
}

/// The DSDT body (the AML after the table header).
pub fn dsdt_aml(serial: &[PortDeviceInfo], virtio: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut devices = Vec::new();
    for (index, dev) in serial.iter().enumerate() {
        devices.extend(serial_device(index, dev));
    }
    for (index, dev) in virtio.iter().enumerate() {
        devices.extend(virtio_mmio_device(index, dev));
    }
    let mut aml = Scope::raw("\\_SB_".into(), devices);
    let s5 = Package::new(vec![&S5_SLEEP_TYPE, &0u8]);
    Name::new(Path::new("\\_S5_"), &s5).to_aml_bytes(&mut aml);
    aml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn each_virtio_device_carries_its_window_and_irq() {
        let aml = dsdt_aml(
            &[],
            &[
                MmioDeviceInfo {
                    base: 0xd000_0000,
                    len: 0x1000,
                    irq: 5,
                },
                MmioDeviceInfo {
                    base: 0xd000_1000,
                    len: 0x1000,
                    irq: 6,
                },
            ],
        );

        assert!(contains(&aml, b"LNRO0005\0"));
        assert!(contains(&aml, b"V000") && contains(&aml, b"V001"));
        // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
        let mut window = vec![0x86, 9, 0, 1];
        window.extend(0xd000_1000u32.to_le_bytes());
        window.extend(0x1000u32.to_le_bytes());
        assert!(contains(&aml, &window));
        // Extended interrupt: consumer, edge, active high, exclusive, GSI 6.
        assert!(contains(&aml, &[0x89, 6, 0, 0b0011, 1, 6, 0, 0, 0]));
    }

    #[test]
    fn s5_package_announces_the_power_off_sleep_type() {
        let aml = dsdt_aml(&[], &[]);

        // NameOp, \_S5_, PackageOp, length, 2 elements, BytePrefix 5, Zero.
        assert!(contains(
            &aml,
            &[
                0x08,
                b'\\',
                b'_',
                b'S',
                b'5',
                b'_',
                0x12,
                0x05,
                0x02,
                0x0a,
                S5_SLEEP_TYPE,
                0x00
            ]
        ));
    }

    #[test]
    fn com1_is_described_by_its_ports_and_irq() {
        let aml = dsdt_aml(
            &[PortDeviceInfo {
                base: 0x3f8,
                len: 8,
                irq: 4,
            }],
            &[],
        );

        assert!(contains(&aml, b"COM1"));
        // IO descriptor: tag 0x47, 16-bit decode, min, max, alignment, length.
        assert!(contains(&aml, &[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]));
    }
}
