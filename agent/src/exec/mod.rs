//! Running processes inside a distro: namespaces, user, environment, PTY or
//! pipes, and the byte streams between the process and the client.

mod passwd;
pub(crate) mod pty;

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};
use protocol::{ErrorKind, ExecRequest, Frame, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

use crate::distro_root::{off_runtime, DistroFileError, DistroRoot};
use crate::lifecycle::{Distros, Running};
use crate::namespaces::{default_signal_actions_in_child, spawn_in_pid_ns, DistroNamespaces};
use crate::server::Connection;

pub use passwd::{lookup, User};

/// After the process exits, output still arriving is forwarded until the
/// streams are idle this long (a background job may hold them open forever).
const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// How long a process whose client disappeared has between SIGHUP and
/// SIGKILL.
pub const HANGUP_GRACE: Duration = Duration::from_secs(3);

/// Size of one output chunk.
const CHUNK: usize = 64 * 1024;

/// `PATH` for root and for other users, as Debian's login sets it.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games";

type Sink = SplitSink<Connection, Frame>;
type Source = SplitStream<Connection>;

/// Everything needed to spawn, resolved before forking.
struct Plan {
    program: CString,
    arg0: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The working directory, resolved inside the distro (`O_PATH`).
    cwd: OwnedFd,
    user: User,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::error(kind, message)
}

/// Serves one exec request on `conn` until the process has exited.
pub async fn serve(mut conn: Connection, req: ExecRequest, distros: Arc<Distros>) {
    let prepared = prepare(&req, &distros).await;
    let (running, plan) = match prepared {
        Ok(p) => p,
        Err(resp) => {
            let _ = conn.send(Frame::Response(resp)).await;
            return;
        }
    };
    let spawned = spawn(&running, plan, req.tty.as_ref().map(|t| (t.rows, t.cols))).await;
    let (mut child, io) = match spawned {
        Ok(s) => s,
        Err(resp) => {
            let _ = conn.send(Frame::Response(resp)).await;
            return;
        }
    };
    let host_pid = child.id().unwrap_or(0) as i32;
    let pid = pid_in_distro(host_pid).unwrap_or(0);
    if conn
        .send(Frame::Response(Response::ExecStarted { pid }))
        .await
        .is_err()
    {
        let _ = kill(Pid::from_raw(-host_pid), Signal::SIGHUP);
        let _ = child.wait().await;
        return;
    }
    let (sink, source) = conn.split();
    let (report, code) = match io {
        ProcessIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let mut input = tokio::spawn(pipe_input(source, stdin, host_pid));
            let outcome = pump_output(
                sink,
                &mut child,
                &mut input,
                Box::new(stdout),
                Some(Box::new(stderr)),
            )
            .await;
            input.abort();
            let _ = input.await;
            outcome
        }
        ProcessIo::Pty(master) => {
            let master = Arc::new(master);
            let mut input = tokio::spawn(pty_input(source, Arc::clone(&master), host_pid));
            let reader = PtyReader(Arc::clone(&master));
            let outcome = pump_output(sink, &mut child, &mut input, Box::new(reader), None).await;
            input.abort();
            let _ = input.await;
            outcome
        }
    };
    tracing::debug!(pid = host_pid, code, "exec finished");
    // Everything of this exec is closed before the client hears it ended.
    drop(child);
    if let Some(mut sink) = report {
        let _ = sink.send(Frame::Exit(code)).await;
        let _ = sink.close().await;
    }
}

