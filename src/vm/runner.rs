//! `distroctl vm-run`: the detached process that owns one running utility
//! VM. It holds the VM lock and runs the VM monitor — our own VMM
//! (`distroctl-vmm`, with its vsock and network devices in-process) or QEMU
//! (with our vsock device served over vhost-user) — with passt beside it for
//! the network, and cleans up when the monitor ends (guest power-off, crash
//! or kill). Being a separate process, a crash of the manager never takes
//! the VM down, and killing the runner takes the monitor with it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use thiserror::Error;

use super::passt::GuestNetwork;
use super::qemu::{QemuSpec, GUEST_CID};
use super::shares::Share;
use super::state::{try_lock, ShareState, VmPaths, VmState};
use super::virtiofsd::Virtiofsd;

/// What the runner is told by the CLI that started it.
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    /// QEMU binary (the QEMU backend).
    #[arg(long, required_unless_present = "vmm", conflicts_with = "vmm")]
    pub qemu: Option<PathBuf>,
    /// Our VMM binary, `distroctl-vmm` (the KVM backend).
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// Use KVM (QEMU backend).
    #[arg(long)]
    pub kvm: bool,
    /// Why this accelerator.
    #[arg(long)]
    pub reason: String,
    /// Guest memory in MiB.
    #[arg(long)]
    pub memory_mib: u64,
    /// vCPUs.
    #[arg(long)]
    pub cpus: u32,
    /// Kernel image.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Kernel release, for status.
    #[arg(long)]
    pub kernel_version: String,
    /// Initramfs.
    #[arg(long)]
    pub initrd: PathBuf,
    /// Data disk.
    #[arg(long)]
    pub disk: PathBuf,
    /// Serial console log.
    #[arg(long)]
    pub console_log: PathBuf,
    /// Runtime directory.
    #[arg(long)]
    pub runtime_dir: PathBuf,
    /// A host directory to share with the VM, as JSON (see
    /// [`super::shares::Share`]); one flag per share.
    #[arg(long = "share", value_name = "JSON", value_parser = parse_share)]
    pub shares: Vec<Share>,
    /// The virtio-fs daemon that serves the shares.
    #[arg(long, requires = "shares")]
    pub virtiofsd: Option<PathBuf>,
}

fn parse_share(s: &str) -> Result<Share, String> {
    serde_json::from_str(s).map_err(|e| format!("bad share {s:?}: {e}"))
}

