//! A byte stream to a TCP port inside the VM through the agent's `connect`
//! request: open it, then splice it with any local reader and writer (an
//! accepted host connection, or stdin/stdout for `distroctl proxy`). Each
//! direction ends on its own: end of input becomes `DataEnd` (the guest
//! side sees a half-close), and the agent's `DataEnd` shuts down the local
//! writer, so protocols that half-close (ssh, rsync, HTTP/1.0) work.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{ErrorKind, Frame, Request, Response};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::agent_client::{self, AgentAddr, ClientError, Connection};

/// Bytes per `Data` frame towards the guest.
const CHUNK: usize = 64 * 1024;

/// The relay could not be opened or broke.
#[derive(Debug, Error)]
pub enum RelayError {
    /// Nothing listens on the port inside the VM.
    #[error("nothing listens on port {port} in {place}")]
    Refused {
        /// The port.
        port: u16,
        /// `distro NAME` or `the VM`.
        place: String,
    },
    /// Talking to the agent failed (including an unknown distro).
    #[error("cannot open a connection to port {port}")]
    Agent {
        /// The port.
        port: u16,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// Local input or output failed.
    #[error("relaying to port {port} failed")]
    Io {
        /// The port.
        port: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl RelayError {
    /// The server inside the VM refused or reset the connection: routine
    /// for TCP, not a fault of the relay.
    pub fn is_from_server(&self) -> bool {
        match self {
            RelayError::Refused { .. } => true,
            RelayError::Agent {
                source: ClientError::Agent(e),
                ..
            } => e.kind == ErrorKind::ConnectionReset,
            _ => false,
        }
    }
}

/// Asks the agent for a stream to `port` (in `distro`'s network, which is
/// the VM's) and waits until it is connected.
pub async fn open(
    agent: &AgentAddr,
    distro: Option<&str>,
    port: u16,
) -> Result<Connection, RelayError> {
    let request = Request::Connect {
        distro: distro.map(str::to_owned),
        port,
    };
    let agent_err = |source| RelayError::Agent { port, source };
    match agent_client::request(agent, request).await {
        Ok((conn, Response::Connected)) => Ok(conn),
        Ok((_, other)) => Err(agent_err(ClientError::Unexpected(format!("{other:?}")))),
        Err(ClientError::Agent(e)) if e.kind == ErrorKind::ConnectionRefused => {
            Err(RelayError::Refused {
                port,
                place: distro.map_or_else(|| "the VM".to_owned(), |d| format!("distro {d}")),
            })
        }
        Err(e) => Err(agent_err(e)),
    }
}

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the local side to the guest.
    pub to_guest: u64,
    /// From the guest to the local side.
    pub to_local: u64,
}

/// Splices `conn` with `reader` (towards the guest) and `writer` (from the
/// guest) until both directions have ended or the agent goes away. The
/// writer is shut down and dropped as soon as the guest's side ends.
pub async fn splice<R, W>(
    conn: Connection,
    mut reader: R,
    mut writer: W,
    port: u16,
) -> Result<Moved, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io_err = |source| RelayError::Io { port, source };
    let (mut to_guest, mut from_guest) = conn.split();
    let mut moved = Moved::default();

    let upstream = async {
        let mut sent = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                break;
            }
            let data = Frame::Data(Bytes::copy_from_slice(&buf[..n]));
            to_guest.send(data).await.map_err(|e| RelayError::Agent {
                port,
                source: e.into(),
            })?;
            sent += n as u64;
        }
        to_guest
            .send(Frame::DataEnd)
            .await
            .map_err(|e| RelayError::Agent {
                port,
                source: e.into(),
            })?;
        Ok(sent)
    };
    let downstream = async move {
        let mut to_local = 0u64;
        loop {
            match from_guest.next().await {
                Some(Ok(Frame::Data(bytes))) => {
                    // Flushed at once: interactive protocols (ssh) wait
                    // for every packet, and buffered writers would hold
                    // back whatever follows the last newline.
                    writer.write_all(&bytes).await.map_err(io_err)?;
                    writer.flush().await.map_err(io_err)?;
                    to_local += bytes.len() as u64;
                }
                Some(Ok(Frame::DataEnd)) => break,
                Some(Ok(Frame::Response(Response::Error(e)))) => {
                    return Err(RelayError::Agent {
                        port,
                        source: ClientError::Agent(e),
                    })
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(RelayError::Agent {
                        port,
                        source: e.into(),
                    })
                }
                None => {
                    return Err(RelayError::Agent {
                        port,
                        source: ClientError::Disconnected,
                    })
                }
            }
        }
        writer.shutdown().await.map_err(io_err)?;
        // Dropping the writer closes it, so a pipe reader sees the end now,
        // not when the local input ends too.
        drop(writer);
        Ok(to_local)
    };
    tokio::pin!(upstream, downstream);
    // When the guest side ends first, local input may still flow (a
    // half-closed server); when the agent connection breaks, stop both.
    let mut up_done = false;
    let mut down_done = false;
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut upstream, if !up_done => {
                moved.to_guest = r?;
                up_done = true;
            }
            r = &mut downstream, if !down_done => {
                moved.to_local = r?;
                down_done = true;
            }
        }
    }
    Ok(moved)
}
