//! The connection table between the guest and the hybrid-vsock host side.
//!
//! The muxer takes the guest's packets ([`VsockMuxer::handle_guest_packet`]),
//! hands out packets for the guest ([`VsockMuxer::next_rx_packet`]) and
//! reacts to host socket readiness ([`VsockMuxer::process_events`]). It owns
//! an epoll instance holding every host socket it needs to hear about, and
//! its fd ([`AsRawFd`]) is readable exactly when `process_events` has work:
//! whatever event loop runs the device (vhost-user's, an `event-manager`, a
//! test) polls that one fd for `EPOLLIN`, and never needs to know how many
//! sockets are behind it.
//!
//! Nothing here busy-polls: a socket whose data waits for guest buffers or
//! credit is taken out of the read interest until the guest makes room.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnKey, ConnState, Connection};
use super::defs::{OP_REQUEST, OP_RST, VSOCK_HOST_CID};
use super::hybrid::{
    HandshakeProgress, HandshakeTable, HybridError, HybridHost, PendingClient, HANDSHAKE_TIMEOUT,
};
use super::packet::{Packet, PacketError, VsockHeader};

/// Most connections open at once; more are refused with RST (guest) or by
/// closing the socket (host), so neither side can exhaust our fds.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that may sit in the handshake at once.
pub const MAX_PENDING_CLIENTS: usize = 64;
/// Most RSTs for unknown connections that may wait for receive buffers. The
/// device stops taking transmit packets while this many are waiting, which
/// stops a guest that sends but never receives from growing the queue.
pub const MAX_PENDING_RESETS: usize = 256;
/// First host-side port given to host-initiated connections. High enough to
/// stay clear of the well-known ports host services listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const EVENTS_PER_WAIT: usize = 32;

