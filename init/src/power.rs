//! The one way out for PID 1: stop every process, flush and release the data
//! disk, power the VM off. If the kernel refuses, init halts and then sleeps
//! forever — exiting would panic the kernel.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{sync, Pid};

use crate::data_disk::{self, Release};
use crate::log;

/// Time the remaining processes get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Time allowed for SIGKILLed processes to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Why the VM is going down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shutdown {
    /// The agent exited with status 0 at the host's request.
    Requested,
    /// Init received a shutdown signal (SIGTERM, SIGPWR, SIGINT).
    Signal(Signal),
    /// Boot or supervision failed; the text says what.
    Fatal(String),
}

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shutdown::Requested => f.write_str("shutdown requested by the agent"),
            Shutdown::Signal(signal) => write!(f, "received {signal}"),
            Shutdown::Fatal(what) => write!(f, "fatal error: {what}"),
        }
    }
}

/// Stops everything and powers off. Never returns.
pub fn power_off(reason: &Shutdown) -> ! {
    log!("powering off: {reason}");
    terminate_all_processes();
    sync();
    match data_disk::release() {
        Release::Unmounted => log!("unmounted {}", data_disk::MOUNT_POINT),
        Release::RemountedReadOnly => {
            log!(
                "{} busy: remounted read-only and detached",
                data_disk::MOUNT_POINT
            )
        }
        Release::Detached => log!("{} busy: detached lazily", data_disk::MOUNT_POINT),
        Release::NotMounted => {}
    }
    sync();
    let Err(errno) = reboot(RebootMode::RB_POWER_OFF);
    log!("power off failed ({errno}); halting");
    let Err(errno) = reboot(RebootMode::RB_HALT_SYSTEM);
    log!("halt failed ({errno}); sleeping forever");
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// SIGTERM to every process, a grace period, then SIGKILL, reaping all the
/// way so that nothing keeps `/data` busy.
fn terminate_all_processes() {
    for (signal, grace) in [(Signal::SIGTERM, TERM_GRACE), (Signal::SIGKILL, KILL_GRACE)] {
        // pid -1: every process init may signal, i.e. all but itself.
        if kill(Pid::from_raw(-1), signal) == Err(Errno::ESRCH) {
            return;
        }
        if reap_until_none_left(grace) {
            return;
        }
    }
}

/// Reaps children until none is left (true) or `limit` passes (false).
fn reap_until_none_left(limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) | Err(_) => {
                if started.elapsed() >= limit {
                    return false;
                }
                thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_reasons_read_as_sentences() {
        assert_eq!(
            Shutdown::Requested.to_string(),
            "shutdown requested by the agent"
        );
        assert_eq!(
            Shutdown::Signal(Signal::SIGPWR).to_string(),
            "received SIGPWR"
        );
        assert_eq!(
            Shutdown::Fatal("no data disk".into()).to_string(),
            "fatal error: no data disk"
        );
    }
}
