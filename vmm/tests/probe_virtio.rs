//! A probe guest drives the virtio-blk device through its virtio-mmio
//! registers by polling, the way a driver without interrupts would:
//! identification, feature negotiation, queue setup, one write and one read
//! on a temporary data disk. The VM is the one `Vm::new` builds (data disk
//! first, at the first virtio-mmio window), entered through the Linux boot
//! path.

mod probe_guest;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::Duration;

use probe_guest::{bzimage, kvm_unavailable, probe_config, write_file, Probe, Report};
use vmm::arch::layout::VIRTIO_MMIO_START;
use vmm::config::VsockConfig;
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

/// The driver's side of device initialisation (virtio 1.2, 3.1.1) for the
/// device whose registers `regs` points at, with one queue per entry of
/// `queue_areas` (descriptor table, avail and used rings at [`DESC`],
/// [`AVAIL`], [`USED`] inside it). Reports magic, version, device ID, the
/// high feature word, the status after FEATURES_OK and each QueueNumMax.
fn init_device(p: &mut Probe, regs: iced_x86::code_asm::AsmRegister64, queue_areas: &[u64]) {
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
fn descriptor(p: &mut Probe, area: u64, index: u64, addr: u64, len: u32, flags: u32, next: u32) {
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
fn publish(p: &mut Probe, area: u64, slot: u32, head: u32) {
    use iced_x86::code_asm::*;

    p.asm.mov(rbx, area).unwrap();
    p.asm
        .mov(word_ptr(rbx + AVAIL + 4 + 2 * slot as i32), head)
        .unwrap();
    p.asm.mov(word_ptr(rbx + AVAIL + 2), slot + 1).unwrap();
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

/// Guest memory for the vsock queues: rx, tx, event, then buffers.
const VSOCK_AREA: u64 = 0x30_0000;
const VSOCK_QUEUES: [u64; 3] = [VSOCK_AREA, VSOCK_AREA + 0x8000, VSOCK_AREA + 0x1_0000];
const VSOCK_RX_BUFFERS: u64 = VSOCK_AREA + 0x2_0000;
const VSOCK_RX_BUFFER_SIZE: u32 = 0x1000;
const VSOCK_TX_PACKETS: u64 = VSOCK_AREA + 0x1_8000;
const VSOCK_HEADER: u32 = 44;
const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 5000;
const HOST_PORT: u32 = 1234;
/// Receive buffers posted up front.
const RX_POSTED: u32 = 4;

/// Writes a vsock packet header (virtio 1.2, 5.10.6) at `addr`.
fn vsock_header(p: &mut Probe, addr: u64, op: u32, len: u32) {
    use iced_x86::code_asm::*;

    p.asm.mov(rbx, addr).unwrap();
    p.asm.mov(rax, GUEST_CID).unwrap();
    p.asm.mov(qword_ptr(rbx), rax).unwrap(); // src_cid
    p.asm.mov(rax, 2u64).unwrap();
    p.asm.mov(qword_ptr(rbx + 8), rax).unwrap(); // dst_cid: the host
    p.asm.mov(dword_ptr(rbx + 16), GUEST_PORT).unwrap();
    p.asm.mov(dword_ptr(rbx + 20), HOST_PORT).unwrap();
    p.asm.mov(dword_ptr(rbx + 24), len).unwrap();
    p.asm.mov(dword_ptr(rbx + 28), 1 | (op << 16)).unwrap(); // type stream, op
    p.asm.mov(dword_ptr(rbx + 32), 0u32).unwrap(); // flags
    p.asm.mov(dword_ptr(rbx + 36), 0x1_0000u32).unwrap(); // buf_alloc
    p.asm.mov(dword_ptr(rbx + 40), 0u32).unwrap(); // fwd_cnt
}

/// Waits for the rx used index to reach `count` and reports it, then the
/// op, length and first 4 payload bytes of the packet in used slot
/// `count - 1` (each a u64).
fn report_rx_packet(p: &mut Probe, count: u32) {
    use iced_x86::code_asm::*;

    p.asm.mov(r12, VSOCK_QUEUES[0]).unwrap();
    p.wait_for_u16(r12, USED + 2, count, POLL_LIMIT);
    p.emit_rax();
    // The buffer of that used element: RX_BUFFERS + id * size.
    p.asm
        .mov(eax, dword_ptr(r12 + USED + 4 + 8 * (count as i32 - 1)))
        .unwrap();
    p.asm.imul_3(eax, eax, VSOCK_RX_BUFFER_SIZE as i32).unwrap();
    p.asm.mov(rbx, VSOCK_RX_BUFFERS).unwrap();
    p.asm.add(rbx, rax).unwrap();
    p.asm.movzx(eax, word_ptr(rbx + 30)).unwrap();
    p.emit_rax();
    p.asm.mov(eax, dword_ptr(rbx + 24)).unwrap();
    p.emit_rax();
    p.asm.mov(eax, dword_ptr(rbx + 44)).unwrap();
    p.emit_rax();
}

/// Assembles the vsock probe: [`init_device`] on the second window, post
/// receive buffers, connect to host port [`HOST_PORT`], report the reply,
/// send "ping", then report received packets until a data packet (at
/// most three), "END".
fn virtio_vsock_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::new();
    p.asm.mov(r14, VIRTIO_MMIO_START + 0x1000).unwrap();
    p.emit_literal(MARKER);
    init_device(&mut p, r14, &VSOCK_QUEUES);

    for slot in 0..RX_POSTED {
        let buffer = VSOCK_RX_BUFFERS + u64::from(slot * VSOCK_RX_BUFFER_SIZE);
        descriptor(
            &mut p,
            VSOCK_QUEUES[0],
            slot.into(),
            buffer,
            VSOCK_RX_BUFFER_SIZE,
            2,
            0,
        );
        publish(&mut p, VSOCK_QUEUES[0], slot, slot);
    }
    p.asm.mov(dword_ptr(r14 + 0x050), 0u32).unwrap(); // notify rx

    // REQUEST: a header alone.
    vsock_header(&mut p, VSOCK_TX_PACKETS, 1, 0);
    descriptor(
        &mut p,
        VSOCK_QUEUES[1],
        0,
        VSOCK_TX_PACKETS,
        VSOCK_HEADER,
        0,
        0,
    );
    publish(&mut p, VSOCK_QUEUES[1], 0, 0);
    p.asm.mov(dword_ptr(r14 + 0x050), 1u32).unwrap(); // notify tx
    report_rx_packet(&mut p, 1);

    // RW "ping": header and payload in two descriptors, as Linux sends it.
    let payload = VSOCK_TX_PACKETS + 0x100;
    vsock_header(&mut p, VSOCK_TX_PACKETS + 0x80, 5, 4);
    p.asm.mov(rbx, payload).unwrap();
    p.asm
        .mov(dword_ptr(rbx), u32::from_le_bytes(*b"ping"))
        .unwrap();
    descriptor(
        &mut p,
        VSOCK_QUEUES[1],
        1,
        VSOCK_TX_PACKETS + 0x80,
        VSOCK_HEADER,
        1,
        2,
    );
    descriptor(&mut p, VSOCK_QUEUES[1], 2, payload, 4, 0, 0);
    publish(&mut p, VSOCK_QUEUES[1], 1, 1);
    p.asm.mov(dword_ptr(r14 + 0x050), 1u32).unwrap();

    let mut done = p.asm.create_label();
    for count in 2..=RX_POSTED {
        report_rx_packet(&mut p, count);
        p.asm.movzx(eax, word_ptr(rbx + 30)).unwrap();
        p.asm.cmp(eax, 5u32).unwrap();
        p.asm.je(done).unwrap();
    }
    p.asm.set_label(&mut done).unwrap();
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

/// Checks the [`init_device`] part of a report.
fn check_init(report: &mut Report<'_>, device_id: u64, queues: usize) {
    assert_eq!(report.u64(), 0x7472_6976, "magic \"virt\"");
    assert_eq!(report.u64(), 2, "virtio-mmio version");
    assert_eq!(report.u64(), device_id, "device ID");
    assert_eq!(report.u64() & 1, 1, "VIRTIO_F_VERSION_1 offered");
    assert_eq!(report.u64() & 0x8, 0x8, "FEATURES_OK accepted");
    for _ in 0..queues {
        assert!(report.u64() >= u64::from(QUEUE_SIZE), "QueueNumMax");
    }
}

#[test]
fn probe_virtio_mmio_vsock_connects_to_a_host_listener() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping probe_virtio_mmio_vsock_connects_to_a_host_listener: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "probe.bzImage", &bzimage(&virtio_vsock_probe()));
    let disk = write_file(dir.path(), "data.img", &[0; 4096]);
    let uds = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(dir.path().join(format!("vsock.sock_{HOST_PORT}"))).unwrap();
    let host = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut ping = [0u8; 4];
        stream.read_exact(&mut ping).unwrap();
        stream.write_all(b"pong").unwrap();
        // Keep the connection open until the VM is gone.
        let _ = stream.read(&mut [0u8; 1]);
        ping
    });
    let mut config = probe_config(dir.path(), kernel, None, "console=ttyS0");
    config.disk = Some(disk);
    config.vsock = Some(VsockConfig {
        cid: GUEST_CID,
        uds_path: uds,
    });

    let vm = Vm::new(config).unwrap();
    let reason = run_with_watchdog(vm, Duration::from_secs(30));

    assert_eq!(reason, ExitReason::PowerOff, "the probe did not finish");
    assert_eq!(
        &host.join().unwrap(),
        b"ping",
        "what the host listener read"
    );
    let console = std::fs::read(dir.path().join("console.log")).unwrap();
    let mut report = Report::find(&console, MARKER);
    check_init(&mut report, 19, 3);
    assert_eq!(report.u64(), 1, "a reply to the connection request");
    assert_eq!(report.u64(), 2, "VSOCK_OP_RESPONSE");
    report.take(16);
    let mut data = None;
    for count in 2..=u64::from(RX_POSTED) {
        assert_eq!(report.u64(), count, "rx used index");
        let (op, len, payload) = (report.u64(), report.u64(), report.u64());
        if op == 5 {
            data = Some((len, payload));
            break;
        }
    }
    assert_eq!(data, Some((4, u64::from(u32::from_le_bytes(*b"pong")))));
    assert_eq!(report.take(3), b"END");
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

