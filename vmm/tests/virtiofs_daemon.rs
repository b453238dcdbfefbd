//! The virtio-fs device against the real `virtiofsd`: this test plays the
//! guest driver on the virtio-mmio registers and in guest RAM, the daemon
//! serves the queues through our vhost-user frontend, and FUSE requests
//! come back answered. Also the `--fs` flag of `distroctl-vmm`.
//!
//! The daemon is `$DISTROCTL_VIRTIOFSD`, else `virtiofsd` in
//! `~/.cargo/bin` or on `PATH`; without one each test prints why it skips.

mod probe_guest;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm::config::FsConfig;
use vmm::devices::virtio::fs::{FsDevice, FsEventHandler};
use vmm::devices::virtio::mmio::defs::*;
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::vm::guest_ram::{GuestRam, RamBacking, RamSharing};

/// `VIRTIO_ID_FS`.
const VIRTIO_ID_FS: u32 = 26;
/// `FUSE_LOOKUP`.
const FUSE_LOOKUP: u32 = 1;
/// `FUSE_INIT`.
const FUSE_INIT: u32 = 26;
/// `FUSE_ROOT_ID`.
const FUSE_ROOT_ID: u64 = 1;
/// Entries per queue the test driver uses.
const QUEUE_SIZE: u16 = 16;
/// `VRING_DESC_F_NEXT`.
const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
const F_WRITE: u16 = 2;

/// `struct fuse_in_header` (`<linux/fuse.h>`), 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FuseInHeader {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    total_extlen: u16,
    padding: u16,
}

/// `struct fuse_init_in` without the 7.36 extension (flags has no
/// `FUSE_INIT_EXT`), 16 bytes; also the first 16 bytes of `struct
/// fuse_init_out`, which starts with the same four fields.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct FuseInit {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
}

/// `struct fuse_out_header`, 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct FuseOutHeader {
    len: u32,
    error: i32,
    unique: u64,
}

/// `struct fuse_entry_out` up to `attr.size`: the rest is not checked.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct FuseEntryOutStart {
    nodeid: u64,
    generation: u64,
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
    attr_ino: u64,
    attr_size: u64,
}

/// `struct vring_desc`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

// SAFETY: plain `repr(C)` integers without padding holes that matter;
// any byte pattern is a valid value.
unsafe impl vm_memory::ByteValued for FuseInHeader {}
// SAFETY: as above.
unsafe impl vm_memory::ByteValued for FuseInit {}
// SAFETY: as above.
unsafe impl vm_memory::ByteValued for FuseOutHeader {}
// SAFETY: as above.
unsafe impl vm_memory::ByteValued for FuseEntryOutStart {}
// SAFETY: as above.
unsafe impl vm_memory::ByteValued for Descriptor {}

fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DISTROCTL_VIRTIOFSD") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    home.into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("virtiofsd"))
        .find(|candidate| candidate.is_file())
}

/// The daemon binary, or `None` after printing the skip line for `test`.
fn virtiofsd_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_virtiofsd();
    if found.is_none() {
        println!("SKIPPED {test}: no virtiofsd (cargo install virtiofsd)");
    }
    found
}

