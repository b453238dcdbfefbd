//! The host side of the network device: a connected Unix stream socket
//! carrying QEMU's `-netdev stream` framing, as passt serves it on its
//! `--socket` (passt listens; the VMM connects once at start).
//!
//! The socket sits in a private epoll instance whose fd is what the VMM's
//! event loop watches (level-triggered, readable when the socket is ready
//! for what the backend currently wants). What it wants changes with the
//! guest: `EPOLLIN` only while received frames can go somewhere (the
//! guest posted buffers, or nothing is waiting), `EPOLLOUT` only while
//! frames wait for the socket. So a guest without receive buffers, or a
//! slow peer, leaves the event loop idle instead of spinning.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{send, MsgFlags};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::framing::{FrameReader, FrameWriter};

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connecting to the socket failed.
    #[error(
        "cannot connect to the network socket {}; passt (`passt --socket PATH`) should be serving it",
        path.display()
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Making the socket non-blocking failed.
    #[error("cannot make the network socket non-blocking")]
    NonBlocking(#[source] io::Error),
    /// Creating or filling the epoll instance failed.
    #[error("cannot watch the network socket")]
    Epoll(#[source] io::Error),
}

/// What a receive step ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// New bytes arrived; there may be a whole frame now.
    Bytes,
    /// The socket has nothing more for now.
    WouldBlock,
    /// The backend is gone (end of stream, error, broken framing).
    Closed,
}

/// A connected frame stream to the network backend.
#[derive(Debug)]
pub struct StreamBackend {
    stream: Option<UnixStream>,
    epoll: Epoll,
    /// The socket's current registration; `None` while not registered.
    watching: Option<EventSet>,
    reader: FrameReader,
    writer: FrameWriter,
    /// The guest had no buffer for the frame at the front.
    rx_paused: bool,
    /// The peer closed its end (`EPOLLHUP`); data may still be buffered.
    hung_up: bool,
}

impl StreamBackend {
    /// Connects to the backend's socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, BackendError> {
        let stream = UnixStream::connect(path).map_err(|source| BackendError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Self::new(stream)
    }

    /// Uses an already connected stream.
    pub fn new(stream: UnixStream) -> Result<Self, BackendError> {
        stream
            .set_nonblocking(true)
            .map_err(BackendError::NonBlocking)?;
        let epoll = Epoll::new().map_err(BackendError::Epoll)?;
        let mut backend = Self {
            stream: Some(stream),
            epoll,
            watching: None,
            reader: FrameReader::new(),
            writer: FrameWriter::new(),
            rx_paused: false,
            hung_up: false,
        };
        backend.update_interest().map_err(BackendError::Epoll)?;
        Ok(backend)
    }

    /// Whether the backend is still connected.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// The events the socket is registered for (`None`: not watched).
    pub fn interest(&self) -> Option<EventSet> {
        self.watching
    }

    /// What the socket is ready for now, of what the backend watches
    /// (empty when nothing); a hang-up is remembered. Readiness is
    /// level-triggered: the receive and transmit work that follows is what
    /// clears it.
    pub fn take_readiness(&mut self) -> EventSet {
        let mut events = [EpollEvent::default(); 1];
        let ready = match self.epoll.wait(0, &mut events) {
            Ok(0) => EventSet::empty(),
            Ok(_) => events[0].event_set(),
            Err(e) => {
                tracing::debug!(error = %e, "net: epoll_wait failed");
                EventSet::empty()
            }
        };
        if ready.intersects(EventSet::HANG_UP | EventSet::ERROR) && !self.hung_up {
            self.hung_up = true;
            self.refresh_interest();
        }
        ready
    }

    // Receiving.

    /// The whole frame at the front of what was received, if any.
    pub fn next_frame(&self) -> Option<&[u8]> {
        self.reader.next_frame().ok().flatten()
    }

    /// Drops the frame [`StreamBackend::next_frame`] returned.
    pub fn consume_frame(&mut self) {
        self.reader.consume_frame();
    }

