//! The manager daemon (`distroctl daemon`): one per user, started on demand
//! by any command that needs the VM. It owns the utility VM — boots it on
//! the first request, stops it after `idle_timeout` with no command running
//! and no process left in any distro, notices when it dies unexpectedly and
//! boots it again for the commands still using it — and exits once the VM
//! is stopped and nobody holds it.
//!
//! While the VM is idle the manager also asks the agent to trim the guest's
//! page cache (`memory_reclaim`, see [`super::reclaim`]), so free page
//! reporting can hand that memory back to the host.
//!
//! A command holds the VM with a lease: its connection to the manager,
//! open for as long as the command runs. The command's own byte streams go
//! straight to the agent through the VM's vsock socket.

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use protocol::{DistroState, Request, Response};
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, Mutex};
use tokio_util::codec::{Framed, LinesCodec};

use super::data_lock::{self, OtherSession};
use super::reclaim::{ReclaimSchedule, TrimReason};
use super::wire::{FromManager, ManagerStatus, ToManager};
use super::{check_owner, manager_lock, manager_socket, OwnerError, MAX_LINE};
use crate::agent_client;
use crate::config::{BackendChoice, Config};
use crate::vm::control;
use crate::vm::state::{self, VmPaths};

/// How often the manager looks at the VM (crash, idle) while it runs.
const TICK: Duration = Duration::from_millis(500);

/// How long a new manager waits for its first client before it exits, so
/// the command that started it has time to connect. Once a VM has run and
/// stopped, the manager exits as soon as no command holds it.
const LINGER: Duration = Duration::from_secs(3);

/// Why the manager could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Another manager runs for this user.
    #[error("a distroctl manager is already running for this user")]
    AlreadyRunning,
    /// The runtime directory is not usable.
    #[error("cannot use {}", path.display())]
    Runtime {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime directory belongs to someone else.
    #[error(transparent)]
    Owner(#[from] OwnerError),
    /// Another session runs the VM on this data disk.
    #[error(transparent)]
    OtherSession(OtherSession),
}

/// The VM as the manager knows it.
enum VmSlot {
    Stopped,
    Running {
        /// The runner process, when this manager started it (a VM adopted
        /// from an earlier manager has none: its end is seen through the lock).
        runner: Option<Child>,
    },
}

struct Manager {
    paths: VmPaths,
    vm: Mutex<VmSlot>,
    leases: AtomicUsize,
    /// Last time the VM was seen in use (a lease ended or a distro had processes).
    last_used: StdMutex<Instant>,
    /// Set while a shutdown this manager asked for is under way.
    stopping: AtomicBool,
    last_crash: StdMutex<Option<String>>,
    events: broadcast::Sender<FromManager>,
    /// Forwards the VM's listening ports to the host while the VM runs.
    forwarder: StdMutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set while a page cache trim is under way.
    trimming: AtomicBool,
}

/// Runs the manager until the VM is stopped and unused. Blocking: it owns
/// its tokio runtime.
pub fn run() -> Result<(), DaemonError> {
    let paths = control::paths();
    paths.create().map_err(|source| DaemonError::Runtime {
        path: paths.dir.clone(),
        source,
    })?;
    check_owner(&paths.dir)?;
    let lock_path = manager_lock(&paths);
    // A manager that is exiting still holds the lock for a moment; wait
    // briefly for it rather than failing the command that started us.
    let deadline = Instant::now() + Duration::from_secs(5);
    let _lock = loop {
        let runtime = |source| DaemonError::Runtime {
            path: lock_path.clone(),
            source,
        };
        match state::try_lock(&lock_path).map_err(runtime)? {
            Some(lock) => break lock,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => return Err(DaemonError::AlreadyRunning),
        }
    };
    // The lock file names the manager's process (for people and tests).
    let _ = std::fs::write(&lock_path, format!("{}\n", std::process::id()));
    // Another session may run the VM on the same data disk; it is left
    // alone. (A command of that session may be looking at the lock for a
    // moment, hence the short retry.)
    let deadline = Instant::now() + Duration::from_millis(500);
    let _data_lock = loop {
        let data_err = |source| DaemonError::Runtime {
            path: data_lock::path(),
            source,
        };
        match data_lock::acquire(&paths).map_err(data_err)? {
            Ok(lock) => break lock,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(other) => return Err(DaemonError::OtherSession(other)),
        }
    };
    data_lock::tighten_existing_files();
    let socket = manager_socket(&paths);
    let _ = std::fs::remove_file(&socket);
    let runtime = tokio::runtime::Runtime::new().map_err(|source| DaemonError::Runtime {
        path: socket.clone(),
        source,
    })?;
    runtime.block_on(async {
        let listener = bind(&socket)?;
        let adopted = state::is_running(&paths);
        if adopted {
            tracing::info!("adopting the running utility VM");
        }
        let manager = Arc::new(Manager {
            paths,
            vm: Mutex::new(if adopted {
                VmSlot::Running { runner: None }
            } else {
                VmSlot::Stopped
            }),
            leases: AtomicUsize::new(0),
            last_used: StdMutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
            last_crash: StdMutex::new(None),
            events: broadcast::channel(16).0,
            forwarder: StdMutex::new(None),
            trimming: AtomicBool::new(false),
        });
        if adopted {
            manager.start_forwarding();
        }
        tracing::info!(
            pid = std::process::id(),
            "manager listening on {}",
            socket.display()
        );
        let watch = tokio::spawn(manager.clone().watch());
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(manager.clone().serve(stream));
                    }
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                },
                _ = wait_finished(&watch) => break,
            }
        }
        // Remove the socket before the lock goes with the process, so the
        // next command starts a new manager instead of connecting to a dead one.
        let _ = std::fs::remove_file(&socket);
        tracing::info!("manager exiting: the VM is stopped and unused");
        Ok(())
    })
}

