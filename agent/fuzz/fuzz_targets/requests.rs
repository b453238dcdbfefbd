//! Sends arbitrary bytes to the agent's connection handler, as a client on
//! the other side of vsock could: the handshake, the request decoding and
//! whatever the request leads to must never panic, must answer or close
//! within a few seconds, and must leave no distro behind (the store starts
//! empty, so every request naming a distro is refused or, for an import of
//! a garbage stream, cleaned up).
//!
//! Requests that reach the network or stop the agent (`connect`,
//! `watch_ports`, `shutdown`) are skipped: they are not decoding.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::{Frame, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Harness {
    runtime: tokio::runtime::Runtime,
    agent: Arc<agent::server::Agent>,
    data: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let data = tempfile::tempdir().expect("data directory");
        let store = agent::store::Store::open(data.path()).expect("store");
        let distros =
            agent::lifecycle::Distros::new(store, None, std::path::PathBuf::from("/nonexistent"));
        let agent = agent::server::Agent::new(distros);
        Harness {
            runtime,
            agent,
            data,
        }
    })
}

fn reaches_outside(data: &[u8]) -> bool {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = protocol::frame::decode(&mut buf) {
        if matches!(
            frame,
            Frame::Request(Request::Connect { .. } | Request::WatchPorts | Request::Shutdown)
        ) {
            return true;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    if reaches_outside(data) {
        return;
    }
    let h = harness();
    h.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let serving = h.agent.serve_stream(Box::new(server));
        let talking = async move {
            let (mut read, mut write) = tokio::io::split(client);
            let _ = write.write_all(data).await;
            let _ = write.shutdown().await;
            let mut answer = Vec::new();
            let _ = read.read_to_end(&mut answer).await;
        };
        tokio::time::timeout(Duration::from_secs(15), futures_util::future::join(serving, talking))
            .await
            .expect("the agent answers or closes within 15 s");
    });
    let left: Vec<_> = std::fs::read_dir(h.data.path().join("distros"))
        .expect("distros directory")
        .collect();
    assert!(left.is_empty(), "a request left files behind: {left:?}");
});
