//! One vsock stream connection bridged to a host Unix socket.
//!
//! Naming: "guest" is the driver side of the virtqueues, "host" the Unix
//! socket. Bytes the guest sends wait in `to_host` until the socket takes
//! them; bytes the host sends are read from the socket only when the guest
//! has both a receive buffer and credit for them, so the socket's own buffer
//! is the only queue in that direction.
//!
//! Credit follows virtio 1.2, 5.10.6.3: each side advertises `buf_alloc` (its
//! receive buffer) and `fwd_cnt` (bytes it has consumed from it) in every
//! packet, and a sender may have at most `buf_alloc - (sent - fwd_cnt)` bytes
//! in flight.
//!
//! The connection never touches epoll itself: it says what it wants to hear
//! about ([`Connection::interest`]) and the muxer keeps the registration in
//! step, so socket lifetime and registration are managed in one place.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::defs::{
    MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, VSOCK_HOST_CID,
};
use super::hybrid::ok_reply;
use super::packet::{Packet, VsockHeader};

/// Identifies a connection: the host-side port and the guest-side port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    /// Port on the host side (the guest's destination port).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's answer.
    Connecting,
    /// Data may flow (in the directions neither side has shut down).
    Established,
    /// We sent a full SHUTDOWN and closed the socket; waiting for the guest's
    /// RST to forget the connection.
    Closing,
}

/// Control packets waiting for a receive buffer.
#[derive(Debug, Default)]
struct PendingOps {
    rst: bool,
    request: bool,
    response: bool,
    /// Shutdown flags to announce (cumulative), zero when none.
    shutdown: u32,
    credit_update: bool,
    credit_request: bool,
}

impl PendingOps {
    fn any(&self) -> bool {
        self.rst
            || self.request
            || self.response
            || self.shutdown != 0
            || self.credit_update
            || self.credit_request
    }
}

/// One connection between a guest stream socket and a host Unix socket.
#[derive(Debug)]
pub struct Connection {
    key: ConnKey,
    guest_cid: u64,
    state: ConnState,
    stream: Option<UnixStream>,
    pending: PendingOps,
    /// The muxer should forget this connection.
    finished: bool,

    // Host to guest.
    /// The socket may have bytes (or EOF) for us; EPOLLIN is off meanwhile so
    /// a guest without receive buffers cannot make us spin.
    host_readable: bool,
    /// The host will send nothing more (read returned 0).
    host_eof: bool,
    /// The host closed its socket entirely (EPOLLHUP/EPOLLERR).
    host_hung_up: bool,
    /// The host no longer reads (writes failed with EPIPE).
    host_rcv_closed: bool,
    /// Bytes that came with the CONNECT line, delivered before the socket's.
    prefix: Vec<u8>,
    /// Bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// A CREDIT_REQUEST is out and unanswered; one per stall is enough.
    credit_requested: bool,

    // Guest to host.
    /// `OK <port>\n`, owed to a host-initiated client, written before data.
    reply: Vec<u8>,
    to_host: VecDeque<u8>,
    buf_alloc: u32,
    /// Bytes received from the guest.
    recv_cnt: Wrapping<u32>,
    /// Bytes written to the host socket (or dropped because it stopped reading).
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard from us.
    announced_fwd_cnt: Wrapping<u32>,
    guest_shutdown: u32,
    sent_shutdown: u32,
    host_write_closed: bool,
    host_read_closed: bool,
}

impl Connection {
    fn new(key: ConnKey, guest_cid: u64, buf_alloc: u32, stream: UnixStream) -> Self {
        Self {
            key,
            guest_cid,
            state: ConnState::Connecting,
            stream: Some(stream),
            pending: PendingOps::default(),
            finished: false,
            host_readable: false,
            host_eof: false,
            host_hung_up: false,
            host_rcv_closed: false,
            prefix: Vec::new(),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_requested: false,
            reply: Vec::new(),
            to_host: VecDeque::new(),
            buf_alloc,
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            announced_fwd_cnt: Wrapping(0),
            guest_shutdown: 0,
            sent_shutdown: 0,
            host_write_closed: false,
            host_read_closed: false,
        }
    }

