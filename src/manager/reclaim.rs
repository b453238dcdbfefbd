//! When the manager asks the agent to trim the guest's page cache
//! (`memory_reclaim` in the config), as a pure schedule the watch loop
//! feeds with what it sees each tick.
//!
//! - `idle` (default): once the VM has run no command for [`QUIET`], one
//!   trim; the next only after a command has run again.
//! - `aggressive`: that, and every [`BUSY_INTERVAL`] while commands run.
//! - `off`: never.

use std::time::{Duration, Instant};

use crate::config::MemoryReclaim;

/// How long the VM must have run no command before an idle trim: long
/// enough that a script's next command still finds its files cached.
pub const QUIET: Duration = Duration::from_secs(15);

/// How often `aggressive` trims while commands run.
pub const BUSY_INTERVAL: Duration = Duration::from_secs(60);

/// Why a trim is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimReason {
    /// The VM has been idle for [`QUIET`].
    Idle,
    /// `aggressive`, and [`BUSY_INTERVAL`] of work has passed.
    Busy,
}

/// The trim schedule of one running VM.
#[derive(Debug)]
pub struct ReclaimSchedule {
    /// Whether the VM did work since the last trim (a fresh VM did: its
    /// boot and the first commands filled the cache).
    used_since_trim: bool,
    /// When the last busy-time trim happened, or the work began.
    busy_mark: Option<Instant>,
}

impl Default for ReclaimSchedule {
    fn default() -> Self {
        Self::new()
    }
}

impl ReclaimSchedule {
    /// The schedule of a VM that just booted.
    pub fn new() -> Self {
        ReclaimSchedule {
            used_since_trim: true,
            busy_mark: None,
        }
    }

    /// Whether to trim now, given the mode, the time, and how long the VM
    /// has run no command (`None` while a command runs). A `Some` answer
    /// counts as done.
    pub fn due(
        &mut self,
        mode: MemoryReclaim,
        now: Instant,
        idle_for: Option<Duration>,
    ) -> Option<TrimReason> {
        if mode == MemoryReclaim::Off {
            return None;
        }
        match idle_for {
            Some(quiet) => {
                self.busy_mark = None;
                if quiet >= QUIET && self.used_since_trim {
                    self.used_since_trim = false;
                    return Some(TrimReason::Idle);
                }
                None
            }
            None => {
                self.used_since_trim = true;
                let mark = *self.busy_mark.get_or_insert(now);
                if mode == MemoryReclaim::Aggressive && now.duration_since(mark) >= BUSY_INTERVAL {
                    self.busy_mark = Some(now);
                    return Some(TrimReason::Busy);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_trims_once_after_the_quiet_period_and_again_only_after_work() {
        let mut schedule = ReclaimSchedule::new();
        let t0 = Instant::now();
        let idle = MemoryReclaim::Idle;

        let early = schedule.due(idle, t0, Some(QUIET - S));
        let first = schedule.due(idle, t0 + S, Some(QUIET));
        let again = schedule.due(idle, t0 + 10 * S, Some(QUIET + 9 * S));
        let during_work = schedule.due(idle, t0 + 11 * S, None);
        let after_work = schedule.due(idle, t0 + 30 * S, Some(QUIET));

        assert_eq!(early, None);
        assert_eq!(first, Some(TrimReason::Idle));
        assert_eq!(again, None, "an idle VM was trimmed twice");
        assert_eq!(during_work, None, "idle trimmed during work");
        assert_eq!(after_work, Some(TrimReason::Idle));
    }

    #[test]
    fn aggressive_also_trims_every_interval_of_work() {
        let mut schedule = ReclaimSchedule::new();
        let t0 = Instant::now();
        let aggressive = MemoryReclaim::Aggressive;

        let start = schedule.due(aggressive, t0, None);
        let before = schedule.due(aggressive, t0 + BUSY_INTERVAL - S, None);
        let at = schedule.due(aggressive, t0 + BUSY_INTERVAL, None);
        let next = schedule.due(aggressive, t0 + BUSY_INTERVAL + S, None);
        let idle = schedule.due(aggressive, t0 + 2 * BUSY_INTERVAL, Some(QUIET));

        assert_eq!((start, before), (None, None));
        assert_eq!(at, Some(TrimReason::Busy));
        assert_eq!(next, None);
        assert_eq!(idle, Some(TrimReason::Idle));
    }

    #[test]
    fn off_never_trims() {
        let mut schedule = ReclaimSchedule::new();
        let t0 = Instant::now();

        let idle = schedule.due(MemoryReclaim::Off, t0, Some(QUIET * 10));
        let busy = schedule.due(MemoryReclaim::Off, t0 + BUSY_INTERVAL * 2, None);

        assert_eq!((idle, busy), (None, None));
    }
}
