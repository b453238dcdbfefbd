//! Probe guests drive the virtio-vsock device by polling, both ways through
//! the hybrid vsock: the guest connects to a host Unix listener
//! (`<uds>_<port>`), and a host program connects to the guest through the
//! device's socket with `CONNECT <port>\n`, as distroctl reaches its agent.

mod probe_guest;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use probe_guest::virtio_driver::{
    check_init, descriptor, init_device, publish, run_with_watchdog, POLL_LIMIT, USED,
};
use probe_guest::{bzimage, kvm_unavailable, probe_config, write_file, Probe, Report};
use vmm::arch::layout::VIRTIO_MMIO_START;
use vmm::config::VsockConfig;
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

const MARKER: &[u8] = b"PROBE-VSOCK:";
/// Guest memory for the queues (rx, tx, event), then packets and buffers.
const AREA: u64 = 0x30_0000;
const QUEUES: [u64; 3] = [AREA, AREA + 0x8000, AREA + 0x1_0000];
const TX_PACKETS: u64 = AREA + 0x1_8000;
const RX_BUFFERS: u64 = AREA + 0x2_0000;
const RX_BUFFER_SIZE: u32 = 0x1000;
/// Receive buffers posted up front.
const RX_POSTED: u32 = 4;
const HEADER_LEN: u32 = 44;
const GUEST_CID: u64 = 3;
const OP_REQUEST: u32 = 1;
const OP_RESPONSE: u32 = 2;
const OP_RW: u32 = 5;
/// The guest's port when it connects out.
const GUEST_PORT: u32 = 5000;
/// The host listener the guest connects to.
const HOST_PORT: u32 = 1234;
/// The port the guest accepts on (the agent's).
const GUEST_LISTEN_PORT: u32 = 1024;

/// A port in a header the guest writes.
#[derive(Clone, Copy)]
enum Port {
    Fixed(u32),
    /// The source port of the last packet reported (kept in `r9d`).
    PeerOfLastPacket,
}

/// Writes a header (virtio 1.2, 5.10.6) and an optional 4-byte payload for
/// tx slot `slot`, publishes it and notifies the tx queue.
fn send(
    p: &mut Probe,
    slot: u32,
    op: u32,
    src_port: u32,
    dst_port: Port,
    payload: Option<&[u8; 4]>,
) {
    use iced_x86::code_asm::*;

    let header = TX_PACKETS + u64::from(slot) * 0x100;
    let data = header + 0x80;
    p.asm.mov(rbx, header).unwrap();
    p.asm.mov(rax, GUEST_CID).unwrap();
    p.asm.mov(qword_ptr(rbx), rax).unwrap(); // src_cid
    p.asm.mov(rax, 2u64).unwrap();
    p.asm.mov(qword_ptr(rbx + 8), rax).unwrap(); // dst_cid: the host
    p.asm.mov(dword_ptr(rbx + 16), src_port).unwrap();
    match dst_port {
        Port::Fixed(port) => p.asm.mov(dword_ptr(rbx + 20), port).unwrap(),
        Port::PeerOfLastPacket => p.asm.mov(dword_ptr(rbx + 20), r9d).unwrap(),
    }
    let len = if payload.is_some() { 4 } else { 0 };
    p.asm.mov(dword_ptr(rbx + 24), len).unwrap();
    p.asm.mov(dword_ptr(rbx + 28), 1 | (op << 16)).unwrap(); // stream, op
    p.asm.mov(dword_ptr(rbx + 32), 0u32).unwrap(); // flags
    p.asm.mov(dword_ptr(rbx + 36), 0x1_0000u32).unwrap(); // buf_alloc
    p.asm.mov(dword_ptr(rbx + 40), 0u32).unwrap(); // fwd_cnt
    let head = u64::from(slot) * 2;
    match payload {
        Some(bytes) => {
            // Header and payload in two descriptors, as Linux sends them.
            p.asm.mov(rbx, data).unwrap();
            p.asm
                .mov(dword_ptr(rbx), u32::from_le_bytes(*bytes))
                .unwrap();
            descriptor(p, QUEUES[1], head, header, HEADER_LEN, 1, head as u32 + 1);
            descriptor(p, QUEUES[1], head + 1, data, 4, 0, 0);
        }
        None => descriptor(p, QUEUES[1], head, header, HEADER_LEN, 0, 0),
    }
    publish(p, QUEUES[1], slot, head as u32);
    p.asm.mov(rbx, VIRTIO_MMIO_START).unwrap();
    p.asm.mov(dword_ptr(rbx + 0x050), 1u32).unwrap(); // QueueNotify: tx
}

