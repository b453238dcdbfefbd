//! PID 1's main loop: keep the agent running, reap every zombie, and turn
//! shutdown signals into an orderly stop.
//!
//! All of init's signals are blocked and read from one signalfd (a blocked
//! signal is queued even for PID 1, which otherwise ignores signals it has
//! no handler for), so the loop is a plain `poll` with a timeout for the next
//! restart or kill deadline — no signal handlers, no races with them.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::agent_lifecycle::{Action, AgentLifecycle};
use crate::console;
use crate::log;
use crate::power::Shutdown;
use crate::restart_policy::AgentExit;

/// Signals that ask init to shut the VM down: SIGTERM (host tooling),
/// SIGPWR (power failure / ACPI via the kernel), SIGINT (Ctrl-Alt-Del once
/// the kernel's own reboot on it is disabled).
pub const SHUTDOWN_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGPWR, Signal::SIGINT];

/// How to start the agent.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (init's own is not passed on).
    pub env: Vec<(String, String)>,
}

/// The signals init handles through the signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for signal in SHUTDOWN_SIGNALS {
        set.add(signal);
    }
    set
}

/// Runs the agent until shutdown; returns why the VM should go down. The
/// signals in [`handled_signals`] must already be blocked.
pub fn supervise(agent: &AgentCommand) -> Shutdown {
    let signals = match SignalFd::with_flags(
        &handled_signals(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    ) {
        Ok(fd) => fd,
        Err(errno) => return Shutdown::Fatal(format!("could not open a signalfd: {errno}")),
    };
    let mut life = AgentLifecycle::new(Instant::now());

    loop {
        let mut pending = VecDeque::new();
        pending.extend(life.on_deadline(Instant::now()));

        let timeout = if pending.is_empty() {
            life.deadline().map_or(PollTimeout::NONE, timeout_until)
        } else {
            PollTimeout::ZERO
        };
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Shutdown::Fatal(format!("poll on the signalfd failed: {errno}")),
        }

        let shutdown_signal = drain_signals(&signals);
        for (pid, exit) in reap_children() {
            if Some(pid) == life.agent_pid() {
                log!("agent exited ({})", describe(exit));
            }
            pending.extend(life.on_exit(pid, exit, Instant::now()));
        }
        if let Some(signal) = shutdown_signal {
            log!("received {signal}");
            pending.extend(life.on_shutdown_signal(signal, Instant::now()));
        }

        while let Some(action) = pending.pop_front() {
            match action {
                Action::Start => {
                    let spawned = match spawn(agent) {
                        Ok(pid) => {
                            log!("agent started (pid {pid})");
                            Some(pid)
                        }
                        Err(e) => {
                            log!("could not start {}: {e}", agent.program.display());
                            None
                        }
                    };
                    pending.extend(life.on_spawned(spawned, Instant::now()));
                }
                Action::RestartAfter(delay) => log!("restarting the agent in {delay:?}"),
                Action::Signal(pid, signal) => {
                    log!("sending {signal} to the agent");
                    let _ = kill(pid, signal);
                }
                Action::PowerOff(reason) => return reason,
            }
        }
    }
}

/// Spawns the agent with its output on the console.
fn spawn(agent: &AgentCommand) -> std::io::Result<Pid> {
    let mut command = Command::new(&agent.program);
    unblock_signals_in_child(&mut command);
    command
        .args(&agent.args)
        .env_clear()
        .envs(agent.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .current_dir("/");
    // Init's own stdio is the console the kernel opened, so inheriting it
    // is the fallback when a fresh handle cannot be had.
    if let Ok(output) = console::open_for_child() {
        command.stdout(output.try_clone()?).stderr(output);
    }
    let child = command.spawn()?;
    // The child handle is dropped without waiting: reaping goes through
    // waitpid(-1) with every other zombie.
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    Ok(Pid::from_raw(pid))
}

/// A child inherits the signal mask across fork and exec, and std leaves it
/// alone; without this the agent would start with SIGTERM and SIGCHLD
/// blocked and never see them.
fn unblock_signals_in_child(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec, where only
    // async-signal-safe calls are allowed; it makes exactly one,
    // pthread_sigmask, on a set built before the fork, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
}

/// Reads every pending signal; returns the last shutdown signal among them.
/// SIGCHLD needs no bookkeeping because every wake-up reaps anyway.
fn drain_signals(signals: &SignalFd) -> Option<Signal> {
    let mut shutdown = None;
    while let Ok(Some(info)) = signals.read_signal() {
        let signal = i32::try_from(info.ssi_signo)
            .ok()
            .and_then(|n| Signal::try_from(n).ok());
        if let Some(signal) = signal.filter(|s| SHUTDOWN_SIGNALS.contains(s)) {
            shutdown = Some(signal);
        }
    }
    shutdown
}

/// Reaps every exited child, returning how each ended.
fn reap_children() -> Vec<(Pid, AgentExit)> {
    let mut exits = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exits.push((pid, AgentExit::Code(code))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                exits.push((pid, AgentExit::Signal(signal)))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return exits,
            Ok(_) => {}
        }
    }
}

fn describe(exit: AgentExit) -> String {
    match exit {
        AgentExit::Code(code) => format!("status {code}"),
        AgentExit::Signal(signal) => format!("killed by {signal}"),
    }
}

/// A poll timeout that does not wake before `deadline` (poll counts whole
/// milliseconds, so round up).
fn timeout_until(deadline: Instant) -> PollTimeout {
    let left = deadline.saturating_duration_since(Instant::now());
    let millis = left.as_micros().div_ceil(1000);
    PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timeout_rounds_up_to_whole_milliseconds() {
        let deadline = Instant::now() + Duration::from_micros(1500);

        let timeout = timeout_until(deadline);

        let millis: i32 = timeout.into();
        assert!((1..=2).contains(&millis), "got {millis}");
    }

    #[test]
    fn past_deadline_polls_without_waiting() {
        let timeout = timeout_until(Instant::now() - Duration::from_secs(1));

        assert_eq!(i32::from(timeout), 0);
    }

    #[test]
    fn handled_signals_cover_child_exit_and_shutdown() {
        let set = handled_signals();

        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGPWR,
            Signal::SIGINT,
        ] {
            assert!(set.contains(signal), "{signal} not handled");
        }
    }

    #[test]
    fn spawned_agent_does_not_inherit_blocked_signals() {
        // Its own thread, because the signal mask is per thread; grep is run
        // directly because a shell would reset the mask itself.
        let blocked = std::thread::spawn(|| {
            handled_signals().thread_block().unwrap();
            let mut command = Command::new("grep");
            command.args(["^SigBlk:", "/proc/self/status"]);
            unblock_signals_in_child(&mut command);
            let output = command.output().unwrap();
            String::from_utf8(output.stdout).unwrap()
        })
        .join()
        .unwrap();

        assert_eq!(blocked.trim(), "SigBlk:\t0000000000000000");
    }
}
