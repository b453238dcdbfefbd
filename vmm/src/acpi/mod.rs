//! ACPI tables for a hardware-reduced platform: RSDP → XSDT → FADT (→ DSDT)
//! and MADT, written into the BIOS area at [`RSDP_START`].
//!
//! Hardware-reduced ACPI has no PM1 blocks or SCI; power-off and reboot go
//! through the FADT's sleep control and reset registers, which point at the
//! [`crate::devices::legacy::acpi_pm`] ports. Debian's cloud kernel finds the
//! virtio-mmio devices through the DSDT ([`dsdt`]).

pub mod dsdt;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::arch::layout::{ACPI_END, APIC_START, IOAPIC_START, RSDP_START};
use crate::devices::legacy::acpi_pm::{
    RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use dsdt::{dsdt_aml, MmioDeviceInfo, PortDeviceInfo};

const OEM_ID: [u8; 6] = *b"DSTCTL";
const OEM_TABLE_ID: [u8; 8] = *b"DSTCTLVM";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags: no VGA, no MSI, no CMOS RTC (ACPI 6.5,
/// table 5.11). No legacy devices or 8042 either, so Linux does not probe them.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);

/// What failed while writing the tables.
#[derive(Debug, Error)]
pub enum AcpiError {
    /// The tables outgrew the BIOS area.
    #[error("the ACPI tables need {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    /// Writing a table into guest memory.
    #[error("cannot write the ACPI tables into guest memory")]
    Write(#[source] GuestMemoryError),
}

/// The platform the tables describe.
#[derive(Debug, Clone, Default)]
pub struct AcpiPlatform {
    /// Number of vCPUs (APIC IDs 0..cpus).
    pub cpus: u8,
    /// Legacy serial ports.
    pub serial: Vec<PortDeviceInfo>,
    /// virtio-mmio devices.
    pub virtio: Vec<MmioDeviceInfo>,
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    fadt.reset_reg = io_register(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"DSTCTLVM").into();
    aml_bytes(&fadt.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    aml_bytes(&madt)
}

fn dsdt(platform: &AcpiPlatform) -> Vec<u8> {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&dsdt_aml(&platform.serial, &platform.virtio));
    table.as_slice().to_vec()
}

/// Every table with its guest address, RSDP first.
pub fn build_tables(platform: &AcpiPlatform) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let align = |addr: u64| (addr + 15) & !15;
    let mut next = align(RSDP_START + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next = align(addr + bytes.len() as u64);
        (addr, bytes)
    };
    let dsdt = place(dsdt(platform));
    let fadt = place(fadt(dsdt.0));
    let madt = place(madt(platform.cpus));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt.0);
    xsdt.add_entry(madt.0);
    let xsdt = place(aml_bytes(&xsdt));
    if next > ACPI_END {
        return Err(AcpiError::TooLarge(next - RSDP_START));
    }
    let rsdp = (RSDP_START, aml_bytes(&Rsdp::new(OEM_ID, xsdt.0)));
    Ok(vec![rsdp, xsdt, fadt, madt, dsdt])
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, platform: &AcpiPlatform) -> Result<u64, AcpiError> {
    for (addr, bytes) in build_tables(platform)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::VIRTIO_MMIO_START;

    fn platform() -> AcpiPlatform {
        AcpiPlatform {
            cpus: 2,
            serial: vec![PortDeviceInfo {
                base: 0x3f8,
                len: 8,
                irq: 4,
            }],
            virtio: vec![MmioDeviceInfo {
                base: VIRTIO_MMIO_START,
                len: 0x1000,
                irq: 5,
            }],
        }
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn table<'a>(tables: &'a [(u64, Vec<u8>)], signature: &[u8]) -> &'a (u64, Vec<u8>) {
        tables.iter().find(|(_, b)| &b[..4] == signature).unwrap()
    }

    #[test]
    fn every_table_checksums_to_zero_and_states_its_length() {
        let tables = build_tables(&platform()).unwrap();

        let (_, rsdp) = &tables[0];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        for (_, bytes) in &tables[1..] {
            assert_eq!(sum(bytes), 0, "{:?}", std::str::from_utf8(&bytes[..4]));
            assert_eq!(u32_at(bytes, 4) as usize, bytes.len());
        }
    }

    #[test]
    fn rsdp_leads_to_fadt_and_madt_and_fadt_to_dsdt() {
        let tables = build_tables(&platform()).unwrap();

        let xsdt = table(&tables, b"XSDT");
        assert_eq!(u64_at(&tables[0].1, 24), xsdt.0);
        let entries: Vec<u64> = (36..xsdt.1.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt.1, o))
            .collect();
        assert_eq!(
            entries,
            vec![table(&tables, b"FACP").0, table(&tables, b"APIC").0]
        );
        // FADT X_DSDT sits at offset 140.
        assert_eq!(
            u64_at(&table(&tables, b"FACP").1, 140),
            table(&tables, b"DSDT").0
        );
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_ports() {
        let tables = build_tables(&platform()).unwrap();
        let fadt = &table(&tables, b"FACP").1;

        let flags = u32_at(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // RESET_REG (GAS at 116): system I/O, port; RESET_VALUE at 128.
        assert_eq!(fadt[116], 1);
        assert_eq!(u64_at(fadt, 120), u64::from(RESET_PORT));
        assert_eq!(fadt[128], RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(u64_at(fadt, 248), u64::from(SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(SLEEP_STATUS_PORT));
    }

    #[test]
    fn madt_lists_each_vcpu_and_the_ioapic() {
        let tables = build_tables(&platform()).unwrap();
        let madt = &table(&tables, b"APIC").1;

        assert_eq!(u32_at(madt, 36), APIC_START as u32);
        let mut kinds = Vec::new();
        let mut offset = 44;
        while offset < madt.len() {
            kinds.push((madt[offset], madt[offset + 3]));
            offset += madt[offset + 1] as usize;
        }
        assert_eq!(kinds, vec![(0, 0), (0, 1), (1, 0)]);
    }

    #[test]
    fn tables_for_many_devices_still_fit_the_bios_area() {
        let mut many = platform();
        many.cpus = 254;
        many.virtio = (0..19)
            .map(|i| MmioDeviceInfo {
                base: VIRTIO_MMIO_START + i * 0x1000,
                len: 0x1000,
                irq: 5 + i as u32,
            })
            .collect();

        let tables = build_tables(&many).unwrap();

        let end = tables
            .iter()
            .map(|(a, b)| a + b.len() as u64)
            .max()
            .unwrap();
        assert!(end <= ACPI_END);
    }

    #[test]
    fn iasl_disassembles_the_dsdt_into_the_devices_we_meant() {
        let Ok(status) = std::process::Command::new("iasl").arg("-v").output() else {
            eprintln!("skipping: iasl (acpica-tools) is not installed");
            return;
        };
        assert!(status.status.success());
        let dir = tempfile::tempdir().unwrap();
        let tables = build_tables(&platform()).unwrap();
        let aml = dir.path().join("dsdt.aml");
        std::fs::write(&aml, &table(&tables, b"DSDT").1).unwrap();

        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&aml)
            .output()
            .unwrap();

        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
        // One line per statement, without comments, for robust matching.
        let flat: String = dsl
            .lines()
            .map(|l| l.split("//").next().unwrap().trim())
            .collect::<Vec<_>>()
            .join(" ");
        for expected in [
            "Device (V000) { Name (_HID, \"LNRO0005\")",
            "Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000, )",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, }",
            "EisaId (\"PNP0501\")",
            "IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08, )",
            "Name (\\_S5, Package (0x02) { 0x05, Zero })",
        ] {
            assert!(flat.contains(expected), "missing {expected:?} in {dsl}");
        }
    }
}