/// Starts the distro if needed and resolves user, program, cwd and env.
async fn prepare(req: &ExecRequest, distros: &Arc<Distros>) -> Result<(Running, Plan), Response> {
    let started = distros
        .start(&req.distro)
        .await
        .map_err(|e| e.to_response())?;
    let running = started.running;
    let settings = distros.store.settings(&req.distro).unwrap_or_default();
    let spec = req
        .user
        .clone()
        .or(settings.default_user)
        .unwrap_or_else(|| "root".into());
    let (user, cwd) = resolve_user_and_cwd(&req.distro, running.pid1, spec, req.cwd.clone())
        .await
        .map_err(|e| e.to_response())?;
    let su = match (&req.argv[..], &req.tty) {
        ([], Some(_)) => session_su(&req.distro, &running).await,
        _ => None,
    };
    let via_su = su.is_some();
    let (program, arg0, args) = match (req.argv.split_first(), su) {
        (Some((prog, rest)), _) => (prog.clone(), prog.clone(), rest.to_vec()),
        // A shell in a distro that runs its own systemd is a login session
        // of its logind (as in WSL2), so that `loginctl`, the user's
        // systemd (`systemctl --user`) and XDG_RUNTIME_DIR are there:
        // root runs `su -l USER`, whose PAM session registers with logind
        // and which exits with the shell's status (`login -f` does not).
        (None, Some(su)) => (su, "su".into(), vec!["-l".into(), user.name.clone()]),
        (None, None) => {
            let base = user.shell.rsplit('/').next().unwrap_or("sh");
            (user.shell.clone(), format!("-{base}"), Vec::new())
        }
    };
    let user = if via_su {
        passwd::User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
            ..user
        }
    } else {
        user
    };
    let mut env = vec![
        ("HOME".into(), user.home.clone()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), user.shell.clone()),
        (
            "PATH".into(),
            if user.uid == 0 { ROOT_PATH } else { USER_PATH }.into(),
        ),
    ];
    if let Some(tty) = &req.tty {
        env.push((
            "TERM".into(),
            tty.term.clone().unwrap_or_else(|| "xterm".into()),
        ));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(error(
                ErrorKind::BadRequest,
                format!("invalid environment variable {k:?}"),
            ));
        }
        env.retain(|(old, _)| old != k);
        env.push((k.clone(), v.clone()));
    }
    let cstr = |s: &str, what: &str| {
        CString::new(s)
            .map_err(|_| error(ErrorKind::BadRequest, format!("{what} contains a NUL byte")))
    };
    let plan = Plan {
        program: cstr(&program, "program")?,
        arg0,
        args,
        env,
        cwd,
        user,
    };
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(error(ErrorKind::BadRequest, "argument contains a NUL byte"));
    }
    Ok((running, plan))
}

/// `su` of a distro that runs its own systemd, when it has one.
async fn session_su(distro: &str, running: &Running) -> Option<String> {
    if !crate::lifecycle::runs_systemd(running.pid1) {
        return None;
    }
    let root = PathBuf::from(format!("/proc/{}/root", running.pid1));
    let name = distro.to_string();
    off_runtime(distro, move || {
        let root = DistroRoot::open(&name, &root)?;
        Ok(["/usr/bin/su", "/bin/su"]
            .into_iter()
            .find(|path| root.is_executable(path).unwrap_or(false)))
    })
    .await
    .ok()
    .flatten()
    .map(str::to_string)
}

/// Why the user or working directory of an exec cannot be used.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    /// No such user in the distro's `/etc/passwd`.
    #[error("user {user} does not exist in distro {distro}")]
    NoSuchUser {
        /// Distro.
        distro: String,
        /// The name asked for.
        user: String,
    },
    /// `--cd` is relative.
    #[error("directory {0} is not an absolute path")]
    RelativeCwd(String),
    /// Reading the distro's files failed (not regular, missing `--cd`, …).
    #[error("{0}")]
    Files(#[from] DistroFileError),
}

impl ResolveError {
    fn to_response(&self) -> Response {
        let kind = match self {
            ResolveError::NoSuchUser { .. } => ErrorKind::NoSuchUser,
            ResolveError::RelativeCwd(_) | ResolveError::Files(_) => ErrorKind::BadRequest,
        };
        error(kind, crate::error_chain(self))
    }
}

/// Looks `spec` up and checks the working directory, both inside the
/// running distro's own root (its mounts included) and off the runtime.
async fn resolve_user_and_cwd(
    distro: &str,
    pid1: i32,
    spec: String,
    cwd: Option<String>,
) -> Result<(User, OwnedFd), ResolveError> {
    if let Some(dir) = cwd.as_ref().filter(|d| !d.starts_with('/')) {
        return Err(ResolveError::RelativeCwd(dir.clone()));
    }
    let name = distro.to_string();
    let (user, cwd) = off_runtime(distro, move || {
        let root = DistroRoot::open(&name, Path::new(&format!("/proc/{pid1}/root")))?;
        let user = passwd::lookup(&root, &spec)?;
        let home = user
            .as_ref()
            .and_then(|u| root.open_directory(&u.home).ok());
        let cwd = match (home, cwd) {
            (_, Some(dir)) => root.open_directory(&dir).map_err(|e| match e {
                DistroFileError::Missing { distro, path } => DistroFileError::Missing {
                    distro,
                    path: format!("directory {path}"),
                },
                other => other,
            })?,
            (Some(home), None) => home,
            (None, None) => root.open_directory("/")?,
        };
        Ok((user.ok_or(spec), cwd))
    })
    .await?;
    let user = user.map_err(|user| ResolveError::NoSuchUser {
        distro: distro.to_string(),
        user,
    })?;
    Ok((user, cwd))
}