/// Waits for the rx used index to reach `count`, then reports it and the
/// op, length, source port, destination port and first 4 payload bytes of
/// that packet (each a u64). Leaves the source port in `r9d` and the
/// buffer's address in `rbx`.
fn report_rx_packet(p: &mut Probe, count: u32) {
    use iced_x86::code_asm::*;

    p.asm.mov(r12, QUEUES[0]).unwrap();
    p.wait_for_u16(r12, USED + 2, count, POLL_LIMIT);
    p.emit_rax();
    let element = USED + 4 + 8 * (count as i32 - 1);
    p.asm.mov(eax, dword_ptr(r12 + element)).unwrap(); // descriptor id
    p.asm.imul_3(eax, eax, RX_BUFFER_SIZE as i32).unwrap();
    p.asm.mov(rbx, RX_BUFFERS).unwrap();
    p.asm.add(rbx, rax).unwrap();
    p.asm.mov(r9d, dword_ptr(rbx + 16)).unwrap();
    for (offset, word) in [
        (30, true),
        (24, false),
        (16, false),
        (20, false),
        (44, false),
    ] {
        if word {
            p.asm.movzx(eax, word_ptr(rbx + offset)).unwrap();
        } else {
            p.asm.mov(eax, dword_ptr(rbx + offset)).unwrap();
        }
        p.emit_rax();
    }
}

/// Reports received packets (used index 2 up to [`RX_POSTED`]) until one
/// carries data.
fn report_until_data(p: &mut Probe) {
    use iced_x86::code_asm::*;

    let mut done = p.asm.create_label();
    for count in 2..=RX_POSTED {
        report_rx_packet(p, count);
        p.asm.movzx(eax, word_ptr(rbx + 30)).unwrap();
        p.asm.cmp(eax, OP_RW).unwrap();
        p.asm.je(done).unwrap();
    }
    p.asm.set_label(&mut done).unwrap();
}

/// The common start: initialise the device in the first window (no disk is
/// configured) and post the receive buffers.
fn start() -> Probe {
    use iced_x86::code_asm::*;

    let mut p = Probe::new();
    p.asm.mov(r14, VIRTIO_MMIO_START).unwrap();
    p.emit_literal(MARKER);
    init_device(&mut p, r14, &QUEUES);
    for slot in 0..RX_POSTED {
        let buffer = RX_BUFFERS + u64::from(slot * RX_BUFFER_SIZE);
        descriptor(&mut p, QUEUES[0], slot.into(), buffer, RX_BUFFER_SIZE, 2, 0);
        publish(&mut p, QUEUES[0], slot, slot);
    }
    p.asm.mov(dword_ptr(r14 + 0x050), 0u32).unwrap(); // QueueNotify: rx
    p
}

/// Guest to host: connect to [`HOST_PORT`], send "ping", expect data back.
fn connecting_probe() -> Vec<u8> {
    let mut p = start();
    send(
        &mut p,
        0,
        OP_REQUEST,
        GUEST_PORT,
        Port::Fixed(HOST_PORT),
        None,
    );
    report_rx_packet(&mut p, 1);
    send(
        &mut p,
        1,
        OP_RW,
        GUEST_PORT,
        Port::Fixed(HOST_PORT),
        Some(b"ping"),
    );
    report_until_data(&mut p);
    p.emit_literal(b"END");
    p.finish()
}

/// Host to guest: accept the host's request on [`GUEST_LISTEN_PORT`],
/// expect data, answer "back", wait until the device took it.
fn accepting_probe() -> Vec<u8> {
    use iced_x86::code_asm::*;

    let mut p = start();
    report_rx_packet(&mut p, 1);
    let reply_to = Port::PeerOfLastPacket;
    send(&mut p, 0, OP_RESPONSE, GUEST_LISTEN_PORT, reply_to, None);
    report_until_data(&mut p);
    send(&mut p, 1, OP_RW, GUEST_LISTEN_PORT, reply_to, Some(b"back"));
    p.asm.mov(rbx, QUEUES[1]).unwrap();
    p.wait_for_u16(rbx, USED + 2, 2, POLL_LIMIT); // tx used index
    p.emit_literal(b"END");
    p.finish()
}

