//! Spawning processes into namespaces.
//!
//! A PID namespace can only be entered by a new child, and the choice is made
//! per thread (`pid_for_children`), so each spawn here runs on a fresh,
//! short-lived thread that first switches its own `pid_for_children` and then
//! forks. Mount, UTS, IPC and cgroup namespaces are joined by the child itself
//! (in `pre_exec`), where the process is single-threaded as `setns(2)` on a
//! mount namespace requires.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};
use tokio::process::{Child, Command};

/// File descriptors of a running distro's namespaces, opened from its PID 1.
#[derive(Debug)]
pub struct DistroNamespaces {
    /// PID namespace.
    pub pid: OwnedFd,
    /// Mount namespace (joining it also sets root and cwd to the distro's `/`).
    pub mnt: OwnedFd,
    /// UTS namespace (host name).
    pub uts: OwnedFd,
    /// IPC namespace.
    pub ipc: OwnedFd,
    /// cgroup namespace.
    pub cgroup: OwnedFd,
    /// Network namespace (the VM's, unless the distro's network is isolated).
    pub net: OwnedFd,
}

impl DistroNamespaces {
    /// Opens the namespaces of host process `pid`.
    pub fn of(pid: i32) -> io::Result<Self> {
        let open = |ns: &str| -> io::Result<OwnedFd> {
            Ok(File::open(Path::new("/proc").join(pid.to_string()).join("ns").join(ns))?.into())
        };
        Ok(DistroNamespaces {
            pid: open("pid")?,
            mnt: open("mnt")?,
            uts: open("uts")?,
            ipc: open("ipc")?,
            cgroup: open("cgroup")?,
            net: open("net")?,
        })
    }

    /// Joins the cgroup, IPC, UTS, network and mount namespaces. Call only
    /// from a `pre_exec` hook: it changes the calling process's root
    /// directory.
    pub fn join_in_child(&self) -> io::Result<()> {
        setns(self.cgroup.as_fd(), CloneFlags::CLONE_NEWCGROUP)?;
        setns(self.net.as_fd(), CloneFlags::CLONE_NEWNET)?;
        setns(self.ipc.as_fd(), CloneFlags::CLONE_NEWIPC)?;
        setns(self.uts.as_fd(), CloneFlags::CLONE_NEWUTS)?;
        setns(self.mnt.as_fd(), CloneFlags::CLONE_NEWNS)?;
        Ok(())
    }
}

/// Gives every signal its default action again. Call only from a
/// `pre_exec` hook: a process inherits ignored signals across exec, so an
/// agent started with, say, SIGINT ignored would otherwise hand that on and
/// Ctrl-C would not stop a distro's programs. (The signal mask is reset by
/// the standard library's spawn.)
pub fn default_signal_actions_in_child() -> io::Result<()> {
    for signal in nix::sys::signal::Signal::iterator() {
        if matches!(
            signal,
            nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
        ) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no handler code and is
        // async-signal-safe; the child is single-threaded before exec.
        unsafe {
            nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl)?;
        }
    }
    Ok(())
}

/// Where the child's PID namespace comes from.
enum PidNamespace<'a> {
    /// A new one, with the child as its PID 1.
    New,
    /// An existing one (a running distro's).
    Join(&'a OwnedFd),
}

/// Spawns `cmd` as PID 1 of a new PID namespace. Its `pre_exec` hooks should
/// unshare the other namespaces.
pub async fn spawn_as_pid1(cmd: Command) -> io::Result<Child> {
    spawn_on_fresh_thread(cmd, None).await
}

/// Spawns `cmd` in the PID namespace `pid_ns`. Its `pre_exec` hooks should
/// join the other namespaces ([`DistroNamespaces::join_in_child`]).
pub async fn spawn_in_pid_ns(cmd: Command, pid_ns: OwnedFd) -> io::Result<Child> {
    spawn_on_fresh_thread(cmd, Some(pid_ns)).await
}

async fn spawn_on_fresh_thread(mut cmd: Command, pid_ns: Option<OwnedFd>) -> io::Result<Child> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A new thread, never a pooled one: its pid_for_children is changed for
    // good and the thread ends right after the fork.
    std::thread::Builder::new()
        .name("ns-spawn".into())
        .spawn(move || {
            let _runtime = handle.enter();
            let ns = match &pid_ns {
                Some(fd) => PidNamespace::Join(fd),
                None => PidNamespace::New,
            };
            let result = enter_pid_ns_for_children(ns).and_then(|()| cmd.spawn());
            // The command holds the namespace descriptors its pre_exec hook
            // needed; close them before the caller goes on.
            drop(cmd);
            drop(pid_ns);
            let _ = tx.send(result);
        })?;
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("namespace spawn thread failed")))
}

fn enter_pid_ns_for_children(ns: PidNamespace<'_>) -> io::Result<()> {
    match ns {
        PidNamespace::New => unshare(CloneFlags::CLONE_NEWPID)?,
        PidNamespace::Join(fd) => setns(fd.as_fd(), CloneFlags::CLONE_NEWPID)?,
    }
    Ok(())
}
