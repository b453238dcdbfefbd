//! `connect`: a byte stream from the host to a TCP port inside the VM,
//! carried in `Data` frames, with `DataEnd` as the half-close of either
//! direction (so `ssh`, `rsync` and HTTP clients that shut down their
//! sending side still get the reply).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{ErrorKind, Frame, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Serves one `connect` request.
pub async fn serve(mut conn: Connection, distro: Option<String>, port: u16, distros: Arc<Distros>) {
    if let Some(name) = distro {
        if let Err(e) = distros.start(&name).await {
            let _ = conn.send(Frame::Response(e.to_response())).await;
            return;
        }
    }
    let stream = match connect_loopback(port).await {
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
    let (mut to_host, mut from_host) = conn.split();

    let downstream = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match tcp_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Frame::Data(Bytes::copy_from_slice(&buf[..n]));
                    if to_host.send(data).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = to_host.send(Frame::DataEnd).await;
    });
    let mut half_closed = false;
    while let Some(frame) = from_host.next().await {
        match frame {
            Ok(Frame::Data(bytes)) => {
                if tcp_write.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Ok(Frame::DataEnd) => {
                half_closed = true;
                break;
            }
            Ok(other) => tracing::debug!(kind = ?other.kind(), "ignoring frame in relay"),
            Err(_) => break,
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