/// A running `virtiofsd` sharing a temporary directory; killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    shared: tempfile::TempDir,
    _sockets: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon with `--sandbox sandbox`; `None` if it exits
    /// before its socket appears (a sandbox this host cannot set up).
    fn start(binary: &Path, sandbox: &str) -> Option<Daemon> {
        let shared = tempfile::tempdir().unwrap();
        let sockets = tempfile::tempdir().unwrap();
        let socket = sockets.path().join("fs.sock");
        let mut child = Command::new(binary)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(shared.path())
            .args([
                "--sandbox",
                sandbox,
                "--cache",
                "never",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Some(Daemon {
            child,
            socket,
            shared,
            _sockets: sockets,
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The event loop on a thread of its own, serving one fs handler.
struct EventLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    fn start(handler: Arc<Mutex<FsEventHandler>>) -> EventLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut events =
                    EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
                events.add_subscriber(handler);
                while !stop.load(Ordering::Acquire) {
                    events.run_with_timeout(20).unwrap();
                }
            })
        };
        EventLoop {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Where the test driver puts queue `index`'s rings.
fn ring_addresses(index: u64) -> (u64, u64, u64) {
    let base = 0x10_0000 + index * 0x1_0000;
    (base, base + 0x1000, base + 0x2000)
}

/// The guest's side: registers through the transport, rings and buffers
/// in guest RAM.
struct Driver {
    transport: MmioTransport<FsDevice>,
    ram: GuestRam,
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
    unique: u64,
}

impl Driver {
    fn read(&mut self, register: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(register, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(&mut self, register: u64, value: u32) {
        self.transport.write(register, &value.to_le_bytes());
    }

    /// Linux's `virtio_mmio` + virtio core order: reset, ACKNOWLEDGE,
    /// DRIVER, features, FEATURES_OK, queues, DRIVER_OK.
    fn initialize(&mut self) -> u64 {
        self.write(REG_STATUS, 0);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.read(REG_DEVICE_FEATURES);
        let offered = (u64::from(high) << 32) | u64::from(low);
        // VERSION_1 only: without EVENT_IDX the daemon signals every
        // used buffer.
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, 0);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, 1);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(REG_STATUS, status);
        assert_eq!(
            self.read(REG_STATUS) & STATUS_FEATURES_OK,
            STATUS_FEATURES_OK
        );
        for index in 0..2u32 {
            let (desc, avail, used) = ring_addresses(u64::from(index));
            for addr in [desc, avail, used] {
                self.ram
                    .write_slice(&[0u8; 0x1000], GuestAddress(addr))
                    .unwrap();
            }
            self.write(REG_QUEUE_SEL, index);
            assert!(self.read(REG_QUEUE_NUM_MAX) >= u32::from(QUEUE_SIZE));
            self.write(REG_QUEUE_NUM, u32::from(QUEUE_SIZE));
            self.write(REG_QUEUE_DESC_LOW, desc as u32);
            self.write(REG_QUEUE_DESC_HIGH, 0);
            self.write(REG_QUEUE_DRIVER_LOW, avail as u32);
            self.write(REG_QUEUE_DRIVER_HIGH, 0);
            self.write(REG_QUEUE_DEVICE_LOW, used as u32);
            self.write(REG_QUEUE_DEVICE_HIGH, 0);
            self.write(REG_QUEUE_READY, 1);
        }
        self.avail_idx = [0; 2];
        self.used_seen = [0; 2];
        self.write(REG_STATUS, status | STATUS_DRIVER_OK);
        offered
    }

    /// Sends one FUSE request (`header` + `body`) on the first request
    /// queue with a `reply_len`-byte reply buffer, notifies, waits for the
    /// used-buffer interrupt and the used ring entry, and returns the
    /// reply's header and the bytes after it.
    fn request(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
        reply_len: u32,
    ) -> (FuseOutHeader, Vec<u8>) {
        const QUEUE: usize = 1;
        let (desc_table, avail, used) = ring_addresses(QUEUE as u64);
        let request = GuestAddress(0x20_0000);
        let reply = GuestAddress(0x21_0000);
        self.unique += 1;
        let header = FuseInHeader {
            len: (40 + body.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        self.ram.write_obj(header, request).unwrap();
        self.ram
            .write_slice(body, GuestAddress(request.0 + 40))
            .unwrap();
        self.ram
            .write_slice(&vec![0xeeu8; reply_len as usize], reply)
            .unwrap();
        let slot = (self.avail_idx[QUEUE] % (QUEUE_SIZE / 2)) * 2;
        let descriptors = [
            Descriptor {
                addr: request.0,
                len: header.len,
                flags: F_NEXT,
                next: slot + 1,
            },
            Descriptor {
                addr: reply.0,
                len: reply_len,
                flags: F_WRITE,
                next: 0,
            },
        ];
        for (i, d) in descriptors.iter().enumerate() {
            let at = desc_table + 16 * (u64::from(slot) + i as u64);
            self.ram.write_obj(*d, GuestAddress(at)).unwrap();
        }
        let ring_slot = u64::from(self.avail_idx[QUEUE] % QUEUE_SIZE);
        self.ram
            .write_obj(slot, GuestAddress(avail + 4 + 2 * ring_slot))
            .unwrap();
        self.avail_idx[QUEUE] = self.avail_idx[QUEUE].wrapping_add(1);
        self.ram
            .write_obj(self.avail_idx[QUEUE], GuestAddress(avail + 2))
            .unwrap();
        self.write(REG_QUEUE_NOTIFY, QUEUE as u32);

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let used_idx: u16 = self.ram.read_obj(GuestAddress(used + 2)).unwrap();
            if used_idx != self.used_seen[QUEUE] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not answer opcode {opcode}"
            );
            wait_readable(self.transport.interrupt().event().as_raw_fd(), 100);
        }
        // The daemon signalled: the event loop set the used-buffer bit.
        let irq_deadline = Instant::now() + Duration::from_secs(5);
        while self.read(REG_INTERRUPT_STATUS) & INT_USED_RING == 0 {
            assert!(Instant::now() < irq_deadline, "no used-buffer interrupt");
            thread::sleep(Duration::from_millis(5));
        }
        self.write(REG_INTERRUPT_ACK, INT_USED_RING);
        let _ = self.transport.interrupt().event().read();
        let element = used + 4 + 8 * u64::from(self.used_seen[QUEUE] % QUEUE_SIZE);
        let id: u32 = self.ram.read_obj(GuestAddress(element)).unwrap();
        let written: u32 = self.ram.read_obj(GuestAddress(element + 4)).unwrap();
        self.used_seen[QUEUE] = self.used_seen[QUEUE].wrapping_add(1);
        assert_eq!(id, u32::from(slot), "the used entry names our chain");
        let out: FuseOutHeader = self.ram.read_obj(reply).unwrap();
        assert_eq!(out.unique, self.unique);
        assert_eq!(out.len, written, "the used length is the reply's");
        let mut rest = vec![0u8; written.saturating_sub(16) as usize];
        self.ram
            .read_slice(&mut rest, GuestAddress(reply.0 + 16))
            .unwrap();
        (out, rest)
    }

    fn fuse_init(&mut self) -> FuseInit {
        let init = FuseInit {
            major: 7,
            minor: 31,
            max_readahead: 0x2_0000,
            flags: 0,
        };
        let (out, rest) = self.request(FUSE_INIT, 0, vm_memory::ByteValued::as_slice(&init), 256);
        assert_eq!(out.error, 0, "FUSE_INIT failed");
        *<FuseInit as vm_memory::ByteValued>::from_slice(&rest[..16]).unwrap()
    }

    fn fuse_lookup(&mut self, name: &str) -> (FuseOutHeader, Option<FuseEntryOutStart>) {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let (out, rest) = self.request(FUSE_LOOKUP, FUSE_ROOT_ID, &body, 16 + 128);
        let entry = (out.error == 0).then(|| {
            *<FuseEntryOutStart as vm_memory::ByteValued>::from_slice(&rest[..56]).unwrap()
        });
        (out, entry)
    }
}

fn wait_readable(fd: i32, timeout_ms: i32) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, timeout_ms) == 1 }
}