    /// Reads once from the socket. A broken length prefix or an end of
    /// stream inside a frame ends the connection.
    pub fn receive(&mut self) -> Received {
        let Some(stream) = self.stream.as_mut() else {
            return Received::Closed;
        };
        let result = self.reader.read_from(stream);
        match result {
            Ok(0) => {
                let reason = if self.reader.buffered() > 0 {
                    "the backend closed the connection inside a frame"
                } else {
                    "the backend closed the connection"
                };
                self.disconnect(reason);
                Received::Closed
            }
            Ok(_) => match self.reader.next_frame() {
                Ok(_) => Received::Bytes,
                Err(e) => {
                    self.disconnect(&format!("protocol error: {e}"));
                    Received::Closed
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Received::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Received::Bytes,
            Err(e) => {
                self.disconnect(&format!("cannot read from the backend: {e}"));
                Received::Closed
            }
        }
    }

    /// Stops (`true`) or resumes (`false`) watching the socket for input:
    /// the guest has no buffer for the next frame, or has one again.
    pub fn pause_rx(&mut self, paused: bool) {
        if self.rx_paused != paused {
            self.rx_paused = paused;
            self.refresh_interest();
        }
    }

    // Transmitting.

    /// Whether a frame of the largest size can be queued now.
    pub fn has_room(&self) -> bool {
        self.writer.has_room()
    }

    /// Queues a `len`-byte frame written by `fill` and sends what the
    /// socket takes. The caller checks [`StreamBackend::has_room`] first.
    pub fn send_frame(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.writer.push_frame(len, fill)?;
        self.flush();
        Ok(())
    }

    /// Sends queued frames as far as the socket takes them.
    pub fn flush(&mut self) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        let mut sink = NoSigPipe(stream);
        if let Err(e) = self.writer.write_to(&mut sink) {
            self.disconnect(&format!("cannot write to the backend: {e}"));
            return;
        }
        self.refresh_interest();
    }

    /// Bytes queued for the socket.
    pub fn pending_tx(&self) -> usize {
        self.writer.pending()
    }

    /// Ends the connection (logged once, with `reason`).
    pub fn disconnect(&mut self, reason: &str) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        tracing::warn!(
            reason,
            "net: the network backend is gone; the guest's link is down"
        );
        if self.watching.take().is_some() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn refresh_interest(&mut self) {
        if let Err(e) = self.update_interest() {
            self.disconnect(&format!("cannot watch the network socket: {e}"));
        }
    }

    /// Registers the socket for what the backend wants now. After a
    /// hang-up the socket stays out of epoll unless input is wanted: a
    /// hung-up socket is always "ready", and with input paused nothing
    /// would consume that.
    fn update_interest(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(());
        };
        let mut wanted = EventSet::empty();
        if !self.rx_paused {
            wanted |= EventSet::IN;
        }
        if self.writer.pending() > 0 {
            wanted |= EventSet::OUT;
        }
        let wanted = (!self.hung_up || wanted.contains(EventSet::IN)).then_some(wanted);
        if wanted == self.watching {
            return Ok(());
        }
        let fd = stream.as_raw_fd();
        let op = match (self.watching, wanted) {
            (None, Some(_)) => ControlOperation::Add,
            (Some(_), Some(_)) => ControlOperation::Modify,
            (Some(_), None) => ControlOperation::Delete,
            (None, None) => return Ok(()),
        };
        let events = wanted.unwrap_or(EventSet::empty());
        self.epoll.ctl(op, fd, EpollEvent::new(events, fd as u64))?;
        self.watching = wanted;
        Ok(())
    }
}

impl AsRawFd for StreamBackend {
    /// The epoll fd: readable when the socket is ready for what the
    /// backend wants. It lives as long as the backend, socket or not.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

/// Writes with `MSG_NOSIGNAL`: a peer that went away is an error to handle,
/// not a `SIGPIPE` for the whole VMM.
struct NoSigPipe<'a>(&'a UnixStream);

impl Write for NoSigPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0.as_fd().as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
