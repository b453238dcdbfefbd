//! Progress of a transfer: a bar on a terminal, periodic log lines elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How acquisition reports its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A progress bar when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// Periodic `tracing` info lines only.
    Log,
}

/// How often a log line is written when no bar is shown.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Reports the progress of one transfer of `total` bytes (when known).
pub(crate) struct TransferProgress {
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    started_at: u64,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

impl TransferProgress {
    /// Starts reporting a transfer that already has `done` bytes (a resume).
    pub(crate) fn start(mode: ProgressMode, label: &str, total: Option<u64>, done: u64) -> Self {
        let bar = (mode == ProgressMode::Auto && std::io::stderr().is_terminal()).then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::no_length(),
            };
            let template = if total.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            } else {
                "{msg} {bytes} {bytes_per_sec}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("progress template is valid")
                    .progress_chars("=> "),
            );
            bar.set_message(label.to_owned());
            bar.set_position(done);
            bar
        });
        tracing::info!(what = label, total, resume_from = done, "transfer started");
        let now = Instant::now();
        TransferProgress {
            label: label.to_owned(),
            total,
            done,
            started: now,
            started_at: done,
            last_log: now,
            bar,
        }
    }

    /// Records `bytes` more transferred.
    pub(crate) fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        } else if self.last_log.elapsed() >= LOG_INTERVAL {
            self.last_log = Instant::now();
            self.log("transfer progress");
        }
    }

    /// Ends the report; the bar disappears and one log line remains.
    pub(crate) fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.log("transfer finished");
    }

    fn log(&self, message: &str) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.done - self.started_at) as f64 / elapsed;
        let eta = match self.total {
            Some(total) if rate > 0.0 && total > self.done => {
                format!("{:.0}s", (total - self.done) as f64 / rate)
            }
            _ => "-".to_owned(),
        };
        tracing::info!(
            what = %self.label,
            bytes = self.done,
            total = self.total,
            rate = %format!("{:.1} MB/s", rate / 1e6),
            eta = %eta,
            "{message}"
        );
    }
}

impl Drop for TransferProgress {
    fn drop(&mut self) {
        // A failed transfer must not leave a half-drawn bar behind the error.
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
