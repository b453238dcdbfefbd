//! Networking of the utility VM under QEMU: the guest reaches the outside
//! through passt (name resolution, `apt-get update`), listening ports in a
//! distro are forwarded to the host's loopback, `distroctl proxy` relays
//! stdio to a distro port, and OpenSSH works through the generated config.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::vm::TestVm;
use common::{debian_rootfs, text, Cli};

/// The host name of the first apt source of the distro (taken from the
/// host's apt configuration when the test rootfs was built).
const APT_HOST: &str =
    "sed -n 's|.*https\\?://\\([^/ ]*\\).*|\\1|p' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -n1";

fn debian_vm(name: &str) -> TestVm {
    let vm = TestVm::new("");
    vm.ok(&["import", name, debian_rootfs().to_str().unwrap()]);
    vm
}

#[test]
fn vm_resolves_names_and_runs_apt_get_update() {
    let vm = debian_vm("net");

    let resolv = vm.sh("net", "cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.0.2.3"), "{resolv}");
    let host = vm.sh("net", APT_HOST);
    let host = host.trim();
    assert!(!host.is_empty(), "no apt source in the test rootfs");
    let resolved = vm.sh("net", &format!("getent hosts {host}"));
    assert!(resolved.contains(host), "{resolved}");

    let out = vm.run(&["exec", "net", "--", "apt-get", "update", "--error-on=any"]);
    assert!(
        out.status.success(),
        "apt-get update failed: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        vm.console_tail()
    );
    assert!(text(&out.stdout).contains("Reading package lists"));
}

#[test]
fn vm_clock_follows_the_host_after_a_jump() {
    let vm = debian_vm("clock");

    // Throw the guest clock back to 2001, as a long suspend would leave it.
    vm.sh("clock", "date -s @1000000000 >/dev/null");
    // The next connection's hello carries the host's time.
    let guest: i64 = vm.sh("clock", "date +%s").trim().parse().unwrap();

    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((guest - host).abs() < 30, "guest {guest}, host {host}");
}

/// The manager's port forwarder (it runs while the VM does), seen
/// through the manager's log.
struct PortForwarder {
    log: std::path::PathBuf,
}

