//! The hybrid-vsock host side: vsock connections as Unix sockets.
//!
//! The host has no `vhost-vsock`, so host programs reach the guest through a
//! Unix socket at a path `P` chosen by whoever starts the device:
//!
//! - Host to guest: connect to `P`, write `CONNECT <port>\n`; when the guest
//!   accepts, read `OK <local port>\n` followed by the byte stream. When the
//!   guest refuses, the socket is closed.
//! - Guest to host: a guest connection to host port `N` is forwarded to a
//!   process listening on the Unix socket `P_N`; without one it is refused.
//!
//! This is the convention Firecracker and Cloud Hypervisor use, so clients
//! written for them work unchanged.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::timerfd::TimerFd;

use super::defs::VSOCK_PORT_ANY;

/// Longest handshake line accepted, newline included. `CONNECT 4294967295\n`
/// is 19 bytes; the slack allows a `\r`, nothing that needs more memory.
pub const MAX_HANDSHAKE_LINE: usize = 32;

const CONNECT_PREFIX: &[u8] = b"CONNECT ";

/// Why the hybrid-vsock listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    /// Something that is not a socket already sits at the path.
    #[error("{0} exists and is not a socket")]
    PathInUse(PathBuf),
    /// Removing a stale socket file failed.
    #[error("cannot remove the stale socket {0}")]
    RemoveStale(PathBuf, #[source] io::Error),
    /// Binding the listening socket failed.
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
    /// Making the listening socket non-blocking failed.
    #[error("cannot make the listening socket non-blocking")]
    Nonblocking(#[source] io::Error),
}

/// Why a host client's `CONNECT` handshake was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes do not start with `CONNECT `.
    #[error("the handshake does not start with `CONNECT `")]
    Garbage,
    /// No newline within [`MAX_HANDSHAKE_LINE`] bytes.
    #[error("the handshake line is longer than {MAX_HANDSHAKE_LINE} bytes")]
    Overlong,
    /// The port is missing, not a decimal number, too large or the wildcard.
    #[error("the handshake names no valid port")]
    InvalidPort,
    /// The client closed the socket before finishing the line.
    #[error("the client hung up before finishing the handshake")]
    Truncated,
    /// Reading from the client failed.
    #[error("reading the handshake failed: {0}")]
    Io(io::ErrorKind),
}

/// Outcome of feeding bytes to a [`ConnectLineParser`].
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeProgress {
    /// The line is not complete yet.
    NeedMore,
    /// A valid `CONNECT <port>` line.
    Connect {
        /// Guest port to connect to.
        port: u32,
        /// Bytes the client sent after the newline: the start of its stream.
        rest: Vec<u8>,
    },
}

/// Incremental parser for the `CONNECT <port>\n` line.
///
/// Reads arrive in arbitrary pieces, so the parser keeps what it has seen and
/// decides as early as it can: a wrong prefix fails on its first bad byte
/// rather than waiting for a newline that may never come.
#[derive(Debug, Default)]
pub struct ConnectLineParser {
    buf: Vec<u8>,
}

impl ConnectLineParser {
    /// Creates a parser that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the client and reports whether the line is done.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<HandshakeProgress, HandshakeError> {
        self.buf.extend_from_slice(bytes);
        let Some(newline) = self.buf.iter().position(|&b| b == b'\n') else {
            let seen = self.buf.len().min(CONNECT_PREFIX.len());
            if self.buf[..seen] != CONNECT_PREFIX[..seen] {
                return Err(HandshakeError::Garbage);
            }
            if self.buf.len() >= MAX_HANDSHAKE_LINE {
                return Err(HandshakeError::Overlong);
            }
            return Ok(HandshakeProgress::NeedMore);
        };
        if newline + 1 > MAX_HANDSHAKE_LINE {
            return Err(HandshakeError::Overlong);
        }
        let port = parse_connect_line(&self.buf[..newline])?;
        let rest = self.buf.split_off(newline + 1);
        self.buf.clear();
        Ok(HandshakeProgress::Connect { port, rest })
    }
}

/// Parses `CONNECT <port>` (newline already stripped, one `\r` tolerated).
fn parse_connect_line(line: &[u8]) -> Result<u32, HandshakeError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .strip_prefix(CONNECT_PREFIX)
        .ok_or(HandshakeError::Garbage)?;
    // `u32::from_str` would also take a leading `+`; the protocol has none.
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::InvalidPort);
    }
    let port = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or(HandshakeError::InvalidPort)?;
    if port == VSOCK_PORT_ANY {
        return Err(HandshakeError::InvalidPort);
    }
    Ok(port)
}

