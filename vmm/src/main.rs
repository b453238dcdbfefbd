//! `distroctl-vmm`: runs one utility VM under KVM until the guest powers
//! off or resets.
//!
//! ```text
//! distroctl-vmm --kernel vmlinuz --initramfs initramfs.cpio \
//!     --cmdline "console=ttyS0 panic=-1 quiet loglevel=4 pci=off" \
//!     --disk data.img --vsock-uds vsock.sock --cid 3 \
//!     --memory-mib 2048 --cpus 2 --console console.log
//! ```
//!
//! Flags:
//! - `--kernel PATH`: bzImage or ELF vmlinux (PVH note used if present).
//! - `--firmware PATH`: instead of `--kernel`, a firmware ELF with a PVH
//!   entry (rust-hypervisor-firmware), which boots from the disk itself.
//! - `--initramfs PATH`: cpio initramfs (kernel boot only).
//! - `--cmdline TEXT`: kernel command line (default: `console=ttyS0`).
//! - `--disk PATH`: raw image, the first virtio-blk device (`/dev/vda`).
//! - `--vsock-uds PATH` and `--cid N`: the hybrid vsock device; host
//!   programs connect to `PATH` and write `CONNECT <port>\n` (CID default 3).
//! - `--memory-mib N` (default 1024) and `--cpus N` (default 1).
//! - `--console PATH`: append the serial console here (default: stdout).
//! - `--no-rng`: leave out the virtio-rng device (present by default, so
//!   the guest's CRNG is seeded at once).
//! - `--no-balloon`: leave out the virtio-balloon device (present by
//!   default, so memory the guest frees goes back to the host through free
//!   page reporting).
//! - `--hugepages`: back guest RAM with reserved 2 MiB pages from
//!   hugetlbfs (`/proc/sys/vm/nr_hugepages`); by default it is anonymous
//!   memory at 2 MiB-aligned addresses with transparent huge pages
//!   requested, so KVM maps it with 2 MiB nested pages either way.
//! - `--stats-file PATH`: keep `{"memory_returned_bytes": N}` in `PATH`
//!   (rewritten atomically, at most once a second, when `N` changes): the
//!   guest memory free page reporting and inflation gave back so far.
//!   With `--hugepages` the reserved pages are kept and `N` stays 0.
//! - `--net-socket PATH`: a virtio-net device whose frames go to passt
//!   serving `PATH` (`passt --socket PATH`; QEMU's stream framing); the VMM
//!   connects at start. `--mac xx:xx:xx:xx:xx:xx` (default
//!   `52:54:00:12:34:56`) and `--net-mtu N` (default 65520) go with it.
//! - `--fs TAG=SOCKET_PATH` (repeatable): a virtio-fs device the guest
//!   mounts with `mount -t virtiofs TAG /mnt`, served by the `virtiofsd`
//!   listening on `SOCKET_PATH` (`virtiofsd --socket-path SOCKET_PATH
//!   --shared-dir DIR`), which must be running: the VMM connects at start.
//!   `TAG` is 1–36 ASCII letters, digits, `-`, `_` or `.`. Guest RAM then
//!   becomes a shared memfd (with `--hugepages`, a hugetlbfs memfd) so the
//!   daemon can map it. If a daemon dies the VMM logs it and keeps running;
//!   the guest's requests on that share are no longer answered.
//!
//! Exit status: 0 when the guest powered off or reset (a reset ends the
//! VMM, like QEMU's `-no-reboot`; stderr says which), or when stopped by
//! SIGTERM/SIGINT; 3 when every vCPU halted with no way to wake; 1 on
//! errors, with one line saying what failed and why (each cause on its own
//! line, with `-v`).
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use vmm::boot::BootSource;
use vmm::config::{parse_mac, FsConfig, NetConfig, VmConfig, VsockConfig};
use vmm::vm::guest_ram::RamBacking;
use vmm::vm::Vm;
use vmm::vm_exit::ExitReason;