/// A device on shared guest RAM connected to `daemon`, its transport in a
/// [`Driver`], and its event handler running.
fn attach(daemon: &Daemon) -> (Driver, Arc<Mutex<FsEventHandler>>, EventLoop) {
    let ram = GuestRam::with_sharing(
        &[(GuestAddress(0), 4 << 20)],
        RamBacking::TransparentHugePages,
        RamSharing::Shared,
    )
    .unwrap();
    let share = FsConfig {
        tag: "share".into(),
        socket: daemon.socket.clone(),
    };
    let device = FsDevice::new(&share, ram.clone()).unwrap();
    let kicks = device.kick_events().unwrap();
    let transport =
        MmioTransport::with_queue_events((*ram).clone(), Arc::new(Mutex::new(device)), kicks)
            .unwrap();
    let handler = transport
        .device()
        .lock()
        .unwrap()
        .event_handler(Arc::clone(transport.interrupt()))
        .unwrap();
    let handler = Arc::new(Mutex::new(handler));
    let events = EventLoop::start(Arc::clone(&handler));
    let driver = Driver {
        transport,
        ram,
        avail_idx: [0; 2],
        used_seen: [0; 2],
        unique: 0,
    };
    (driver, handler, events)
}

fn fuse_round_trip(daemon: &Daemon) {
    let mut file = std::fs::File::create(daemon.shared.path().join("hello.txt")).unwrap();
    file.write_all(&[b'x'; 12345]).unwrap();
    drop(file);
    let (mut driver, _handler, _events) = attach(daemon);

    assert_eq!(driver.read(REG_DEVICE_ID), VIRTIO_ID_FS);
    let mut tag = [0u8; 40];
    driver.transport.read(CONFIG_SPACE_OFFSET, &mut tag);
    assert_eq!(&tag[..6], b"share\0");
    assert_eq!(&tag[36..], &[1, 0, 0, 0]);
    let offered = driver.initialize();
    assert_ne!(offered & (1 << 32), 0, "VERSION_1 offered");
    assert_eq!(
        offered & (1 << 30),
        0,
        "no vhost-user bit reaches the guest"
    );
    assert_eq!(
        driver.read(REG_STATUS) & (STATUS_DRIVER_OK | STATUS_DEVICE_NEEDS_RESET),
        STATUS_DRIVER_OK,
        "the daemon took the queues"
    );

    let init = driver.fuse_init();
    assert_eq!(init.major, 7);
    assert!(init.minor > 0, "{init:?}");
    let (out, entry) = driver.fuse_lookup("hello.txt");
    assert_eq!(out.error, 0);
    let entry = entry.unwrap();
    assert_eq!(entry.attr_size, 12345);
    assert_ne!(entry.nodeid, 0);
    let (missing, _) = driver.fuse_lookup("nothing-here");
    assert_eq!(missing.error, -libc::ENOENT);

    // The driver resets the device and starts again: the daemon's rings
    // were stopped and its session reset, so a new FUSE_INIT is served.
    driver.initialize();
    let again = driver.fuse_init();
    assert_eq!(again.major, 7);
    let (out, entry) = driver.fuse_lookup("hello.txt");
    assert_eq!(out.error, 0);
    assert_eq!(entry.unwrap().attr_size, 12345);
}

