//! The agent's lifecycle as a small state machine without syscalls: the
//! supervisor feeds it events (a deadline passed, the agent was spawned or
//! exited, a shutdown signal came) and carries out the action it returns.
//! Tests drive it with made-up pids and instants.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::power::Shutdown;
use crate::restart_policy::{after_exit, AfterExit, AgentExit, Backoff};

/// How long the agent gets to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long to wait for a SIGKILLed agent to be reaped before powering off
/// anyway.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// What the supervisor must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the agent and report back with [`AgentLifecycle::on_spawned`].
    Start,
    /// Nothing to do until the deadline: the agent restarts after this delay.
    RestartAfter(Duration),
    /// Send this signal to the agent.
    Signal(Pid, Signal),
    /// Stop supervising and power off.
    PowerOff(Shutdown),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting {
        until: Instant,
    },
    Running {
        pid: Pid,
        since: Instant,
    },
    Stopping {
        pid: Pid,
        deadline: Instant,
        killed: bool,
    },
}

/// Where the agent is in its life, and what is owed to it.
#[derive(Debug, Clone)]
pub struct AgentLifecycle {
    state: State,
    backoff: Backoff,
    stop_reason: Option<Shutdown>,
}

impl AgentLifecycle {
    /// A lifecycle whose first start is due at `now`.
    pub fn new(now: Instant) -> Self {
        AgentLifecycle {
            state: State::Waiting { until: now },
            backoff: Backoff::default(),
            stop_reason: None,
        }
    }