impl PortForwarder {
    fn of(vm: &TestVm) -> PortForwarder {
        PortForwarder {
            log: vm.data_dir().join("manager.log"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `script` detached in `distro` (its pid in `/tmp/server-PORT.pid`;
/// the script ends in `exec`) and waits until something listens on `port`
/// in the VM (read from `/proc/net/tcp*`: minbase has no `ss`).
fn start_server(vm: &TestVm, distro: &str, script: &str, port: u16) {
    let wait = format!(
        "cat > /tmp/server-{port}.sh <<'SERVER_SCRIPT_END'
{script}
SERVER_SCRIPT_END
         setsid sh /tmp/server-{port}.sh </dev/null >/tmp/server-{port}.log 2>&1 &
         echo $! >/tmp/server-{port}.pid
         for i in $(seq 300); do
             grep -qE ':{port:04X} [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6 && exit 0
             sleep 0.1
         done
         cat /tmp/server-{port}.log; exit 1"
    );
    vm.sh(distro, &wait);
}

/// The host port `distroctl ports` lists for `guest_port`, polling up to `limit`.
fn forwarded_port(vm: &TestVm, guest_port: u16, limit: Duration) -> Option<u16> {
    let started = Instant::now();
    loop {
        let listing = text(&vm.run(&["ports"]).stdout);
        let row = listing
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&guest_port.to_string()));
        if let Some(row) = row {
            let host = row.split_whitespace().next()?;
            return host.trim_start_matches("localhost:").parse().ok();
        }
        if started.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until `connect` to `addr` gives `expect_open`, up to `limit`.
fn wait_port(addr: &str, expect_open: bool, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let open = TcpStream::connect(addr).is_ok();
        if open == expect_open {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn http_get(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

/// Echo server in the guest that answers only after the client's
/// half-close, with the bytes reversed (so the data is checked, not just
/// reflected).
const REVERSE_SERVER: &str = "exec python3 -c \"
import socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        data = bytearray()
        while True:
            b = self.request.recv(65536)
            if not b: break
            data += b
        self.request.sendall(bytes(reversed(data)))
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.request_queue_size = 64
socketserver.ThreadingTCPServer(('127.0.0.1', PORT), H).serve_forever()
\"";

/// Reads what the client sends first, then resets the connection.
const RESETTING_SERVER: &str = "exec python3 -c \"
import socket, struct
s = socket.create_server(('127.0.0.1', PORT))
while True:
    c, _ = s.accept()
    c.recv(100)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    c.close()
\"";

fn random_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] ^ seed)
        .collect()
}

/// Sends `data`, half-closes, reads the reply to the end.
fn reverse_round_trip(addr: &str, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let input = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&input).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    sender.join().unwrap();
    reply
}

#[test]
fn vm_forwards_ports_and_proxies_streams() {
    let mapped_host_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let vm = TestVm::new(&format!(
        "[[port_forward]]\nguest_port = 8128\nignore = true\n\n\
         [[port_forward]]\nguest_port = 8129\nhost_port = {mapped_host_port}\n"
    ));
    vm.ok(&["import", "web", debian_rootfs().to_str().unwrap()]);
    vm.sh(
        "web",
        "apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends python3 >/dev/null",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:8125").ok();
    let forwarder = PortForwarder::of(&vm);

    // A server on all addresses is forwarded within two seconds (on the
    // same port unless something else on this host has it).
    let free_8123 = std::net::TcpListener::bind("127.0.0.1:8123").is_ok();
    start_server(
        &vm,
        "web",
        "cd /etc && exec python3 -m http.server 8123",
        8123,
    );
    let started = Instant::now();
    let web = forwarded_port(&vm, 8123, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("8123 never forwarded:\n{}", forwarder.log()));
    wait_port(&format!("127.0.0.1:{web}"), true, Duration::from_secs(60)).expect("reachable");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "forward took {took:?}");
    if free_8123 {
        assert_eq!(web, 8123);
    }
    assert!(http_get(&format!("127.0.0.1:{web}")).contains("hostname"));
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        assert!(http_get(&format!("[::1]:{web}")).contains("hostname"));
    }

    // One bound only to the VM's own address is not.
    start_server(
        &vm,
        "web",
        "exec python3 -m http.server 8124 --bind 10.0.2.15",
        8124,
    );
    // A taken host port is reported and another one used.
    start_server(&vm, "web", "exec python3 -m http.server 8125", 8125);
    let moved = forwarded_port(&vm, 8125, Duration::from_secs(10)).expect("8125 forwarded");
    let ports = text(&vm.ok(&["ports"]).stdout);
    assert!(!ports.contains(" 8124 "), "{ports}");
    if taken.is_some() {
        assert_ne!(moved, 8125);
        let row = ports.lines().find(|l| l.contains(" 8125 ")).unwrap();
        assert!(row.contains("taken on the host"), "{ports}");
        assert!(
            forwarder.log().contains("host port 8125 is taken"),
            "{}",
            forwarder.log()
        );
    }
    assert!(http_get(&format!("127.0.0.1:{moved}")).contains("200 OK"));

    // `[[port_forward]]` rules: one port kept inside, one moved.
    start_server(&vm, "web", "exec python3 -m http.server 8128", 8128);
    start_server(&vm, "web", "exec python3 -m http.server 8129", 8129);
    let mapped = forwarded_port(&vm, 8129, Duration::from_secs(10)).expect("8129 forwarded");
    assert_eq!(mapped, mapped_host_port);
    assert!(http_get(&format!("127.0.0.1:{mapped}")).contains("200 OK"));
    let ports = text(&vm.ok(&["ports"]).stdout);
    assert!(!ports.contains(" 8128 "), "{ports}");
    let row = ports.lines().find(|l| l.contains(" 8129 ")).unwrap();
    assert!(row.contains("(port_forward rule)"), "{ports}");
    assert!(
        forwarder.log().contains("guest port 8128 is not forwarded"),
        "{}",
        forwarder.log()
    );

    // 20 concurrent forwarded connections, each with its own data.
    start_server(&vm, "web", &REVERSE_SERVER.replace("PORT", "8126"), 8126);
    let reverse = forwarded_port(&vm, 8126, Duration::from_secs(10)).expect("8126 forwarded");
    let clients: Vec<_> = (0..20u8)
        .map(|i| {
            std::thread::spawn(move || {
                let data = random_bytes(200_000 + usize::from(i) * 1000, i);
                let reply = reverse_round_trip(&format!("127.0.0.1:{reverse}"), &data);
                let expected: Vec<u8> = data.iter().rev().copied().collect();
                let first_difference = reply.iter().zip(&expected).position(|(a, b)| a != b);
                (reply.len(), expected.len(), first_difference)
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let (got, want, differs_at) = client.join().unwrap();
        assert!(
            got == want && differs_at.is_none(),
            "connection {i}: {got} of {want} bytes, first difference at {differs_at:?}\nforwarder:\n{}\nconsole:\n{}",
            forwarder.log(),
            vm.console_tail()
        );
    }

    // A reset inside the VM reaches the host client as a reset, never as
    // a clean end that would pass a cut-off reply for a whole one.
    start_server(&vm, "web", &RESETTING_SERVER.replace("PORT", "8127"), 8127);
    let resetting = forwarded_port(&vm, 8127, Duration::from_secs(10)).expect("8127 forwarded");
    let mut stream = TcpStream::connect(format!("127.0.0.1:{resetting}")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(b"hello").unwrap();
    let ended = stream.read_to_end(&mut Vec::new());
    assert_eq!(
        ended.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "{ended:?}"
    );
    let out = vm.pipe_through(&["proxy", "web", "8127"], b"hello");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("was reset"), "{err}");

    // `distroctl proxy`: stdin half-closed, the reply still arrives.
    let data = random_bytes(3 << 20, 7);
    let out = vm.pipe_through(&["proxy", "web", "8126"], &data);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout.iter().rev().eq(data.iter()),
        "proxy reply differs ({} bytes)",
        out.stdout.len()
    );

    // Bad input: a closed port and an unknown distro, one line each.
    let out = vm.run(&["proxy", "web", "8199"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nothing listens on port 8199"), "{err}");
    let out = vm.run(&["proxy", "nosuch", "8123"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );

    // The forward goes away with the server.
    vm.sh("web", "kill $(cat /tmp/server-8123.pid)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while forwarded_port(&vm, 8123, Duration::ZERO).is_some() {
        assert!(
            Instant::now() < deadline,
            "8123 still forwarded after the server stopped:\n{}\nforwarder:\n{}",
            text(&vm.ok(&["ports"]).stdout),
            forwarder.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if free_8123 {
        assert!(TcpStream::connect(("127.0.0.1", web)).is_err());
    }

    // ssh-setup without a package manager says so.
    vm.sh(
        "web",
        "rm /usr/bin/apt-get /usr/sbin/sshd 2>/dev/null; true",
    );
    let out = vm.run(&["ssh-setup", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no package manager"),
        "{}",
        text(&out.stderr)
    );
}

/// `ssh` (or `scp`) with the generated config, non-interactive.
fn ssh_command(vm: &TestVm, program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.arg("-F")
        .arg(vm.home.path().join(".ssh/config"))
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=60"])
        .env("HOME", vm.home.path())
        .env("XDG_CONFIG_HOME", vm.home.path().join(".config"))
        .env("XDG_DATA_HOME", vm.home.path().join(".local/share"))
        .env("XDG_RUNTIME_DIR", vm.home.path().join("run"))
        .env("XDG_CACHE_HOME", "/var/cache/distroctl-tests/cache")
        .stdin(Stdio::null());
    cmd
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn vm_openssh_works_through_the_generated_config() {
    if !std::path::Path::new("/usr/bin/ssh").exists() {
        eprintln!("SKIP: the OpenSSH client is not installed (apt-get install openssh-client)");
        return;
    }
    let vm = debian_vm("debian");

    let setup = vm.run(&["ssh-setup", "debian"]);
    assert!(
        setup.status.success(),
        "ssh-setup failed: {}{}",
        text(&setup.stdout),
        text(&setup.stderr)
    );
    vm.ok(&["ssh-config", "--install"]);
    let user_config = std::fs::read_to_string(vm.home.path().join(".ssh/config")).unwrap();
    assert!(user_config.starts_with("# Added by"), "{user_config}");

    let out = ssh_command(&vm, "ssh")
        .args(["debian.distroctl", "uname", "-a"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cloud-amd64"),
        "{}",
        text(&out.stdout)
    );

    // scp of 50 MiB both ways, bit-exact.
    let dir = vm.home.path();
    let original = dir.join("big.bin");
    std::fs::write(&original, random_bytes(50 << 20, 3)).unwrap();
    let out = ssh_command(&vm, "scp")
        .arg(&original)
        .arg("debian.distroctl:/tmp/big.bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "scp up failed: {}", text(&out.stderr));
    let back = dir.join("back.bin");
    let out = ssh_command(&vm, "scp")
        .arg("debian.distroctl:/tmp/big.bin")
        .arg(&back)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scp down failed: {}",
        text(&out.stderr)
    );
    assert_eq!(sha256_of(&original), sha256_of(&back));
    let remote = vm.sh("debian", "sha256sum /tmp/big.bin");
    assert!(remote.starts_with(&sha256_of(&original)), "{remote}");

    // ssh -L: a local port tunnelled to a port in the distro.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local = probe.local_addr().unwrap().port();
    drop(probe);
    let ssh_port = distroctl_ssh_port(&vm);
    let mut tunnel = ssh_command(&vm, "ssh")
        .args([
            "-N",
            "-L",
            &format!("{local}:127.0.0.1:{ssh_port}"),
            "debian.distroctl",
        ])
        .spawn()
        .unwrap();
    let opened = wait_port(&format!("127.0.0.1:{local}"), true, Duration::from_secs(60));
    let banner = opened.map(|_| {
        let mut stream = TcpStream::connect(("127.0.0.1", local)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert!(
        banner
            .as_deref()
            .unwrap_or_default()
            .starts_with("SSH-2.0-"),
        "no sshd banner through ssh -L: {banner:?}"
    );
}

/// The sshd port ssh-setup chose, read from the generated config.
fn distroctl_ssh_port(vm: &TestVm) -> u16 {
    let config =
        std::fs::read_to_string(vm.home.path().join(".config/distroctl/ssh/config")).unwrap();
    let line = config
        .lines()
        .find(|l| l.contains("ProxyCommand"))
        .unwrap_or_else(|| panic!("{config}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// Answers every connection with one line, then closes it.
const HELLO_SERVER: &str = "exec perl -MIO::Socket::INET -e '
my $s = IO::Socket::INET->new(LocalAddr => \"ADDRESS:PORT\", Listen => 16, ReuseAddr => 1) or die \"$!\";
while (my $c = $s->accept) { print $c \"hello from NAME\\n\"; close $c }'";

#[test]
fn vm_isolated_distro_has_its_own_network_and_reaches_out_through_the_vm() {
    let vm = debian_vm("iso");
    vm.ok(&["import", "lan", debian_rootfs().to_str().unwrap()]);
    let bad = vm.run(&["configure", "iso", "--network", "private"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("use shared or isolated"));
    vm.ok(&["configure", "iso", "--network", "isolated"]);
    vm.ok(&["terminate", "iso"]);

    // Its own address on its own link; the VM's address is not its.
    let addresses = vm.sh("iso", "cat /proc/net/fib_trie");
    assert!(addresses.contains("172.31.1.2"), "{addresses}");
    assert!(!addresses.contains("10.0.2.15"), "{addresses}");
    let routes = vm.sh("iso", "cat /proc/net/route");
    assert!(
        routes.lines().any(|l| l.starts_with("eth0\t00000000")),
        "{routes}"
    );

    // Names resolve and apt works, translated to the VM's address.
    let host = vm.sh("iso", APT_HOST);
    let host = host.trim();
    let resolved = vm.sh("iso", &format!("getent hosts {host}"));
    assert!(resolved.contains(host), "{resolved}");
    let out = vm.run(&["exec", "iso", "--", "apt-get", "update", "--error-on=any"]);
    assert!(
        out.status.success(),
        "apt-get update in the isolated distro failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Its loopback is its own: a server there is not forwarded to the
    // host and not seen by a shared distro, but `distroctl proxy` (what
    // ssh-config uses) reaches it.
    let server = HELLO_SERVER
        .replace("ADDRESS", "127.0.0.1")
        .replace("PORT", "8140")
        .replace("NAME", "iso");
    start_server(&vm, "iso", &server, 8140);
    std::thread::sleep(Duration::from_secs(2));
    let ports = text(&vm.run(&["ports"]).stdout);
    assert!(!ports.contains(" 8140 "), "{ports}");
    let out = vm.pipe_through(&["proxy", "iso", "8140"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from iso\n");
    let out = vm.run(&["proxy", "lan", "8140"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nothing listens on port 8140"));

    // A shared distro's server on all addresses is at the gateway.
    let server = HELLO_SERVER
        .replace("ADDRESS", "0.0.0.0")
        .replace("PORT", "8141")
        .replace("NAME", "lan");
    start_server(&vm, "lan", &server, 8141);
    let reply = vm.sh(
        "iso",
        "perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(PeerAddr => q{172.31.1.1:8141})->getline'",
    );
    assert_eq!(reply, "hello from lan\n");
}
