//! What init does when the agent exits: status 0 means the host asked for
//! shutdown; anything else is a crash, answered by a restart after an
//! exponential backoff so a crash loop cannot monopolise the VM's CPUs.

use std::time::Duration;

use nix::sys::signal::Signal;

/// Delay before the first restart after a crash.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);

/// The backoff stops doubling here.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// An agent that ran at least this long before dying counts as healthy,
/// and the next restart starts from [`INITIAL_DELAY`] again.
pub const STABLE_RUN: Duration = Duration::from_secs(30);

/// How the agent process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentExit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(Signal),
}

/// What to do after the agent exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Shutdown was requested: power the VM off.
    PowerOff,
    /// Start it again after this delay.
    RestartAfter(Duration),
}

/// Restart delays: 0.1 s doubling up to 5 s, reset by a run of 30 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: INITIAL_DELAY,
        }
    }
}

impl Backoff {
    /// The delay before restarting an agent that ran for `ran_for`.
    pub fn delay_after(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= STABLE_RUN {
            self.next = INITIAL_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }
}

/// Decides what follows an agent exit.
pub fn after_exit(exit: AgentExit, ran_for: Duration, backoff: &mut Backoff) -> AfterExit {
    match exit {
        AgentExit::Code(0) => AfterExit::PowerOff,
        AgentExit::Code(_) | AgentExit::Signal(_) => {
            AfterExit::RestartAfter(backoff.delay_after(ran_for))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quick_crashes_double_the_delay_up_to_five_seconds() {
        let mut backoff = Backoff::default();

        let delays: Vec<_> = (0..9).map(|_| backoff.delay_after(ms(10))).collect();

        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000),
                ms(5000)
            ]
        );
    }

    #[test]
    fn thirty_second_run_resets_the_delay() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.delay_after(ms(10));
        }

        let delay = backoff.delay_after(STABLE_RUN);

        assert_eq!(delay, INITIAL_DELAY);
        assert_eq!(backoff.delay_after(ms(10)), ms(200));
    }

    #[test]
    fn run_just_short_of_stable_keeps_backing_off() {
        let mut backoff = Backoff::default();
        backoff.delay_after(ms(10));

        let delay = backoff.delay_after(STABLE_RUN - ms(1));

        assert_eq!(delay, ms(200));
    }

    #[test]
    fn exit_status_zero_powers_off() {
        let mut backoff = Backoff::default();

        let next = after_exit(AgentExit::Code(0), ms(10), &mut backoff);

        assert_eq!(next, AfterExit::PowerOff);
    }

    #[test]
    fn failure_and_signal_restart_with_backoff() {
        let mut backoff = Backoff::default();

        let first = after_exit(AgentExit::Code(1), ms(10), &mut backoff);
        let second = after_exit(AgentExit::Signal(Signal::SIGSEGV), ms(10), &mut backoff);

        assert_eq!(first, AfterExit::RestartAfter(ms(100)));
        assert_eq!(second, AfterExit::RestartAfter(ms(200)));
    }
}
