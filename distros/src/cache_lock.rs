//! One writer per cache entry: two `distroctl install` runs for the same
//! release must not write the same partial file. An advisory `flock` on
//! `<entry>.lock` serialises them; the second waits, then finds the entry
//! cached.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Holds the lock until dropped.
pub(crate) struct CacheLock {
    _lock: Flock<File>,
}

impl CacheLock {
    /// Takes the exclusive lock on `path`, waiting (and saying so in the
    /// log) while another process holds it.
    pub(crate) fn acquire(path: &Path) -> io::Result<CacheLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(CacheLock { _lock: lock }),
            Err((file, Errno::EWOULDBLOCK)) => file,
            Err((_, errno)) => return Err(errno.into()),
        };
        tracing::info!(lock = %path.display(), "waiting for another distroctl process to finish with this cache entry");
        Flock::lock(file, FlockArg::LockExclusive)
            .map(|lock| CacheLock { _lock: lock })
            .map_err(|(_, errno)| errno.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn second_holder_waits_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry.lock");
        let first = CacheLock::acquire(&path).unwrap();
        let (sender, receiver) = mpsc::channel();

        let waiter_path = path.clone();
        let waiter = std::thread::spawn(move || {
            let _second = CacheLock::acquire(&waiter_path).unwrap();
            sender.send(()).unwrap();
        });

        assert!(receiver.recv_timeout(Duration::from_millis(200)).is_err());
        drop(first);
        assert!(receiver.recv_timeout(Duration::from_secs(5)).is_ok());
        waiter.join().unwrap();
    }
}
