//! The PTY of an exec: master side owned by the agent, slave side given to
//! the process as its controlling terminal.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The agent's end of a PTY, usable from several tasks at once.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a PTY of the given size; returns the master and the slave.
pub fn open(rows: u16, cols: u16) -> io::Result<(PtyMaster, OwnedFd)> {
    let size = winsize(rows, cols);
    let pty = openpty(Some(&size), None)?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    let flags = OFlag::from_bits_truncate(fcntl(pty.master.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        pty.master.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;
    // SAFETY: `pty.master` is an open descriptor that the AsyncFd owns from
    // here on; an OwnedFd always reports the same descriptor.
    let fd = unsafe {
        AsyncFd::register_with_interest(pty.master, Interest::READABLE | Interest::WRITABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    Ok((PtyMaster { fd }, pty.slave))
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

impl PtyMaster {
    /// Reads output into `buf`; reading nothing means every slave
    /// descriptor is closed (the kernel reports that as `EIO`).
    pub fn poll_read(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.as_raw_fd(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` (keyboard input for the process).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref().as_fd(), data)?)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size; the kernel sends SIGWINCH to the foreground job.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one `Winsize` from the pointer, which
        // points at a live local; the descriptor is an open PTY master.
        unsafe { set_winsize(self.fd.as_raw_fd(), &size) }?;
        Ok(())
    }

    /// Process group in the foreground of the terminal (host PID).
    pub fn foreground_group(&self) -> Option<i32> {
        nix::unistd::tcgetpgrp(self.fd.get_ref().as_fd())
            .ok()
            .map(|p| p.as_raw())
    }

    /// The terminal's end-of-file character (normally Ctrl-D).
    pub fn eof_char(&self) -> u8 {
        nix::sys::termios::tcgetattr(self.fd.get_ref().as_fd())
            .map(|t| t.control_chars[libc::VEOF])
            .unwrap_or(4)
    }
}
