//! Guest networking without root on the host: `passt` translates the
//! guest's Ethernet frames to ordinary host sockets. The runner starts it
//! beside the VM monitor, which connects to its Unix socket: QEMU with
//! `-netdev stream`, our VMM's virtio-net device with the same framing.
//!
//! The guest's addresses are chosen here and handed to both sides: to
//! passt as `--address/--gateway/--mtu/--dns-forward`, and to
//! `distroctl-init` on the kernel command line, which configures the
//! interface with rtnetlink. Fixed addresses instead of passt's DHCP keep
//! init free of a DHCP client, make the interface ready before the agent
//! starts (no lease to wait for), and are the same on every host, so
//! nothing in the guest depends on the host's network.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use thiserror::Error;

/// How long passt may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The guest's side of the network, as both passt and init see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The guest's IPv4 address.
    pub address: Ipv4Addr,
    /// Prefix length of the guest's subnet.
    pub prefix: u8,
    /// Default gateway (passt maps it to the host's loopback, so host
    /// services are reachable from the guest as in WSL2).
    pub gateway: Ipv4Addr,
    /// Address whose DNS queries passt forwards to the host's resolver.
    pub dns: Ipv4Addr,
    /// Interface MTU: passt's maximum, so bulk transfers take few frames.
    pub mtu: u32,
}

impl Default for GuestNetwork {
    /// The addresses QEMU's user networking made familiar.
    fn default() -> Self {
        GuestNetwork {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            mtu: 65520,
        }
    }
}

impl GuestNetwork {
    /// Kernel command line words read by `distroctl-init`.
    pub fn kernel_args(&self) -> String {
        format!(
            "distroctl.ip={}/{} distroctl.gw={} distroctl.dns={} distroctl.mtu={}",
            self.address, self.prefix, self.gateway, self.dns, self.mtu
        )
    }

    /// passt's arguments for serving this network on `socket`, logging to
    /// `log`. IPv4 only: the guest gets no IPv6 route, so IPv6 destinations
    /// fail fast and resolvers fall back to IPv4. No ports are forwarded
    /// into the guest by passt; `distroctl` forwards them itself.
    pub fn passt_args(&self, socket: &Path, log: &Path) -> Vec<String> {
        let mut args: Vec<String> = [
            "--foreground",
            "--quiet",
            "--one-off",
            "--ipv4-only",
            "--tcp-ports",
            "none",
            "--udp-ports",
            "none",
        ]
        .map(String::from)
        .to_vec();
        let pairs = [
            ("--socket", socket.display().to_string()),
            ("--log-file", log.display().to_string()),
            ("--address", self.address.to_string()),
            ("--netmask", self.prefix.to_string()),
            ("--gateway", self.gateway.to_string()),
            ("--mtu", self.mtu.to_string()),
            ("--dns-forward", self.dns.to_string()),
        ];
        for (flag, value) in pairs {
            args.push(flag.to_owned());
            args.push(value);
        }
        args
    }
}

/// passt could not be started.
#[derive(Debug, Error)]
pub enum PasstError {
    /// The binary could not be run (not installed?).
    #[error("cannot start {}; install the passt package for guest networking", binary.display())]
    Spawn {
        /// The passt binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// passt exited before its socket appeared.
    #[error("passt exited with {status} before serving {}; see {}", socket.display(), log.display())]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The socket it should have created.
        socket: PathBuf,
        /// Its log file.
        log: PathBuf,
    },
    /// The socket did not appear in time.
    #[error("passt did not create {} within {SOCKET_TIMEOUT:?}", socket.display())]
    Timeout {
        /// The socket.
        socket: PathBuf,
    },
}

/// Starts passt for the VM whose runtime files live in `runtime_dir`
/// (socket `net.sock`, log `passt.log`). Without passt the VM still runs,
/// without a network: the failure is logged and `None` returned.
pub fn start_in(runtime_dir: &Path, network: &GuestNetwork) -> Option<Passt> {
    let Some(binary) = find_binary() else {
        tracing::warn!(
            "passt is not installed: the utility VM has no network (apt-get install passt)"
        );
        return None;
    };
    let socket = runtime_dir.join("net.sock");
    let log = runtime_dir.join("passt.log");
    match Passt::start(&binary, network, &socket, &log) {
        Ok(passt) => Some(passt),
        Err(e) => {
            tracing::warn!(error = %crate::describe(&e, true), "the utility VM has no network");
            None
        }
    }
}

