//! `connect`: a byte stream from the host to a TCP port inside the VM,
//! carried in `Data` frames, with `DataEnd` as the half-close of either
//! direction (so `ssh`, `rsync` and HTTP clients that shut down their
//! sending side still get the reply).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{ErrorKind, Frame, NetworkMode, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::lifecycle::Distros;
use crate::server::Connection;

/// Bytes per `Data` frame towards the host.
const CHUNK: usize = 64 * 1024;

/// Connects to `port` on the VM's loopback, IPv4 first, then IPv6 (a
/// server may listen on `::1` only).
async fn connect_loopback(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect(v4).await {
        Ok(stream) => Ok(stream),
        Err(e) => match TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await {
            Ok(stream) => Ok(stream),
            Err(_) => Err(e),
        },
    }
}

/// Connects to `port` on the loopback of the isolated distro whose PID 1
/// is `pid1`.
async fn connect_loopback_in(pid1: i32, port: u16) -> std::io::Result<TcpStream> {
    let stream =
        tokio::task::spawn_blocking(move || crate::isolated_net::connect_loopback_in(pid1, port))
            .await
            .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Serves one `connect` request.
pub async fn serve(mut conn: Connection, distro: Option<String>, port: u16, distros: Arc<Distros>) {
    // An isolated distro has a loopback of its own, reached from inside
    // its namespace; the others share the VM's.
    let mut isolated_pid1 = None;
    if let Some(name) = distro {
        match distros.start(&name).await {
            Ok(started) if started.running.network == NetworkMode::Isolated => {
                isolated_pid1 = Some(started.running.pid1);
            }
            Ok(_) => {}
            Err(e) => {
                let _ = conn.send(Frame::Response(e.to_response())).await;
                return;
            }
        }
    }
    let connected = match isolated_pid1 {
        Some(pid1) => connect_loopback_in(pid1, port).await,
        None => connect_loopback(port).await,
    };
    let stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            let msg = format!("nothing accepts connections on port {port} in the VM ({e})");
            let resp = Response::error(ErrorKind::ConnectionRefused, msg);
            let _ = conn.send(Frame::Response(resp)).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    if conn
        .send(Frame::Response(Response::Connected))
        .await
        .is_err()
    {
        return;
    }
    let (mut tcp_read, mut tcp_write) = stream.into_split();
    let (to_host, mut from_host) = conn.split();
    // Both directions may have to tell the host how the stream ended.
    let to_host = Arc::new(Mutex::new(to_host));

    let downstream = tokio::spawn({
        let to_host = Arc::clone(&to_host);
        async move {
            let mut buf = vec![0u8; CHUNK];
            let end = loop {
                match tcp_read.read(&mut buf).await {
                    Ok(0) => break Frame::DataEnd,
                    Err(e) => break reset_frame(port, &e),
                    Ok(n) => {
                        let data = Frame::Data(Bytes::copy_from_slice(&buf[..n]));
                        if to_host.lock().await.send(data).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let _ = to_host.lock().await.send(end).await;
        }
    });
    let mut half_closed = false;
    while let Some(frame) = from_host.next().await {
        match frame {
            Ok(Frame::Data(bytes)) => {
                if let Err(e) = tcp_write.write_all(&bytes).await {
                    // The server is gone mid-stream: whatever it still had
                    // to say is lost, so the host hears of a reset, not an end.
                    downstream.abort();
                    let _ = downstream.await;
                    let _ = to_host.lock().await.send(reset_frame(port, &e)).await;
                    return;
                }
            }
            Ok(Frame::DataEnd) => {
                half_closed = true;
                break;
            }
            Ok(other) => tracing::debug!(kind = ?other.kind(), "ignoring frame in relay"),
            Err(e) => {
                tracing::debug!(port, error = %e, "relay: the host connection broke");
                break;
            }
        }
    }
    let _ = tcp_write.shutdown().await;
    if half_closed {
        // The server may still answer; the connection lives until it is done.
        let _ = downstream.await;
    } else {
        // The host went away: nobody would read the rest.
        downstream.abort();
    }
}

/// The frame that ends a relay whose server connection failed (typically
/// reset by the server): an error, so the host resets its side too.
fn reset_frame(port: u16, error: &std::io::Error) -> Frame {
    tracing::debug!(port, %error, "relay: the server connection failed");
    let msg = format!("the connection to port {port} in the VM was reset ({error})");
    Frame::Response(Response::error(ErrorKind::ConnectionReset, msg))
}