    /// The running (or stopping) agent's pid.
    pub fn agent_pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } | State::Stopping { pid, .. } => Some(pid),
            State::Waiting { .. } => None,
        }
    }

    /// When [`on_deadline`](Self::on_deadline) next has something to do;
    /// `None` while the agent simply runs.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            State::Stopping { deadline, .. } => Some(deadline),
            State::Running { .. } => None,
        }
    }

    /// Time passed: start the agent when its restart is due, escalate a
    /// stop that takes too long.
    pub fn on_deadline(&mut self, now: Instant) -> Option<Action> {
        match self.state {
            State::Waiting { until } if now >= until => Some(Action::Start),
            State::Stopping {
                pid,
                deadline,
                killed: false,
            } if now >= deadline => {
                self.state = State::Stopping {
                    pid,
                    deadline: now + KILL_GRACE,
                    killed: true,
                };
                Some(Action::Signal(pid, Signal::SIGKILL))
            }
            State::Stopping {
                killed: true,
                deadline,
                ..
            } if now >= deadline => Some(Action::PowerOff(self.stop_reason())),
            _ => None,
        }
    }

    /// The outcome of [`Action::Start`]; a failed spawn counts as a crash.
    pub fn on_spawned(&mut self, spawned: Option<Pid>, now: Instant) -> Option<Action> {
        match spawned {
            Some(pid) => {
                self.state = State::Running { pid, since: now };
                None
            }
            None => Some(self.schedule_restart(Duration::ZERO, now)),
        }
    }

    /// A child exited; only the agent's exit matters here.
    pub fn on_exit(&mut self, pid: Pid, exit: AgentExit, now: Instant) -> Option<Action> {
        match self.state {
            State::Running { pid: agent, since } if pid == agent => {
                let ran_for = now.saturating_duration_since(since);
                match after_exit(exit, ran_for, &mut self.backoff) {
                    AfterExit::PowerOff => Some(Action::PowerOff(Shutdown::Requested)),
                    AfterExit::RestartAfter(delay) => {
                        self.state = State::Waiting { until: now + delay };
                        Some(Action::RestartAfter(delay))
                    }
                }
            }
            State::Stopping { pid: agent, .. } if pid == agent => {
                Some(Action::PowerOff(self.stop_reason()))
            }
            _ => None,
        }
    }

    /// A shutdown signal came: stop the agent politely, or power off at
    /// once when none is running. Repeated signals change nothing.
    pub fn on_shutdown_signal(&mut self, signal: Signal, now: Instant) -> Option<Action> {
        if self.stop_reason.is_some() {
            return None;
        }
        self.stop_reason = Some(Shutdown::Signal(signal));
        match self.state {
            State::Running { pid, .. } => {
                self.state = State::Stopping {
                    pid,
                    deadline: now + STOP_GRACE,
                    killed: false,
                };
                Some(Action::Signal(pid, Signal::SIGTERM))
            }
            State::Waiting { .. } => Some(Action::PowerOff(self.stop_reason())),
            State::Stopping { .. } => None,
        }
    }

    fn schedule_restart(&mut self, ran_for: Duration, now: Instant) -> Action {
        let delay = self.backoff.delay_after(ran_for);
        self.state = State::Waiting { until: now + delay };
        Action::RestartAfter(delay)
    }

    fn stop_reason(&self) -> Shutdown {
        self.stop_reason.clone().unwrap_or(Shutdown::Requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: Pid = Pid::from_raw(42);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn running(t0: Instant) -> AgentLifecycle {
        let mut life = AgentLifecycle::new(t0);
        assert_eq!(life.on_deadline(t0), Some(Action::Start));
        assert_eq!(life.on_spawned(Some(AGENT), t0), None);
        life
    }

    #[test]
    fn first_start_is_due_immediately() {
        let t0 = Instant::now();
        let mut life = AgentLifecycle::new(t0);

        let action = life.on_deadline(t0);

        assert_eq!(action, Some(Action::Start));
    }

    #[test]
    fn running_agent_has_no_deadline() {
        let t0 = Instant::now();

        let life = running(t0);

        assert_eq!(life.deadline(), None);
        assert_eq!(life.agent_pid(), Some(AGENT));
    }

    #[test]
    fn crash_schedules_restart_after_backoff() {
        let t0 = Instant::now();
        let mut life = running(t0);

        let action = life.on_exit(AGENT, AgentExit::Code(1), t0 + ms(10));

        assert_eq!(action, Some(Action::RestartAfter(ms(100))));
        assert_eq!(life.deadline(), Some(t0 + ms(110)));
        assert_eq!(life.on_deadline(t0 + ms(109)), None);
        assert_eq!(life.on_deadline(t0 + ms(110)), Some(Action::Start));
    }

    #[test]
    fn exit_status_zero_powers_off_as_requested() {
        let t0 = Instant::now();
        let mut life = running(t0);

        let action = life.on_exit(AGENT, AgentExit::Code(0), t0 + ms(5));

        assert_eq!(action, Some(Action::PowerOff(Shutdown::Requested)));
    }

    #[test]
    fn other_children_exiting_is_ignored() {
        let t0 = Instant::now();
        let mut life = running(t0);

        let action = life.on_exit(Pid::from_raw(7), AgentExit::Code(1), t0);

        assert_eq!(action, None);
        assert_eq!(life.agent_pid(), Some(AGENT));
    }

    #[test]
    fn failed_spawn_backs_off_like_a_crash() {
        let t0 = Instant::now();
        let mut life = AgentLifecycle::new(t0);
        life.on_deadline(t0);

        let first = life.on_spawned(None, t0);
        let second = life.on_spawned(None, t0);

        assert_eq!(first, Some(Action::RestartAfter(ms(100))));
        assert_eq!(second, Some(Action::RestartAfter(ms(200))));
    }

    #[test]
    fn shutdown_signal_terms_agent_then_powers_off_when_it_exits() {
        let t0 = Instant::now();
        let mut life = running(t0);

        let stop = life.on_shutdown_signal(Signal::SIGTERM, t0);
        let exited = life.on_exit(AGENT, AgentExit::Code(0), t0 + ms(50));

        assert_eq!(stop, Some(Action::Signal(AGENT, Signal::SIGTERM)));
        assert_eq!(
            exited,
            Some(Action::PowerOff(Shutdown::Signal(Signal::SIGTERM)))
        );
    }

    #[test]
    fn agent_ignoring_sigterm_is_killed_after_ten_seconds() {
        let t0 = Instant::now();
        let mut life = running(t0);
        life.on_shutdown_signal(Signal::SIGPWR, t0);

        let early = life.on_deadline(t0 + STOP_GRACE - ms(1));
        let kill = life.on_deadline(t0 + STOP_GRACE);

        assert_eq!(early, None);
        assert_eq!(kill, Some(Action::Signal(AGENT, Signal::SIGKILL)));
    }

    #[test]
    fn unreaped_killed_agent_does_not_block_power_off() {
        let t0 = Instant::now();
        let mut life = running(t0);
        life.on_shutdown_signal(Signal::SIGTERM, t0);
        life.on_deadline(t0 + STOP_GRACE);

        let action = life.on_deadline(t0 + STOP_GRACE + KILL_GRACE);

        assert_eq!(
            action,
            Some(Action::PowerOff(Shutdown::Signal(Signal::SIGTERM)))
        );
    }

    #[test]
    fn shutdown_signal_between_restarts_powers_off_at_once() {
        let t0 = Instant::now();
        let mut life = running(t0);
        life.on_exit(AGENT, AgentExit::Code(1), t0);

        let action = life.on_shutdown_signal(Signal::SIGINT, t0);

        assert_eq!(
            action,
            Some(Action::PowerOff(Shutdown::Signal(Signal::SIGINT)))
        );
    }

    #[test]
    fn repeated_shutdown_signal_is_ignored() {
        let t0 = Instant::now();
        let mut life = running(t0);
        life.on_shutdown_signal(Signal::SIGTERM, t0);

        let again = life.on_shutdown_signal(Signal::SIGTERM, t0 + ms(1));

        assert_eq!(again, None);
    }
}
