//! The console of a distro that runs its own systemd: a PTY whose slave is
//! the distro's `/dev/console` (as systemd-nspawn gives its containers) and
//! whose master the agent reads into `console.log` beside the distro's root
//! file system, for `distroctl logs NAME`. The distro decides what it
//! prints, so the log is capped: past [`LOG_LIMIT`] bytes it starts again
//! (the older part kept as `console.log.1`).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::termios::{tcgetattr, tcsetattr, OutputFlags, SetArg};
use tokio::sync::watch;

use crate::exec::pty::{self, PtyMaster};

/// Size at which the log starts again.
pub const LOG_LIMIT: u64 = 1 << 20;

/// The most lines `tail` returns, whatever is asked.
pub const MAX_LINES: u32 = 100_000;

/// The log of the distro whose root file system is `rootfs`.
pub fn log_path(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name("console.log")
}

fn older(path: &Path) -> PathBuf {
    path.with_extension("log.1")
}

/// A console about to be given to a distro's PID 1.
pub struct Console {
    master: PtyMaster,
    slave: OwnedFd,
}

impl Console {
    /// A new PTY, its output passed on as written (no `\r` added).
    pub fn open() -> io::Result<Console> {
        let (master, slave) = pty::open(24, 80)?;
        let mut termios = tcgetattr(&slave)?;
        termios.output_flags.remove(OutputFlags::OPOST);
        tcsetattr(&slave, SetArg::TCSANOW, &termios)?;
        Ok(Console { master, slave })
    }

    /// The slave side's path in the VM (`/dev/pts/N`), which the distro's
    /// PID 1 binds over its `/dev/console`.
    pub fn slave_path(&self) -> io::Result<PathBuf> {
        Ok(nix::unistd::ttyname(&self.slave)?)
    }

    #[cfg(test)]
    fn slave_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.slave)
    }

    /// Starts copying the console into the log at `path` (the last start's
    /// log becomes the older one) until `stopped` turns true. The agent
    /// keeps a slave descriptor open meanwhile, so that the console never
    /// hangs up while the distro has it closed.
    pub fn record(self, path: PathBuf, mut stopped: watch::Receiver<bool>) {
        if path.exists() {
            let _ = fs::rename(&path, older(&path));
        }
        tokio::spawn(async move {
            let Console { master, slave } = self;
            let mut log = match fs::File::create(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(log = %path.display(), error = %e, "distro console not recorded");
                    return;
                }
            };
            let mut written = 0u64;
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let mut read = tokio::io::ReadBuf::new(&mut buf);
                tokio::select! {
                    r = std::future::poll_fn(|cx| master.poll_read(cx, &mut read)) => {
                        if r.is_err() || read.filled().is_empty() {
                            break;
                        }
                    }
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let chunk = read.filled();
                if written + chunk.len() as u64 > LOG_LIMIT {
                    let _ = fs::rename(&path, older(&path));
                    match fs::File::create(&path) {
                        Ok(f) => log = f,
                        Err(_) => break,
                    }
                    written = 0;
                }
                if log.write_all(chunk).is_err() {
                    break;
                }
                written += chunk.len() as u64;
            }
            drop(slave);
        });
    }
}

/// The last `lines` lines of the log at `path` (at most [`MAX_LINES`],
/// read from its last [`LOG_LIMIT`] bytes); `None` when there is no log.
pub fn tail(path: &Path, lines: u32) -> io::Result<Option<String>> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_LIMIT)))?;
    let mut bytes = Vec::new();
    file.take(LOG_LIMIT).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let keep = lines.min(MAX_LINES) as usize;
    Ok(Some(all[all.len().saturating_sub(keep)..].join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_says_when_there_is_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(&dir.path().join("rootfs"));
        assert_eq!(path, dir.path().join("console.log"));
        assert_eq!(tail(&path, 10).unwrap(), None);

        fs::write(&path, "one\ntwo\nthree\n").unwrap();

        assert_eq!(tail(&path, 2).unwrap().as_deref(), Some("two\nthree"));
        assert_eq!(tail(&path, 10).unwrap().as_deref(), Some("one\ntwo\nthree"));
        assert_eq!(tail(&path, 0).unwrap().as_deref(), Some(""));
    }

    #[tokio::test]
    async fn the_console_is_recorded_until_the_distro_stops_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        fs::write(&path, "the last start\n").unwrap();
        let console = Console::open().unwrap();
        // What the distro's PID 1 does with it: writes through its own
        // descriptor of the slave, then closes it.
        let writer = {
            use std::os::fd::FromRawFd;
            let fd = nix::unistd::dup(console.slave_fd()).unwrap();
            // SAFETY: a fresh descriptor from dup, owned by nobody else.
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        let (tx, rx) = watch::channel(false);
        console.record(path.clone(), rx);

        // (A writer blocks while the PTY is full: off the runtime.)
        tokio::task::spawn_blocking(move || {
            let line = "x".repeat(1023) + "\n";
            let mut file = fs::File::from(writer);
            file.write_all(b"Welcome to Debian\n").unwrap();
            for _ in 0..1100 {
                file.write_all(line.as_bytes()).unwrap();
            }
            file.write_all(b"reached the end\n").unwrap();
        })
        .await
        .unwrap();
        // Closed by the distro: still recorded (the agent holds the slave).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tail(&path, 1).unwrap().as_deref() != Some("reached the end") {
            assert!(std::time::Instant::now() < deadline, "not recorded");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tx.send(true).unwrap();

        assert!(fs::metadata(&path).unwrap().len() <= LOG_LIMIT);
        let older = fs::read_to_string(older(&path)).unwrap();
        assert!(
            older.starts_with("Welcome to Debian\n"),
            "the log started again past the cap"
        );
        assert!(!older.contains('\r'), "no carriage returns added");
    }
}
