//! A probe guest drives the virtio-blk device through its virtio-mmio
//! registers by polling, the way a driver without interrupts would:
//! identification, feature negotiation, queue setup, one write and one read
//! on a temporary data disk. The VM is the one `Vm::new` builds (data disk
//! first, at the first virtio-mmio window), entered through the Linux boot
//! path.

mod probe_guest;

use std::sync::mpsc;
use std::time::Duration;

use probe_guest::{bzimage, kvm_unavailable, probe_config, write_file, Probe, Report};
use vmm::arch::layout::VIRTIO_MMIO_START;
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

const MARKER: &[u8] = b"PROBE-VIRTIO:";
/// Guest memory for the queue and buffers (the probe owns 2 MiB..2.5 MiB).
const QUEUE_AREA: u64 = 0x20_0000;
const DESC: i32 = 0x0000;
const AVAIL: i32 = 0x1000;
const USED: i32 = 0x2000;
const REQUEST_HEADER: i32 = 0x3000;
const WRITE_BUFFER: i32 = 0x4000;
const STATUS_BYTE: i32 = 0x5000;
const READ_BUFFER: i32 = 0x6000;
const QUEUE_SIZE: u32 = 8;
const SECTOR: usize = 512;
/// Polling rounds before the probe gives up on the device.
const POLL_LIMIT: u32 = 200_000_000;

/// The byte the probe writes at offset `i` of sector 1.
fn written_byte(i: usize) -> u8 {
    (i * 3 + 1) as u8
}

/// Assembles the probe. `r14` = the device's registers, `r13` = the queue
/// area. The report: magic, version, device ID, device features (high
/// word), status after FEATURES_OK, QueueNumMax, capacity, then per request
/// the used index reached and the status byte, the sector read, the
/// interrupt status, "END" (each number a u64).
fn virtio_blk_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::new();
    p.asm.mov(r14, VIRTIO_MMIO_START).unwrap();
    p.asm.mov(r13, QUEUE_AREA).unwrap();
    p.emit_literal(MARKER);

    let read_reg = |p: &mut Probe, offset: i32| {
        p.asm.mov(eax, dword_ptr(r14 + offset)).unwrap();
        p.emit_rax();
    };
    let write_reg = |p: &mut Probe, offset: i32, value: u32| {
        p.asm.mov(dword_ptr(r14 + offset), value).unwrap();
    };
    read_reg(&mut p, 0x000); // MagicValue
    read_reg(&mut p, 0x004); // Version
    read_reg(&mut p, 0x008); // DeviceID

    write_reg(&mut p, 0x070, 0); // reset
    write_reg(&mut p, 0x070, 1); // ACKNOWLEDGE
    write_reg(&mut p, 0x070, 3); // DRIVER
    write_reg(&mut p, 0x014, 1); // DeviceFeaturesSel = high word
    read_reg(&mut p, 0x010);
    write_reg(&mut p, 0x024, 1);
    write_reg(&mut p, 0x020, 1); // VIRTIO_F_VERSION_1 only
    write_reg(&mut p, 0x024, 0);
    write_reg(&mut p, 0x020, 0);
    write_reg(&mut p, 0x070, 0xb); // FEATURES_OK
    read_reg(&mut p, 0x070);

    write_reg(&mut p, 0x030, 0); // QueueSel
    read_reg(&mut p, 0x034); // QueueNumMax
    write_reg(&mut p, 0x038, QUEUE_SIZE);
    for (reg, offset) in [(0x080, DESC), (0x090, AVAIL), (0x0a0, USED)] {
        write_reg(&mut p, reg, (QUEUE_AREA as u32) + offset as u32);
        write_reg(&mut p, reg + 4, 0);
    }
    write_reg(&mut p, 0x044, 1); // QueueReady
    write_reg(&mut p, 0x070, 0xf); // DRIVER_OK
    p.asm.mov(rax, qword_ptr(r14 + 0x100)).unwrap(); // capacity in sectors
    p.emit_rax();

    // The write buffer: byte i = i * 3 + 1.
    p.asm.xor(ecx, ecx).unwrap();
    let mut fill = p.asm.create_label();
    p.asm.set_label(&mut fill).unwrap();
    p.asm.imul_3(eax, ecx, 3).unwrap();
    p.asm.inc(eax).unwrap();
    p.asm.mov(byte_ptr(r13 + rcx + WRITE_BUFFER), al).unwrap();
    p.asm.inc(ecx).unwrap();
    p.asm.cmp(ecx, SECTOR as u32).unwrap();
    p.asm.jne(fill).unwrap();

    // Descriptors: header -> data -> status (device-writable).
    let descriptor = |p: &mut Probe, index: i32, addr: i32, len: u32, flags: u32, next: u32| {
        let at = DESC + index * 16;
        p.asm.mov(rax, QUEUE_AREA + addr as u64).unwrap();
        p.asm.mov(qword_ptr(r13 + at), rax).unwrap();
        p.asm.mov(dword_ptr(r13 + at + 8), len).unwrap();
        p.asm
            .mov(dword_ptr(r13 + at + 12), flags | (next << 16))
            .unwrap();
    };
    // One request: type, sector, data buffer and its direction, then
    // publish descriptor 0 in avail slot `round`, notify, poll the used
    // index, report it and the status byte.
    let request =
        |p: &mut Probe, kind: u32, sector: u32, buffer: i32, data_flags: u32, round: u32| {
            p.asm.mov(dword_ptr(r13 + REQUEST_HEADER), kind).unwrap();
            p.asm
                .mov(dword_ptr(r13 + REQUEST_HEADER + 4), 0u32)
                .unwrap();
            p.asm
                .mov(dword_ptr(r13 + REQUEST_HEADER + 8), sector)
                .unwrap();
            p.asm
                .mov(dword_ptr(r13 + REQUEST_HEADER + 12), 0u32)
                .unwrap();
            p.asm.mov(byte_ptr(r13 + STATUS_BYTE), 0xffu32).unwrap();
            descriptor(p, 0, REQUEST_HEADER, 16, 1, 1);
            descriptor(p, 1, buffer, SECTOR as u32, 1 | data_flags, 2);
            descriptor(p, 2, STATUS_BYTE, 1, 2, 0);
            p.asm
                .mov(word_ptr(r13 + AVAIL + 4 + 2 * round as i32), 0u32)
                .unwrap();
            p.asm.mov(word_ptr(r13 + AVAIL + 2), round + 1).unwrap();
            p.asm.mov(dword_ptr(r14 + 0x050), 0u32).unwrap(); // QueueNotify
            p.asm.mov(ecx, POLL_LIMIT).unwrap();
            let mut poll = p.asm.create_label();
            let mut done = p.asm.create_label();
            p.asm.set_label(&mut poll).unwrap();
            p.asm.movzx(eax, word_ptr(r13 + USED + 2)).unwrap();
            p.asm.cmp(eax, round + 1).unwrap();
            p.asm.je(done).unwrap();
            p.asm.pause().unwrap();
            p.asm.dec(ecx).unwrap();
            p.asm.jnz(poll).unwrap();
            p.asm.set_label(&mut done).unwrap();
            p.emit_rax();
            p.asm.movzx(eax, byte_ptr(r13 + STATUS_BYTE)).unwrap();
            p.emit_rax();
        };
    request(&mut p, 1, 1, WRITE_BUFFER, 0, 0); // VIRTIO_BLK_T_OUT to sector 1
    request(&mut p, 0, 0, READ_BUFFER, 2, 1); // VIRTIO_BLK_T_IN from sector 0
    p.emit_memory(r13, READ_BUFFER, SECTOR as u32);

    read_reg(&mut p, 0x060); // InterruptStatus
    write_reg(&mut p, 0x064, 1); // InterruptACK
    p.emit_literal(b"END");
    p.finish()
}

