//! Decodes arbitrary bytes as a frame stream: must never panic, and every
//! frame decoded must re-encode and decode to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = protocol::frame::decode(&mut buf) {
        let mut again = BytesMut::new();
        protocol::frame::encode(&frame, &mut again).expect("decoded frames re-encode");
        let back = protocol::frame::decode(&mut again).expect("re-encoded frame decodes");
        assert_eq!(back, Some(frame));
    }
});