/// Why the muxer could not be set up or could not read its events.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Creating the handshake timer failed.
    #[error("cannot create the handshake timer")]
    Timer(#[source] io::Error),
    /// Creating the epoll instance failed.
    #[error("cannot create the muxer's epoll instance")]
    CreateEpoll(#[source] io::Error),
    /// Binding the hybrid-vsock socket failed.
    #[error("cannot set up the hybrid-vsock host socket")]
    Host(#[source] HybridError),
    /// Adding the listening socket to epoll failed.
    #[error("cannot watch the hybrid-vsock listening socket")]
    WatchListener(#[source] io::Error),
    /// `epoll_wait` failed.
    #[error("cannot read host socket events")]
    Wait(#[source] io::Error),
}

/// The vsock connection table, bridging guest streams to host Unix sockets.
#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    buf_alloc: u32,
    host: HybridHost,
    epoll: Epoll,
    conns: HashMap<ConnKey, Connection>,
    /// Current epoll registration of each connection's socket.
    conn_watch: HashMap<ConnKey, (RawFd, EventSet)>,
    /// Which connection a registered socket belongs to.
    fd_owner: HashMap<RawFd, ConnKey>,
    /// Host clients still sending their `CONNECT` line.
    clients: HandshakeTable,
    /// Connections with something for the guest, oldest first.
    rx_ready: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    /// RSTs answering packets for connections we do not have.
    rx_resets: VecDeque<VsockHeader>,
    next_local_port: u32,
    /// The listening socket is out of epoll after an accept failure.
    listener_paused: bool,
}

impl VsockMuxer {
    /// Creates a muxer for the guest `guest_cid`, listening for host clients
    /// at `uds_path` and advertising `buf_alloc` bytes of receive buffer per
    /// connection.
    pub fn new(guest_cid: u64, uds_path: &Path, buf_alloc: u32) -> Result<Self, MuxerError> {
        let epoll = Epoll::new().map_err(MuxerError::CreateEpoll)?;
        let host = HybridHost::bind(uds_path).map_err(MuxerError::Host)?;
        let listener = host.as_raw_fd();
        epoll
            .ctl(
                ControlOperation::Add,
                listener,
                EpollEvent::new(EventSet::IN, listener as u64),
            )
            .map_err(MuxerError::WatchListener)?;
        let clients = HandshakeTable::new(MAX_PENDING_CLIENTS, HANDSHAKE_TIMEOUT)
            .map_err(MuxerError::Timer)?;
        let timer = clients.timer_fd();
        epoll
            .ctl(
                ControlOperation::Add,
                timer,
                EpollEvent::new(EventSet::IN, timer as u64),
            )
            .map_err(MuxerError::Timer)?;
        Ok(Self {
            guest_cid,
            buf_alloc,
            host,
            epoll,
            conns: HashMap::new(),
            conn_watch: HashMap::new(),
            fd_owner: HashMap::new(),
            clients,
            rx_ready: VecDeque::new(),
            rx_queued: HashSet::new(),
            rx_resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            listener_paused: false,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The hybrid-vsock socket path host clients connect to.
    pub fn host_path(&self) -> &Path {
        self.host.path()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// State of the connection `key`, if it exists.
    pub fn connection_state(&self, key: ConnKey) -> Option<ConnState> {
        self.conns.get(&key).map(Connection::state)
    }

    /// Packets are waiting for guest receive buffers.
    pub fn has_pending_rx(&self) -> bool {
        !self.rx_resets.is_empty() || !self.rx_ready.is_empty()
    }

    /// Enough replies are queued that taking more guest packets would only
    /// queue more: the device should leave the transmit queue alone until
    /// the guest drains the receive queue.
    pub fn rx_backlog_full(&self) -> bool {
        self.rx_resets.len() >= MAX_PENDING_RESETS
    }

    /// Handles whatever the host sockets have to report. Never blocks.
    pub fn process_events(&mut self) -> Result<(), MuxerError> {
        let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
        loop {
            let count = match self.epoll.wait(0, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MuxerError::Wait(e)),
            };
            for event in &events[..count] {
                self.dispatch(event.fd(), event.event_set());
            }
            if count < events.len() {
                return Ok(());
            }
        }
    }

    fn dispatch(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.host.as_raw_fd() {
            self.accept_clients();
        } else if fd == self.clients.timer_fd() {
            for client in self.clients.expire() {
                tracing::debug!("vsock: a host client sent no CONNECT line in time, closing it");
                self.forget_client(client);
            }
        } else if self.clients.contains(fd) {
            self.advance_client(fd);
        } else if let Some(&key) = self.fd_owner.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_host_ready(events);
            }
            self.sync(key);
        }
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.host.accept() {
                Ok(Some(stream)) => stream,
                Ok(None) => return,
                Err(e) => {
                    // Typically EMFILE. The client stays queued and the
                    // listener readable, so stop watching it until a socket
                    // of ours closes, or this would spin.
                    tracing::warn!(error = %e, "vsock: accepting a host client failed");
                    self.pause_listener();
                    return;
                }
            };
            let fd = stream.as_raw_fd();
            if let Err(e) = ctl(&self.epoll, ControlOperation::Add, fd, EventSet::IN) {
                tracing::warn!(error = %e, "vsock: cannot watch a host client");
                continue;
            }
            if let Some(oldest) = self.clients.insert(PendingClient::new(stream)) {
                tracing::debug!("vsock: too many host clients in handshake, closing the oldest");
                self.forget_client(oldest);
            }
            // The line often arrives with the connect; no need to wait a round.
            self.advance_client(fd);
        }
    }

    /// Closes a client taken out of the handshake table, fd out of epoll
    /// first (its number may be reused by the next accept).
    fn forget_client(&mut self, client: PendingClient) {
        let _ = ctl(
            &self.epoll,
            ControlOperation::Delete,
            client.as_raw_fd(),
            EventSet::empty(),
        );
        drop(client);
        self.resume_listener();
    }

    fn pause_listener(&mut self) {
        if !self.listener_paused {
            let _ = ctl(
                &self.epoll,
                ControlOperation::Delete,
                self.host.as_raw_fd(),
                EventSet::empty(),
            );
            self.listener_paused = true;
        }
    }

    /// Called whenever a socket of ours closed: there may be room again.
    fn resume_listener(&mut self) {
        if self.listener_paused {
            let fd = self.host.as_raw_fd();
            let watched = ctl(&self.epoll, ControlOperation::Add, fd, EventSet::IN);
            self.listener_paused = watched.is_err();
        }
    }

    fn advance_client(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        let outcome = client.read_handshake();
        if matches!(outcome, Ok(HandshakeProgress::NeedMore)) {
            return;
        }
        let _ = ctl(&self.epoll, ControlOperation::Delete, fd, EventSet::empty());
        let Some(client) = self.clients.remove(fd) else {
            return;
        };
        self.resume_listener();
        match outcome {
            Ok(HandshakeProgress::Connect { port, rest }) => {
                self.connect_to_guest(client.into_stream(), port, rest)
            }
            Ok(HandshakeProgress::NeedMore) => {}
            // Dropping the client closes it: that is the refusal.
            Err(e) => tracing::debug!(error = %e, "vsock: refused a host client"),
        }
    }

    fn connect_to_guest(&mut self, stream: UnixStream, port: u32, prefix: Vec<u8>) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: connection table full, refusing a host client");
            return;
        }
        let Some(local_port) = self.allocate_local_port(port) else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let conn = Connection::connecting(key, self.guest_cid, self.buf_alloc, stream, prefix);
        self.conns.insert(key, conn);
        self.sync(key);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS keys are taken, so this many tries find one.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = if port >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Handles one packet the guest put on the transmit queue.
    pub fn handle_guest_packet(&mut self, packet: Packet) {
        let header = packet.header;
        if let Err(e) = header.check_from_guest(self.guest_cid) {
            tracing::debug!(error = %e, "vsock: bad packet from the guest");
            let misaddressed = matches!(
                e,
                PacketError::ForeignSource(_) | PacketError::ForeignDestination(_)
            );
            // A reply to a spoofed or misrouted packet would go nowhere useful.
            if !misaddressed {
                self.queue_reset(&header);
            }
            return;
        }
        let key = ConnKey {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            if header.op == OP_REQUEST && conn.state() == ConnState::Closing {
                // The guest reused the ports, so it has forgotten the old
                // connection without the RST we were waiting for.
                self.remove(key);
            } else {
                conn.on_guest_packet(packet);
                self.sync(key);
                return;
            }
        }
        match header.op {
            OP_REQUEST => self.accept_guest_connection(key, &header),
            // Never answer a reset: two sides that both think the other is
            // confused would otherwise ping-pong forever.
            OP_RST => {}
            _ => self.queue_reset(&header),
        }
    }

    fn accept_guest_connection(&mut self, key: ConnKey, request: &VsockHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: connection table full, refusing a guest connection");
            self.queue_reset(request);
            return;
        }
        match self.host.connect(key.local_port) {
            Ok(stream) => {
                let conn =
                    Connection::accepted(key, self.guest_cid, self.buf_alloc, stream, request);
                self.conns.insert(key, conn);
                self.sync(key);
            }
            Err(e) => {
                tracing::debug!(port = key.local_port, error = %e, "vsock: no host service");
                self.queue_reset(request);
            }
        }
    }

    /// Queues an RST answering `to`, unless the backlog is full: the guest
    /// learns about a dropped RST the next time it uses the connection.
    fn queue_reset(&mut self, to: &VsockHeader) {
        if to.op == OP_RST || self.rx_resets.len() >= MAX_PENDING_RESETS {
            return;
        }
        self.rx_resets.push_back(VsockHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: to.type_,
            op: OP_RST,
            ..VsockHeader::default()
        });
    }

    /// Takes the next packet for the guest, given a receive buffer with room
    /// for `capacity` payload bytes. `None` when nothing can go right now.
    pub fn next_rx_packet(&mut self, capacity: usize) -> Option<Packet> {
        if let Some(header) = self.rx_resets.pop_front() {
            return Some(Packet {
                header,
                data: Vec::new(),
            });
        }
        // One pass over the queue: a connection that cannot use this buffer
        // (no payload room) is requeued and must not be retried forever.
        for _ in 0..self.rx_ready.len() {
            let Some(key) = self.rx_ready.pop_front() else {
                break;
            };
            self.rx_queued.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let packet = conn.next_rx_packet(capacity);
            self.sync(key);
            if packet.is_some() {
                return packet;
            }
        }
        None
    }

    /// Drops every connection without telling anyone, as after a transport
    /// reset: the guest forgets its side on the reset event, host clients see
    /// their sockets close. Clients still in the handshake are kept.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rx_ready.clear();
        self.rx_queued.clear();
        self.rx_resets.clear();
    }

    /// Brings a connection's epoll registration, socket and place in the
    /// receive queue in line with its state after anything touched it.
    fn sync(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let want = conn.interest();
        match (self.conn_watch.get(&key).copied(), want) {
            (None, Some(events)) => {
                if let Some(fd) = conn.fd() {
                    match ctl(&self.epoll, ControlOperation::Add, fd, events) {
                        Ok(()) => {
                            self.conn_watch.insert(key, (fd, events));
                            self.fd_owner.insert(fd, key);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "vsock: cannot watch a host socket");
                            conn.abort();
                        }
                    }
                }
            }
            (Some((fd, old)), Some(events)) if old != events => {
                if let Err(e) = ctl(&self.epoll, ControlOperation::Modify, fd, events) {
                    tracing::warn!(error = %e, "vsock: cannot update a host socket watch");
                    conn.abort();
                } else {
                    self.conn_watch.insert(key, (fd, events));
                }
            }
            (Some((fd, _)), None) => {
                let _ = ctl(&self.epoll, ControlOperation::Delete, fd, EventSet::empty());
                self.conn_watch.remove(&key);
                self.fd_owner.remove(&fd);
            }
            _ => {}
        }
        // Only now, with the fd out of epoll, may the socket close: a closed
        // fd number can be reused at once by the next accept.
        if !self.conn_watch.contains_key(&key) {
            conn.release_stream_if_done();
        }
        if conn.is_finished() {
            self.remove(key);
        } else if conn.has_rx_work() && self.rx_queued.insert(key) {
            self.rx_ready.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some((fd, _)) = self.conn_watch.remove(&key) {
            let _ = ctl(&self.epoll, ControlOperation::Delete, fd, EventSet::empty());
            self.fd_owner.remove(&fd);
        }
        self.conns.remove(&key);
        self.rx_queued.remove(&key);
        self.resume_listener();
    }
}