#[test]
fn virtiofsd_answers_fuse_init_and_lookup_through_the_frontend() {
    let test = "virtiofsd_answers_fuse_init_and_lookup_through_the_frontend";
    let Some(binary) = virtiofsd_or_skip(test) else {
        return;
    };
    let daemon = Daemon::start(&binary, "none").expect("virtiofsd --sandbox none did not start");

    fuse_round_trip(&daemon);
}

#[test]
fn virtiofsd_in_its_namespace_sandbox_answers_too() {
    let test = "virtiofsd_in_its_namespace_sandbox_answers_too";
    let Some(binary) = virtiofsd_or_skip(test) else {
        return;
    };
    let Some(daemon) = Daemon::start(&binary, "namespace") else {
        println!("SKIPPED {test}: virtiofsd --sandbox namespace cannot start on this host");
        return;
    };

    fuse_round_trip(&daemon);
}

#[test]
fn a_dead_daemon_is_noticed_and_the_device_stays() {
    let test = "a_dead_daemon_is_noticed_and_the_device_stays";
    let Some(binary) = virtiofsd_or_skip(test) else {
        return;
    };
    let mut daemon = Daemon::start(&binary, "none").expect("virtiofsd did not start");
    let (mut driver, handler, _events) = attach(&daemon);
    driver.initialize();
    driver.fuse_init();

    daemon.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handler.lock().unwrap().daemon_gone() {
        assert!(
            Instant::now() < deadline,
            "the daemon's death went unnoticed"
        );
        thread::sleep(Duration::from_millis(10));
    }

    // Registers still answer; a reset and a new start fail cleanly (the
    // device asks for a reset) instead of hanging or panicking.
    assert_eq!(driver.read(REG_DEVICE_ID), VIRTIO_ID_FS);
    driver.initialize();
    assert_ne!(driver.read(REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
}

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distroctl-vmm"))
}

#[test]
fn runner_refuses_a_bad_fs_tag_in_one_line() {
    let out = vmm()
        .args(["--kernel", "/k", "--fs", "bad tag=/run/fs.sock"])
        .output()
        .unwrap();

    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("virtio-fs tag \"bad tag\" must be 1 to 36"),
        "{err}"
    );
}

