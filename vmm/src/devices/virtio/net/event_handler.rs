//! The network device on the VMM's event loop: a notification of the
//! receive queue (new buffers) delivers waiting frames and resumes reading
//! the socket; one of the transmit queue sends frames; the backend's epoll
//! fd becoming readable resumes whatever the socket is ready for. A backend
//! that went away takes the link down through a configuration change.

use std::os::fd::{AsRawFd, RawFd};

use super::defs::{RXQ_INDEX, TXQ_INDEX};
use super::device::{NetDevice, NetError};
use crate::devices::virtio::EventDrivenDevice;

impl EventDrivenDevice for NetDevice {
    fn process_queue(&mut self, index: usize) -> Result<bool, NetError> {
        match index {
            RXQ_INDEX => self.process_rx(),
            TXQ_INDEX => self.process_tx(),
            _ => Ok(false),
        }
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.backend().as_raw_fd()]
    }

    fn process_host_fd(&mut self, _fd: RawFd) -> Result<bool, NetError> {
        self.process_backend()
    }

    fn take_config_change(&mut self) -> bool {
        NetDevice::take_config_change(self)
    }

    fn is_activated(&self) -> bool {
        NetDevice::is_activated(self)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::devices::virtio::mmio::defs::{
        CONFIG_SPACE_OFFSET, INT_CONFIG_CHANGE, INT_USED_RING, REG_CONFIG_GENERATION,
    };
    use crate::devices::virtio::mmio::test_driver::{
        initialize, notify, read_reg, take_interrupt, test_memory,
    };
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::net::defs::{
        CONFIG_STATUS_OFFSET, DEFAULT_MAC, DEFAULT_MTU, NET_HDR_SIZE,
    };
    use crate::devices::virtio::net::test_driver::{
        backend_pair, frame, record, GuestNet, ALL_FEATURES,
    };
    use crate::devices::virtio::net::StreamBackend;

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    /// The network device behind the virtio-mmio transport on an
    /// `event_manager` loop, as the VMM runs it, driven by [`GuestNet`].
    struct MmioNet<'m> {
        transport: MmioTransport<NetDevice>,
        events: EventManager<Subscriber>,
        guest: GuestNet<'m>,
    }

    impl<'m> MmioNet<'m> {
        fn start(mem: &'m GuestMemoryMmap, backend: StreamBackend) -> Self {
            let device = NetDevice::with_backend(backend, DEFAULT_MAC, DEFAULT_MTU);
            let mut transport =
                MmioTransport::new(mem.clone(), Arc::new(Mutex::new(device))).unwrap();
            let mut events = EventManager::<Subscriber>::new().unwrap();
            events.add_subscriber(Arc::new(Mutex::new(transport.event_handler().unwrap())));
            let guest = GuestNet::new(mem);
            let features = initialize(&mut transport, ALL_FEATURES, &[&guest.rx, &guest.tx]);
            assert_eq!(features, ALL_FEATURES);
            Self {
                transport,
                events,
                guest,
            }
        }

        /// Runs the event loop until `done` says so or `timeout` passes.
        fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&mut Self) -> bool) {
            let deadline = Instant::now() + timeout;
            while !done(self) {
                assert!(Instant::now() < deadline, "timed out");
                self.events.run_with_timeout(50).unwrap();
            }
        }

        fn link_status(&mut self) -> [u8; 2] {
            let mut status = [0u8; 2];
            self.transport.read(
                CONFIG_SPACE_OFFSET + CONFIG_STATUS_OFFSET as u64,
                &mut status,
            );
            status
        }
    }

    #[test]
    fn frames_flow_both_ways_through_the_mmio_transport_and_event_loop() {
        let mem = test_memory();
        let (backend, mut peer) = backend_pair();
        let mut vm = MmioNet::start(&mem, backend);
        vm.guest.offer_rx(&[2048]);
        notify(&mut vm.transport, RXQ_INDEX as u32);
        let outgoing = frame(90, 20);
        vm.guest.send(&[0; NET_HDR_SIZE], &outgoing, 0);
        notify(&mut vm.transport, TXQ_INDEX as u32);

        vm.run_until(Duration::from_secs(2), |vm| {
            !vm.guest.tx.take_used().is_empty()
        });
        let mut sent = vec![0u8; 94];
        peer.read_exact(&mut sent).unwrap();
        let incoming = frame(70, 21);
        std::io::Write::write_all(&mut peer, &record(&incoming)).unwrap();
        let mut received = Vec::new();
        vm.run_until(Duration::from_secs(2), |vm| {
            received.extend(vm.guest.take_rx());
            !received.is_empty()
        });

        assert_eq!(sent, record(&outgoing));
        assert_eq!(received[0].2[NET_HDR_SIZE..], incoming[..]);
        assert_eq!(take_interrupt(&mut vm.transport), INT_USED_RING);
        assert_eq!(vm.link_status(), [1, 0]);
    }

    #[test]
    fn backend_going_away_raises_a_config_change_with_the_link_down() {
        let mem = test_memory();
        let (backend, peer) = backend_pair();
        let mut vm = MmioNet::start(&mem, backend);
        let generation = read_reg(&mut vm.transport, REG_CONFIG_GENERATION);

        drop(peer);
        vm.run_until(Duration::from_secs(2), |vm| {
            vm.transport.interrupt().status() & INT_CONFIG_CHANGE != 0
        });
        // Nothing more happens: the loop idles instead of spinning.
        let idle_events = vm.events.run_with_timeout(100).unwrap();

        assert_eq!(idle_events, 0);
        assert_eq!(vm.link_status(), [0, 0]);
        assert_eq!(
            read_reg(&mut vm.transport, REG_CONFIG_GENERATION),
            generation + 1
        );
        assert_eq!(take_interrupt(&mut vm.transport), INT_CONFIG_CHANGE);
    }

    /// A real passt serving the guest network the runner uses, on a
    /// socket in its own directory; stopped when dropped.
    struct Passt {
        dir: tempfile::TempDir,
        pid_file: PathBuf,
    }

    const PASST: &str = "/usr/bin/passt";
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    impl Passt {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("net.sock");
            let pid_file = dir.path().join("passt.pid");
            let meta = dir.path().metadata().unwrap();
            let status = Command::new(PASST)
                .args(["--foreground", "--quiet", "--one-off", "--ipv4-only"])
                .args(["--tcp-ports", "none", "--udp-ports", "none"])
                .args(["--address", "10.0.2.15", "--netmask", "24"])
                .args(["--gateway", "10.0.2.2", "--dns-forward", "10.0.2.3"])
                .args(["--mtu", "65520"])
                .arg("--socket")
                .arg(&socket)
                .arg("--pid")
                .arg(&pid_file)
                .arg("--runas")
                .arg(format!("{}:{}", meta.uid(), meta.gid()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // The first process exits after forking the one that serves.
            std::thread::spawn(move || {
                let mut child = status;
                child.wait()
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !(socket.exists() && pid_file.exists()) {
                assert!(Instant::now() < deadline, "passt did not create its socket");
                std::thread::sleep(Duration::from_millis(10));
            }
            Self { dir, pid_file }
        }

        fn socket(&self) -> PathBuf {
            self.dir.path().join("net.sock")
        }
    }

    impl Drop for Passt {
        fn drop(&mut self) {
            let pid = std::fs::read_to_string(&self.pid_file).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }

    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = dst.to_vec();
        frame.extend_from_slice(&DEFAULT_MAC);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// "Who has `target`? Tell 10.0.2.15", broadcast from the guest's MAC.
    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&DEFAULT_MAC);
        arp.extend_from_slice(&GUEST_IP.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&target.octets());
        ethernet([0xff; 6], 0x0806, &arp)
    }

    /// A UDP datagram from 10.0.2.15:`src_port` to `dst`, checksums included.
    fn udp_packet(
        dst_mac: [u8; 6],
        dst: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        data: &[u8],
    ) -> Vec<u8> {
        let udp_len = (8 + data.len()) as u16;
        let mut udp = Vec::new();
        udp.extend_from_slice(&src_port.to_be_bytes());
        udp.extend_from_slice(&dst_port.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(data);
        let mut pseudo = GUEST_IP.octets().to_vec();
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&udp_len.to_be_bytes());
        pseudo.extend_from_slice(&udp);
        udp[6..8].copy_from_slice(&checksum(&pseudo).to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&GUEST_IP.octets());
        ip.extend_from_slice(&dst.octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&udp);
        ethernet(dst_mac, 0x0800, &ip)
    }

    /// Runs the loop until a received frame matches `wanted`; returns it.
    fn receive_matching(vm: &mut MmioNet<'_>, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut found = None;
        vm.run_until(Duration::from_secs(5), |vm| {
            for (_, _, bytes) in vm.guest.take_rx() {
                let frame = bytes[NET_HDR_SIZE..].to_vec();
                if wanted(&frame) {
                    found = Some(frame);
                } else {
                    // Not it (passt may send other frames): repost.
                    vm.guest.offer_rx(&[4096; 4]);
                    notify(&mut vm.transport, RXQ_INDEX as u32);
                }
            }
            found.is_some()
        });
        found.unwrap()
    }

    fn transmit(vm: &mut MmioNet<'_>, frame: &[u8]) {
        vm.guest.send(&[0; NET_HDR_SIZE], frame, 0);
        notify(&mut vm.transport, TXQ_INDEX as u32);
    }

    #[test]
    fn real_passt_answers_arp_for_the_gateway_and_relays_udp_to_the_host() {
        if !Path::new(PASST).exists() {
            eprintln!("SKIP: {PASST} is not installed (apt-get install passt)");
            return;
        }
        let passt = Passt::start();
        let mem = test_memory();
        let backend = StreamBackend::connect(&passt.socket()).unwrap();
        let mut vm = MmioNet::start(&mem, backend);
        for _ in 0..4 {
            vm.guest.offer_rx(&[4096; 4]);
        }
        notify(&mut vm.transport, RXQ_INDEX as u32);

        transmit(&mut vm, &arp_request(GATEWAY_IP));
        let reply = receive_matching(&mut vm, |f| f.len() >= 42 && f[12..14] == [8, 6]);
        let gateway_mac: [u8; 6] = reply[6..12].try_into().unwrap();

        // The gateway address reaches the host's loopback through passt.
        let host = UdpSocket::bind("127.0.0.1:0").unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = host.local_addr().unwrap().port();
        transmit(
            &mut vm,
            &udp_packet(gateway_mac, GATEWAY_IP, 40000, port, b"ping from the guest"),
        );
        let mut datagram = [0u8; 64];
        let mut from = None;
        vm.run_until(Duration::from_secs(5), |_| {
            host.set_nonblocking(true).unwrap();
            if let Ok((n, addr)) = host.recv_from(&mut datagram) {
                from = Some((n, addr));
            }
            from.is_some()
        });
        let (n, addr) = from.unwrap();
        host.send_to(b"pong from the host", addr).unwrap();
        let udp_reply = receive_matching(&mut vm, |f| {
            f.len() > 34 && f[12..14] == [8, 0] && f[23] == 17
        });

        // The ARP reply: to the guest, "10.0.2.2 is at <mac>".
        assert_eq!(reply[0..6], DEFAULT_MAC);
        assert_eq!(reply[20..22], [0, 2], "not an ARP reply");
        assert_eq!(reply[22..28], gateway_mac);
        assert_eq!(reply[28..32], GATEWAY_IP.octets());
        assert_eq!(reply[32..38], DEFAULT_MAC);
        assert_eq!(reply[38..42], GUEST_IP.octets());
        // The datagram crossed to the host and the answer came back.
        assert_eq!(&datagram[..n], b"ping from the guest");
        assert_eq!(udp_reply[0..6], DEFAULT_MAC);
        assert_eq!(udp_reply[26..30], GATEWAY_IP.octets());
        assert_eq!(udp_reply[30..34], GUEST_IP.octets());
        assert_eq!(udp_reply[34..36], port.to_be_bytes());
        assert_eq!(udp_reply[36..38], 40000u16.to_be_bytes());
        assert_eq!(&udp_reply[42..], b"pong from the host");
        assert_eq!(vm.link_status(), [1, 0]);
    }
}
