//! Accepting connections, the handshake and request dispatch.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{
    ErrorKind, Frame, FrameCodec, Hello, Request, Response, HELLO_MAGIC, PROTOCOL_VERSION,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Distros;

/// How long a new connection may take to send its hello and its request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections that may be between accept and their request at once
/// (unauthenticated: they have said nothing yet). A newcomer beyond that
/// closes the one that has waited longest, so idle connections can never
/// lock real clients out; the accept loop itself never waits.
pub const MAX_HANDSHAKING: usize = 128;

/// The connections in their handshake, oldest first (ids only grow).
#[derive(Debug, Default)]
struct Handshakes {
    next: u64,
    waiting: std::collections::BTreeMap<u64, CancellationToken>,
}

impl Handshakes {
    /// Registers a new connection, cancelling the oldest when full.
    fn enter(&mut self) -> (u64, CancellationToken) {
        if self.waiting.len() >= MAX_HANDSHAKING {
            if let Some((_, oldest)) = self.waiting.pop_first() {
                oldest.cancel();
            }
        }
        let id = self.next;
        self.next += 1;
        let token = CancellationToken::new();
        self.waiting.insert(id, token.clone());
        (id, token)
    }

    fn leave(&mut self, id: u64) {
        self.waiting.remove(&id);
    }
}

/// Any byte stream a client can reach the agent over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// A framed client connection.
pub type Connection = Framed<Box<dyn Transport>, FrameCodec>;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix socket path (host-side tests, debugging).
    Unix(PathBuf),
    /// A vsock port (inside the utility VM).
    Vsock(u32),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(ListenAddr::Unix(path.into()));
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            return port
                .parse()
                .map(ListenAddr::Vsock)
                .map_err(|_| format!("invalid vsock port {port:?}"));
        }
        Err(format!(
            "unknown listen address {s:?}: use unix:PATH or vsock:PORT"
        ))
    }
}

/// A bound listening socket of either kind.
enum Listener {
    Unix(tokio::net::UnixListener),
    Vsock(tokio_vsock::VsockListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Transport>> {
        match self {
            Listener::Unix(l) => Ok(Box::new(l.accept().await?.0)),
            Listener::Vsock(l) => Ok(Box::new(l.accept().await?.0)),
        }
    }
}

/// A listener could not be set up.
#[derive(Debug, Error)]
#[error("could not listen on {addr:?}")]
pub struct ListenError {
    addr: ListenAddr,
    #[source]
    source: std::io::Error,
}

/// The agent's shared state.
pub struct Agent {
    distros: Arc<Distros>,
    handshakes: std::sync::Mutex<Handshakes>,
    shutting_down: AtomicBool,
    shutdown: Notify,
}

impl Agent {
    /// An agent serving `distros`.
    pub fn new(distros: Arc<Distros>) -> Arc<Self> {
        Arc::new(Agent {
            distros,
            handshakes: std::sync::Mutex::default(),
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        })
    }

