//! `--stats-file`: a small JSON file that tells the host how much guest
//! memory the VMM has handed back so far, for `distroctl stats`:
//!
//! ```json
//! {"memory_returned_bytes": 1073741824}
//! ```
//!
//! A timer on the event loop looks at the balloon's counter once a second
//! and rewrites the file only when the count changed, atomically (a
//! temporary file renamed over it), so a reader never sees half a file.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

/// How often the counter is looked at (and so the most often the file is
/// rewritten).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Publishes a byte counter to a file.
#[derive(Debug)]
pub struct StatsFile {
    path: PathBuf,
    returned: Arc<AtomicU64>,
    written: Option<u64>,
    timer: TimerFd,
}

impl StatsFile {
    /// Writes the current count to `path` now, then keeps it up to date
    /// once on the event loop.
    pub fn new(path: PathBuf, returned: Arc<AtomicU64>) -> io::Result<StatsFile> {
        let mut timer = TimerFd::new()?;
        timer.reset(INTERVAL, Some(INTERVAL))?;
        let mut stats = StatsFile {
            path,
            returned,
            written: None,
            timer,
        };
        stats.refresh()?;
        Ok(stats)
    }

    /// Rewrites the file if the count changed since the last write.
    pub fn refresh(&mut self) -> io::Result<()> {
        let now = self.returned.load(Ordering::Relaxed);
        if self.written == Some(now) {
            return Ok(());
        }
        write_atomically(&self.path, &render(now))?;
        self.written = Some(now);
        Ok(())
    }
}

/// The file's text.
fn render(returned: u64) -> String {
    format!("{{\"memory_returned_bytes\": {returned}}}\n")
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl MutEventSubscriber for StatsFile {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The expiry count does not matter; reading it re-arms readiness.
        let _ = self.timer.wait();
        if let Err(e) = self.refresh() {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot update the stats file");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data_raw(
            self.timer.as_raw_fd(),
            0,
            EventSet::IN,
        )) {
            tracing::error!(error = ?e, "cannot watch the stats timer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_holds_the_count_and_is_rewritten_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor-stats.json");
        let counter = Arc::new(AtomicU64::new(0));

        let mut stats = StatsFile::new(path.clone(), Arc::clone(&counter)).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        stats.refresh().unwrap();
        let unchanged_rewrote = path.exists();
        counter.fetch_add(2 << 20, Ordering::Relaxed);
        stats.refresh().unwrap();

        assert_eq!(first, "{\"memory_returned_bytes\": 0}\n");
        assert!(!unchanged_rewrote, "an unchanged count was written again");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"memory_returned_bytes\": 2097152}\n"
        );
        assert!(!dir.path().join("monitor-stats.json.tmp").exists());
    }

    #[test]
    fn unwritable_path_is_an_error_at_start() {
        let err = StatsFile::new(
            "/nonexistent/dir/stats.json".into(),
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
