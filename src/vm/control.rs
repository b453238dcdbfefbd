//! The CLI side of the VM lifecycle: boot the VM when a command needs it
//! (at most one per user, whatever the number of concurrent commands), wait
//! for the agent, and shut it down cleanly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::accel::{self, HostFacts};
use super::data_disk::{self, DataDiskError};
use super::shares::SharePlan;
use super::state::{self, VmPaths, VmState};
use crate::agent_client::{self, AgentAddr};
use crate::config::{Config, KvmFlavor};
use crate::guest::initramfs::{self, InitramfsError};
use crate::guest::kernel::{self, KernelError, KernelSpec};

/// Guest port the agent listens on.
const AGENT_PORT: u32 = protocol::AGENT_VSOCK_PORT;

/// How long a clean shutdown may take before the VM is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Failure to bring the VM up or down.
#[derive(Debug, Error)]
pub enum VmError {
    /// The kernel could not be found or fetched.
    #[error("cannot get the guest kernel")]
    Kernel(#[source] KernelError),
    /// The initramfs could not be built.
    #[error("cannot build the guest initramfs")]
    Initramfs(#[source] InitramfsError),
    /// The data disk could not be created.
    #[error("cannot create the data disk")]
    DataDisk(#[source] DataDiskError),
    /// A guest binary is not next to `distroctl`.
    #[error("{} is missing; build the whole workspace (cargo build --workspace) or install it beside distroctl", path.display())]
    GuestBinary {
        /// Where it was expected.
        path: PathBuf,
    },
    /// No backend can run the VM as configured.
    #[error("{0}")]
    Backend(String),
    /// QEMU is not installed.
    #[error(
        "qemu-system-x86_64 is missing; install it with: sudo apt-get install qemu-system-x86"
    )]
    QemuMissing,
    /// Runtime directory or locks failed.
    #[error("cannot use {}", path.display())]
    Runtime {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The runner process ended before the agent answered.
    #[error("the utility VM stopped during boot; console log {}:\n{tail}", log.display())]
    BootFailed {
        /// The console log.
        log: PathBuf,
        /// Its last lines (and the runner's).
        tail: String,
    },
    /// The agent did not answer in time.
    #[error("the agent did not answer within {timeout:?} (raise boot_timeout in the config if the host is slow); console log {}:\n{tail}", log.display())]
    BootTimeout {
        /// The limit.
        timeout: Duration,
        /// The console log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The VM did not stop.
    #[error("the utility VM did not stop within {SHUTDOWN_TIMEOUT:?} and was killed")]
    ShutdownKilled,
}

/// Paths of this user's VM.
pub fn paths() -> VmPaths {
    VmPaths::new(crate::paths::runtime_dir())
}

/// The agent's address while the VM runs.
pub fn agent_addr(paths: &VmPaths) -> AgentAddr {
    AgentAddr::HybridVsock {
        path: paths.vsock_socket(),
        port: AGENT_PORT,
    }
}

/// Path of the data disk.
pub fn data_disk_path() -> PathBuf {
    crate::paths::data_dir().join("data.img")
}

/// Path of the serial console log.
pub fn console_log_path() -> PathBuf {
    crate::paths::data_dir().join("console.log")
}

fn runtime_err(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::Runtime {
        path: path.to_path_buf(),
        source,
    }
}

/// Reports a boot step to whoever waits for the VM.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A binary installed beside `distroctl` (the guest binaries, our VMM).
pub fn guest_binary(name: &str) -> Result<PathBuf, VmError> {
    let exe = std::env::current_exe().map_err(runtime_err(Path::new("/proc/self/exe")))?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(VmError::GuestBinary { path })
    }
}

fn find_qemu() -> Result<PathBuf, VmError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or(VmError::QemuMissing)
}

/// Boots the VM: fetches the kernel, builds the initramfs, creates the data
/// disk, starts the detached runner and waits for the agent. Returns the
/// runner process, which the caller reaps. Only the manager calls this, so
/// one VM runs per user.
pub async fn boot(
    paths: &VmPaths,
    config: &Config,
    progress: Progress<'_>,
) -> Result<Child, VmError> {
    paths.create().map_err(runtime_err(&paths.dir))?;
    let init_bin = guest_binary("distroctl-init")?;
    let agent_bin = guest_binary("distroctl-agent")?;
    let spec = KernelSpec {
        kernel: config.kernel.clone(),
        modules: config.modules.clone(),
    };
    let cache = crate::paths::cache_dir();
    let kernels = cache.join("kernels");
    if config.kernel.is_none()
        && std::fs::read_dir(&kernels).map_or(true, |mut d| d.next().is_none())
    {
        progress("Fetching the guest kernel with apt (first start only)");
    }
    let (kernel, initrd) = tokio::task::spawn_blocking(move || {
        let kernel = kernel::resolve(&spec, &cache).map_err(VmError::Kernel)?;
        let initrd = initramfs::build(&init_bin, &agent_bin, &kernel, &cache.join("initramfs"))
            .map_err(VmError::Initramfs)?;
        Ok::<_, VmError>((kernel, initrd))
    })
    .await
    .expect("prepare task")?;
    let disk = data_disk_path();
    let disk_size = config.disk_size;
    let disk_for_task = disk.clone();
    let created = tokio::task::spawn_blocking(move || data_disk::ensure(&disk_for_task, disk_size))
        .await
        .expect("disk task")
        .map_err(VmError::DataDisk)?;
    if created {
        progress(&format!("Created the data disk {}", disk.display()));
    }
    let console = console_log_path();
    // Each boot starts a fresh console log; the previous one is kept.
    if console.exists() {
        let _ = std::fs::rename(&console, console.with_extension("log.old"));
    }
    // Created here, private, so the monitor writes into a 0600 file.
    crate::paths::create_private(&console, false).map_err(runtime_err(&console))?;
    let pvm_guest_kernel = match config.kvm_flavor {
        KvmFlavor::Pvm => true,
        KvmFlavor::Vmx => false,
        KvmFlavor::Auto => kernel.version.contains("pvm"),
    };
    let wanted = accel::Wanted {
        choice: config.backend,
        pvm_guest_kernel,
        own_vmm_installed: guest_binary("distroctl-vmm").is_ok(),
    };
    let plan = accel::choose_backend(&HostFacts::probe(), &wanted).map_err(VmError::Backend)?;
    let (monitor_flag, monitor_path, kvm, what) = match plan.monitor {
        accel::Monitor::OwnVmm => (
            "--vmm",
            guest_binary("distroctl-vmm")?,
            true,
            "own VMM, KVM",
        ),
        accel::Monitor::Qemu { kvm } => (
            "--qemu",
            find_qemu()?,
            kvm,
            if kvm {
                "QEMU, KVM"
            } else {
                "QEMU, TCG emulation"
            },
        ),
    };
    progress(&format!(
        "Starting the utility VM ({what}, kernel {})",
        kernel.version
    ));

    let (shares, virtiofsd, _) = share_plan(config);

    let runner_log = crate::paths::create_private(&paths.runner_log(), false)
        .map_err(runtime_err(&paths.runner_log()))?;
    let exe = std::env::current_exe().map_err(runtime_err(Path::new("/proc/self/exe")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("vm-run")
        .arg(monitor_flag)
        .arg(&monitor_path)
        .arg("--reason")
        .arg(&plan.reason)
        .arg("--memory-mib")
        .arg((config.memory >> 20).to_string())
        .arg("--cpus")
        .arg(config.cpus.to_string())
        .arg("--kernel")
        .arg(&kernel.image)
        .arg("--kernel-version")
        .arg(&kernel.version)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--disk")
        .arg(&disk)
        .arg("--console-log")
        .arg(&console)
        .arg("--runtime-dir")
        .arg(&paths.dir)
        .stdin(Stdio::null())
        .stdout(
            runner_log
                .try_clone()
                .map_err(runtime_err(&paths.runner_log()))?,
        )
        .stderr(runner_log);
    if kvm {
        cmd.arg("--kvm");
    }
    if let Some(virtiofsd) = virtiofsd.as_ref().filter(|_| !shares.shares.is_empty()) {
        cmd.arg("--virtiofsd").arg(virtiofsd);
        for share in &shares.shares {
            cmd.arg("--share")
                .arg(serde_json::to_string(share).expect("a share is plain data"));
        }
    }
    // SAFETY: setsid in the forked child detaches the runner from this
    // terminal's session so it outlives the command and ignores its Ctrl-C.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let started = Instant::now();
    let mut runner = cmd.spawn().map_err(runtime_err(&paths.runner_log()))?;
    let result = wait_for_agent(paths, config.boot_timeout, || {
        matches!(runner.try_wait(), Ok(None))
    })
    .await;
    match &result {
        Ok(()) => tracing::info!(elapsed = ?started.elapsed(), "agent answered"),
        Err(_) => {
            // Killing the runner takes QEMU with it (parent-death signal);
            // its files would claim a VM that no longer exists.
            let _ = runner.kill();
            let _ = runner.wait();
            paths.remove_runtime_files();
        }
    }
    result.map(|()| runner)
}

/// The host shares a VM booted with `config` gets, the daemon that serves
/// them (`None`: none is installed, nothing is shared), and a line for the
/// user for each configured share left out.
pub fn share_plan(config: &Config) -> (SharePlan, Option<PathBuf>, Vec<String>) {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut plan = super::shares::plan(config.share_home, home.as_deref(), &config.mount);
    let virtiofsd = super::virtiofsd::find_binary(config.virtiofsd.as_deref());
    let mut lines = std::mem::take(&mut plan.skipped);
    if virtiofsd.is_none() && !plan.shares.is_empty() {
        lines.push(
            "host directories are not shared: virtiofsd is missing; install it with scripts/install-virtiofsd or `cargo install virtiofsd` (or set share_home = false in config.toml)".into(),
        );
        plan.shares.clear();
    }
    (plan, virtiofsd, lines)
}

/// A line for each host share of the running VM that is not served.
pub fn failed_shares(paths: &VmPaths) -> Vec<String> {
    VmState::read(&paths.state_file())
        .map(|state| state.shares.into_iter().filter_map(|s| s.failed).collect())
        .unwrap_or_default()
}

/// Waits until the agent answers, failing when `alive` says the VM is gone
/// or `timeout` passes.
async fn wait_for_agent(
    paths: &VmPaths,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<(), VmError> {
    let deadline = Instant::now() + timeout;
    let addr = agent_addr(paths);
    loop {
        if !alive() {
            return Err(VmError::BootFailed {
                log: console_log_path(),
                tail: format!(
                    "{}\n{}",
                    state::log_tail(&console_log_path(), 20),
                    state::log_tail(&paths.runner_log(), 5)
                ),
            });
        }
        if paths.vsock_socket().exists() && agent_client::connect(&addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(VmError::BootTimeout {
                timeout,
                log: console_log_path(),
                tail: state::log_tail(&console_log_path(), 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the VM cleanly: the agent terminates every distro and syncs, init
/// powers off, QEMU exits. Kills it if that takes too long. Returns false
/// when no VM was running.
pub async fn shutdown() -> Result<bool, VmError> {
    let paths = paths();
    if !state::is_running(&paths) {
        return Ok(false);
    }
    let addr = agent_addr(&paths);
    if let Err(e) = agent_client::request(&addr, protocol::Request::Shutdown).await {
        tracing::warn!(error = %e, "agent did not take the shutdown request");
        eprintln!(
            "distroctl: the agent did not answer ({e}); stopping the VM without a clean shutdown"
        );
        kill(&paths);
        return Ok(true);
    }
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    while Instant::now() < deadline {
        if !state::is_running(&paths) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(&paths);
    Err(VmError::ShutdownKilled)
}

/// Kills the runner (and with it QEMU) without asking the guest.
pub fn kill(paths: &VmPaths) {
    if let Some(state) = VmState::read(&paths.state_file()) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(state.vmm_pid as i32), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(state.runner_pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while state::is_running(paths) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