/// `passt` on `PATH`, else Debian's location.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("passt"))
        .find(|candidate| candidate.is_file())
}

/// A running passt; stopped when dropped.
///
/// passt forks once into its own PID namespace and its first process exits,
/// so the serving process is found through `--pid`. It also exits by
/// itself (`--one-off`) when the monitor's connection closes, which is how
/// it dies with the runner: the runner's death kills the monitor
/// (parent-death signal), and the monitor's end ends passt.
#[derive(Debug)]
pub struct Passt {
    pid: Option<Pid>,
    socket: PathBuf,
    pid_file: PathBuf,
}

impl Passt {
    /// Starts `binary` serving `network` on `socket` and waits until the
    /// socket exists, so the monitor can connect at once.
    pub fn start(
        binary: &Path,
        network: &GuestNetwork,
        socket: &Path,
        log: &Path,
    ) -> Result<Passt, PasstError> {
        let _ = std::fs::remove_file(socket);
        let pid_file = socket.with_extension("pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut child = Command::new(binary)
            .args(network.passt_args(socket, log))
            .arg("--pid")
            .arg(&pid_file)
            // passt started by root drops to `nobody`, which could not
            // write the pid file into the private runtime directory; it
            // keeps the runner's identity (a no-op for ordinary users).
            .arg("--runas")
            .arg(format!(
                "{}:{}",
                nix::unistd::geteuid(),
                nix::unistd::getegid()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| PasstError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let mut passt = Passt {
            pid: None,
            socket: socket.to_owned(),
            pid_file,
        };
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    return Err(PasstError::Exited {
                        status,
                        socket: socket.to_owned(),
                        log: log.to_owned(),
                    });
                }
            }
            passt.pid = passt.pid.or_else(|| read_pid(&passt.pid_file));
            if passt.pid.is_some() && socket.exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(PasstError::Timeout {
                    socket: socket.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The first process exits right after forking; reap it.
        std::thread::spawn(move || child.wait());
        tracing::info!(pid = ?passt.pid, socket = %socket.display(), "passt started");
        Ok(passt)
    }

    /// The socket the monitor connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

fn read_pid(path: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().map(Pid::from_raw)
}

impl Drop for Passt {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // It may be gone already (one-off exit after the monitor).
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_carry_address_prefix_gateway_dns_and_mtu() {
        let args = GuestNetwork::default().kernel_args();

        assert_eq!(
            args,
            "distroctl.ip=10.0.2.15/24 distroctl.gw=10.0.2.2 distroctl.dns=10.0.2.3 distroctl.mtu=65520"
        );
    }

    #[test]
    fn passt_args_match_the_guest_side() {
        let args = GuestNetwork::default()
            .passt_args(Path::new("/r/net.sock"), Path::new("/r/passt.log"))
            .join(" ");

        for expected in [
            "--socket /r/net.sock",
            "--address 10.0.2.15",
            "--netmask 24",
            "--gateway 10.0.2.2",
            "--mtu 65520",
            "--dns-forward 10.0.2.3",
            "--tcp-ports none",
        ] {
            assert!(args.contains(expected), "{expected} missing from {args}");
        }
    }

    #[test]
    fn passt_serves_its_socket_and_removes_it_when_dropped() {
        let binary = Path::new("/usr/bin/passt");
        if !binary.exists() {
            eprintln!("SKIP: /usr/bin/passt is not installed (apt-get install passt)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("net.sock");

        let passt = Passt::start(
            binary,
            &GuestNetwork::default(),
            &socket,
            &dir.path().join("passt.log"),
        )
        .unwrap();
        assert!(std::os::unix::net::UnixStream::connect(passt.socket()).is_ok());
        let pid = passt.pid.expect("pid from --pid");
        drop(passt);

        assert!(!socket.exists());
        let deadline = Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(pid, None).is_ok() {
            assert!(Instant::now() < deadline, "passt still runs after drop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