/// What the probe reported about one received packet.
#[derive(Debug, PartialEq, Eq)]
struct RxPacket {
    used_index: u64,
    op: u64,
    len: u64,
    src_port: u64,
    dst_port: u64,
    payload: [u8; 4],
}

fn read_packet(report: &mut Report<'_>) -> RxPacket {
    RxPacket {
        used_index: report.u64(),
        op: report.u64(),
        len: report.u64(),
        src_port: report.u64(),
        dst_port: report.u64(),
        payload: (report.u64() as u32).to_le_bytes(),
    }
}

/// Reads packet reports until the data packet [`report_until_data`] stops at.
fn read_until_data(report: &mut Report<'_>) -> RxPacket {
    for expected_index in 2..=u64::from(RX_POSTED) {
        let packet = read_packet(report);
        assert_eq!(packet.used_index, expected_index, "{packet:?}");
        if packet.op == u64::from(OP_RW) {
            return packet;
        }
    }
    panic!("no data packet reached the guest");
}

fn vsock_vm(dir: &Path, probe: &[u8]) -> Vm {
    let kernel = write_file(dir, "probe.bzImage", &bzimage(probe));
    let mut config = probe_config(dir, kernel, None, "console=ttyS0");
    config.vsock = Some(VsockConfig {
        cid: GUEST_CID,
        uds_path: dir.join("vsock.sock"),
    });
    Vm::new(config).unwrap()
}

#[test]
fn probe_vsock_guest_connects_to_a_host_listener() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
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
    let vm = vsock_vm(dir.path(), &connecting_probe());

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
    let reply = read_packet(&mut report);
    assert_eq!((reply.used_index, reply.op), (1, u64::from(OP_RESPONSE)));
    assert_eq!(
        (reply.src_port, reply.dst_port),
        (u64::from(HOST_PORT), u64::from(GUEST_PORT))
    );
    let data = read_until_data(&mut report);
    assert_eq!((data.len, &data.payload), (4, b"pong"));
    assert_eq!(report.take(3), b"END");
}

/// One try of the host side: `CONNECT`, read the `OK` line, send "helo",
/// read 4 bytes back. `None` when the connection is refused or dropped.
fn connect_and_exchange(uds: &Path) -> Option<(String, [u8; 4])> {
    let mut stream = UnixStream::connect(uds).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(format!("CONNECT {GUEST_LISTEN_PORT}\n").as_bytes())
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    if reader.read_line(&mut ok).ok()? == 0 {
        return None;
    }
    stream.write_all(b"helo").unwrap();
    let mut back = [0u8; 4];
    reader.read_exact(&mut back).unwrap();
    Some((ok, back))
}

#[test]
fn probe_vsock_host_connects_to_the_guest_with_connect_line() {
    if let Some(reason) = kvm_unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = vsock_vm(dir.path(), &accepting_probe());
    let uds = dir.path().join("vsock.sock");
    let host = std::thread::spawn(move || {
        // Until the guest's driver is up, the device refuses or (on the
        // driver's reset) drops connections; retry as distroctl does.
        for _ in 0..200 {
            if let Some(result) = connect_and_exchange(&uds) {
                return result;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the guest never accepted the connection");
    });

    let reason = run_with_watchdog(vm, Duration::from_secs(30));

    assert_eq!(reason, ExitReason::PowerOff, "the probe did not finish");
    let (ok, back) = host.join().unwrap();
    let console = std::fs::read(dir.path().join("console.log")).unwrap();
    let mut report = Report::find(&console, MARKER);
    check_init(&mut report, 19, 3);
    let request = read_packet(&mut report);
    assert_eq!((request.used_index, request.op), (1, u64::from(OP_REQUEST)));
    assert_eq!(request.dst_port, u64::from(GUEST_LISTEN_PORT));
    assert_eq!(
        ok,
        format!("OK {}\n", request.src_port),
        "the host's handshake reply"
    );
    let data = read_until_data(&mut report);
    assert_eq!((data.len, &data.payload), (4, b"helo"));
    assert_eq!(&back, b"back", "what the host program read");
    assert_eq!(report.take(3), b"END");
}
