//! `distroctl-init`: PID 1 of the utility VM.
//!
//! One fixed sequence, each step logged to the serial console: leave the
//! initramfs root, mount the API filesystems, load the kernel modules, mount
//! the data disk, name the VM and bring up loopback, then supervise the agent
//! until shutdown. PID 1 never exits (the kernel would panic): every path —
//! shutdown request, signal, fatal error, even a panic — ends in an orderly
//! power off.

mod agent_lifecycle;
mod console;
mod data_disk;
mod guest_network;
mod kernel_modules;
mod mountinfo;
mod mounts;
mod network;
mod power;
mod restart_policy;
mod supervisor;
mod switch_root;

use std::error::Error;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::reboot::set_cad_enabled;

use crate::kernel_modules::Loaded;
use crate::power::Shutdown;
use crate::supervisor::AgentCommand;

/// The agent binary inside the initramfs.
const AGENT_PATH: &str = "/bin/distroctl-agent";

/// The vsock port the host connects to.
const AGENT_LISTEN: &str = "vsock:1024";

fn main() {
    if std::process::id() != 1 {
        eprintln!("distroctl-init: runs as PID 1 inside the utility VM; not usable on the host");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| log!("panic: {info}")));
    let reason = std::panic::catch_unwind(boot)
        .unwrap_or_else(|_| Shutdown::Fatal("init panicked".to_owned()));
    power::power_off(&reason)
}

/// The boot sequence; returns only when the VM should power off.
fn boot() -> Shutdown {
    log!("distroctl-init {} starting", env!("CARGO_PKG_VERSION"));
    // Blocked before anything can fork, so no SIGCHLD or SIGTERM is lost
    // before the supervisor reads them from its signalfd.
    if let Err(errno) = supervisor::handled_signals().thread_block() {
        return fatal("could not block signals", &errno);
    }
    // Ctrl-Alt-Del becomes SIGINT to init (an orderly shutdown) instead of
    // an immediate reboot by the kernel.
    if let Err(errno) = set_cad_enabled(false) {
        log!("could not route Ctrl-Alt-Del to init: {errno}");
    }

    if let Err(e) = mounts::mount_proc() {
        return fatal("boot failed", &e);
    }
    if let Some(reason) = leave_initramfs_if_needed() {
        return reason;
    }

    if let Err(e) = mounts::mount_base() {
        return fatal("boot failed", &e);
    }
    console::reopen();
    log!("mounted /dev, /proc, /sys, /sys/fs/cgroup, /dev/pts, /run");

    load_kernel_modules(Path::new(kernel_modules::ORDER_FILE));

    let device = Path::new(data_disk::DEVICE);
    if let Err(e) = data_disk::wait_for(device, data_disk::APPEAR_TIMEOUT)
        .and_then(|()| data_disk::mount_data(device))
    {
        return fatal("the VM cannot run without its data disk", &e);
    }
    log!("mounted {} at {}", device.display(), data_disk::MOUNT_POINT);

    match network::set_hostname() {
        Ok(()) => log!("hostname set to {}", network::HOSTNAME),
        Err(e) => log!("{}", chain(&e)),
    }
    match network::bring_up_loopback() {
        Ok(()) => log!("loopback up"),
        Err(e) => log!("{}", chain(&e)),
    }
    bring_up_guest_network();

    supervisor::supervise(&agent_command())
}

/// Configures the Ethernet interface from the kernel command line; a VM
/// without network still runs its distros, so failures are only logged.
fn bring_up_guest_network() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let network = match guest_network::parse_cmdline(&cmdline) {
        Ok(Some(network)) => network,
        Ok(None) => return log!("no network configured by the host"),
        Err(e) => return log!("{}", chain(&e)),
    };
    match guest_network::configure(&network) {
        Ok(name) => log!(
            "{name} up: {}/{} via {}, dns {}, mtu {}",
            network.address,
            network.prefix,
            network.gateway,
            network.dns,
            network.mtu
        ),
        Err(e) => log!("{}", chain(&e)),
    }
}

/// Moves off the initramfs root when `/` is still rootfs; on success this
/// never returns (init re-executes itself), so `Some` is always a failure.
fn leave_initramfs_if_needed() -> Option<Shutdown> {
    if switch_root::already_switched() {
        log!("running from the tmpfs root");
        return None;
    }
    let table = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => mountinfo::parse(&text),
        Err(e) => return Some(fatal("could not read the mount table", &e)),
    };
    if !mountinfo::root_is_initramfs(&table) {
        log!("root is not the initramfs; staying on it");
        return None;
    }
    log!("moving the initramfs onto a tmpfs root");
    let args: Vec<OsString> = std::env::args_os().collect();
    let Err(e) = switch_root::leave_initramfs(&args);
    Some(fatal("could not leave the initramfs root", &e))
}

/// Loads the modules listed in the order file; failures are logged and
/// boot goes on (a missing driver shows up as the step that needs it failing).
fn load_kernel_modules(order_file: &Path) {
    let order = match std::fs::read_to_string(order_file) {
        Ok(text) => kernel_modules::parse_order(&text),
        Err(e) => {
            log!("no module order at {}: {e}", order_file.display());
            return;
        }
    };
    let started = Instant::now();
    for module in &order {
        match kernel_modules::load(module) {
            Ok(Loaded::Now(took)) => log!("loaded {} ({took:.1?})", module_name(module)),
            Ok(Loaded::AlreadyPresent) => log!("{} already present", module_name(module)),
            Err(e) => log!("{}", chain(&e)),
        }
    }
    log!(
        "{} modules processed in {:.1?}",
        order.len(),
        started.elapsed()
    );
}

fn module_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn agent_command() -> AgentCommand {
    AgentCommand {
        program: PathBuf::from(AGENT_PATH),
        args: vec![
            "--listen".into(),
            AGENT_LISTEN.into(),
            "--data-dir".into(),
            data_disk::MOUNT_POINT.into(),
        ],
        env: vec![
            ("DISTROCTL_LOG".into(), "info".into()),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ("HOME".into(), "/".into()),
        ],
    }
}

/// Logs a fatal error with its whole cause chain and turns it into the
/// shutdown reason.
fn fatal(context: &str, error: &dyn Error) -> Shutdown {
    let text = format!("{context}: {}", chain(error));
    log!("{text}");
    Shutdown::Fatal(text)
}

/// `error: cause: cause…`, because the console is the only place the cause
/// of a boot failure can be read.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_lists_every_cause() {
        let error = data_disk::DataDiskError::Mount {
            device: PathBuf::from("/dev/vda"),
            source: nix::errno::Errno::EINVAL,
        };

        let text = chain(&error);

        assert_eq!(
            text,
            "could not mount /dev/vda as ext4 at /data: EINVAL: Invalid argument"
        );
    }

    #[test]
    fn agent_listens_on_vsock_with_data_dir() {
        let command = agent_command();

        assert_eq!(command.program, Path::new("/bin/distroctl-agent"));
        assert_eq!(
            command.args,
            ["--listen", "vsock:1024", "--data-dir", "/data"]
        );
        assert!(command
            .env
            .contains(&("DISTROCTL_LOG".to_owned(), "info".to_owned())));
    }

    #[test]
    fn module_name_drops_directory_and_extension() {
        assert_eq!(
            module_name(Path::new("/lib/modules/virtio_blk.ko")),
            "virtio_blk"
        );
    }
}
