//! Talking to the guest agent: connect, handshake, one request.

use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use protocol::{AgentError, Frame, FrameCodec, FrameError, Hello, Request, Response, HELLO_MAGIC};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

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
    /// Bytes from the agent could not be decoded or sent.
    #[error("connection to the agent failed")]
    Frame(#[from] FrameError),
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

/// Connects to the agent's Unix socket and completes the handshake.
pub async fn connect(path: &Path) -> Result<Connection, ClientError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut conn = Framed::new(stream, FrameCodec);
    conn.send(Frame::Hello(Hello::new(concat!(
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
pub async fn request(path: &Path, req: Request) -> Result<(Connection, Response), ClientError> {
    let mut conn = connect(path).await?;
    conn.send(Frame::Request(req)).await?;
    let resp = response(&mut conn).await?;
    Ok((conn, resp))
}
