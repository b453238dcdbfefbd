//! Host clients of the hybrid vsock socket as the muxer sees them: bytes
//! arrive on a real socket in arbitrary pieces and are read by
//! `PendingClient::read_handshake`, while clients come and go through the
//! `HandshakeTable`. Neither may panic; a client is decided within
//! `MAX_HANDSHAKE_LINE` bytes; the table never holds more than its
//! capacity, and a full table always takes the newcomer.

#![no_main]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::hybrid::{
    HandshakeProgress, HandshakeTable, PendingClient, MAX_HANDSHAKE_LINE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let capacity = usize::from(control % 8) + 1;
    let step = usize::from(control / 8).max(1);
    let mut table = HandshakeTable::new(capacity, Duration::from_secs(60)).expect("table");
    let mut peers = Vec::new();
    for chunk in bytes.chunks(step) {
        // Each chunk is one client's first bytes; its line may be cut short.
        let (mut peer, server) = UnixStream::pair().expect("socket pair");
        server.set_nonblocking(true).expect("non-blocking");
        peer.write_all(chunk).expect("write");
        let mut client = PendingClient::new(server);
        match client.read_handshake() {
            Ok(HandshakeProgress::NeedMore) => {
                assert!(chunk.len() < MAX_HANDSHAKE_LINE, "undecided after {} bytes", chunk.len());
                let fd = client.as_raw_fd();
                let before = table.len();
                let evicted = table.insert(client);
                assert!(table.contains(fd), "the newcomer is in the table");
                assert!(table.len() <= capacity);
                assert_eq!(evicted.is_some(), before == capacity);
            }
            Ok(HandshakeProgress::Connect { rest, .. }) => {
                let newline = chunk.iter().position(|&b| b == b'\n').expect("a line");
                // The rest of the socket's bytes stay there for the stream.
                assert!(chunk[newline + 1..].starts_with(&rest));
            }
            Err(_) => {}
        }
        peers.push(peer);
    }
    assert!(table.expire().is_empty(), "nobody waited a minute");
});