/// The line a host client reads once the guest accepted its connection.
pub fn ok_reply(local_port: u32) -> Vec<u8> {
    format!("OK {local_port}\n").into_bytes()
}

/// A host client that connected to `P` and has not finished its handshake.
#[derive(Debug)]
pub struct PendingClient {
    stream: UnixStream,
    parser: ConnectLineParser,
    since: Instant,
}

impl PendingClient {
    /// Wraps a freshly accepted, non-blocking client socket.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            parser: ConnectLineParser::new(),
            since: Instant::now(),
        }
    }

    /// Reads whatever the client has sent and parses it. Stops at the first
    /// complete line, so it never reads much past the handshake.
    pub fn read_handshake(&mut self) -> Result<HandshakeProgress, HandshakeError> {
        let mut chunk = [0u8; MAX_HANDSHAKE_LINE];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(HandshakeError::Truncated),
                Ok(n) => match self.parser.feed(&chunk[..n])? {
                    HandshakeProgress::NeedMore => continue,
                    done => return Ok(done),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(HandshakeProgress::NeedMore)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HandshakeError::Io(e.kind())),
            }
        }
    }

    /// Gives back the socket once the handshake is done.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }
}

impl AsRawFd for PendingClient {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// How long a host client may take to send its `CONNECT` line. Real
/// clients send it right after connecting; one that sends nothing only
/// holds a slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Host clients still in the handshake, at most `capacity`, each for at
/// most `timeout`. When full, a newcomer pushes out the client that has
/// waited longest, so idle connections can never lock real clients out;
/// a timer (armed only while clients wait) drops clients that stay silent.
#[derive(Debug)]
pub struct HandshakeTable {
    clients: HashMap<RawFd, PendingClient>,
    capacity: usize,
    timeout: Duration,
    timer: TimerFd,
    armed: bool,
}

impl HandshakeTable {
    /// An empty table; its timer fd ([`HandshakeTable::timer_fd`]) is
    /// readable when [`HandshakeTable::expire`] has work.
    pub fn new(capacity: usize, timeout: Duration) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        // Non-blocking, so a stale readiness never blocks the event loop.
        let fd = timer.as_raw_fd();
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Self {
            clients: HashMap::new(),
            capacity: capacity.max(1),
            timeout,
            timer,
            armed: false,
        })
    }

    /// The timer's fd, to watch for `EPOLLIN`.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Clients waiting now.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// True when `fd` is a waiting client.
    pub fn contains(&self, fd: RawFd) -> bool {
        self.clients.contains_key(&fd)
    }

    /// The waiting client on `fd`.
    pub fn get_mut(&mut self, fd: RawFd) -> Option<&mut PendingClient> {
        self.clients.get_mut(&fd)
    }

    /// Takes the client on `fd` out of the table.
    pub fn remove(&mut self, fd: RawFd) -> Option<PendingClient> {
        let client = self.clients.remove(&fd);
        self.disarm_if_idle();
        client
    }

    /// Adds a client; when the table is full, first takes out (and returns)
    /// the one that has waited longest.
    pub fn insert(&mut self, client: PendingClient) -> Option<PendingClient> {
        let evicted = if self.clients.len() >= self.capacity {
            let oldest = self
                .clients
                .iter()
                .min_by_key(|(_, c)| c.since)
                .map(|(&fd, _)| fd);
            oldest.and_then(|fd| self.clients.remove(&fd))
        } else {
            None
        };
        self.clients.insert(client.as_raw_fd(), client);
        if !self.armed {
            // A periodic tick while anyone waits: a client is dropped
            // between `timeout` and `timeout + tick` after it connected.
            let tick = (self.timeout / 4).max(Duration::from_millis(10));
            if let Err(e) = self.timer.reset(tick, Some(tick)) {
                tracing::warn!(error = %e, "vsock: cannot arm the handshake timer");
            } else {
                self.armed = true;
            }
        }
        evicted
    }

    /// Takes out every client that has waited `timeout` or longer; call
    /// when the timer fd is readable.
    pub fn expire(&mut self) -> Vec<PendingClient> {
        // The expiry count itself does not matter; reading clears it.
        let _ = self.timer.wait();
        let timeout = self.timeout;
        let late: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| c.since.elapsed() >= timeout)
            .map(|(&fd, _)| fd)
            .collect();
        let expired = late
            .into_iter()
            .filter_map(|fd| self.clients.remove(&fd))
            .collect();
        self.disarm_if_idle();
        expired
    }

    fn disarm_if_idle(&mut self) {
        if self.armed && self.clients.is_empty() {
            let _ = self.timer.clear();
            self.armed = false;
        }
    }
}