async fn wait_finished(task: &tokio::task::JoinHandle<()>) {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn bind(socket: &std::path::Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| DaemonError::Runtime {
        path: socket.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn config_for(backend: Option<&str>) -> Result<Config, String> {
    let mut config =
        Config::load(&Config::default_path()).map_err(|e| crate::describe(&e, false))?;
    match backend {
        Some("qemu") => config.backend = BackendChoice::Qemu,
        Some("auto") => config.backend = BackendChoice::Auto,
        Some("kvm") => config.backend = BackendChoice::Kvm,
        Some(other) => return Err(format!("unknown backend {other:?}: use auto, kvm or qemu")),
        None => {}
    }
    Ok(config)
}

impl Manager {
    /// Starts localhost port forwarding for the running VM, unless the
    /// config turns it off.
    fn start_forwarding(&self) {
        let config = Config::load(&Config::default_path()).unwrap_or_default();
        if !config.port_forwarding {
            return;
        }
        let options = crate::net::forward::ForwardOptions {
            state_file: Some(crate::net::state_file()),
            rules: config.port_forward,
            ..Default::default()
        };
        let addr = control::agent_addr(&self.paths);
        let table = Arc::default();
        let task = tokio::spawn(crate::net::forward::run(addr, options, table));
        if let Some(old) = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// Stops port forwarding (the VM is going away).
    fn stop_forwarding(&self) {
        if let Some(task) = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        let _ = std::fs::remove_file(crate::net::state_file());
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// One client connection: one request.
    async fn serve(self: Arc<Self>, stream: UnixStream) {
        let me = nix::unistd::getuid().as_raw();
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me => {}
            other => {
                tracing::warn!(peer = ?other, "refused a connection from another user");
                return;
            }
        }
        let mut conn = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
        let Some(Ok(line)) = conn.next().await else {
            return;
        };
        let request: ToManager = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("bad request to the manager: {e}");
                let _ = send(&mut conn, &FromManager::Failed { message }).await;
                return;
            }
        };
        tracing::debug!(?request, "request");
        match request {
            ToManager::Acquire { backend } => self.acquire(conn, backend).await,
            ToManager::Shutdown => {
                let changed = self.shutdown("distroctl shutdown").await;
                let _ = send(&mut conn, &FromManager::Done { changed }).await;
            }
            ToManager::Status => {
                let status = ManagerStatus {
                    pid: std::process::id(),
                    leases: self.leases.load(Ordering::SeqCst),
                    idle_timeout_secs: Config::load(&Config::default_path())
                        .ok()
                        .and_then(|c| c.idle_timeout)
                        .map(|d| d.as_secs()),
                    last_crash: self
                        .last_crash
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                };
                let _ = send(&mut conn, &FromManager::Status(status)).await;
            }
        }
    }

    /// Boots the VM if needed, answers `Ready`, then holds the lease until
    /// the client goes away, passing on `Stopping` events.
    async fn acquire(&self, mut conn: Framed<UnixStream, LinesCodec>, backend: Option<String>) {
        // Count the lease from the start, so the VM does not idle out
        // between the boot and the client's first request.
        self.leases.fetch_add(1, Ordering::SeqCst);
        let mut events = self.events.subscribe();
        let result = self.ensure_running(&mut conn, backend.as_deref()).await;
        let answer = match result {
            Ok(()) => FromManager::Ready {
                vsock: self.paths.vsock_socket(),
                port: protocol::AGENT_VSOCK_PORT,
            },
            Err(message) => FromManager::Failed { message },
        };
        let ready = matches!(answer, FromManager::Ready { .. });
        if send(&mut conn, &answer).await.is_ok() && ready {
            loop {
                tokio::select! {
                    line = conn.next() => if line.is_none() || matches!(line, Some(Err(_))) { break },
                    event = events.recv() => match event {
                        Ok(event) => if send(&mut conn, &event).await.is_err() { break },
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }
        self.touch();
        self.leases.fetch_sub(1, Ordering::SeqCst);
    }

    async fn ensure_running(
        &self,
        conn: &mut Framed<UnixStream, LinesCodec>,
        backend: Option<&str>,
    ) -> Result<(), String> {
        let mut slot = match self.vm.try_lock() {
            Ok(slot) => slot,
            Err(_) => {
                let message = "Waiting for the utility VM to start".to_string();
                let _ = send(conn, &FromManager::Progress { message }).await;
                self.vm.lock().await
            }
        };
        if matches!(*slot, VmSlot::Running { .. }) && state::is_running(&self.paths) {
            // A share whose daemon died stays broken until the VM restarts:
            // every command says so.
            for message in control::failed_shares(&self.paths) {
                let _ = send(conn, &FromManager::Warning { message }).await;
            }
            return Ok(());
        }
        let config = config_for(backend)?;
        for message in control::share_plan(&config).2 {
            let _ = send(conn, &FromManager::Warning { message }).await;
        }
        // Boot steps go to this client as they happen.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let progress = move |message: &str| {
            tracing::info!("{message}");
            let _ = tx.send(message.to_string());
        };
        let boot = control::boot(&self.paths, &config, &progress);
        tokio::pin!(boot);
        let result = loop {
            tokio::select! {
                result = &mut boot => break result,
                Some(message) = rx.recv() => {
                    let _ = send(conn, &FromManager::Progress { message }).await;
                }
            }
        };
        while let Ok(message) = rx.try_recv() {
            let _ = send(conn, &FromManager::Progress { message }).await;
        }
        match result {
            Ok(runner) => {
                for message in control::failed_shares(&self.paths) {
                    let _ = send(conn, &FromManager::Warning { message }).await;
                }
                self.touch();
                *slot = VmSlot::Running {
                    runner: Some(runner),
                };
                self.start_forwarding();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %crate::describe(&e, true), "boot failed");
                Err(crate::describe(&e, false))
            }
        }
    }

    /// Stops the VM cleanly; false when it was not running.
    async fn shutdown(&self, why: &str) -> bool {
        let mut slot = self.vm.lock().await;
        if !state::is_running(&self.paths) {
            *slot = VmSlot::Stopped;
            return false;
        }
        tracing::info!("shutting the VM down: {why}");
        self.stop_forwarding();
        let _ = self.events.send(FromManager::Stopping {
            reason: format!("the utility VM was shut down ({why})"),
        });
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = control::shutdown().await {
            tracing::warn!(error = %e, "shutdown was not clean");
        }
        if let VmSlot::Running {
            runner: Some(mut runner),
        } = std::mem::replace(&mut *slot, VmSlot::Stopped)
        {
            let _ = tokio::task::spawn_blocking(move || runner.wait()).await;
        }
        self.stopping.store(false, Ordering::SeqCst);
        self.touch();
        true
    }

    /// Watches the VM: reports and recovers crashes, stops it when idle,
    /// and returns when the manager has nothing left to do.
    async fn watch(self: Arc<Self>) {
        // When the VM was last seen stopped, and how long to linger then.
        let mut stopped_since = Some(Instant::now());
        let mut linger = LINGER;
        let mut last_agent_check = Instant::now();
        let mut reclaim = ReclaimSchedule::new();
        loop {
            tokio::time::sleep(TICK).await;
            let leases = self.leases.load(Ordering::SeqCst);
            let running = match self.vm.try_lock() {
                Ok(mut slot) => {
                    if matches!(*slot, VmSlot::Running { .. }) && !state::is_running(&self.paths) {
                        let old = std::mem::replace(&mut *slot, VmSlot::Stopped);
                        drop(slot);
                        self.crashed(old, leases).await;
                        continue;
                    }
                    matches!(*slot, VmSlot::Running { .. })
                }
                // A boot or shutdown is under way.
                Err(_) => {
                    stopped_since = None;
                    linger = Duration::ZERO;
                    continue;
                }
            };
            if !running {
                reclaim = ReclaimSchedule::new();
                let since = *stopped_since.get_or_insert_with(Instant::now);
                if leases == 0 && since.elapsed() >= linger {
                    return;
                }
                continue;
            }
            stopped_since = None;
            linger = Duration::ZERO;
            let config = Config::load(&Config::default_path()).ok();
            let mode = config
                .as_ref()
                .map_or_else(Default::default, |c| c.memory_reclaim);
            let idle_for = (leases == 0).then(|| self.idle_for());
            if let Some(reason) = reclaim.due(mode, Instant::now(), idle_for) {
                self.trim_memory(reason);
            }
            let Some(timeout) = config.and_then(|c| c.idle_timeout) else {
                continue;
            };
            if leases > 0 {
                continue;
            }
            // Ask the agent whether any distro still has processes besides
            // its init, at most every quarter of the timeout (and every 5 s).
            let check_every =
                (timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
            if last_agent_check.elapsed() >= check_every {
                last_agent_check = Instant::now();
                if self.distros_busy().await {
                    self.touch();
                }
            }
            if self.idle_for() >= timeout && self.leases.load(Ordering::SeqCst) == 0 {
                self.shutdown(&format!("idle for {}s", timeout.as_secs()))
                    .await;
                stopped_since = Some(Instant::now());
            }
        }
    }

    /// Asks the agent to trim the guest's page cache, in the background;
    /// skipped while the previous trim still runs.
    fn trim_memory(self: &Arc<Self>, reason: TrimReason) {
        if self.trimming.swap(true, Ordering::SeqCst) {
            return;
        }
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let addr = control::agent_addr(&manager.paths);
            let answer = tokio::time::timeout(
                Duration::from_secs(60),
                agent_client::request(&addr, Request::TrimMemory),
            )
            .await;
            match answer {
                Ok(Ok((
                    _,
                    Response::MemoryTrimmed {
                        cache_before_bytes,
                        cache_after_bytes,
                    },
                ))) => tracing::info!(
                    ?reason,
                    cache_before_mib = cache_before_bytes >> 20,
                    cache_after_mib = cache_after_bytes >> 20,
                    "guest page cache trimmed"
                ),
                Ok(Ok((_, other))) => {
                    tracing::warn!(?reason, answer = ?other, "the agent did not trim the page cache")
                }
                Ok(Err(e)) => {
                    tracing::warn!(?reason, error = %crate::describe(&e, true), "cannot ask the agent to trim the page cache")
                }
                Err(_) => tracing::warn!(?reason, "the page cache trim took over a minute"),
            }
            manager.trimming.store(false, Ordering::SeqCst);
        });
    }

    /// True when a distro runs processes besides its init (or the agent
    /// cannot tell, which is not a reason to stop the VM).
    async fn distros_busy(&self) -> bool {
        let addr = control::agent_addr(&self.paths);
        let list = tokio::time::timeout(
            Duration::from_secs(10),
            agent_client::request(&addr, Request::List),
        )
        .await;
        match list {
            Ok(Ok((_, Response::Distros { distros }))) => distros
                .iter()
                .any(|d| d.state == DistroState::Running && (d.pids > 1 || d.settings.systemd)),
            _ => true,
        }
    }

    /// The VM ended without being asked to: record it, tell the commands
    /// using it, and boot it again when some still do.
    async fn crashed(&self, old: VmSlot, leases: usize) {
        let code = match old {
            VmSlot::Running {
                runner: Some(mut runner),
            } => runner.wait().ok().and_then(|s| s.code()),
            _ => None,
        };
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        self.stop_forwarding();
        self.paths.remove_runtime_files();
        let when = humantime_now();
        let what = match code {
            // distroctl-vmm's own code for a guest crash without a console
            // message (QEMU never exits with 4).
            Some(4) => format!(
                "the utility VM stopped unexpectedly at {when}: its guest kernel triple-faulted (exit code 4)"
            ),
            Some(c) => format!("the utility VM stopped unexpectedly at {when} (exit code {c})"),
            None => format!("the utility VM stopped unexpectedly at {when}"),
        };
        tracing::warn!(
            "{what}; console log: {}",
            control::console_log_path().display()
        );
        *self.last_crash.lock().unwrap_or_else(|p| p.into_inner()) = Some(what.clone());
        let _ = self.events.send(FromManager::Stopping {
            reason: format!("{what}; see `distroctl logs`"),
        });
        if leases == 0 {
            return;
        }
        let Ok(config) = config_for(None) else { return };
        let mut slot = self.vm.lock().await;
        let quiet = |m: &str| tracing::info!("{m}");
        match control::boot(&self.paths, &config, &quiet).await {
            Ok(runner) => {
                tracing::info!("utility VM restarted after the crash");
                *slot = VmSlot::Running {
                    runner: Some(runner),
                };
                self.start_forwarding();
            }
            Err(e) => tracing::warn!(error = %crate::describe(&e, true), "restart failed"),
        }
    }
}

/// The current UTC time as `HH:MM:SS`, for messages.
fn humantime_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

async fn send(
    conn: &mut Framed<UnixStream, LinesCodec>,
    message: &FromManager,
) -> Result<(), tokio_util::codec::LinesCodecError> {
    let line = serde_json::to_string(message).expect("manager messages serialize");
    conn.send(line).await
}
