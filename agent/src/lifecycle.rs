//! Starting, tracking and terminating distros.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocol::{
    DistroInfo, DistroSettings, DistroState, DistroStats, ErrorKind, NetworkMode, Response,
};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{watch, Mutex};

use crate::adoption::RunningRecord;
use crate::cgroup::{Cgroups, DistroCgroup};
use crate::distro_init::{DistroInitConfig, NOTE_PREFIX, READY_LINE, REAPER_COMM, ROLE_ENV};
use crate::distro_root::{off_runtime, DistroRoot};
use crate::host_shares::ShareMount;
use crate::isolated_net::IsolatedNetworks;
use crate::namespaces::spawn_as_pid1;
use crate::settings_check::{check_against_root, SettingsError};
use crate::store::{disk_usage, Store, StoreError};

/// How long a distro may take to set itself up before start fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long terminate waits for a distro's processes to disappear.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a distro's systemd gets to stop its services on terminate
/// before the distro is killed (systemd-nspawn and WSL wait about as long).
const SYSTEMD_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a start waits for a distro's systemd to listen before the
/// first command runs anyway.
const SYSTEMD_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the distro's systemd listens on its private socket, so that
/// the first `systemctl` after a start reaches it (as in WSL, where the
/// first command waits for systemd). Looked up inside the distro's root:
/// its symlinks lead nowhere else.
async fn wait_for_systemd(name: &str, pid1: i32) {
    let root = PathBuf::from(format!("/proc/{pid1}/root"));
    let distro = name.to_string();
    let listening = tokio::task::spawn_blocking(move || {
        // Opened once: PID 1 entered its root before it said ready. It is
        // gone when the distro stopped meanwhile.
        let Ok(root) = DistroRoot::open(&distro, &root) else {
            return false;
        };
        let deadline = std::time::Instant::now() + SYSTEMD_READY_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if root
                .kind("/run/systemd/private")
                .is_ok_and(|k| k == crate::distro_root::Kind::Other)
            {
                return true;
            }
            if !Path::new(&format!("/proc/{pid1}")).exists() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .await
    .unwrap_or(false);
    if listening {
        tracing::info!(distro = name, "distro's systemd is listening");
    } else {
        tracing::warn!(distro = name, timeout = ?SYSTEMD_READY_TIMEOUT, "distro's systemd did not open its socket in time; going on");
    }
}

/// Whether the distro whose PID 1 is `pid1` runs its own systemd (the
/// reaper is named `init`; systemd names itself `systemd`).
pub fn runs_systemd(pid1: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid1}/comm")).is_ok_and(|c| c.trim_end() == "systemd")
}

/// Failure of a lifecycle operation.
#[derive(Debug, Error)]
pub enum LifecycleError {
    /// Store lookup failed (unknown distro, bad name, damaged settings).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Spawning the distro's PID 1 failed.
    #[error("could not start distro {name}")]
    Spawn {
        /// Distro.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Its console log could not be read.
    #[error("could not read the console log of distro {name}")]
    ConsoleLog {
        /// Distro.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Its cgroup (with the device filter) could not be set up.
    #[error("could not start distro {name}")]
    Cgroup {
        /// Distro.
        name: String,
        /// Cause.
        #[source]
        source: crate::cgroup::CgroupError,
    },
    /// The distro's PID 1 reported an error during setup.
    #[error("could not start distro {name}: {message}")]
    Setup {
        /// Distro.
        name: String,
        /// What its PID 1 printed.
        message: String,
    },
    /// A setting given to `configure` or `import` cannot be used.
    #[error("{0}")]
    Settings(#[from] SettingsError),
    /// Its processes did not go away.
    #[error("distro {0} did not stop within {TERMINATE_TIMEOUT:?}")]
    StopTimeout(String),
}

impl LifecycleError {
    /// The protocol response for this error.
    pub fn to_response(&self) -> Response {
        let kind = match self {
            LifecycleError::Store(e) => return store_error_response(e),
            LifecycleError::Spawn { .. }
            | LifecycleError::Cgroup { .. }
            | LifecycleError::Setup { .. } => ErrorKind::StartFailed,
            LifecycleError::StopTimeout(_) | LifecycleError::ConsoleLog { .. } => {
                ErrorKind::Internal
            }
            LifecycleError::Settings(SettingsError::NoSuchUser { .. }) => ErrorKind::NoSuchUser,
            LifecycleError::Settings(_) => ErrorKind::BadRequest,
        };
        Response::error(kind, crate::error_chain(self))
    }
}

/// The protocol response for a store error.
pub fn store_error_response(e: &StoreError) -> Response {
    let kind = match e {
        StoreError::InvalidName(_) => ErrorKind::InvalidName,
        StoreError::NotFound(_) => ErrorKind::NotFound,
        StoreError::AlreadyExists(_) => ErrorKind::AlreadyExists,
        StoreError::MissingTopDir(_) => ErrorKind::InvalidArchive,
        StoreError::Io { .. } | StoreError::BadSettings { .. } => ErrorKind::Internal,
    };
    Response::error(kind, crate::error_chain(e))
}

/// Waits for a distro's PID 1 that was killed because its start failed,
/// and removes its cgroup.
/// Reads a starting distro's PID 1 output up to its first line that is not
/// a note (the ready line, or the start of an error), logging the notes.
async fn read_ready_line(
    name: &str,
    stdout: tokio::process::ChildStdout,
    line: &mut String,
) -> io::Result<usize> {
    let mut reader = BufReader::new(stdout);
    loop {
        line.clear();
        let n = reader.read_line(line).await?;
        match line.strip_prefix(NOTE_PREFIX) {
            Some(note) if n > 0 => tracing::warn!(distro = name, "{}", note.trim_end()),
            _ => return Ok(n),
        }
    }
}

async fn reap_failed_start(
    child: &mut tokio::process::Child,
    cgroup: Option<&DistroCgroup>,
) -> Option<std::process::ExitStatus> {
    let status = child.wait().await.ok();
    if let Some(g) = cgroup.cloned() {
        let _ = tokio::task::spawn_blocking(move || g.remove()).await;
    }
    status
}

/// A distro whose PID 1 runs.
#[derive(Debug, Clone)]
pub struct Running {
    /// Host PID of its PID 1.
    pub pid1: i32,
    /// Its cgroup, when cgroup v2 is available.
    pub cgroup: Option<DistroCgroup>,
    /// Its root file system directory.
    pub rootfs: PathBuf,
    /// Its network: the VM's, or a namespace of its own.
    pub network: NetworkMode,
    stopped: watch::Receiver<bool>,
}

impl Running {
    /// Waits until PID 1 has exited.
    pub async fn wait_stopped(&mut self) {
        let _ = self.stopped.wait_for(|s| *s).await;
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }
}

/// Result of a start.
#[derive(Debug, Clone)]
pub struct Started {
    /// The running distro.
    pub running: Running,
    /// It ran before.
    pub already_running: bool,
    /// cgroup limits are in force.
    pub limits_available: bool,
}

/// All distros: the store plus the ones running.
#[derive(Debug)]
pub struct Distros {
    /// The files.
    pub store: Store,
    cgroups: Option<Cgroups>,
    running: Mutex<HashMap<String, Running>>,
    /// One gate per distro, held while it starts or is terminated, so a
    /// slow start holds up only requests for that same distro.
    gates: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    importing: Arc<std::sync::Mutex<HashSet<String>>>,
    agent_exe: PathBuf,
    networks: Arc<IsolatedNetworks>,
    host_shares: std::sync::Mutex<Vec<ShareMount>>,
}

/// A name held by an import in progress; released on drop.
#[derive(Debug)]
pub struct ImportReservation {
    name: String,
    importing: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Drop for ImportReservation {
    fn drop(&mut self) {
        self.importing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

impl Distros {
    /// Creates the registry; `agent_exe` is re-executed as each distro's PID 1.
    pub fn new(store: Store, cgroups: Option<Cgroups>, agent_exe: PathBuf) -> Arc<Self> {
        Arc::new(Distros {
            store,
            cgroups,
            running: Mutex::new(HashMap::new()),
            gates: std::sync::Mutex::default(),
            importing: Arc::default(),
            agent_exe,
            networks: Arc::default(),
            host_shares: std::sync::Mutex::default(),
        })
    }

    /// The host shares mounted in the VM, bound into every distro that
    /// starts from now on (unless its mounts are off).
    pub fn set_host_shares(&self, shares: Vec<ShareMount>) {
        *self.host_shares.lock().unwrap_or_else(|p| p.into_inner()) = shares;
    }

    /// The running instance of `name`, if any.
    pub async fn running(&self, name: &str) -> Option<Running> {
        let map = self.running.lock().await;
        map.get(name).filter(|r| !r.is_stopped()).cloned()
    }

    fn gate(&self, name: &str) -> Arc<Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(name.to_string()).or_default())
    }

    /// Starts `name` unless it runs already.
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<Started, LifecycleError> {
        let gate = self.gate(name);
        let _turn = gate.lock().await;
        if let Some(r) = self.running(name).await {
            return Ok(Started {
                limits_available: r.cgroup.as_ref().is_some_and(|c| c.limits_applied),
                running: r,
                already_running: true,
            });
        }
        let rootfs = self.store.rootfs(name)?;
        let settings = self.store.settings(name)?;
        // With cgroup2 present a distro never runs without its group: the
        // device filter is what keeps its root off the VM's disks.
        let cgroup =
            match &self.cgroups {
                Some(c) => Some(c.create(name, &settings.limits).map_err(|source| {
                    LifecycleError::Cgroup {
                        name: name.to_string(),
                        source,
                    }
                })?),
                None => None,
            };
        let spawn_err = |source| LifecycleError::Spawn {
            name: name.to_string(),
            source,
        };

        // A distro's own systemd gets a console (its /dev/console) that the
        // agent records for `distroctl logs NAME`.
        let console = if settings.systemd {
            Some(crate::console::Console::open().map_err(spawn_err)?)
        } else {
            None
        };
        let console_path = match &console {
            Some(c) => Some(c.slave_path().map_err(spawn_err)?),
            None => None,
        };
        let init_config = serde_json::to_vec(&DistroInitConfig {
            name: name.to_string(),
            rootfs: rootfs.clone(),
            systemd: settings.systemd,
            console: console_path,
            cgroup: cgroup.is_some(),
            shares: match settings.mounts {
                protocol::HostMounts::On => self
                    .host_shares
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                protocol::HostMounts::Off => Vec::new(),
            },
            resolv_conf: String::new(),
        })
        .expect("settings serialise");
        let mut cmd = Command::new(&self.agent_exe);
        cmd.arg0(REAPER_COMM)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env_clear()
            .env(ROLE_ENV, "1")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let open_procs = |group: PathBuf| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(group.join("cgroup.procs"))
                .map_err(spawn_err)
        };
        let procs = match &cgroup {
            Some(g) => Some((open_procs(g.processes())?, open_procs(g.init_group())?)),
            None => None,
        };
        let isolated = settings.network == NetworkMode::Isolated;
        let net_flag = if isolated {
            CloneFlags::CLONE_NEWNET
        } else {
            CloneFlags::empty()
        };
        // SAFETY: the hook runs in the forked child before exec and only
        // makes system calls (write, sigaction, unshare) on descriptors and
        // data it owns.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((root, _)) = &procs {
                    // cgroup first, so the new cgroup namespace is rooted at
                    // the distro's processes group, below its filter.
                    nix::unistd::write(root, b"0")?;
                }
                crate::namespaces::default_signal_actions_in_child()?;
                unshare(
                    CloneFlags::CLONE_NEWNS
                        | CloneFlags::CLONE_NEWUTS
                        | CloneFlags::CLONE_NEWIPC
                        | CloneFlags::CLONE_NEWCGROUP
                        | net_flag,
                )?;
                if let Some((_, init)) = &procs {
                    // Then out of that root into a leaf, so that the root
                    // can hand controllers down (see crate::cgroup).
                    nix::unistd::write(init, b"0")?;
                }
                Ok(())
            });
        }
        let mut child = spawn_as_pid1(cmd).await.map_err(spawn_err)?;
        let pid1 = child
            .id()
            .ok_or_else(|| spawn_err(io::Error::other("PID 1 exited at once")))?
            as i32;

        let mut network_slot = None;
        if isolated {
            let networks = Arc::clone(&self.networks);
            let owner = name.to_owned();
            let attached = tokio::task::spawn_blocking(move || networks.attach(&owner, pid1)).await;
            let failure = match attached {
                Ok(Ok(link)) => {
                    tracing::info!(distro = name, address = %link.address(), "isolated network up");
                    network_slot = Some(link.slot);
                    None
                }
                Ok(Err(e)) => Some(crate::error_chain(&e)),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = failure {
                let _ = kill(Pid::from_raw(pid1), Signal::SIGKILL);
                reap_failed_start(&mut child, cgroup.as_ref()).await;
                return Err(LifecycleError::Setup {
                    name: name.to_string(),
                    message: format!(
                        "its isolated network could not be set up: {why} \
                         (`distroctl configure {name} --network shared` uses the VM's network)"
                    ),
                });
            }
        }

        // A few hundred bytes: they fit the pipe, so this never waits.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, &init_config).await;
        }
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let mut line = String::new();
        let ready =
            tokio::time::timeout(START_TIMEOUT, read_ready_line(name, stdout, &mut line)).await;
        if !matches!(ready, Ok(Ok(_)) if line.trim_end() == READY_LINE) {
            let _ = kill(Pid::from_raw(pid1), Signal::SIGKILL);
            let mut message = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut message))
                    .await;
            let status = reap_failed_start(&mut child, cgroup.as_ref()).await;
            let message = match (message.trim(), ready) {
                ("", Err(_)) => format!("setup did not finish within {START_TIMEOUT:?}"),
                ("", _) => format!("its init ended during setup ({status:?})"),
                (m, _) => m.to_string(),
            };
            return Err(LifecycleError::Setup {
                name: name.to_string(),
                message,
            });
        }

        if settings.systemd {
            wait_for_systemd(name, pid1).await;
        }
        let (tx, rx) = watch::channel(false);
        if let Some(console) = console {
            console.record(crate::console::log_path(&rootfs), rx.clone());
        }
        let running = Running {
            pid1,
            cgroup,
            rootfs,
            network: settings.network,
            stopped: rx,
        };
        self.running
            .lock()
            .await
            .insert(name.to_string(), running.clone());
        tracing::info!(distro = name, pid1, "distro started");
        // So that an agent started after this one dies takes it back.
        match RunningRecord::of(pid1, network_slot, running.cgroup.is_some()) {
            Some(record) => {
                if let Err(e) = record.write(&running.rootfs) {
                    tracing::warn!(distro = name, error = %e, "could not record the running distro");
                }
            }
            None => tracing::warn!(distro = name, "PID 1 gone before it could be recorded"),
        }
        let exited = async move {
            let status = child.wait().await;
            status.ok().map(crate::exec::exit_code)
        };
        self.watch_stop(name, &running, exited, tx);
        Ok(Started {
            limits_available: running.cgroup.as_ref().is_some_and(|c| c.limits_applied),
            running,
            already_running: false,
        })
    }

    /// Cleans up after the distro `name` once `exited` (its PID 1's exit)
    /// completes, and tells the waiters.
    fn watch_stop(
        self: &Arc<Self>,
        name: &str,
        running: &Running,
        exited: impl std::future::Future<Output = Option<i32>> + Send + 'static,
        tx: watch::Sender<bool>,
    ) {
        let this = Arc::clone(self);
        let name = name.to_string();
        let (pid1, rootfs, cgroup) = (running.pid1, running.rootfs.clone(), running.cgroup.clone());
        tokio::spawn(async move {
            let code = exited.await;
            tracing::info!(distro = %name, ?code, "distro stopped");
            if let Some(g) = cgroup {
                // Waiting for the last processes to go is blocking work.
                let _ = tokio::task::spawn_blocking(move || {
                    g.kill_all();
                    g.remove();
                })
                .await;
            }
            let mut map = this.running.lock().await;
            if map.get(&name).is_some_and(|r| r.pid1 == pid1) {
                map.remove(&name);
                this.networks.detach(&name);
                RunningRecord::remove(&rootfs);
            }
            let _ = tx.send(true);
        });
    }

    /// Takes back the distros an earlier agent left running (see
    /// [`crate::adoption`]); stops what is left of those whose PID 1 is gone.
    pub async fn adopt_running(self: &Arc<Self>) {
        let Ok(names) = self.store.names() else {
            return;
        };
        for name in names {
            let Ok(rootfs) = self.store.rootfs(&name) else {
                continue;
            };
            let record = RunningRecord::read(&rootfs).filter(RunningRecord::is_alive);
            let adopted = match record {
                Some(record) => self.adopt(&name, rootfs.clone(), record).await,
                None => false,
            };
            if !adopted {
                RunningRecord::remove(&rootfs);
                if let Some(group) = self.cgroups.as_ref().and_then(|c| c.existing(&name)) {
                    tracing::warn!(distro = %name, "stopping what is left of a distro whose init is gone");
                    group.kill_all();
                    group.remove();
                }
            }
        }
    }

    async fn adopt(self: &Arc<Self>, name: &str, rootfs: PathBuf, record: RunningRecord) -> bool {
        let watched = match crate::adoption::ForeignProcess::watch(record.pid1) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(distro = name, error = %e, "cannot watch the running distro's init");
                return false;
            }
        };
        let settings = self.store.settings(name).unwrap_or_default();
        let cgroup = match (&self.cgroups, record.cgroup) {
            (Some(c), true) => c.existing(name),
            _ => None,
        };
        if let Some(slot) = record.network_slot {
            self.networks.claim(slot, name);
        }
        let (tx, rx) = watch::channel(false);
        let running = Running {
            pid1: record.pid1,
            cgroup,
            rootfs: rootfs.clone(),
            network: settings.network,
            stopped: rx,
        };
        self.running
            .lock()
            .await
            .insert(name.to_string(), running.clone());
        tracing::info!(
            distro = name,
            pid1 = record.pid1,
            "took back a distro left running by an earlier agent"
        );
        let exited = async move {
            watched.exited().await;
            None
        };
        self.watch_stop(name, &running, exited, tx);
        true
    }

    /// Kills every process of `name`; its files stay. Not running is fine.
    pub async fn terminate(&self, name: &str) -> Result<(), LifecycleError> {
        self.store.rootfs(name)?;
        // A start in progress finishes first, so it cannot outlive this.
        let gate = self.gate(name);
        let _turn = gate.lock().await;
        let Some(mut running) = self.running(name).await else {
            return Ok(());
        };
        // A distro's own systemd gets to stop its services first, as
        // systemd-nspawn asks it to: SIGRTMIN+3 means "power off".
        if runs_systemd(running.pid1) {
            // SAFETY: kill(2) with a signal number; no memory is involved.
            let _ = unsafe { libc::kill(running.pid1, libc::SIGRTMIN() + 3) };
            if tokio::time::timeout(SYSTEMD_STOP_TIMEOUT, running.wait_stopped())
                .await
                .is_ok()
            {
                tracing::info!(distro = name, "distro's systemd powered off");
                return Ok(());
            }
            tracing::warn!(distro = name, timeout = ?SYSTEMD_STOP_TIMEOUT, "systemd did not power off in time; killing the distro");
        }
        // Killing PID 1 makes the kernel kill the whole PID namespace; the
        // cgroup catches anything that escaped it.
        let _ = kill(Pid::from_raw(running.pid1), Signal::SIGKILL);
        if let Some(g) = &running.cgroup {
            g.kill_all();
        }
        tokio::time::timeout(TERMINATE_TIMEOUT, running.wait_stopped())
            .await
            .map_err(|_| LifecycleError::StopTimeout(name.to_string()))?;
        tracing::info!(distro = name, "distro terminated");
        Ok(())
    }

    /// Checks `settings` against the distro and stores them. The default
    /// user applies from the next exec, limits at once when the distro runs
    /// (and has a cgroup), the init and network from its next start.
    pub async fn configure(
        &self,
        name: &str,
        settings: DistroSettings,
    ) -> Result<(), LifecycleError> {
        let rootfs = self.store.rootfs(name)?;
        let running = self.running(name).await;
        // A running distro's own view (its mounts included); else its files.
        let root = match &running {
            Some(r) => PathBuf::from(format!("/proc/{}/root", r.pid1)),
            None => rootfs,
        };
        let checked = settings.clone();
        let distro = name.to_string();
        off_runtime(name, move || {
            let root = DistroRoot::open(&distro, &root)?;
            Ok(check_against_root(&root, &checked))
        })
        .await
        .map_err(SettingsError::from)??;
        self.store.set_settings(name, &settings)?;
        if let (Some(cgroups), Some(r)) = (&self.cgroups, &running) {
            if r.cgroup.is_some() && !cgroups.apply_limits(name, &settings.limits) {
                tracing::warn!(distro = name, "new limits not applied");
            }
        }
        Ok(())
    }

    /// Holds `name` for an import, so two imports of one name cannot race.
    pub async fn reserve_import(&self, name: &str) -> Result<ImportReservation, Response> {
        crate::store::validate_name(name).map_err(|e| store_error_response(&e))?;
        if self.store.exists(name) {
            return Err(store_error_response(&StoreError::AlreadyExists(
                name.to_string(),
            )));
        }
        let mut set = self.importing.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(name.to_string()) {
            return Err(Response::error(
                ErrorKind::AlreadyExists,
                format!("distro {name} is being imported already"),
            ));
        }
        Ok(ImportReservation {
            name: name.to_string(),
            importing: Arc::clone(&self.importing),
        })
    }

    /// Terminates `name` and deletes its files.
    pub async fn unregister(&self, name: &str) -> Result<(), LifecycleError> {
        self.terminate(name).await?;
        self.store.remove(name)?;
        tracing::info!(distro = name, "unregistered");
        Ok(())
    }

    /// The last `lines` lines of the console of `name`'s latest start with
    /// its own systemd; `None` when it never had one.
    pub async fn console_log(
        &self,
        name: &str,
        lines: u32,
    ) -> Result<Option<String>, LifecycleError> {
        let path = crate::console::log_path(&self.store.rootfs(name)?);
        tokio::task::spawn_blocking(move || crate::console::tail(&path, lines))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|source| LifecycleError::ConsoleLog {
                name: name.to_string(),
                source,
            })
    }

    /// Terminates every running distro, all at once: a distro's own
    /// systemd may take seconds to power off, and the VM's shutdown waits
    /// for the slowest, not for their sum.
    pub async fn terminate_all(&self) {
        let names: Vec<String> = self.running.lock().await.keys().cloned().collect();
        let stops = names.iter().map(|name| async move {
            if let Err(e) = self.terminate(name).await {
                tracing::warn!(distro = %name, error = %crate::error_chain(&e), "terminate failed");
            }
        });
        futures_util::future::join_all(stops).await;
    }

    /// State of every installed distro.
    pub async fn list(&self) -> Result<Vec<DistroInfo>, LifecycleError> {
        let mut out = Vec::new();
        for name in self.store.names()? {
            let settings = self.store.settings(&name).unwrap_or_default();
            let running = self.running(&name).await;
            let (state, pids, memory_bytes) = match &running {
                Some(r) => (
                    DistroState::Running,
                    process_count(r),
                    r.cgroup.as_ref().and_then(|g| g.memory_bytes()),
                ),
                None => (DistroState::Stopped, 0, None),
            };
            let rootfs = self.store.rootfs(&name)?;
            let disk_bytes = tokio::task::spawn_blocking(move || disk_usage(&rootfs))
                .await
                .unwrap_or(0);
            out.push(DistroInfo {
                name,
                state,
                pids,
                memory_bytes,
                disk_bytes,
                settings,
            });
        }
        Ok(out)
    }

    /// Resource use of `names` (each must be installed; a stopped one has
    /// no values), or of every running distro when `names` is empty;
    /// sorted by name.
    pub async fn stats(&self, names: &[String]) -> Result<Vec<DistroStats>, LifecycleError> {
        let mut names: Vec<String> = if names.is_empty() {
            let map = self.running.lock().await;
            map.iter()
                .filter(|(_, r)| !r.is_stopped())
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            for name in names {
                self.store.rootfs(name)?;
            }
            names.to_vec()
        };
        names.sort();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some(r) = self.running(&name).await else {
                out.push(DistroStats::stopped(&name));
                continue;
            };
            let stats = tokio::task::spawn_blocking(move || {
                crate::stats::running(&name, r.cgroup.as_ref(), process_count(&r))
            })
            .await;
            match stats {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(error = %e, "reading a distro's stats failed"),
            }
        }
        Ok(out)
    }
}

/// Processes in a running distro: from its cgroup, else by scanning `/proc`
/// for processes in its PID namespace.
fn process_count(r: &Running) -> u32 {
    if let Some(g) = &r.cgroup {
        return g.process_count();
    }
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(target) = ns_of(&r.pid1.to_string()) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| ns_of(n).as_ref() == Some(&target))
        .count() as u32
}