/// The host end of hybrid vsock: the listening socket `P` and the way to
/// reach host services at `P_N`.
#[derive(Debug)]
pub struct HybridHost {
    path: PathBuf,
    listener: UnixListener,
}

impl HybridHost {
    /// Listens on `path`. A stale socket left by an earlier run is replaced;
    /// any other file there is an error rather than something to delete.
    pub fn bind(path: &Path) -> Result<Self, HybridError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
                .map_err(|e| HybridError::RemoveStale(path.to_path_buf(), e))?,
            Ok(_) => return Err(HybridError::PathInUse(path.to_path_buf())),
            Err(_) => {}
        }
        let listener =
            UnixListener::bind(path).map_err(|e| HybridError::Bind(path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(HybridError::Nonblocking)?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// The listening socket's path `P`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one waiting client as a non-blocking socket, or `None` when no
    /// client is waiting.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                // A client that gave up while queued is not our failure.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The Unix socket path that serves host port `port`: `P_<port>`.
    pub fn service_path(&self, port: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!("_{port}"));
        PathBuf::from(name)
    }

    /// Connects to the host service for `port` and returns a non-blocking
    /// socket; fails when nothing listens there.
    ///
    /// The connect is non-blocking too: a Unix-socket connect completes at
    /// once, or fails with `WouldBlock` when the service's backlog is full.
    /// A blocking connect would let a guest stall the whole device by
    /// flooding a service that accepts slowly; this way the guest gets RST.
    pub fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(&self.service_path(port))?;
        connect(fd.as_raw_fd(), &addr)?;
        Ok(UnixStream::from(fd))
    }
}

impl AsRawFd for HybridHost {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for HybridHost {
    fn drop(&mut self) {
        // Leaving the socket file would make the next start think the path is
        // taken only to replace it; removing it tells clients the VM is gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn connect(port: u32, rest: &[u8]) -> HandshakeProgress {
        HandshakeProgress::Connect {
            port,
            rest: rest.to_vec(),
        }
    }

    #[test]
    fn complete_line_yields_port() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"CONNECT 1024\n");