/// The runner could not run the VM.
#[derive(Debug, Error)]
pub enum RunnerError {
    /// Another runner holds the lock.
    #[error("a utility VM is already running (lock {} is held)", path.display())]
    AlreadyRunning {
        /// The lock file.
        path: PathBuf,
    },
    /// Setting up the runtime directory or lock failed.
    #[error("cannot prepare {}", path.display())]
    Prepare {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The vsock backend did not start.
    #[error("cannot start the vsock device backend")]
    Vsock(#[source] vmm::vhost_user::VhostUserError),
    /// The VM monitor (QEMU or our VMM) did not start.
    #[error("cannot start {}", path.display())]
    Monitor {
        /// The monitor's binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the VM until QEMU exits; returns QEMU's exit code.
pub fn run(args: RunnerArgs) -> Result<i32, RunnerError> {
    let paths = VmPaths::new(args.runtime_dir.clone());
    let prep = |path: PathBuf| move |source| RunnerError::Prepare { path, source };
    paths.create().map_err(prep(paths.dir.clone()))?;
    let _lock = try_lock(&paths.vm_lock())
        .map_err(prep(paths.vm_lock()))?
        .ok_or_else(|| RunnerError::AlreadyRunning {
            path: paths.vm_lock(),
        })?;
    paths.remove_runtime_files();

    // Signals are handled synchronously below; blocking them before any
    // thread starts keeps them off the backend's threads.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    let _ = signals.thread_block();

    // Both monitors get the network from passt; without it the VM runs
    // without one. The guard lives until the monitor is reaped.
    let network = GuestNetwork::default();
    let passt = super::passt::start_in(&paths.dir, &network);
    let net = passt.as_ref().map(|p| (p.socket(), &network));
    // One daemon per share; a share whose daemon does not start is left
    // out of the VM and reported, the VM boots without it.
    let (mut daemons, mut share_states) = start_virtiofsd(&args, &paths.dir);
    let shared: Vec<(&Share, &Path)> = daemons.iter().map(|d| (d.share(), d.socket())).collect();
    let (mut cmd, vsock_backend) = match (&args.vmm, &args.qemu) {
        (Some(vmm), _) => (own_vmm_command(vmm, &args, &paths, net, &shared), None),
        (None, Some(qemu)) => {
            let backend = vmm::vhost_user::spawn_vhost_user_vsock(
                &paths.vhost_socket(),
                &paths.vsock_socket(),
                GUEST_CID,
            )
            .map_err(RunnerError::Vsock)?;
            let spec = QemuSpec {
                binary: qemu.clone(),
                kvm: args.kvm,
                memory_mib: args.memory_mib,
                cpus: args.cpus,
                kernel: args.kernel.clone(),
                initrd: args.initrd.clone(),
                disk: args.disk.clone(),
                vhost_socket: paths.vhost_socket(),
                console_log: args.console_log.clone(),
                tsc_khz: super::accel::tsc_khz(),
                network: net.map(|(socket, network)| (socket.to_owned(), *network)),
                shares: shared
                    .iter()
                    .map(|(share, socket)| ((*share).clone(), socket.to_path_buf()))
                    .collect(),
            };
            let mut cmd = Command::new(&spec.binary);
            cmd.args(spec.args());
            (cmd, Some(backend))
        }
        (None, None) => unreachable!("clap requires --qemu or --vmm"),
    };
    let backend_name = if args.vmm.is_some() { "kvm" } else { "qemu" };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: prctl in the forked child only sets its parent-death signal;
    // this thread (the runner's main thread) lives until the monitor is
    // reaped, so the signal fires only when the runner itself dies.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            Ok(())
        });
    }
    let program = PathBuf::from(cmd.get_program());
    let mut monitor = cmd.spawn().map_err(|source| RunnerError::Monitor {
        path: program,
        source,
    })?;
    tracing::info!(
        pid = monitor.id(),
        backend = backend_name,
        kvm = args.kvm,
        "VM monitor started"
    );

    let mut state = VmState {
        runner_pid: std::process::id(),
        vmm_pid: monitor.id(),
        backend: backend_name.into(),
        reason: args.reason.clone(),
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        memory_mib: args.memory_mib,
        cpus: args.cpus,
        kernel_version: args.kernel_version.clone(),
        console_log: args.console_log.clone(),
        shares: std::mem::take(&mut share_states),
    };
    if let Err(e) = state.write(&paths.state_file()) {
        tracing::warn!(error = %e, "cannot write vm.json");
    }

    let code = loop {
        if notice_dead_daemons(&mut daemons, &mut state.shares) {
            if let Err(e) = state.write(&paths.state_file()) {
                tracing::warn!(error = %e, "cannot write vm.json");
            }
        }
        match monitor.try_wait() {
            Ok(Some(status)) => break status.code().unwrap_or(1),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the VM monitor failed");
                break 1;
            }
        }
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(200)) {
            tracing::info!(?sig, "stopping the VM monitor");
            let _ = monitor.kill();
        }
    };
    tracing::info!(code, "VM monitor exited");
    drop(vsock_backend);
    drop(passt);
    drop(daemons);
    paths.remove_runtime_files();
    Ok(code)
}