    /// A connection the guest asked for (its REQUEST in `request`) that the
    /// host service at `stream` accepted; RESPONSE is queued.
    pub fn accepted(
        key: ConnKey,
        guest_cid: u64,
        buf_alloc: u32,
        stream: UnixStream,
        request: &VsockHeader,
    ) -> Self {
        let mut conn = Self::new(key, guest_cid, buf_alloc, stream);
        conn.state = ConnState::Established;
        conn.learn_peer_credit(request);
        conn.pending.response = true;
        conn
    }

    /// A connection a host client asked for; REQUEST is queued. `prefix`
    /// holds stream bytes the client sent along with its CONNECT line.
    pub fn connecting(
        key: ConnKey,
        guest_cid: u64,
        buf_alloc: u32,
        stream: UnixStream,
        prefix: Vec<u8>,
    ) -> Self {
        let mut conn = Self::new(key, guest_cid, buf_alloc, stream);
        conn.pending.request = true;
        conn.prefix = prefix;
        conn
    }

    /// The connection's key.
    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host socket's fd, while the socket is open.
    pub fn fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The muxer should drop this connection (and its socket).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Readiness events to watch on the host socket, or `None` when the
    /// socket should not be watched at all. An empty set still reports
    /// hang-ups, which is what a connecting socket needs.
    pub fn interest(&self) -> Option<EventSet> {
        if self.stream.is_none()
            || self.host_hung_up
            || self.finished
            || self.state == ConnState::Closing
        {
            return None;
        }
        let mut events = EventSet::empty();
        if self.state == ConnState::Established
            && !self.host_eof
            && !self.host_read_closed
            && !self.host_readable
        {
            events |= EventSet::IN;
        }
        if !self.reply.is_empty() || !self.to_host.is_empty() {
            events |= EventSet::OUT;
        }
        Some(events)
    }

    /// Resets the connection: RST to the guest, then it is forgotten. For
    /// failures of our own that leave the connection unusable.
    pub fn abort(&mut self) {
        self.pending.rst = true;
    }

    /// Drops the host socket once the connection no longer needs it. The
    /// muxer calls this after unregistering the fd.
    pub fn release_stream_if_done(&mut self) {
        if self.state == ConnState::Closing {
            self.stream = None;
        }
    }

    /// Something is waiting to go to the guest.
    pub fn has_rx_work(&self) -> bool {
        !self.finished && (self.pending.any() || (self.host_readable && self.can_send_data()))
    }

    /// How many bytes the guest can take right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Free space the guest believes we have, from the last `fwd_cnt` we sent.
    fn guest_view_of_free_space(&self) -> u32 {
        let unacknowledged = (self.recv_cnt - self.announced_fwd_cnt).0;
        self.buf_alloc.saturating_sub(unacknowledged)
    }

    fn can_send_data(&self) -> bool {
        self.state == ConnState::Established
            && self.stream.is_some()
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
            && (!self.prefix.is_empty() || !self.host_eof)
    }

