//! The CLI's side of the manager: connect (starting the manager when none
//! runs), lease the VM, ask for shutdown or status.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use super::wire::{FromManager, ManagerStatus, ToManager};
use super::{check_owner, data_lock, manager_log, manager_socket, OwnerError, MAX_LINE};
use crate::agent_client::AgentAddr;
use crate::vm::control;
use crate::vm::state;

/// How long a freshly started manager may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

type Conn = Framed<UnixStream, LinesCodec>;

/// Failure talking to the manager.
#[derive(Debug, Error)]
pub enum ManagerClientError {
    /// A runtime file belongs to another user.
    #[error(transparent)]
    Owner(#[from] OwnerError),
    /// The manager could not be started.
    #[error("cannot start the distroctl manager: cannot use {}", path.display())]
    Spawn {
        /// The file or directory that failed.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The manager did not come up.
    #[error("the distroctl manager did not start; its log {}:\n{tail}", log.display())]
    NotStarted {
        /// The manager's log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The connection broke.
    #[error("lost the connection to the distroctl manager")]
    Lost(#[source] std::io::Error),
    /// The manager answered out of turn.
    #[error("the distroctl manager sent an unexpected answer: {0}")]
    Unexpected(String),
    /// Another session runs the VM on this data disk.
    #[error(transparent)]
    OtherSession(data_lock::OtherSession),
    /// The manager reported a failure; the text is the whole error.
    #[error("{0}")]
    Failed(String),
}

/// The VM held up for one command. Dropping it ends the lease; the manager
/// may then stop the VM once it is idle.
pub struct Lease {
    stopping: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Why the VM went away during this command, if it did.
    pub fn stop_reason(&self) -> Option<String> {
        self.stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Makes sure the VM runs (starting the manager and booting as needed) and
/// leases it; returns the agent's address.
pub async fn acquire(backend: Option<&str>) -> Result<(AgentAddr, Lease), ManagerClientError> {
    // A manager that is just exiting may close on us once; a fresh one
    // is started on the second try.
    let mut last = None;
    for _ in 0..2 {
        let mut conn = connect_or_start().await?;
        let request = ToManager::Acquire {
            backend: backend.map(str::to_string),
        };
        if let Err(e) = send(&mut conn, &request).await {
            last = Some(e);
            continue;
        }
        loop {
            match recv(&mut conn).await {
                Ok(FromManager::Progress { message }) => progress(&message),
                Ok(FromManager::Warning { message }) => {
                    eprintln!("distroctl: {message}");
                    tracing::warn!("{message}");
                }
                Ok(FromManager::Ready { vsock, port }) => {
                    let lease = hold(conn);
                    return Ok((AgentAddr::HybridVsock { path: vsock, port }, lease));
                }
                Ok(FromManager::Failed { message }) => {
                    return Err(ManagerClientError::Failed(message))
                }
                Ok(other) => return Err(ManagerClientError::Unexpected(format!("{other:?}"))),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or(ManagerClientError::Unexpected("no answer".into())))
}

/// Asks the manager to stop the VM; false when no VM was running.
pub async fn shutdown() -> Result<bool, ManagerClientError> {
    let paths = control::paths();
    let mut conn = match connect(&paths).await? {
        Some(conn) => conn,
        // No manager: only start one when a VM (from an older manager)
        // needs stopping.
        None if state::is_running(&paths) => connect_or_start().await?,
        None => return Ok(false),
    };
    send(&mut conn, &ToManager::Shutdown).await?;
    match recv(&mut conn).await? {
        FromManager::Done { changed } => Ok(changed),
        FromManager::Failed { message } => Err(ManagerClientError::Failed(message)),
        other => Err(ManagerClientError::Unexpected(format!("{other:?}"))),
    }
}

/// The manager's own status, when one runs.
pub async fn status() -> Result<Option<ManagerStatus>, ManagerClientError> {
    let Some(mut conn) = connect(&control::paths()).await? else {
        return Ok(None);
    };
    send(&mut conn, &ToManager::Status).await?;
    match recv(&mut conn).await? {
        FromManager::Status(status) => Ok(Some(status)),
        other => Err(ManagerClientError::Unexpected(format!("{other:?}"))),
    }
}

fn progress(message: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{message}");
    }
    tracing::info!("{message}");
}

/// Keeps the lease connection open, noting a `Stopping` event.
fn hold(mut conn: Conn) -> Lease {
    let stopping = Arc::new(Mutex::new(None));
    let noted = stopping.clone();
    let task = tokio::spawn(async move {
        while let Ok(message) = recv(&mut conn).await {
            if let FromManager::Stopping { reason } = message {
                *noted.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            }
        }
    });
    Lease { stopping, task }
}

/// Connects to a running manager; `None` when none listens.
async fn connect(paths: &state::VmPaths) -> Result<Option<Conn>, ManagerClientError> {
    check_owner(&paths.dir)?;
    let socket = manager_socket(paths);
    check_owner(&socket)?;
    match UnixStream::connect(&socket).await {
        Ok(stream) => Ok(Some(Framed::new(
            stream,
            LinesCodec::new_with_max_length(MAX_LINE),
        ))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(ManagerClientError::Lost(e)),
    }
}

/// Connects to the manager, starting it first when none runs.
async fn connect_or_start() -> Result<Conn, ManagerClientError> {
    let paths = control::paths();
    if let Some(conn) = connect(&paths).await? {
        return Ok(conn);
    }
    let spawn_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ManagerClientError::Spawn { path, source }
    };
    paths.create().map_err(spawn_err(&paths.dir))?;
    check_owner(&paths.dir)?;
    if let Some(other) = data_lock::other_session(&paths) {
        return Err(ManagerClientError::OtherSession(other));
    }
    let log = manager_log();
    if let Some(dir) = log.parent() {
        crate::paths::private_dir(dir).map_err(spawn_err(dir))?;
    }
    let log_file = crate::paths::create_private(&log, true).map_err(spawn_err(&log))?;
    let exe = std::env::current_exe().map_err(spawn_err(std::path::Path::new("/proc/self/exe")))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("daemon")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(spawn_err(&log))?)
        .stderr(log_file);
    // SAFETY: setsid in the forked child only detaches the manager from
    // this terminal's session, so it outlives the command and its Ctrl-C.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(spawn_err(&exe))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(conn) = connect(&paths).await? {
            // The manager lives on; reap it whenever it exits.
            std::thread::spawn(move || child.wait());
            return Ok(conn);
        }
        // Our manager may exit at once because another command's manager
        // won the race; then that one's socket appears shortly. It is a
        // failure only when no manager holds the lock.
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        let nobody = exited && matches!(state::try_lock(&super::manager_lock(&paths)), Ok(Some(_)));
        if exited {
            if let Some(other) = data_lock::other_session(&paths) {
                return Err(ManagerClientError::OtherSession(other));
            }
        }
        if nobody || Instant::now() >= deadline {
            return Err(ManagerClientError::NotStarted {
                tail: state::log_tail(&log, 10),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(conn: &mut Conn, message: &ToManager) -> Result<(), ManagerClientError> {
    let line = serde_json::to_string(message).expect("manager messages serialize");
    conn.send(line).await.map_err(|e| match e {
        tokio_util::codec::LinesCodecError::Io(e) => ManagerClientError::Lost(e),
        other => ManagerClientError::Unexpected(other.to_string()),
    })
}

async fn recv(conn: &mut Conn) -> Result<FromManager, ManagerClientError> {
    match conn.next().await {
        Some(Ok(line)) => serde_json::from_str(&line)
            .map_err(|e| ManagerClientError::Unexpected(format!("{e}: {line}"))),
        Some(Err(tokio_util::codec::LinesCodecError::Io(e))) => Err(ManagerClientError::Lost(e)),
        Some(Err(e)) => Err(ManagerClientError::Unexpected(e.to_string())),
        None => Err(ManagerClientError::Lost(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the manager closed the connection",
        ))),
    }
}