/// Runs a probe guest that powers off at once, with `fs` as `--fs`.
fn run_probe_with_fs(fs: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let probe = probe_guest::Probe::new();
    let kernel = probe_guest::write_file(
        dir.path(),
        "probe.bzImage",
        &probe_guest::bzimage(&probe.finish()),
    );
    vmm()
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "128", "--fs", fs])
        .arg("--console")
        .arg(dir.path().join("console.log"))
        .output()
        .unwrap()
}

#[test]
fn runner_names_a_missing_virtiofs_daemon_in_one_line() {
    if let Some(reason) = probe_guest::kvm_unavailable() {
        println!("SKIPPED runner_names_a_missing_virtiofs_daemon_in_one_line: {reason}");
        return;
    }

    let out = run_probe_with_fs("share=/nonexistent/fs.sock");

    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect to the virtiofs daemon at /nonexistent/fs.sock: "),
        "{err}"
    );
}

#[test]
fn runner_with_a_share_boots_and_exits_cleanly() {
    let test = "runner_with_a_share_boots_and_exits_cleanly";
    if let Some(reason) = probe_guest::kvm_unavailable() {
        println!("SKIPPED {test}: {reason}");
        return;
    }
    let Some(binary) = virtiofsd_or_skip(test) else {
        return;
    };
    let mut daemon = Daemon::start(&binary, "none").expect("virtiofsd did not start");

    let out = run_probe_with_fs(&format!("share={}", daemon.socket.display()));

    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("guest powered off"), "{err}");
    // The VMM held the session: virtiofsd ends when its frontend goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "virtiofsd still waits; did the VMM ever connect?"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_share_gets_a_virtio_window_a_gsi_and_a_dsdt_entry() {
    use vmm::acpi::dsdt::dsdt_aml;
    use vmm::vm::devices::create_devices;
    use vmm::vm_exit::ExitSignal;

    let test = "each_share_gets_a_virtio_window_a_gsi_and_a_dsdt_entry";
    let vm = match kvm_ioctls::Kvm::new().and_then(|kvm| kvm.create_vm()) {
        Ok(vm) => Arc::new(vm),
        Err(e) => {
            println!("SKIPPED {test}: no usable /dev/kvm ({e})");
            return;
        }
    };
    let Some(binary) = virtiofsd_or_skip(test) else {
        return;
    };
    let first = Daemon::start(&binary, "none").expect("virtiofsd did not start");
    let second = Daemon::start(&binary, "none").expect("virtiofsd did not start");
    let dir = tempfile::tempdir().unwrap();
    let mut config = probe_guest::probe_config(dir.path(), "/k".into(), None, "");
    config.fs = vec![
        FsConfig::parse(&format!("one={}", first.socket.display())).unwrap(),
        FsConfig::parse(&format!("two={}", second.socket.display())).unwrap(),
    ];
    let ram = GuestRam::with_sharing(
        &[(GuestAddress(0), (config.memory_mib as usize) << 20)],
        config.ram_backing,
        config.ram_sharing(),
    )
    .unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());

    let devices = create_devices(&vm, false, &ram, &config, &exit).unwrap();

    assert_eq!(devices.acpi.virtio.len(), 2);
    let (a, b) = (devices.acpi.virtio[0], devices.acpi.virtio[1]);
    assert_ne!(a.base, b.base);
    assert_ne!(a.irq, b.irq);
    for (info, tag) in [(a, b"one\0"), (b, b"two\0")] {
        let mut id = [0u8; 4];
        assert!(devices.mmio.read(info.base + REG_DEVICE_ID, &mut id));
        assert_eq!(u32::from_le_bytes(id), VIRTIO_ID_FS);
        let mut config_tag = [0u8; 4];
        assert!(devices
            .mmio
            .read(info.base + CONFIG_SPACE_OFFSET, &mut config_tag));
        assert_eq!(&config_tag, tag);
    }
    let aml = dsdt_aml(&devices.acpi.serial, &devices.acpi.virtio);
    for name in [b"V000", b"V001"] {
        assert!(
            aml.windows(4).any(|w| w == name),
            "{} missing from the DSDT",
            String::from_utf8_lossy(name)
        );
    }
}