/// Reports magic and device ID of the first four virtio-mmio windows.
fn window_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = Probe::new();
    p.emit_literal(MARKER);
    for window in 0..4u64 {
        p.asm.mov(rbx, VIRTIO_MMIO_START + window * 0x1000).unwrap();
        p.asm.mov(eax, dword_ptr(rbx)).unwrap();
        p.emit_rax();
        p.asm.mov(eax, dword_ptr(rbx + 8)).unwrap();
        p.emit_rax();
    }
    p.emit_literal(b"END");
    p.finish()
}

#[test]
fn probe_virtio_windows_match_the_dsdt_disk_vsock_rng() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "probe.bzImage", &bzimage(&window_probe()));
    let mut config = probe_config(dir.path(), kernel, None, "console=ttyS0");
    config.disk = Some(write_file(dir.path(), "data.img", &[0; 4096]));
    config.vsock = Some(VsockConfig {
        cid: GUEST_CID,
        uds_path: dir.path().join("vsock.sock"),
    });
    config.rng = true;

    let vm = Vm::new(config).unwrap();
    let mem = vm.memory().clone();
    let rsdp = vm.boot_plan().rsdp_addr;
    let reason = run_with_watchdog(vm, Duration::from_secs(30));

    assert_eq!(reason, ExitReason::PowerOff);
    let console = std::fs::read(dir.path().join("console.log")).unwrap();
    let mut report = Report::find(&console, MARKER);
    let windows: Vec<(u64, u64)> = (0..4).map(|_| (report.u64(), report.u64())).collect();
    let magic = 0x7472_6976;
    assert_eq!(
        windows,
        vec![
            (magic, 2),
            (magic, 19),
            (magic, 4),
            (0xffff_ffff, 0xffff_ffff)
        ],
        "block, vsock, rng, then nothing"
    );
    let dsdt = dsdt_from_guest_memory(&mem, rsdp);
    let described: Vec<u32> = dsdt
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0x86, 9, 0, 1]) // Memory32Fixed, read-write
        .map(|(at, _)| u32::from_le_bytes(dsdt[at + 4..at + 8].try_into().unwrap()))
        .collect();
    let expected: Vec<u32> = (0..3)
        .map(|i| (VIRTIO_MMIO_START + i * 0x1000) as u32)
        .collect();
    assert_eq!(
        described, expected,
        "the DSDT lists exactly the live windows"
    );
}
