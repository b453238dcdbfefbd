//! The guest's wall clock follows the host's. An emulated or suspended VM
//! falls behind (a laptop resumed after a night keeps the VM's clock of the
//! evening), so each host hello carries the host's time and the agent steps
//! the guest's realtime clock when the two differ by more than
//! [`MAX_SKEW`]; smaller differences are left to the guest's timekeeping
//! instead of making time jump back and forth on every connection.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use protocol::WallClock;

/// Differences up to this many nanoseconds (one second) are ignored.
pub const MAX_SKEW: i128 = 1_000_000_000;

/// Only the agent inside the VM owns the clock; one serving a Unix socket
/// on the host (tests, debugging) must never set the host's.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Lets hellos set the clock (called when serving over vsock inside the VM).
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// The time to set when the guest clock `guest` is too far from `host`.
pub fn correction(guest: &WallClock, host: &WallClock) -> Option<WallClock> {
    (host.nanos_since(guest).abs() > MAX_SKEW).then_some(*host)
}

/// Steps the clock to the host's time when needed and enabled.
pub fn follow_host(host: Option<&WallClock>) {
    let Some(host) = host else { return };
    if !ENABLED.load(Ordering::SeqCst) {
        return;
    }
    let guest = WallClock::now();
    let Some(target) = correction(&guest, host) else {
        return;
    };
    let spec = TimeSpec::new(target.secs, i64::from(target.nanos));
    match clock_settime(ClockId::CLOCK_REALTIME, spec) {
        Ok(()) => tracing::info!(
            skew_ms = (host.nanos_since(&guest) / 1_000_000) as i64,
            "guest clock set from the host"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot set the guest clock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, nanos: u32) -> WallClock {
        WallClock { secs, nanos }
    }

    #[test]
    fn small_skew_is_ignored() {
        assert_eq!(correction(&at(100, 0), &at(100, 900_000_000)), None);
    }

    #[test]
    fn large_skew_either_way_sets_host_time() {
        let guest = at(100, 0);
        let ahead = at(3700, 5);
        let behind = at(90, 0);

        assert_eq!(correction(&guest, &ahead), Some(ahead));
        assert_eq!(correction(&guest, &behind), Some(behind));
    }
}
