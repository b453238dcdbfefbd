//! `distroctl exec` and `distroctl shell`: a process in a distro with the
//! local stdio attached, binary-safe, with signals and window size forwarded.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use protocol::{ErrorKind, ExecRequest, Frame, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::agent_client::{self, AgentAddr, ClientError};
use crate::terminal::{self, RawMode};

/// Bytes read from stdin per frame.
const CHUNK: usize = 64 * 1024;

/// Runs `req` and returns the remote exit status. With `req.tty` set and a
/// local terminal, the terminal is in raw mode for the duration.
pub async fn run(agent: &AgentAddr, req: ExecRequest) -> Result<i32, ClientError> {
    let tty = req.tty.is_some();
    let mut conn = agent_client::connect(agent).await?;
    conn.send(Frame::Request(Request::Exec(req))).await?;
    match agent_client::response(&mut conn).await {
        Ok(Response::ExecStarted { .. }) => {}
        Ok(other) => return Err(ClientError::Unexpected(format!("{other:?}"))),
        Err(ClientError::Agent(e)) if e.kind == ErrorKind::CommandNotFound => {
            eprintln!("distroctl: {}", e.message);
            return Ok(127);
        }
        Err(ClientError::Agent(e)) if e.kind == ErrorKind::NotExecutable => {
            eprintln!("distroctl: {}", e.message);
            return Ok(126);
        }
        Err(e) => return Err(e),
    }
    let raw = if tty { RawMode::enable() } else { None };
    let (mut sink, mut source) = conn.split();
    let (tx, mut rx) = mpsc::channel::<Frame>(8);

    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    let stdin_task = tokio::spawn(forward_stdin(tx.clone()));
    let signal_task = tokio::spawn(forward_signals(tx, tty));

    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let result = loop {
        match source.next().await {
            Some(Ok(Frame::Stdout(b))) => {
                if stdout.write_all(&b).await.is_err() || stdout.flush().await.is_err() {
                    // Local stdout closed (e.g. `| head`): stop like a pipe would.
                    break Ok(141);
                }
            }
            Some(Ok(Frame::Stderr(b))) => {
                let _ = stderr.write_all(&b).await;
                let _ = stderr.flush().await;
            }
            Some(Ok(Frame::Exit(code))) => break Ok(code),
            Some(Ok(Frame::Response(Response::Error(e)))) => break Err(ClientError::Agent(e)),
            Some(Ok(other)) => break Err(ClientError::Unexpected(format!("{:?}", other.kind()))),
            Some(Err(e)) => break Err(e.into()),
            None => break Err(ClientError::Disconnected),
        }
    };
    stdin_task.abort();
    signal_task.abort();
    writer.abort();
    drop(raw);
    result
}

/// Runs `req` with no input and returns its exit status and its standard
/// output and error, interleaved as they came (for setup scripts whose
/// output matters only when they fail).
pub async fn output(agent: &AgentAddr, req: ExecRequest) -> Result<(i32, Vec<u8>), ClientError> {
    let mut conn = agent_client::connect(agent).await?;
    conn.send(Frame::Request(Request::Exec(req))).await?;
    match agent_client::response(&mut conn).await? {
        Response::ExecStarted { .. } => {}
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    }
    conn.send(Frame::StdinEof).await?;
    let mut out = Vec::new();
    loop {
        match conn.next().await {
            Some(Ok(Frame::Stdout(b) | Frame::Stderr(b))) => out.extend_from_slice(&b),
            Some(Ok(Frame::Exit(code))) => return Ok((code, out)),
            Some(Ok(Frame::Response(Response::Error(e)))) => return Err(ClientError::Agent(e)),
            Some(Ok(other)) => return Err(ClientError::Unexpected(format!("{:?}", other.kind()))),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Disconnected),
        }
    }
}

async fn forward_stdin(tx: mpsc::Sender<Frame>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        match stdin.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Frame::StdinEof).await;
                return;
            }
            Ok(_) => {
                if tx.send(Frame::Stdin(buf.split().freeze())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Forwards SIGWINCH as a resize (with a terminal) and termination signals
/// as signals for the remote process. In raw mode Ctrl-C arrives as a byte
/// and the remote terminal turns it into SIGINT.
async fn forward_signals(tx: mpsc::Sender<Frame>, tty: bool) {
    let kinds = [
        (SignalKind::interrupt(), libc::SIGINT),
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::hangup(), libc::SIGHUP),
        (SignalKind::quit(), libc::SIGQUIT),
    ];
    let mut streams = Vec::new();
    for (kind, n) in kinds {
        if let Ok(s) = signal(kind) {
            streams.push((s, n));
        }
    }
    let mut winch = signal(SignalKind::window_change()).ok();
    loop {
        let next = futures_util::future::select_all(
            streams
                .iter_mut()
                .map(|(s, n)| Box::pin(async move { s.recv().await.map(|_| *n) })),
        );
        let frame = tokio::select! {
            (got, _, _) = next => match got {
                Some(n) => Frame::Signal(n as u32),
                None => return,
            },
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } }, if tty => {
                let (rows, cols) = terminal::size();
                Frame::Resize { rows, cols }
            }
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}