/// Changes `fd`'s registration; every fd is its own epoll token.
fn ctl(epoll: &Epoll, op: ControlOperation, fd: RawFd, events: EventSet) -> io::Result<()> {
    epoll.ctl(op, fd, EpollEvent::new(events, fd as u64))
}

impl AsRawFd for VsockMuxer {
    /// The muxer's epoll fd: readable when [`VsockMuxer::process_events`]
    /// has work.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::devices::virtio::vsock::defs::{
        OP_RESPONSE, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
        TYPE_SEQPACKET, TYPE_STREAM,
    };
    use crate::devices::virtio::vsock::device::VsockEvent;
    use crate::devices::virtio::vsock::test_driver::{
        activated_device, guest_connects, guest_header, host_sees_eof, notify, read_host,
        run_host_events, test_memory, wait_readable, GuestDriver, GUEST_PORT, HOST_PORT,
    };

    const GUEST_CID: u64 = 3;

    fn muxer(dir: &tempfile::TempDir) -> VsockMuxer {
        VsockMuxer::new(GUEST_CID, &dir.path().join("vsock"), 4096).unwrap()
    }

    fn from_guest(op: u16, src_port: u32, dst_port: u32) -> Packet {
        Packet {
            header: VsockHeader {
                src_cid: GUEST_CID,
                dst_cid: VSOCK_HOST_CID,
                src_port,
                dst_port,
                type_: TYPE_STREAM,
                op,
                buf_alloc: 4096,
                ..VsockHeader::default()
            },
            data: Vec::new(),
        }
    }

    #[test]
    fn packet_for_unknown_connection_is_answered_with_rst() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);

        mux.handle_guest_packet(from_guest(OP_RW, 5000, 1024));

        let reply = mux.next_rx_packet(4096).unwrap();
        assert_eq!(reply.header.op, OP_RST);
        assert_eq!(reply.header.src_port, 1024);
        assert_eq!(reply.header.dst_port, 5000);
        assert_eq!(reply.header.dst_cid, GUEST_CID);
        assert_eq!(reply.header.src_cid, VSOCK_HOST_CID);
    }

    #[test]
    fn rst_for_unknown_connection_is_not_answered() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);

        mux.handle_guest_packet(from_guest(OP_RST, 5000, 1024));

        assert!(!mux.has_pending_rx());
    }

    #[test]
    fn seqpacket_request_is_refused_with_rst_of_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let mut request = from_guest(OP_REQUEST, 5000, 1024);
        request.header.type_ = TYPE_SEQPACKET;

        mux.handle_guest_packet(request);

        let reply = mux.next_rx_packet(4096).unwrap();
        assert_eq!(reply.header.op, OP_RST);
        assert_eq!(reply.header.type_, TYPE_SEQPACKET);
    }

    #[test]
    fn packet_with_spoofed_source_is_dropped_without_reply() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let mut packet = from_guest(OP_REQUEST, 5000, 1024);
        packet.header.src_cid = 99;

        mux.handle_guest_packet(packet);

        assert!(!mux.has_pending_rx());
        assert_eq!(mux.connection_count(), 0);
    }

    #[test]
    fn request_to_listening_service_is_answered_with_response() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let service = UnixListener::bind(dir.path().join("vsock_1024")).unwrap();

        mux.handle_guest_packet(from_guest(OP_REQUEST, 5000, 1024));

        let reply = mux.next_rx_packet(4096).unwrap();
        assert_eq!(reply.header.op, OP_RESPONSE);
        assert_eq!(reply.header.buf_alloc, 4096);
        assert!(service.accept().is_ok());
    }

    #[test]
    fn resets_stop_queueing_at_the_backlog_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);

        for port in 0..(MAX_PENDING_RESETS as u32 + 10) {
            mux.handle_guest_packet(from_guest(OP_RW, port, 1024));
        }

        assert!(mux.rx_backlog_full());
        let mut count = 0;
        while mux.next_rx_packet(4096).is_some() {
            count += 1;
        }
        assert_eq!(count, MAX_PENDING_RESETS);
    }

    #[test]
    fn local_ports_skip_keys_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let (_a, b) = UnixStream::pair().unwrap();
        let taken = ConnKey {
            local_port: FIRST_LOCAL_PORT,
            peer_port: 1024,
        };
        mux.conns.insert(
            taken,
            Connection::connecting(taken, GUEST_CID, 4096, b, Vec::new()),
        );

        let port = mux.allocate_local_port(1024);

        assert_eq!(port, Some(FIRST_LOCAL_PORT + 1));
    }

    #[test]
    fn host_client_sending_garbage_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let mut client = UnixStream::connect(dir.path().join("vsock")).unwrap();
        client.write_all(b"HELLO\n").unwrap();

        assert!(wait_readable(mux.as_raw_fd(), 2000));
        mux.process_events().unwrap();

        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        assert_eq!(mux.connection_count(), 0);
    }

    #[test]
    fn host_client_connect_line_queues_request_to_guest_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let mut client = UnixStream::connect(dir.path().join("vsock")).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();

        assert!(wait_readable(mux.as_raw_fd(), 2000));
        mux.process_events().unwrap();

        let request = mux.next_rx_packet(4096).unwrap();
        assert_eq!(request.header.op, OP_REQUEST);
        assert_eq!(request.header.dst_port, 1024);
        assert_eq!(request.header.src_port, FIRST_LOCAL_PORT);
    }

    #[test]
    fn idle_host_clients_without_connect_cannot_lock_out_a_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let mut idle = Vec::new();
        for i in 0..300 {
            idle.push(UnixStream::connect(dir.path().join("vsock")).unwrap());
            if i % 16 == 0 {
                mux.process_events().unwrap();
            }
        }
        mux.process_events().unwrap();
        let mut client = UnixStream::connect(dir.path().join("vsock")).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();

        assert!(wait_readable(mux.as_raw_fd(), 2000));
        mux.process_events().unwrap();

        let request = mux.next_rx_packet(4096).unwrap();
        assert_eq!(request.header.op, OP_REQUEST);
        assert_eq!(request.header.dst_port, 1024);
        assert!(mux.clients.len() <= MAX_PENDING_CLIENTS);
        let mut buf = [0u8; 1];
        idle[0].set_nonblocking(true).unwrap();
        assert_eq!(
            idle[0].read(&mut buf).unwrap(),
            0,
            "the oldest idle client was closed"
        );
    }

    fn shutdown(flags: u32) -> VsockHeader {
        let mut header = guest_header(OP_SHUTDOWN, GUEST_PORT, HOST_PORT);
        header.flags = flags;
        header
    }

    #[test]
    fn guest_send_shutdown_gives_host_eof_while_host_can_still_send() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());

        guest.send(guest_header(OP_RW, GUEST_PORT, HOST_PORT), b"abc");
        guest.send(shutdown(SHUTDOWN_SEND), &[]);
        notify(&mut device, VsockEvent::TxQueue);
        host.write_all(b"xyz").unwrap();
        guest.offer_rx(2, 4096);
        run_host_events(&mut device);

        assert_eq!(read_host(&mut host, 3), b"abc");
        assert!(host_sees_eof(&mut host));
        let packets = guest.take_rx();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_RW);
        assert_eq!(packets[0].data, b"xyz");
    }

    #[test]
    fn host_half_close_gives_guest_shutdown_send_while_guest_can_still_send() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());
        guest.offer_rx(4, 4096);

        host.write_all(b"hi").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        run_host_events(&mut device);
        let packets = guest.take_rx();
        guest.send(guest_header(OP_RW, GUEST_PORT, HOST_PORT), b"ok");
        notify(&mut device, VsockEvent::TxQueue);

        let ops: Vec<(u16, u32)> = packets
            .iter()
            .map(|p| (p.header.op, p.header.flags))
            .collect();
        assert_eq!(ops, vec![(OP_RW, 0), (OP_SHUTDOWN, SHUTDOWN_SEND)]);
        assert_eq!(packets[0].data, b"hi");
        assert_eq!(read_host(&mut host, 2), b"ok");
    }

    #[test]
    fn guest_receive_shutdown_makes_host_writes_fail() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());

        guest.send(shutdown(SHUTDOWN_RCV), &[]);
        notify(&mut device, VsockEvent::TxQueue);
        let write = host.write(b"nobody listens");

        assert_eq!(write.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
        assert_eq!(device.muxer().connection_count(), 1);
    }

    #[test]
    fn guest_full_shutdown_is_answered_with_rst_and_closes_host_socket() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());
        guest.offer_rx(1, 4096);

        guest.send(guest_header(OP_RW, GUEST_PORT, HOST_PORT), b"last words");
        guest.send(shutdown(SHUTDOWN_BOTH), &[]);
        notify(&mut device, VsockEvent::TxQueue);

        let packets = guest.take_rx();
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_RST);
        assert_eq!(read_host(&mut host, 10), b"last words");
        assert!(host_sees_eof(&mut host));
        assert_eq!(device.muxer().connection_count(), 0);
    }

    #[test]
    fn host_close_sends_full_shutdown_and_guest_rst_ends_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let mut host = guest_connects(&mut device, &mut guest, dir.path());
        guest.offer_rx(4, 4096);

        host.write_all(b"bye").unwrap();
        drop(host);
        run_host_events(&mut device);
        let packets = guest.take_rx();
        let key = ConnKey {
            local_port: HOST_PORT,
            peer_port: GUEST_PORT,
        };
        let state_before_rst = device.muxer().connection_state(key);
        guest.send(guest_header(OP_RST, GUEST_PORT, HOST_PORT), &[]);
        notify(&mut device, VsockEvent::TxQueue);

        let ops: Vec<(u16, u32)> = packets
            .iter()
            .map(|p| (p.header.op, p.header.flags))
            .collect();
        assert_eq!(ops, vec![(OP_RW, 0), (OP_SHUTDOWN, SHUTDOWN_BOTH)]);
        assert_eq!(packets[0].data, b"bye");
        assert_eq!(state_before_rst, Some(ConnState::Closing));
        assert_eq!(device.muxer().connection_count(), 0);
        assert!(guest.take_rx().is_empty());
    }

    #[test]
    fn request_reusing_the_ports_of_a_closing_connection_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mem = test_memory();
        let mut guest = GuestDriver::new(&mem);
        let mut device = activated_device(&mem, &guest, dir.path(), 4096);
        let host = guest_connects(&mut device, &mut guest, dir.path());
        guest.offer_rx(4, 4096);
        drop(host);
        run_host_events(&mut device);
        assert_eq!(guest.take_rx()[0].header.flags, SHUTDOWN_BOTH);

        // `guest_connects` binds the service socket anew and checks RESPONSE.
        std::fs::remove_file(dir.path().join(format!("vsock_{HOST_PORT}"))).unwrap();
        let _again = guest_connects(&mut device, &mut guest, dir.path());

        assert_eq!(device.muxer().connection_count(), 1);
    }

    #[test]
    fn reset_closes_every_host_socket() {
        let dir = tempfile::tempdir().unwrap();
        let mut mux = muxer(&dir);
        let service = UnixListener::bind(dir.path().join("vsock_1024")).unwrap();
        mux.handle_guest_packet(from_guest(OP_REQUEST, 5000, 1024));
        let (mut host_side, _) = service.accept().unwrap();

        mux.reset();

        let mut buf = [0u8; 8];
        assert_eq!(host_side.read(&mut buf).unwrap(), 0);
        assert_eq!(mux.connection_count(), 0);
        assert!(!mux.has_pending_rx());
    }
}
