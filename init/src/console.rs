//! The boot log: one timestamped line per step on the serial console, which
//! is the only place a person (or the host's log capture) sees what PID 1 did.
//!
//! `/dev/console` is preferred; before devtmpfs exists the node shipped in the
//! initramfs serves, and when neither opens the kernel log (`/dev/kmsg`)
//! carries the line. Logging never fails the caller: a line that cannot be
//! written anywhere is dropped.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Logs one line to the console, `format!`-style.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::console::write_line(format_args!($($arg)*))
    };
}

/// Where log lines currently go; opened on first use and reopened after a
/// write error (the node may have been replaced by devtmpfs meanwhile).
static SINK: Mutex<Option<File>> = Mutex::new(None);

/// Paths tried in order for the log.
const SINK_PATHS: [&str; 2] = ["/dev/console", "/dev/kmsg"];

/// Writes `args` as one timestamped line.
pub fn write_line(args: fmt::Arguments<'_>) {
    let line = format_line(since_boot(), args);
    // A poisoned lock only means another thread panicked mid-write; the file
    // handle inside is still usable.
    let mut sink = SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..2 {
        if sink.is_none() {
            *sink = open_sink();
        }
        match sink.as_mut() {
            Some(file) => {
                if file.write_all(line.as_bytes()).is_ok() {
                    return;
                }
                *sink = None;
            }
            None => break,
        }
    }
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Opens a fresh handle on the console for a child's stdout/stderr, so that
/// the agent's own log lands beside init's.
pub fn open_for_child() -> io::Result<File> {
    open_writable(SINK_PATHS[0])
}

/// Forgets the current sink so that the next line reopens it; used after
/// devtmpfs is mounted over the initramfs's `/dev`.
pub fn reopen() {
    let mut sink = SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *sink = None;
}

fn open_sink() -> Option<File> {
    SINK_PATHS.iter().find_map(|path| open_writable(path).ok())
}

fn open_writable(path: &str) -> io::Result<File> {
    // O_NOCTTY: PID 1 must not acquire the console as controlling terminal,
    // or a hangup on it would be delivered to init.
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// Time since boot, the same clock as the kernel's own log timestamps, so
/// init's lines interleave sensibly with `dmesg`.
fn since_boot() -> Duration {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => Duration::new(
            u64::try_from(ts.tv_sec()).unwrap_or(0),
            u32::try_from(ts.tv_nsec()).unwrap_or(0),
        ),
        Err(_) => Duration::ZERO,
    }
}

/// Formats a log line the way the kernel prints its own: `[   1.234567]`.
pub fn format_line(since_boot: Duration, args: fmt::Arguments<'_>) -> String {
    format!(
        "[{:5}.{:06}] distroctl-init: {}\n",
        since_boot.as_secs(),
        since_boot.subsec_micros(),
        args
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_line_uses_kernel_style_timestamp() {
        let at = Duration::from_micros(1_234_567);

        let line = format_line(at, format_args!("mounted {}", "/data"));

        assert_eq!(line, "[    1.234567] distroctl-init: mounted /data\n");
    }

    #[test]
    fn format_line_keeps_long_uptimes_whole() {
        let at = Duration::from_secs(123_456) + Duration::from_micros(7);

        let line = format_line(at, format_args!("x"));

        assert_eq!(line, "[123456.000007] distroctl-init: x\n");
    }
}
