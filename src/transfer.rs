//! `distroctl import` and `distroctl export`: tar streams between local
//! files and the agent, with progress on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use protocol::{Compression, DistroSettings, Frame, Request, Response};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::agent_client::{self, AgentAddr, ClientError};
use crate::export_output::{OutputError, Target};

/// Bytes per `Data` frame.
const CHUNK: usize = 256 * 1024;

/// How long the agent's reply may take after it stopped reading a stream.
const REPLY_AFTER_SEND_ERROR: Duration = Duration::from_secs(5);

/// Failure of an import or export.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The local file could not be opened, read or written.
    #[error("cannot {action} {}", path.display())]
    File {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent side failed.
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// The export target is refused or cannot be written.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Progress line on stderr, shown only when stderr is a terminal.
struct Progress {
    verb: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    enabled: bool,
}

impl Progress {
    fn new(verb: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            verb,
            total,
            done: 0,
            started: now,
            last: now,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, n: usize) {
        self.done += n as u64;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            self.print();
        }
    }

    fn print(&self) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = mib(self.done) / secs;
        let line = match self.total {
            Some(t) if t > 0 => format!(
                "{} {:.1}/{:.1} MiB ({:.0}%) {:.1} MiB/s",
                self.verb,
                mib(self.done),
                mib(t),
                self.done as f64 * 100.0 / t as f64,
                rate
            ),
            _ => format!("{} {:.1} MiB {:.1} MiB/s", self.verb, mib(self.done), rate),
        };
        eprint!("\r\x1b[2K{line}");
    }

    fn finish(&self) {
        if self.enabled {
            self.print();
            eprintln!();
        }
    }
}

/// Imports `file` (a path or `-` for stdin) as distro `name`; returns the
/// number of tar bytes the agent extracted.
pub async fn import(
    agent: &AgentAddr,
    name: &str,
    file: &Path,
    settings: DistroSettings,
    top_dir: Option<String>,
) -> Result<u64, TransferError> {
    let (input, total): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = if file == Path::new("-")
    {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| TransferError::File {
                action: "open",
                path: file.to_path_buf(),
                source,
            })?;
        let len = f.metadata().await.ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let (conn, resp) = agent_client::request(
        agent,
        Request::Import {
            name: name.to_string(),
            settings,
            top_dir,
        },
    )
    .await?;
    if resp != Response::Ready {
        return Err(ClientError::Unexpected(format!("{resp:?}")).into());
    }
    let (mut sink, mut source) = conn.split();
    let path = file.to_path_buf();
    let sender = async move {
        let mut input = input;
        let mut progress = Progress::new("importing", total);
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            let n = input
                .read_buf(&mut buf)
                .await
                .map_err(|source| TransferError::File {
                    action: "read",
                    path: path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            progress.add(n);
            sink.send(Frame::Data(buf.split().freeze()))
                .await
                .map_err(ClientError::from)?;
        }
        sink.send(Frame::DataEnd).await.map_err(ClientError::from)?;
        progress.finish();
        Ok::<_, TransferError>(sink)
    };
    tokio::pin!(sender);
    // The agent may refuse the archive before it has all of it; its answer
    // wins over a send that fails because it stopped reading.
    let mut keep_sink = None;
    let answer = tokio::select! {
        sent = &mut sender => match sent {
            Ok(sink) => {
                keep_sink = Some(sink);
                source.next().await
            }
            // The agent closed while we still sent: its reason is waiting
            // to be read (or the connection is gone, and the send error says so).
            Err(send_error) => match tokio::time::timeout(REPLY_AFTER_SEND_ERROR, source.next()).await {
                Ok(Some(Ok(Frame::Response(reply)))) => Some(Ok(Frame::Response(reply))),
                _ => return Err(send_error),
            },
        },
        early = source.next() => early,
    };
    drop(keep_sink);
    match answer {
        Some(Ok(Frame::Response(Response::Imported { bytes }))) => Ok(bytes),
        Some(Ok(Frame::Response(Response::Error(e)))) => Err(ClientError::Agent(e).into()),
        Some(Ok(other)) => Err(ClientError::Unexpected(format!("{:?}", other.kind())).into()),
        Some(Err(e)) => Err(ClientError::from(e).into()),
        None => Err(ClientError::Disconnected.into()),
    }
}

/// Compression implied by a file name's extension.
pub fn compression_for(path: &Path) -> Compression {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Compression::Gzip
    } else if name.ends_with(".tar.xz") || name.ends_with(".txz") {
        Compression::Xz
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Exports distro `name` to `file` (or stdout for `-`); see
/// [`crate::export_output`] for how each kind of target is written. A
/// regular file is replaced only by a complete archive.
pub async fn export(
    agent: &AgentAddr,
    name: &str,
    file: &Path,
    compression: Compression,
) -> Result<u64, TransferError> {
    // Refuse a target that must not be written before the agent starts.
    let target = Target::choose(file)?;
    let file_err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| TransferError::File {
            action,
            path,
            source,
        }
    };
    let (mut conn, resp) = agent_client::request(
        agent,
        Request::Export {
            name: name.to_string(),
            compression,
        },
    )
    .await?;
    if resp != Response::Ready {
        return Err(ClientError::Unexpected(format!("{resp:?}")).into());
    }
    // Opening a FIFO waits for its reader.
    let output = tokio::task::spawn_blocking(move || target.open())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(file_err("open", file))??;
    let mut out = tokio::fs::File::from_std(output.writer().map_err(file_err("open", file))?);
    let mut progress = Progress::new("exporting", None);
    let result = async {
        loop {
            match conn.next().await {
                Some(Ok(Frame::Data(b))) => {
                    out.write_all(&b).await.map_err(file_err("write", file))?;
                    progress.add(b.len());
                }
                Some(Ok(Frame::DataEnd)) => break,
                Some(Ok(Frame::Response(Response::Error(e)))) => {
                    return Err(ClientError::Agent(e).into())
                }
                Some(Ok(other)) => {
                    return Err(ClientError::Unexpected(format!("{:?}", other.kind())).into())
                }
                Some(Err(e)) => return Err(ClientError::from(e).into()),
                None => return Err(ClientError::Disconnected.into()),
            }
        }
        out.flush().await.map_err(file_err("write", file))?;
        Ok::<_, TransferError>(())
    }
    .await;
    progress.finish();
    // An uncommitted temporary file is removed when `output` is dropped.
    result?;
    drop(out);
    tokio::task::spawn_blocking(move || output.commit())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(file_err("rename into place", file))??;
    Ok(progress.done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_extension() {
        assert_eq!(compression_for(Path::new("a.tar.gz")), Compression::Gzip);
        assert_eq!(compression_for(Path::new("a.tgz")), Compression::Gzip);
        assert_eq!(compression_for(Path::new("/x/a.tar.xz")), Compression::Xz);
        assert_eq!(compression_for(Path::new("a.tar.zst")), Compression::Zstd);
        assert_eq!(compression_for(Path::new("a.tar")), Compression::None);
        assert_eq!(compression_for(Path::new("-")), Compression::None);
    }
}