        assert_eq!(progress, Ok(connect(1024, b"")));
    }

    #[test]
    fn line_split_across_reads_is_reassembled() {
        let mut parser = ConnectLineParser::new();

        let first = parser.feed(b"CONN");
        let second = parser.feed(b"ECT 10");
        let third = parser.feed(b"24\n");

        assert_eq!(first, Ok(HandshakeProgress::NeedMore));
        assert_eq!(second, Ok(HandshakeProgress::NeedMore));
        assert_eq!(third, Ok(connect(1024, b"")));
    }

    #[test]
    fn bytes_after_newline_are_kept_for_the_stream() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"CONNECT 52\nhello\nworld");

        assert_eq!(progress, Ok(connect(52, b"hello\nworld")));
    }

    #[test]
    fn carriage_return_before_newline_is_tolerated() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"CONNECT 7\r\n");

        assert_eq!(progress, Ok(connect(7, b"")));
    }

    #[test]
    fn garbage_is_refused_before_any_newline() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"GET / HTTP/1.1");

        assert_eq!(progress, Err(HandshakeError::Garbage));
    }

    #[test]
    fn lowercase_command_is_garbage() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"connect 1024\n");

        assert_eq!(progress, Err(HandshakeError::Garbage));
    }

    #[test]
    fn binary_garbage_is_refused() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(&[0xff, 0x00, b'\n']);

        assert_eq!(progress, Err(HandshakeError::Garbage));
    }

    #[test]
    fn overlong_line_without_newline_is_refused() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(format!("CONNECT {}", "1".repeat(40)).as_bytes());

        assert_eq!(progress, Err(HandshakeError::Overlong));
    }

    #[test]
    fn overlong_line_with_newline_is_refused() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(format!("CONNECT {}\n", "0".repeat(40)).as_bytes());

        assert_eq!(progress, Err(HandshakeError::Overlong));
    }

    #[test]
    fn missing_newline_waits_for_more() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"CONNECT 1024");

        assert_eq!(progress, Ok(HandshakeProgress::NeedMore));
    }

    #[test]
    fn missing_port_is_invalid() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"CONNECT \n");

        assert_eq!(progress, Err(HandshakeError::InvalidPort));
    }

    #[test]
    fn non_decimal_port_is_invalid() {
        for line in [
            &b"CONNECT abc\n"[..],
            b"CONNECT +12\n",
            b"CONNECT -1\n",
            b"CONNECT 12 \n",
            b"CONNECT 0x10\n",
        ] {
            let mut parser = ConnectLineParser::new();

            let progress = parser.feed(line);

            assert_eq!(progress, Err(HandshakeError::InvalidPort), "{line:?}");
        }
    }

    #[test]
    fn port_beyond_u32_is_invalid() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"CONNECT 4294967296\n");

        assert_eq!(progress, Err(HandshakeError::InvalidPort));
    }

    #[test]
    fn wildcard_port_is_invalid() {
        let mut parser = ConnectLineParser::new();

        let progress = parser.feed(b"CONNECT 4294967295\n");

        assert_eq!(progress, Err(HandshakeError::InvalidPort));
    }

    #[test]
    fn ok_reply_names_the_local_port() {
        let reply = ok_reply(1073741824);

        assert_eq!(reply, b"OK 1073741824\n");
    }

    #[test]
    fn pending_client_reads_partial_then_complete_line() {
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut pending = PendingClient::new(server);
        client.write_all(b"CONNECT 10").unwrap();

        let partial = pending.read_handshake();
        client.write_all(b"24\nxyz").unwrap();
        let complete = pending.read_handshake();

        assert_eq!(partial, Ok(HandshakeProgress::NeedMore));
        assert_eq!(complete, Ok(connect(1024, b"xyz")));
    }

    #[test]
    fn pending_client_that_hangs_up_mid_line_is_truncated() {
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut pending = PendingClient::new(server);
        client.write_all(b"CONNECT 1024").unwrap();
        drop(client);

        let result = pending.read_handshake();

        assert_eq!(result, Err(HandshakeError::Truncated));
    }

    #[test]
    fn bind_replaces_stale_socket_but_not_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vsock");
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        drop(UnixListener::bind(&sock).unwrap());

        let on_stale = HybridHost::bind(&sock);
        let on_file = HybridHost::bind(&file);

        assert!(on_stale.is_ok());
        assert!(matches!(on_file, Err(HybridError::PathInUse(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn connect_reaches_service_socket_for_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let host = HybridHost::bind(&dir.path().join("vsock")).unwrap();
        let service = UnixListener::bind(dir.path().join("vsock_5000")).unwrap();

        let connected = host.connect(5000);
        let missing = host.connect(5001);

        assert!(connected.is_ok());
        assert!(service.accept().is_ok());
        assert!(missing.is_err());
    }

    #[test]
    fn connect_to_a_service_with_a_full_backlog_fails_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let host = HybridHost::bind(&dir.path().join("vsock")).unwrap();
        let _service = UnixListener::bind(dir.path().join("vsock_7")).unwrap();

        // The backlog is bounded (somaxconn); nobody accepts.
        let refused = (0..10_000).find_map(|_| host.connect(7).err());

        assert_eq!(refused.map(|e| e.kind()), Some(io::ErrorKind::WouldBlock));
    }

    #[test]
    fn dropping_the_host_removes_its_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock");
        let host = HybridHost::bind(&path).unwrap();

        drop(host);

        assert!(!path.exists());
    }

    fn idle_client() -> (UnixStream, PendingClient) {
        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, PendingClient::new(server))
    }

    #[test]
    fn full_handshake_table_pushes_out_the_longest_waiting_client() {
        let mut table = HandshakeTable::new(2, HANDSHAKE_TIMEOUT).unwrap();
        let (_a, first) = idle_client();
        let first_fd = first.as_raw_fd();
        let (_b, second) = idle_client();
        let (_c, newcomer) = idle_client();
        let newcomer_fd = newcomer.as_raw_fd();

        assert!(table.insert(first).is_none());
        std::thread::sleep(Duration::from_millis(2));
        assert!(table.insert(second).is_none());
        let evicted = table.insert(newcomer);

        assert_eq!(evicted.map(|c| c.as_raw_fd()), Some(first_fd));
        assert_eq!(table.len(), 2);
        assert!(table.contains(newcomer_fd));
    }

    #[test]
    fn silent_clients_expire_after_the_timeout_and_the_timer_fires() {
        let timeout = Duration::from_millis(50);
        let mut table = HandshakeTable::new(8, timeout).unwrap();
        let (_a, silent) = idle_client();
        table.insert(silent);
        let mut fds = [nix::poll::PollFd::new(
            // SAFETY: the timer fd stays open for the whole test.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(table.timer_fd()) },
            nix::poll::PollFlags::POLLIN,
        )];

        let early = table.expire();
        std::thread::sleep(timeout);
        let fired = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap();
        let late = table.expire();

        assert!(early.is_empty());
        assert_eq!(fired, 1);
        assert_eq!(late.len(), 1);
        assert!(table.is_empty());
    }
}