/// Runs the distroctl utility VM under KVM.
#[derive(Debug, Parser)]
#[command(name = "distroctl-vmm", version)]
struct Args {
    /// Kernel image (bzImage or ELF vmlinux).
    #[arg(
        long,
        required_unless_present = "firmware",
        conflicts_with = "firmware"
    )]
    kernel: Option<PathBuf>,
    /// Firmware ELF with a PVH entry, booted instead of a kernel.
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Initramfs (cpio).
    #[arg(long, requires = "kernel")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    cmdline: String,
    /// Raw disk image for the first virtio-blk device.
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Unix socket of the hybrid vsock device.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest vsock CID.
    #[arg(long, default_value_t = 3, requires = "vsock_uds")]
    cid: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// File the serial console is appended to (default: stdout).
    #[arg(long)]
    console: Option<PathBuf>,
    /// Leave out the virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// Leave out the virtio-balloon device (free page reporting).
    #[arg(long)]
    no_balloon: bool,
    /// Back guest RAM with reserved 2 MiB pages from hugetlbfs.
    #[arg(long)]
    hugepages: bool,
    /// JSON file kept up to date with the memory given back to the host.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Unix socket of the network backend (passt) for a virtio-net device.
    #[arg(long)]
    net_socket: Option<PathBuf>,
    /// The guest's MAC address.
    #[arg(long, requires = "net_socket", value_parser = parse_mac_arg)]
    mac: Option<[u8; 6]>,
    /// The guest's (largest) MTU.
    #[arg(long, requires = "net_socket")]
    net_mtu: Option<u16>,
    /// A virtio-fs share, TAG=SOCKET_PATH of its virtiofsd (repeatable).
    #[arg(long = "fs", value_name = "TAG=SOCKET_PATH", value_parser = parse_fs_arg)]
    fs: Vec<FsConfig>,
    /// Print the full cause chain on errors.
    #[arg(short, long)]
    verbose: bool,
}

impl Args {
    fn into_config(self) -> VmConfig {
        let boot = match (self.kernel, self.firmware) {
            (Some(kernel), _) => BootSource::Kernel {
                kernel,
                initramfs: self.initramfs,
                cmdline: self.cmdline,
            },
            (None, Some(firmware)) => BootSource::Firmware {
                firmware,
                cmdline: self.cmdline,
            },
            (None, None) => unreachable!("clap requires --kernel or --firmware"),
        };
        VmConfig {
            boot,
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            disk: self.disk,
            vsock: self.vsock_uds.map(|uds_path| VsockConfig {
                cid: self.cid,
                uds_path,
            }),
            rng: !self.no_rng,
            balloon: !self.no_balloon,
            net: self.net_socket.map(|socket| {
                let mut net = NetConfig::new(socket);
                net.mac = self.mac.unwrap_or(net.mac);
                net.mtu = self.net_mtu.unwrap_or(net.mtu);
                net
            }),
            console: self.console,
            ram_backing: if self.hugepages {
                RamBacking::HugeTlb
            } else {
                RamBacking::TransparentHugePages
            },
            stats_file: self.stats_file,
            fs: self.fs,
        }
    }
}

/// `--fs`'s parser; clap prints the error as the one line.
fn parse_fs_arg(text: &str) -> Result<FsConfig, String> {
    FsConfig::parse(text).map_err(|e| e.to_string())
}

/// `--mac`'s parser; clap prints the error as the one line.
fn parse_mac_arg(text: &str) -> Result<[u8; 6], String> {
    parse_mac(text).map_err(|e| e.to_string())
}

/// Blocks SIGTERM and SIGINT in every thread (they inherit the mask) and
/// turns them into a clean stop on a thread of their own.
fn stop_on_termination(vm: &Vm) -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("cannot block SIGTERM/SIGINT")?;
    let handle = vm.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                tracing::info!(?signal, "stopping the VM");
                handle.stop();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn run(args: Args) -> anyhow::Result<ExitReason> {
    let vm = Vm::new(args.into_config()).context("cannot create the VM")?;
    stop_on_termination(&vm)?;
    vm.run().context("the VM failed")
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let verbose = args.verbose;
    match run(args) {
        Ok(reason) => {
            let (what, code) = match reason {
                ExitReason::PowerOff => ("guest powered off", 0),
                ExitReason::Reset => ("guest reset", 0),
                ExitReason::Stopped => ("stopped", 0),
                ExitReason::Halted => ("every vCPU halted for good", 3),
                ExitReason::TripleFault => (
                    "the guest triple-faulted (a guest kernel crash; the vCPU's last state is logged above)",
                    4,
                ),
            };
            eprintln!("distroctl-vmm: {what}");
            ExitCode::from(code)
        }
        Err(e) => {
            if verbose {
                eprintln!("distroctl-vmm: {e:?}");
            } else {
                eprintln!("distroctl-vmm: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}