    fn learn_peer_credit(&mut self, header: &VsockHeader) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Handles readiness of the host socket.
    pub fn on_host_ready(&mut self, events: EventSet) {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hung_up = true;
            if self.state == ConnState::Connecting {
                // The client gave up before the guest answered: withdraw the
                // request, or cancel it if the guest may have seen it.
                if self.pending.request {
                    self.finished = true;
                } else {
                    self.pending.rst = true;
                }
                return;
            }
            // Whatever the host wrote before closing is still to be read.
            self.host_readable = true;
        }
        if events.contains(EventSet::IN) {
            self.host_readable = true;
        }
        if events.contains(EventSet::OUT) {
            self.flush_to_host();
        }
        self.advance();
    }

    /// Handles a packet from the guest addressed to this connection.
    pub fn on_guest_packet(&mut self, packet: Packet) {
        let header = packet.header;
        self.learn_peer_credit(&header);
        match (self.state, header.op) {
            (_, OP_RST) => {
                self.finished = true;
                return;
            }
            (ConnState::Closing, _) => return,
            (ConnState::Connecting, OP_RESPONSE) => {
                self.state = ConnState::Established;
                self.reply = ok_reply(self.key.local_port);
                self.host_readable = !self.prefix.is_empty();
                self.flush_to_host();
            }
            (ConnState::Established, OP_RW) => self.take_guest_data(packet.data),
            (ConnState::Established, OP_SHUTDOWN) => {
                self.guest_shutdown |= header.flags & SHUTDOWN_BOTH;
            }
            (ConnState::Established, OP_CREDIT_REQUEST) => self.pending.credit_update = true,
            (ConnState::Established, OP_CREDIT_UPDATE) => {}
            // REQUEST on a live connection, RESPONSE out of turn, anything but
            // an answer while connecting: the guest and we disagree on the
            // connection's state, and RST is how the spec resolves that.
            _ => self.pending.rst = true,
        }
        self.advance();
    }

    fn take_guest_data(&mut self, data: Vec<u8>) {
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            self.pending.rst = true;
            return;
        }
        let len = data.len() as u32;
        // The guest computes its credit from the `fwd_cnt` we announced, which
        // never exceeds the real one, so a guest that follows the spec always
        // fits; one that does not is reset rather than buffered without bound.
        let free = self.buf_alloc.saturating_sub(self.to_host.len() as u32);
        if len > free {
            self.pending.rst = true;
            return;
        }
        self.recv_cnt += Wrapping(len);
        if self.host_rcv_closed {
            // Nobody reads these bytes; count them as consumed so the guest's
            // credit does not wedge before it sees our SHUTDOWN.
            self.fwd_cnt += Wrapping(len);
            return;
        }
        self.to_host.extend(data);
        self.flush_to_host();
    }

    /// Writes as much owed data to the host socket as it takes.
    fn flush_to_host(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        while !self.reply.is_empty() || !self.to_host.is_empty() {
            let (from_reply, result) = if self.reply.is_empty() {
                (false, stream.write(self.to_host.as_slices().0))
            } else {
                (true, stream.write(&self.reply))
            };
            match result {
                Ok(n) if from_reply => {
                    self.reply.drain(..n);
                }
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    self.host_rcv_closed = true;
                    self.fwd_cnt += Wrapping(self.to_host.len() as u32);
                    self.to_host.clear();
                    self.reply.clear();
                    break;
                }
                Err(e) => {
                    tracing::debug!(key = ?self.key, error = %e, "vsock: host socket write failed");
                    self.pending.rst = true;
                    break;
                }
            }
        }
    }

    /// Derives the packets owed to the guest and the socket half-closes owed
    /// to the host from what both sides have done so far.
    fn advance(&mut self) {
        if self.state != ConnState::Established || self.finished || self.pending.rst {
            return;
        }
        let flushed = self.reply.is_empty() && self.to_host.is_empty();
        if let Some(stream) = self.stream.as_ref() {
            // Pass the guest's half-closes on, so the host sees EOF (or EPIPE)
            // exactly where the guest stopped.
            if self.guest_shutdown & SHUTDOWN_SEND != 0 && flushed && !self.host_write_closed {
                let _ = stream.shutdown(Shutdown::Write);
                self.host_write_closed = true;
            }
            if self.guest_shutdown & SHUTDOWN_RCV != 0 && !self.host_read_closed {
                let _ = stream.shutdown(Shutdown::Read);
                self.host_read_closed = true;
                self.host_readable = false;
            }
        }
        if self.guest_shutdown == SHUTDOWN_BOTH
            && (flushed || self.host_rcv_closed || self.host_hung_up)
        {
            // The guest has closed; it waits for our RST to free its socket.
            self.pending.rst = true;
            return;
        }

        let mut flags = 0;
        if self.host_eof {
            flags |= SHUTDOWN_SEND;
        }
        if self.host_rcv_closed {
            flags |= SHUTDOWN_RCV;
        }
        let nothing_left_to_deliver =
            self.host_eof || self.guest_shutdown & SHUTDOWN_RCV != 0 || self.host_read_closed;
        if self.host_hung_up && nothing_left_to_deliver {
            flags = SHUTDOWN_BOTH;
        }
        if flags & !self.sent_shutdown != 0 {
            self.pending.shutdown = flags | self.sent_shutdown;
        }

        if self.fwd_cnt != self.announced_fwd_cnt
            && self.guest_view_of_free_space() < self.buf_alloc / 4
        {
            self.pending.credit_update = true;
        }
        if self.host_readable
            && self.peer_credit() == 0
            && !self.credit_requested
            && self.guest_shutdown & SHUTDOWN_RCV == 0
        {
            self.pending.credit_request = true;
            self.credit_requested = true;
        }
    }

    /// Builds the next packet for the guest, reading host data into a buffer
    /// of `capacity` payload bytes if data is what is owed. `None` when there
    /// turned out to be nothing to send.
    pub fn next_rx_packet(&mut self, capacity: usize) -> Option<Packet> {
        if self.finished {
            return None;
        }
        if self.pending.rst {
            self.pending = PendingOps::default();
            self.finished = true;
            return Some(self.packet(OP_RST, 0, Vec::new()));
        }
        if self.pending.request {
            self.pending.request = false;
            return Some(self.packet(OP_REQUEST, 0, Vec::new()));
        }
        if self.pending.response {
            self.pending.response = false;
            return Some(self.packet(OP_RESPONSE, 0, Vec::new()));
        }
        if self.host_readable && self.can_send_data() && capacity > 0 {
            if let Some(packet) = self.read_host_data(capacity) {
                return Some(packet);
            }
        }
        if self.pending.shutdown != 0 {
            let flags = std::mem::take(&mut self.pending.shutdown);
            self.sent_shutdown |= flags;
            if self.sent_shutdown == SHUTDOWN_BOTH {
                self.state = ConnState::Closing;
                self.pending = PendingOps::default();
            }
            return Some(self.packet(OP_SHUTDOWN, flags, Vec::new()));
        }
        if self.pending.credit_update {
            return Some(self.packet(OP_CREDIT_UPDATE, 0, Vec::new()));
        }
        if self.pending.credit_request {
            self.pending.credit_request = false;
            return Some(self.packet(OP_CREDIT_REQUEST, 0, Vec::new()));
        }
        None
    }

    /// Reads up to what the buffer and the guest's credit allow. Returns the
    /// RW packet, or `None` after updating state on EOF, error or no data.
    fn read_host_data(&mut self, capacity: usize) -> Option<Packet> {
        let max = capacity
            .min(self.peer_credit() as usize)
            .min(MAX_PKT_PAYLOAD as usize);
        let data = if !self.prefix.is_empty() {
            // `host_readable` stays set: the socket may hold more after the
            // prefix, and the next read finds out.
            let n = max.min(self.prefix.len());
            self.prefix.drain(..n).collect()
        } else {
            let stream = self.stream.as_mut()?;
            let mut buf = vec![0u8; max];
            let result = loop {
                match stream.read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match result {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                    self.advance();
                    return None;
                }
                Ok(n) => {
                    // Keep reading until the socket says WouldBlock (or EOF)
                    // rather than waiting for another EPOLLIN: a peer that
                    // wrote and then half-closed gets its SHUTDOWN delivered
                    // right behind its data.
                    buf.truncate(n);
                    buf
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    self.advance();
                    return None;
                }
                Err(e) => {
                    tracing::debug!(key = ?self.key, error = %e, "vsock: host socket read failed");
                    self.pending = PendingOps::default();
                    self.finished = true;
                    return Some(self.packet(OP_RST, 0, Vec::new()));
                }
            }
        };
        self.tx_cnt += Wrapping(data.len() as u32);
        self.advance();
        Some(self.packet(OP_RW, 0, data))
    }

    /// Builds a packet from the host side of this connection, carrying our
    /// current credit so every packet doubles as a credit update.
    fn packet(&mut self, op: u16, flags: u32, data: Vec<u8>) -> Packet {
        self.announced_fwd_cnt = self.fwd_cnt;
        self.pending.credit_update = false;
        Packet {
            header: VsockHeader {
                src_cid: VSOCK_HOST_CID,
                dst_cid: self.guest_cid,
                src_port: self.key.local_port,
                dst_port: self.key.peer_port,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags,
                buf_alloc: self.buf_alloc,
                fwd_cnt: self.fwd_cnt.0,
            },
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_CID: u64 = 3;
    const KEY: ConnKey = ConnKey {
        local_port: 1024,
        peer_port: 5000,
    };

    fn guest_header(op: u16, buf_alloc: u32, fwd_cnt: u32) -> VsockHeader {
        VsockHeader {
            src_cid: GUEST_CID,
            dst_cid: VSOCK_HOST_CID,
            src_port: KEY.peer_port,
            dst_port: KEY.local_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        }
    }

    fn established(buf_alloc: u32) -> (Connection, UnixStream) {
        let (host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut conn = Connection::accepted(
            KEY,
            GUEST_CID,
            buf_alloc,
            ours,
            &guest_header(OP_REQUEST, 4096, 0),
        );
        let response = conn.next_rx_packet(0).unwrap();
        assert_eq!(response.header.op, OP_RESPONSE);
        (conn, host)
    }

    fn rw(data: &[u8]) -> Packet {
        let mut header = guest_header(OP_RW, 4096, 0);
        header.len = data.len() as u32;
        Packet {
            header,
            data: data.to_vec(),
        }
    }

    #[test]
    fn peer_credit_survives_counter_wraparound() {
        let (mut conn, _host) = established(4096);
        conn.tx_cnt = Wrapping(5);
        conn.peer_fwd_cnt = Wrapping(u32::MAX - 10);
        conn.peer_buf_alloc = 100;

        let credit = conn.peer_credit();

        assert_eq!(credit, 100 - 16);
    }

    #[test]
    fn peer_credit_is_zero_when_guest_claims_more_than_it_allocated() {
        let (mut conn, _host) = established(4096);
        conn.tx_cnt = Wrapping(500);
        conn.peer_fwd_cnt = Wrapping(0);
        conn.peer_buf_alloc = 100;

        let credit = conn.peer_credit();

        assert_eq!(credit, 0);
    }

    #[test]
    fn guest_data_beyond_our_buffer_resets_the_connection() {
        let (mut conn, _host) = established(8);

        conn.on_guest_packet(rw(&[0; 9]));

        assert_eq!(conn.next_rx_packet(0).unwrap().header.op, OP_RST);
        assert!(conn.is_finished());
    }

    #[test]
    fn every_packet_carries_our_credit() {
        let (mut conn, mut host) = established(4096);
        conn.on_guest_packet(rw(b"abc"));
        let mut got = [0u8; 3];
        host.read_exact(&mut got).unwrap();
        conn.on_guest_packet(Packet {
            header: guest_header(OP_CREDIT_REQUEST, 4096, 0),
            data: Vec::new(),
        });

        let reply = conn.next_rx_packet(0).unwrap();

        assert_eq!(reply.header.op, OP_CREDIT_UPDATE);
        assert_eq!(reply.header.buf_alloc, 4096);
        assert_eq!(reply.header.fwd_cnt, 3);
    }

    #[test]
    fn connecting_socket_that_hangs_up_before_request_is_sent_is_dropped_silently() {
        let (_host, ours) = UnixStream::pair().unwrap();
        let mut conn = Connection::connecting(KEY, GUEST_CID, 4096, ours, Vec::new());

        conn.on_host_ready(EventSet::HANG_UP);

        assert!(conn.is_finished());
        assert!(conn.next_rx_packet(0).is_none());
    }

    #[test]
    fn connecting_socket_that_hangs_up_after_request_cancels_with_rst() {
        let (_host, ours) = UnixStream::pair().unwrap();
        let mut conn = Connection::connecting(KEY, GUEST_CID, 4096, ours, Vec::new());
        assert_eq!(conn.next_rx_packet(0).unwrap().header.op, OP_REQUEST);

        conn.on_host_ready(EventSet::HANG_UP);

        assert_eq!(conn.next_rx_packet(0).unwrap().header.op, OP_RST);
    }

    #[test]
    fn data_after_guest_send_shutdown_resets_the_connection() {
        let (mut conn, _host) = established(4096);
        let mut shutdown = guest_header(OP_SHUTDOWN, 4096, 0);
        shutdown.flags = SHUTDOWN_SEND;
        conn.on_guest_packet(Packet {
            header: shutdown,
            data: Vec::new(),
        });

        conn.on_guest_packet(rw(b"late"));

        assert_eq!(conn.next_rx_packet(0).unwrap().header.op, OP_RST);
    }

    #[test]
    fn interest_drops_epollin_while_host_data_awaits_a_buffer() {
        let (mut conn, _host) = established(4096);
        let before = conn.interest();

        conn.on_host_ready(EventSet::IN);

        assert_eq!(before, Some(EventSet::IN));
        assert_eq!(conn.interest(), Some(EventSet::empty()));
        assert!(conn.has_rx_work());
    }
}
