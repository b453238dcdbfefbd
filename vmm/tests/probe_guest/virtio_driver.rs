//! The driver's side of virtio-mmio for probe guests: device
//! initialisation, descriptors and avail rings written by the guest, and the
//! host-side checks of what the guest reported.

use std::sync::mpsc;
use std::time::Duration;

use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

use super::{Probe, Report};

/// Offsets of a queue's parts inside its area.
pub const DESC: i32 = 0x0000;
pub const AVAIL: i32 = 0x1000;
pub const USED: i32 = 0x2000;
pub const QUEUE_SIZE: u32 = 8;
/// Polling rounds before the probe gives up on the device.
pub const POLL_LIMIT: u32 = 200_000_000;

/// The driver's side of device initialisation (virtio 1.2, 3.1.1) for the
/// device whose registers `regs` points at, with one queue per entry of
/// `queue_areas` (descriptor table, avail and used rings at [`DESC`],
/// [`AVAIL`], [`USED`] inside it). Reports magic, version, device ID, the
/// high feature word, the status after FEATURES_OK and each QueueNumMax.
pub fn init_device(p: &mut Probe, regs: iced_x86::code_asm::AsmRegister64, queue_areas: &[u64]) {
    use iced_x86::code_asm::*;

    let read_reg = |p: &mut Probe, offset: i32| {
        p.asm.mov(eax, dword_ptr(regs + offset)).unwrap();
        p.emit_rax();
    };
    let write_reg = |p: &mut Probe, offset: i32, value: u32| {
        p.asm.mov(dword_ptr(regs + offset), value).unwrap();
    };
    read_reg(p, 0x000); // MagicValue
    read_reg(p, 0x004); // Version
    read_reg(p, 0x008); // DeviceID
    write_reg(p, 0x070, 0); // reset
    write_reg(p, 0x070, 1); // ACKNOWLEDGE
    write_reg(p, 0x070, 3); // DRIVER
    write_reg(p, 0x014, 1); // DeviceFeaturesSel = high word
    read_reg(p, 0x010);
    write_reg(p, 0x024, 1);
    write_reg(p, 0x020, 1); // VIRTIO_F_VERSION_1 only
    write_reg(p, 0x024, 0);
    write_reg(p, 0x020, 0);
    write_reg(p, 0x070, 0xb); // FEATURES_OK
    read_reg(p, 0x070);
    for (index, &area) in queue_areas.iter().enumerate() {
        write_reg(p, 0x030, index as u32); // QueueSel
        read_reg(p, 0x034); // QueueNumMax
        write_reg(p, 0x038, QUEUE_SIZE);
        for (reg, offset) in [(0x080, DESC), (0x090, AVAIL), (0x0a0, USED)] {
            write_reg(p, reg, area as u32 + offset as u32);
            write_reg(p, reg + 4, 0);
        }
        write_reg(p, 0x044, 1); // QueueReady
    }
    write_reg(p, 0x070, 0xf); // DRIVER_OK
}

/// Writes descriptor `index` of the table at `area + DESC`.
pub fn descriptor(
    p: &mut Probe,
    area: u64,
    index: u64,
    addr: u64,
    len: u32,
    flags: u32,
    next: u32,
) {
    use iced_x86::code_asm::*;

    let at = area + DESC as u64 + index * 16;
    p.asm.mov(rax, addr).unwrap();
    p.asm.mov(rbx, at).unwrap();
    p.asm.mov(qword_ptr(rbx), rax).unwrap();
    p.asm.mov(dword_ptr(rbx + 8), len).unwrap();
    p.asm
        .mov(dword_ptr(rbx + 12), flags | (next << 16))
        .unwrap();
}

/// Puts descriptor `head` in avail slot `slot` of the queue at `area` and
/// publishes avail index `slot + 1`.
pub fn publish(p: &mut Probe, area: u64, slot: u32, head: u32) {
    use iced_x86::code_asm::*;

    p.asm.mov(rbx, area).unwrap();
    p.asm
        .mov(word_ptr(rbx + AVAIL + 4 + 2 * slot as i32), head)
        .unwrap();
    p.asm.mov(word_ptr(rbx + AVAIL + 2), slot + 1).unwrap();
}

/// Runs `vm`, stopping it if it has not ended after `limit`.
pub fn run_with_watchdog(vm: Vm, limit: Duration) -> ExitReason {
    let handle = vm.handle();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            handle.stop();
        }
    });
    let reason = vm.run().unwrap();
    drop(done);
    watchdog.join().unwrap();
    reason
}

/// Checks the [`init_device`] part of a report.
pub fn check_init(report: &mut Report<'_>, device_id: u64, queues: usize) {
    assert_eq!(report.u64(), 0x7472_6976, "magic \"virt\"");
    assert_eq!(report.u64(), 2, "virtio-mmio version");
    assert_eq!(report.u64(), device_id, "device ID");
    assert_eq!(report.u64() & 1, 1, "VIRTIO_F_VERSION_1 offered");
    assert_eq!(report.u64() & 0x8, 0x8, "FEATURES_OK accepted");
    for _ in 0..queues {
        assert!(report.u64() >= u64::from(QUEUE_SIZE), "QueueNumMax");
    }
}
