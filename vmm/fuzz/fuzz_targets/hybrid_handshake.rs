//! Feeds arbitrary host bytes, split at arbitrary points, to the hybrid
//! vsock `CONNECT <port>` line parser: it must never panic, must decide
//! within `MAX_HANDSHAKE_LINE` bytes, and must give back every byte after
//! the newline.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::hybrid::{
    ConnectLineParser, HandshakeProgress, MAX_HANDSHAKE_LINE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(split).max(1);
    let mut parser = ConnectLineParser::new();
    let mut fed = 0;
    for chunk in bytes.chunks(step) {
        fed += chunk.len();
        match parser.feed(chunk) {
            Ok(HandshakeProgress::NeedMore) => {
                assert!(fed < MAX_HANDSHAKE_LINE, "undecided after {fed} bytes");
            }
            Ok(HandshakeProgress::Connect { port, rest }) => {
                let newline = bytes.iter().position(|&b| b == b'\n').unwrap();
                assert!(newline < MAX_HANDSHAKE_LINE);
                assert_eq!(rest, &bytes[newline + 1..fed]);
                assert_ne!(port, u32::MAX);
                return;
            }
            Err(_) => return,
        }
    }
});