    /// Serves on every address until a shutdown request has been handled.
    pub async fn serve(self: Arc<Self>, addrs: &[ListenAddr]) -> Result<(), ListenError> {
        for addr in addrs {
            let err = |source| ListenError {
                addr: addr.clone(),
                source,
            };
            let listener = match addr {
                ListenAddr::Unix(path) => {
                    let _ = std::fs::remove_file(path);
                    Listener::Unix(tokio::net::UnixListener::bind(path).map_err(err)?)
                }
                ListenAddr::Vsock(port) => {
                    crate::clock::enable();
                    Listener::Vsock(
                        tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                            tokio_vsock::VMADDR_CID_ANY,
                            *port,
                        ))
                        .map_err(err)?,
                    )
                }
            };
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok(stream) => this.spawn_connection(stream),
                        Err(e) => tracing::warn!(error = %e, "accept failed"),
                    }
                }
            });
            tracing::info!(?addr, "listening");
        }
        self.shutdown.notified().await;
        Ok(())
    }

    /// Serves one client connection to its end, as the listeners do for
    /// each accepted one (for fuzzing and tests without a socket).
    pub async fn serve_stream(self: &Arc<Self>, stream: Box<dyn Transport>) {
        Arc::clone(self)
            .handle(Framed::new(stream, FrameCodec))
            .await;
    }

    fn spawn_connection(self: &Arc<Self>, stream: Box<dyn Transport>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let conn = Framed::new(stream, FrameCodec);
            this.handle(conn).await;
        });
    }

    async fn handle(self: Arc<Self>, mut conn: Connection) {
        let lock = || self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
        let (id, pushed_out) = lock().enter();
        let outcome = tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut conn)) => Some(r),
            _ = pushed_out.cancelled() => None,
        };
        lock().leave(id);
        let request = match outcome {
            Some(Ok(Some(request))) => request,
            Some(Ok(None)) => return,
            Some(Err(_)) => {
                tracing::warn!(
                    "closing connection: no hello and request within {HANDSHAKE_TIMEOUT:?}"
                );
                return;
            }
            None => {
                tracing::warn!(
                    "closing connection: {MAX_HANDSHAKING} newer ones are in their handshake"
                );
                return;
            }
        };
        tracing::debug!(?request, "request");
        if self.shutting_down.load(Ordering::SeqCst) {
            let resp = Response::error(ErrorKind::ShuttingDown, "the agent is shutting down");
            let _ = conn.send(Frame::Response(resp)).await;
            return;
        }
        self.dispatch(conn, request).await;
    }

    /// Hello both ways, then the one request; `None` when the connection
    /// ended or was refused (and answered where that helps).
    async fn handshake(&self, conn: &mut Connection) -> Option<Request> {
        match conn.next().await {
            Some(Ok(Frame::Hello(hello))) if hello.magic == HELLO_MAGIC => {
                if hello.protocol != PROTOCOL_VERSION {
                    let msg = format!(
                        "protocol version {} is not supported (agent speaks {PROTOCOL_VERSION}); update distroctl",
                        hello.protocol
                    );
                    let _ = conn
                        .send(Frame::Response(Response::error(
                            ErrorKind::VersionMismatch,
                            msg,
                        )))
                        .await;
                    return None;
                }
                crate::clock::follow_host(hello.wall_clock.as_ref());
                let reply = Hello::new(concat!("distroctl-agent ", env!("CARGO_PKG_VERSION")));
                if conn.send(Frame::Hello(reply)).await.is_err() {
                    return None;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "closing connection: bad handshake bytes");
                return None;
            }
            Some(Ok(other)) => {
                tracing::warn!(kind = ?other.kind(), "closing connection: expected hello");
                return None;
            }
            None => return None,
        }
        match conn.next().await {
            Some(Ok(Frame::Request(r))) => Some(r),
            Some(Ok(other)) => {
                let msg = format!("expected a request, got a {:?} frame", other.kind());
                let _ = conn
                    .send(Frame::Response(Response::error(ErrorKind::BadRequest, msg)))
                    .await;
                None
            }
            Some(Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "closing connection: bad request bytes");
                None
            }
            None => None,
        }
    }

    async fn dispatch(&self, mut conn: Connection, request: Request) {
        let distros = Arc::clone(&self.distros);
        let response = match request {
            Request::Exec(req) => return crate::exec::serve(conn, req, distros).await,
            Request::Import {
                name,
                settings,
                top_dir,
            } => return crate::transfer::import(conn, name, settings, top_dir, distros).await,
            Request::Export { name, compression } => {
                return crate::transfer::export(conn, name, compression, distros).await
            }
            Request::Start { name } => match distros.start(&name).await {
                Ok(s) => Response::Started {
                    already_running: s.already_running,
                    limits_available: s.limits_available,
                },
                Err(e) => e.to_response(),
            },
            Request::Terminate { name } => match distros.terminate(&name).await {
                Ok(()) => Response::Ok,
                Err(e) => e.to_response(),
            },
            Request::List => match distros.list().await {
                Ok(distros) => Response::Distros { distros },
                Err(e) => e.to_response(),
            },
            Request::Configure { name, settings } => match distros.configure(&name, settings).await
            {
                Ok(()) => Response::Ok,
                Err(e) => e.to_response(),
            },
            Request::Unregister { name } => match distros.unregister(&name).await {
                Ok(()) => Response::Ok,
                Err(e) => e.to_response(),
            },
            Request::Stats { names } => match distros.stats(&names).await {
                Ok(stats) => Response::Stats {
                    sampled_at_usec: crate::stats::monotonic_usec(),
                    distros: stats,
                    guest: tokio::task::spawn_blocking(crate::stats::guest_memory)
                        .await
                        .unwrap_or_default(),
                },
                Err(e) => e.to_response(),
            },
            Request::ConsoleLog { name, lines } => match distros.console_log(&name, lines).await {
                Ok(text) => Response::ConsoleLog { text },
                Err(e) => e.to_response(),
            },
            Request::WatchPorts => return crate::port_watch::serve(conn).await,
            Request::Connect { distro, port } => {
                return crate::relay::serve(conn, distro, port, distros).await
            }
            Request::TrimMemory => {
                let proc = std::path::Path::new("/proc");
                match tokio::task::spawn_blocking(|| crate::memory_trim::trim(proc)).await {
                    Ok(Ok(trimmed)) => {
                        tracing::info!(
                            cache_before_mib = trimmed.cache_before >> 20,
                            cache_after_mib = trimmed.cache_after >> 20,
                            "page cache trimmed"
                        );
                        Response::MemoryTrimmed {
                            cache_before_bytes: trimmed.cache_before,
                            cache_after_bytes: trimmed.cache_after,
                        }
                    }
                    Ok(Err(e)) => Response::error(ErrorKind::Internal, crate::error_chain(&e)),
                    Err(e) => {
                        Response::error(ErrorKind::Internal, format!("page cache trim failed: {e}"))
                    }
                }
            }
            Request::Shutdown => {
                self.shutting_down.store(true, Ordering::SeqCst);
                distros.terminate_all().await;
                nix::unistd::sync();
                let _ = conn.send(Frame::Response(Response::Ok)).await;
                let _ = conn.close().await;
                tracing::info!("shutdown complete");
                self.shutdown.notify_one();
                return;
            }
        };
        let _ = conn.send(Frame::Response(response)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_handshake_list_cancels_the_oldest_connection() {
        let mut handshakes = Handshakes::default();
        let tokens: Vec<_> = (0..MAX_HANDSHAKING).map(|_| handshakes.enter()).collect();

        let (_, newest) = handshakes.enter();

        assert!(tokens[0].1.is_cancelled(), "the oldest was pushed out");
        assert!(tokens[1..].iter().all(|(_, t)| !t.is_cancelled()));
        assert!(!newest.is_cancelled());
        assert_eq!(handshakes.waiting.len(), MAX_HANDSHAKING);
        handshakes.leave(tokens[5].0);
        assert_eq!(handshakes.waiting.len(), MAX_HANDSHAKING - 1);
    }
}
