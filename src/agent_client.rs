//! Talking to the guest agent: connect, handshake, one request.

use std::path::PathBuf;

use futures_util::{SinkExt, StreamExt};
use protocol::{AgentError, Frame, FrameCodec, FrameError, Hello, Request, Response, HELLO_MAGIC};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Where the agent is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// An agent listening on a Unix socket (tests, debugging).
    Unix(PathBuf),
    /// The utility VM's agent through the hybrid vsock socket: connect,
    /// send `CONNECT <port>\n`, receive `OK <n>\n`, then the stream.
    HybridVsock {
        /// The VM's vsock Unix socket.
        path: PathBuf,
        /// Guest port.
        port: u32,
    },
}

impl AgentAddr {
    fn path(&self) -> &PathBuf {
        match self {
            AgentAddr::Unix(p) | AgentAddr::HybridVsock { path: p, .. } => p,
        }
    }
}

/// How long connecting and the handshake may take. A guest whose agent is
/// not listening yet answers at once; silence means the guest is stuck.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest reply line accepted from the hybrid vsock handshake.
const MAX_HANDSHAKE_LINE: usize = 64;

/// A framed connection to the agent.
pub type Connection = Framed<UnixStream, FrameCodec>;

/// Failure talking to the agent.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the agent at {}; is it running?", path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer did not answer the handshake as an agent.
    #[error("the agent did not complete the handshake")]
    Handshake,
    /// The VM's vsock device refused the connection to the agent's port.
    #[error("the utility VM refused the connection to guest port {port}: {reply}")]
    VsockRefused {
        /// Guest port.
        port: u32,
        /// What came back.
        reply: String,
    },
    /// Bytes from the agent could not be decoded or sent.
    #[error("connection to the agent failed")]
    Frame(#[from] FrameError),
    /// The agent did not answer the handshake in time.
    #[error("the agent at {} did not answer within {CONNECT_TIMEOUT:?}", path.display())]
    Timeout {
        /// Socket path.
        path: PathBuf,
    },
    /// The agent closed the connection early.
    #[error("the agent closed the connection unexpectedly")]
    Disconnected,
    /// The agent sent something out of place.
    #[error("the agent sent an unexpected {0} message")]
    Unexpected(String),
    /// The agent refused the request.
    #[error("{0}")]
    Agent(#[source] AgentError),
}

/// Connects to the agent and completes the handshake.
pub async fn connect(addr: &AgentAddr) -> Result<Connection, ClientError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_now(addr))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                path: addr.path().clone(),
            })
        })
}

async fn connect_now(addr: &AgentAddr) -> Result<Connection, ClientError> {
    let connect_err = |source| ClientError::Connect {
        path: addr.path().clone(),
        source,
    };
    let mut stream = UnixStream::connect(addr.path())
        .await
        .map_err(connect_err)?;
    if let AgentAddr::HybridVsock { port, .. } = addr {
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(connect_err)?;
        let reply = read_line(&mut stream).await.map_err(connect_err)?;
        if !reply.starts_with("OK ") {
            return Err(ClientError::VsockRefused { port: *port, reply });
        }
    }
    let mut conn = Framed::new(stream, FrameCodec);
    conn.send(Frame::Hello(Hello::with_wall_clock(concat!(
        "distroctl ",
        env!("CARGO_PKG_VERSION")
    ))))
    .await?;
    match conn.next().await {
        Some(Ok(Frame::Hello(h))) if h.magic == HELLO_MAGIC => Ok(conn),
        Some(Ok(Frame::Response(Response::Error(e)))) => Err(ClientError::Agent(e)),
        Some(Err(e)) => Err(e.into()),
        _ => Err(ClientError::Handshake),
    }
}

/// Reads the hybrid vsock reply line byte by byte, so no stream byte after
/// it is consumed.
async fn read_line(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let b = stream.read_u8().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(e.kind(), "the guest port is not listening")
            } else {
                e
            }
        })?;
        if b == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "overlong vsock handshake reply",
            ));
        }
    }
}

/// Receives the next response frame; agent errors become [`ClientError::Agent`].
pub async fn response(conn: &mut Connection) -> Result<Response, ClientError> {
    match conn.next().await {
        Some(Ok(Frame::Response(Response::Error(e)))) => Err(ClientError::Agent(e)),
        Some(Ok(Frame::Response(r))) => Ok(r),
        Some(Ok(other)) => Err(ClientError::Unexpected(format!("{:?}", other.kind()))),
        Some(Err(e)) => Err(e.into()),
        None => Err(ClientError::Disconnected),
    }
}

/// Sends one request on a new connection and returns the connection and
/// the first response.
pub async fn request(
    addr: &AgentAddr,
    req: Request,
) -> Result<(Connection, Response), ClientError> {
    let mut conn = connect(addr).await?;
    conn.send(Frame::Request(req)).await?;
    let resp = response(&mut conn).await?;
    Ok((conn, resp))
}