/// Starts a `virtiofsd` for each share; returns the running ones and the
/// state of every share (with why it failed, for those that did not start).
fn start_virtiofsd(args: &RunnerArgs, dir: &Path) -> (Vec<Virtiofsd>, Vec<ShareState>) {
    let mut daemons = Vec::new();
    let mut states = Vec::new();
    for share in &args.shares {
        let started = match &args.virtiofsd {
            Some(binary) => {
                Virtiofsd::start(binary, share, dir).map_err(|e| crate::describe(&e, true))
            }
            None => Err("no virtiofsd to serve it".to_owned()),
        };
        let failed = match started {
            Ok(daemon) => {
                daemons.push(daemon);
                None
            }
            Err(why) => {
                tracing::error!(host = %share.host.display(), "share not served: {why}");
                Some(format!("{} is not shared: {why}", share.host.display()))
            }
        };
        states.push(ShareState {
            share: share.clone(),
            failed,
        });
    }
    (daemons, states)
}

/// Records a daemon that has ended in its share's state; true when one has.
/// Its share gives I/O errors in the guest until the VM restarts.
fn notice_dead_daemons(daemons: &mut Vec<Virtiofsd>, states: &mut [ShareState]) -> bool {
    let mut changed = false;
    daemons.retain_mut(|daemon| {
        let Some(how) = daemon.ended() else {
            return true;
        };
        tracing::error!("{how}");
        if let Some(state) = states.iter_mut().find(|s| s.share == *daemon.share()) {
            state.failed = Some(format!(
                "{how}; files under {} give I/O errors until the VM restarts (`distroctl shutdown`, then any command)",
                state.share.guest
            ));
        }
        changed = true;
        false
    });
    changed
}

/// The `distroctl-vmm` command line for this VM: the same kernel,
/// initramfs, command line, data disk, vsock socket and network (passt's
/// socket `net`, the addresses on the kernel command line for init) as
/// under QEMU.
fn own_vmm_command(
    vmm: &Path,
    args: &RunnerArgs,
    paths: &VmPaths,
    net: Option<(&Path, &GuestNetwork)>,
    shares: &[(&Share, &Path)],
) -> Command {
    let cmdline = format!(
        "{}{}",
        super::qemu::KERNEL_CMDLINE,
        super::qemu::guest_kernel_args(net.map(|(_, n)| n), shares.iter().map(|(s, _)| *s))
    );
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(&args.kernel)
        .arg("--initramfs")
        .arg(&args.initrd)
        .arg("--cmdline")
        .arg(cmdline)
        .arg("--disk")
        .arg(&args.disk)
        .arg("--vsock-uds")
        .arg(paths.vsock_socket())
        .arg("--cid")
        .arg(GUEST_CID.to_string())
        .arg("--memory-mib")
        .arg(args.memory_mib.to_string())
        .arg("--cpus")
        .arg(args.cpus.min(u8::MAX.into()).to_string())
        .arg("--console")
        .arg(&args.console_log)
        .arg("--stats-file")
        .arg(paths.monitor_stats_file());
    if let Some((socket, network)) = net {
        cmd.arg("--net-socket")
            .arg(socket)
            .arg("--net-mtu")
            .arg(network.mtu.min(u16::MAX.into()).to_string());
    }
    for (share, socket) in shares {
        cmd.arg("--fs")
            .arg(format!("{}={}", share.tag, socket.display()));
    }
    cmd
}

