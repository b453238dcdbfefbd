//! A probe guest drives the virtio-blk device through its virtio-mmio
//! registers by polling, the way a driver without interrupts would:
//! identification, feature negotiation, queue setup, one write and one read
//! on a temporary data disk. The VM is the one `Vm::new` builds (data disk
//! first, at the first virtio-mmio window), entered through the Linux boot
//! path.

mod probe_guest;

use std::os::unix::net::UnixListener;
use std::time::Duration;

use probe_guest::virtio_driver::{
    check_init, descriptor, init_device, publish, run_with_watchdog, POLL_LIMIT, USED,
};
use probe_guest::{bzimage, kvm_unavailable, probe_config, write_file, Probe, Report};
use vmm::arch::layout::VIRTIO_MMIO_START;
use vmm::config::{NetConfig, VsockConfig};
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

const MARKER: &[u8] = b"PROBE-VIRTIO:";
/// Guest memory for the queue and buffers (the probe owns 2 MiB..2.5 MiB).
const QUEUE_AREA: u64 = 0x20_0000;
const REQUEST_HEADER: i32 = 0x3000;
const WRITE_BUFFER: i32 = 0x4000;
const STATUS_BYTE: i32 = 0x5000;
const READ_BUFFER: i32 = 0x6000;
const SECTOR: usize = 512;

/// The byte the probe writes at offset `i` of sector 1.
fn written_byte(i: usize) -> u8 {
    (i * 3 + 1) as u8
}

/// Assembles the virtio-blk probe: [`init_device`], capacity, then per
/// request the used index reached and the status byte, the sector read,
/// the interrupt status, "END" (each number a u64).
fn virtio_blk_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::new();
    p.asm.mov(r14, VIRTIO_MMIO_START).unwrap();
    p.asm.mov(r13, QUEUE_AREA).unwrap();
    p.emit_literal(MARKER);
    init_device(&mut p, r14, &[QUEUE_AREA]);
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

    // One request: header -> data -> status (device-writable), published
    // in avail slot `round`; notify, poll the used index, report it and the
    // status byte.
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
            let at = |offset: i32| QUEUE_AREA + offset as u64;
            descriptor(p, QUEUE_AREA, 0, at(REQUEST_HEADER), 16, 1, 1);
            descriptor(
                p,
                QUEUE_AREA,
                1,
                at(buffer),
                SECTOR as u32,
                1 | data_flags,
                2,
            );
            descriptor(p, QUEUE_AREA, 2, at(STATUS_BYTE), 1, 2, 0);
            publish(p, QUEUE_AREA, round, 0);
            p.asm.mov(dword_ptr(r14 + 0x050), 0u32).unwrap(); // QueueNotify
            p.wait_for_u16(r13, USED + 2, round + 1, POLL_LIMIT);
            p.emit_rax();
            p.asm.movzx(eax, byte_ptr(r13 + STATUS_BYTE)).unwrap();
            p.emit_rax();
        };
    request(&mut p, 1, 1, WRITE_BUFFER, 0, 0); // VIRTIO_BLK_T_OUT to sector 1
    request(&mut p, 0, 0, READ_BUFFER, 2, 1); // VIRTIO_BLK_T_IN from sector 0
    p.emit_memory(r13, READ_BUFFER, SECTOR as u32);

    p.asm.mov(eax, dword_ptr(r14 + 0x060)).unwrap(); // InterruptStatus
    p.emit_rax();
    p.asm.mov(dword_ptr(r14 + 0x064), 1u32).unwrap(); // InterruptACK
    p.emit_literal(b"END");
    p.finish()
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
    check_init(&mut report, 2, 1);
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

/// Reads the DSDT the VMM wrote, following RSDP → XSDT → FADT.
fn dsdt_from_guest_memory(mem: &vm_memory::GuestMemoryMmap, rsdp: u64) -> Vec<u8> {
    use vm_memory::{Bytes, GuestAddress};

    let read_u64 = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).unwrap();
    let read_u32 = |addr: u64| mem.read_obj::<u32>(GuestAddress(addr)).unwrap();
    let xsdt = read_u64(rsdp + 24);
    let entries = (read_u32(xsdt + 4) as u64 - 36) / 8;
    let fadt = (0..entries)
        .map(|i| read_u64(xsdt + 36 + 8 * i))
        .find(|&table| read_u32(table) == u32::from_le_bytes(*b"FACP"))
        .expect("no FADT in the XSDT");
    let dsdt = read_u64(fadt + 140);
    let mut bytes = vec![0u8; read_u32(dsdt + 4) as usize];
    mem.read_slice(&mut bytes, GuestAddress(dsdt)).unwrap();
    bytes
}

/// Reports magic and device ID of the first five virtio-mmio windows, then
/// the first 8 configuration bytes of the fourth (the network device's MAC
/// and link status).
fn window_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::new();
    p.emit_literal(MARKER);
    for window in 0..5u64 {
        p.asm.mov(rbx, VIRTIO_MMIO_START + window * 0x1000).unwrap();
        p.asm.mov(eax, dword_ptr(rbx)).unwrap();
        p.emit_rax();
        p.asm.mov(eax, dword_ptr(rbx + 8)).unwrap();
        p.emit_rax();
    }
    p.asm.mov(rbx, VIRTIO_MMIO_START + 3 * 0x1000).unwrap();
    p.asm.mov(rax, qword_ptr(rbx + 0x100)).unwrap();
    p.emit_rax();
    p.emit_literal(b"END");
    p.finish()
}

#[test]
fn probe_virtio_windows_match_the_dsdt_disk_vsock_rng_net() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "probe.bzImage", &bzimage(&window_probe()));
    let mut config = probe_config(dir.path(), kernel, None, "console=ttyS0");
    config.disk = Some(write_file(dir.path(), "data.img", &[0; 4096]));
    config.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: dir.path().join("vsock.sock"),
    });
    config.rng = true;
    // Stands in for passt: the VMM connects at start, the backlog accepts.
    let net_socket = dir.path().join("net.sock");
    let _backend = UnixListener::bind(&net_socket).unwrap();
    config.net = Some(NetConfig::new(&net_socket));

    let vm = Vm::new(config).unwrap();
    let mem = vm.memory().clone();
    let rsdp = vm.boot_plan().rsdp_addr;
    let reason = run_with_watchdog(vm, Duration::from_secs(30));

    assert_eq!(reason, ExitReason::PowerOff);
    let console = std::fs::read(dir.path().join("console.log")).unwrap();
    let mut report = Report::find(&console, MARKER);
    let windows: Vec<(u64, u64)> = (0..5).map(|_| (report.u64(), report.u64())).collect();
    let net_config = report.u64().to_le_bytes();
    let magic = 0x7472_6976;
    assert_eq!(
        windows,
        vec![
            (magic, 2),
            (magic, 19),
            (magic, 4),
            (magic, 1),
            (0xffff_ffff, 0xffff_ffff)
        ],
        "block, vsock, rng, net, then nothing"
    );
    assert_eq!(
        net_config,
        [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0],
        "default MAC, link up"
    );
    let dsdt = dsdt_from_guest_memory(&mem, rsdp);
    let described: Vec<u32> = dsdt
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0x86, 9, 0, 1]) // Memory32Fixed, read-write
        .map(|(at, _)| u32::from_le_bytes(dsdt[at + 4..at + 8].try_into().unwrap()))
        .collect();
    let expected: Vec<u32> = (0..4)
        .map(|i| (VIRTIO_MMIO_START + i * 0x1000) as u32)
        .collect();
    assert_eq!(
        described, expected,
        "the DSDT lists exactly the live windows"
    );
}