enum ProcessIo {
    Pipes {
        stdin: ChildStdin,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    },
    Pty(pty::PtyMaster),
}

async fn spawn(
    running: &Running,
    plan: Plan,
    tty: Option<(u16, u16)>,
) -> Result<(Child, ProcessIo), Response> {
    let internal =
        |what: &str, e: io::Error| error(ErrorKind::Internal, format!("could not {what}: {e}"));
    let ns = DistroNamespaces::of(running.pid1)
        .map_err(|e| internal("open the distro's namespaces", e))?;
    let procs: Option<OwnedFd> = match &running.cgroup {
        Some(g) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(
                    g.exec_group()
                        .map_err(|e| error(ErrorKind::Internal, crate::error_chain(&e)))?
                        .join("cgroup.procs"),
                )
                .map_err(|e| internal("open the distro's cgroup", e))?
                .into(),
        ),
        None => None,
    };
    let mut cmd = Command::new(plan.program.to_str().unwrap_or_default());
    cmd.arg0(&plan.arg0)
        .args(&plan.args)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)));
    let mut master = None;
    let with_tty = tty.is_some();
    if let Some((rows, cols)) = tty {
        let (m, slave) = pty::open(rows, cols).map_err(|e| internal("open a terminal", e))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| internal("open a terminal", e));
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        master = Some(m);
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let user = plan.user.clone();
    let cwd = plan.cwd;
    let pid_ns = ns
        .pid
        .try_clone()
        .map_err(|e| internal("open the distro's namespaces", e))?;
    // SAFETY: the hook runs in the forked child before exec. It only makes
    // system calls on descriptors and data prepared before the fork; nothing
    // allocates or takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                nix::unistd::write(procs, b"0")?;
            }
            ns.join_in_child()?;
            default_signal_actions_in_child()?;
            nix::unistd::setsid()?;
            if with_tty {
                // fd 0 is the PTY slave installed by the spawner; TIOCSCTTY
                // takes an integer argument.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(Gid::from_raw(user.gid))?;
            nix::unistd::setuid(Uid::from_raw(user.uid))?;
            // `cwd` is an open descriptor owned by the closure.
            if libc::fchdir(std::os::fd::AsRawFd::as_raw_fd(&cwd)) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = plan.arg0.trim_start_matches('-').to_string();
    let mut child = spawn_in_pid_ns(cmd, pid_ns)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => error(
                ErrorKind::CommandNotFound,
                format!("{}: command not found", plan.program.to_string_lossy()),
            ),
            io::ErrorKind::PermissionDenied => error(
                ErrorKind::NotExecutable,
                format!("{}: permission denied", plan.program.to_string_lossy()),
            ),
            _ => internal(&format!("run {program}"), e),
        })?;
    let io = match master {
        Some(m) => ProcessIo::Pty(m),
        None => ProcessIo::Pipes {
            stdin: child.stdin.take().expect("piped"),
            stdout: child.stdout.take().expect("piped"),
            stderr: child.stderr.take().expect("piped"),
        },
    };
    Ok((child, io))
}

/// The process's PID as its distro sees it (last field of `NSpid`).
fn pid_in_distro(host_pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The exit status the client reports: the code, or 128+N for signal N.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|n| 128 + n))
        .unwrap_or(255)
}