/// Waits up to `timeout` for one of the blocked `signals`.
fn wait_signal(signals: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait reads the set and the timespec, both live locals;
    // a null info pointer is allowed.
    let n = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &ts) };
    if n > 0 {
        Signal::try_from(n).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    fn runner_args() -> RunnerArgs {
        RunnerArgs {
            qemu: None,
            vmm: Some("/bin/distroctl-vmm".into()),
            kvm: true,
            reason: "test".into(),
            memory_mib: 1024,
            cpus: 2,
            kernel: "/k/vmlinuz".into(),
            kernel_version: "6.1".into(),
            initrd: "/k/initrd".into(),
            disk: "/d/data.img".into(),
            console_log: "/d/console.log".into(),
            runtime_dir: "/r".into(),
            shares: Vec::new(),
            virtiofsd: None,
        }
    }

    /// The arguments `own_vmm_command` gives our VMM for a runtime
    /// directory `/r`, with passt serving `net` or without passt.
    fn own_vmm_args(net: Option<(&Path, &GuestNetwork)>) -> Vec<String> {
        let paths = VmPaths::new("/r".into());
        let cmd = own_vmm_command(
            Path::new("/bin/distroctl-vmm"),
            &runner_args(),
            &paths,
            net,
            &[],
        );
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .map(String::from)
            .collect()
    }

    /// The value after `flag`.
    fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn own_vmm_gets_passt_socket_mtu_and_the_addresses_for_init() {
        let network = GuestNetwork::default();

        let args = own_vmm_args(Some((Path::new("/r/net.sock"), &network)));

        assert_eq!(value(&args, "--net-socket"), Some("/r/net.sock"));
        assert_eq!(value(&args, "--net-mtu"), Some("65520"));
        let cmdline = value(&args, "--cmdline").unwrap();
        assert!(
            cmdline.starts_with(super::super::qemu::KERNEL_CMDLINE),
            "{cmdline}"
        );
        assert!(cmdline.ends_with(&network.kernel_args()), "{cmdline}");
    }

    #[test]
    fn own_vmm_without_passt_has_no_network_device_or_addresses() {
        let args = own_vmm_args(None);

        assert!(
            !args.iter().any(|a| a.starts_with("--net") || a == "--mac"),
            "{args:?}"
        );
        assert_eq!(
            value(&args, "--cmdline"),
            Some(super::super::qemu::KERNEL_CMDLINE)
        );
    }

    #[test]
    fn own_vmm_gets_the_same_disk_vsock_and_console_as_qemu() {
        let args = own_vmm_args(None);

        assert_eq!(value(&args, "--kernel"), Some("/k/vmlinuz"));
        assert_eq!(value(&args, "--initramfs"), Some("/k/initrd"));
        assert_eq!(value(&args, "--disk"), Some("/d/data.img"));
        assert_eq!(value(&args, "--vsock-uds"), Some("/r/vsock.sock"));
        assert_eq!(value(&args, "--cid"), Some("3"));
        assert_eq!(value(&args, "--memory-mib"), Some("1024"));
        assert_eq!(value(&args, "--cpus"), Some("2"));
        assert_eq!(value(&args, "--console"), Some("/d/console.log"));
        assert_eq!(value(&args, "--stats-file"), Some("/r/monitor-stats.json"));
    }

    #[test]
    fn own_vmm_gets_each_share_as_a_device_and_the_agent_its_guest_path() {
        let share = Share {
            tag: "share0".into(),
            host: "/home/a".into(),
            guest: "/home/a".into(),
            read_only: false,
        };
        let socket = Path::new("/r/share0.sock");
        let paths = VmPaths::new("/r".into());

        let cmd = own_vmm_command(
            Path::new("/bin/distroctl-vmm"),
            &runner_args(),
            &paths,
            None,
            &[(&share, socket)],
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();

        assert_eq!(value(&args, "--fs"), Some("share0=/r/share0.sock"));
        assert!(value(&args, "--cmdline")
            .unwrap()
            .ends_with(" distroctl.share=share0,rw,2f686f6d652f61"));
    }

    #[test]
    fn a_share_without_a_daemon_is_reported_and_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = runner_args();
        args.shares = vec![Share {
            tag: "share0".into(),
            host: dir.path().into(),
            guest: "/x".into(),
            read_only: false,
        }];
        args.virtiofsd = Some(dir.path().join("no-such-virtiofsd"));

        let (daemons, states) = start_virtiofsd(&args, dir.path());

        assert!(daemons.is_empty());
        assert_eq!(states.len(), 1);
        let failed = states[0].failed.as_deref().unwrap();
        assert!(failed.contains("is not shared: cannot start"), "{failed}");
    }
}