/// Runs `vm`, stopping it if it has not ended after `limit`.
fn run_with_watchdog(vm: Vm, limit: Duration) -> ExitReason {
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

#[test]
fn probe_virtio_mmio() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping probe_virtio_mmio: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "probe.bzImage", &bzimage(&virtio_blk_probe()));
    let sector0: Vec<u8> = b"SECTOR0!".iter().copied().cycle().take(SECTOR).collect();
    let mut disk_bytes = sector0.clone();
    disk_bytes.resize(1 << 20, 0);
    let disk = write_file(dir.path(), "data.img", &disk_bytes);
    let mut config = probe_config(dir.path(), kernel, None, "console=ttyS0");
    config.disk = Some(disk.clone());

    let vm = Vm::new(config).unwrap();
    let reason = run_with_watchdog(vm, Duration::from_secs(30));

    assert_eq!(reason, ExitReason::PowerOff, "the probe did not finish");
    let console = std::fs::read(dir.path().join("console.log")).unwrap();
    let mut report = Report::find(&console, MARKER);
    assert_eq!(report.u64(), 0x7472_6976, "magic \"virt\"");
    assert_eq!(report.u64(), 2, "virtio-mmio version");
    assert_eq!(report.u64(), 2, "device ID (block)");
    assert_eq!(report.u64() & 1, 1, "VIRTIO_F_VERSION_1 offered");
    assert_eq!(report.u64() & 0x8, 0x8, "FEATURES_OK accepted");
    assert!(report.u64() >= u64::from(QUEUE_SIZE), "QueueNumMax");
    assert_eq!(report.u64(), (1 << 20) / SECTOR as u64, "capacity");
    assert_eq!(
        (report.u64(), report.u64()),
        (1, 0),
        "write: used index, status OK"
    );
    assert_eq!(
        (report.u64(), report.u64()),
        (2, 0),
        "read: used index, status OK"
    );
    assert_eq!(
        report.take(SECTOR),
        sector0.as_slice(),
        "sector 0 as the guest read it"
    );
    assert_eq!(report.u64() & 1, 1, "used-ring interrupt pending");
    assert_eq!(report.take(3), b"END");

    let on_disk = std::fs::read(&disk).unwrap();
    let expected: Vec<u8> = (0..SECTOR).map(written_byte).collect();
    assert_eq!(
        &on_disk[SECTOR..2 * SECTOR],
        expected.as_slice(),
        "sector 1 on the host"
    );
}