/// Forwards the process's output as frames until it has exited and its
/// streams are drained; returns its exit status, with the sink to report it
/// on. When the client goes away first (`input` ends: its connection
/// closed), the process group is hung up as a closed terminal would be, and
/// there is nobody to report to.
async fn pump_output(
    mut sink: Sink,
    child: &mut Child,
    input: &mut tokio::task::JoinHandle<()>,
    mut out: Box<dyn AsyncRead + Unpin + Send>,
    mut err: Option<Box<dyn AsyncRead + Unpin + Send>>,
) -> (Option<Sink>, i32) {
    let mut out_buf = BytesMut::with_capacity(CHUNK);
    let mut err_buf = BytesMut::with_capacity(CHUNK);
    let mut out_open = true;
    let mut status: Option<i32> = None;
    loop {
        if !out_open && err.is_none() && status.is_some() {
            break;
        }
        let draining = status.is_some();
        tokio::select! {
            r = read_chunk(Some(&mut out), &mut out_buf), if out_open => match r {
                Some(bytes) => if sink.send(Frame::Stdout(bytes)).await.is_err() { break },
                None => out_open = false,
            },
            r = read_chunk(err.as_mut(), &mut err_buf), if err.is_some() => match r {
                Some(bytes) => if sink.send(Frame::Stderr(bytes)).await.is_err() { break },
                None => err = None,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.map(exit_code).unwrap_or(255));
            }
            _ = &mut *input, if status.is_none() => break,
            _ = tokio::time::sleep(DRAIN_IDLE), if draining => break,
        }
    }
    match status {
        Some(code) => (Some(sink), code),
        None => (None, hang_up(child).await),
    }
}

/// Ends a process whose client went away, as sshd does: SIGHUP to its
/// process group, then SIGKILL to what is left after [`HANGUP_GRACE`].
async fn hang_up(child: &mut Child) -> i32 {
    let Some(pid) = child.id() else {
        return child.wait().await.map(exit_code).unwrap_or(255);
    };
    let group = Pid::from_raw(-(pid as i32));
    tracing::debug!(pid, "exec client went away; hanging up");
    let _ = kill(group, Signal::SIGHUP);
    let _ = kill(group, Signal::SIGCONT);
    let status = match tokio::time::timeout(HANGUP_GRACE, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            tracing::debug!(pid, "still running after SIGHUP; killing its process group");
            let _ = kill(group, Signal::SIGKILL);
            child.wait().await
        }
    };
    // Whatever else of the group ignored the hangup goes too.
    let _ = kill(group, Signal::SIGKILL);
    status.map(exit_code).unwrap_or(255)
}

/// Reads one chunk; `None` at end of stream. Never completes for an absent
/// stream (so it can sit in a `select!` whose branch is disabled).
async fn read_chunk(
    r: Option<&mut Box<dyn AsyncRead + Unpin + Send>>,
    buf: &mut BytesMut,
) -> Option<Bytes> {
    let Some(r) = r else {
        return std::future::pending().await;
    };
    buf.reserve(CHUNK);
    match r.read_buf(buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(buf.split().freeze()),
    }
}

fn forward_signal(target_group: i32, signo: u32) {
    match Signal::try_from(signo as i32) {
        Ok(sig) => {
            let _ = kill(Pid::from_raw(-target_group), sig);
        }
        Err(_) => tracing::debug!(signo, "ignoring unknown signal"),
    }
}

/// Client frames for a process on pipes.
async fn pipe_input(mut source: Source, stdin: ChildStdin, pid: i32) {
    let mut stdin = Some(stdin);
    while let Some(Ok(frame)) = source.next().await {
        match frame {
            Frame::Stdin(bytes) => {
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&bytes).await.is_err() {
                        // The process closed its stdin; drop further input.
                        stdin = None;
                    }
                }
            }
            Frame::StdinEof => stdin = None,
            Frame::Signal(n) => forward_signal(pid, n),
            Frame::Resize { .. } => {}
            other => tracing::debug!(kind = ?other.kind(), "unexpected frame during exec"),
        }
    }
    // Connection gone: the process sees end of input.
}

/// Client frames for a process on a PTY.
async fn pty_input(mut source: Source, master: Arc<pty::PtyMaster>, pid: i32) {
    while let Some(Ok(frame)) = source.next().await {
        match frame {
            Frame::Stdin(bytes) => {
                if master.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Frame::StdinEof => {
                let _ = master.write_all(&[master.eof_char()]).await;
            }
            Frame::Resize { rows, cols } => {
                let _ = master.resize(rows, cols);
            }
            Frame::Signal(n) => forward_signal(master.foreground_group().unwrap_or(pid), n),
            other => tracing::debug!(kind = ?other.kind(), "unexpected frame during exec"),
        }
    }
}

/// [`AsyncRead`] over a shared PTY master.
struct PtyReader(Arc<pty::PtyMaster>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.0.poll_read(cx, buf)
    }
}
