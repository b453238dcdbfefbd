//! Import and export: tar streams between protocol `Data` frames and the
//! blocking archive code.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::{Compression, DistroSettings, ErrorKind, Frame, Response};
use tokio::sync::mpsc;

use crate::archive;
use crate::lifecycle::{store_error_response, Distros};
use crate::server::Connection;

/// Chunks buffered between the connection and the archive thread.
const QUEUE: usize = 16;

/// Size of export chunks.
const CHUNK: usize = 256 * 1024;

/// Blocking [`Read`] over chunks arriving from the connection.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Serves an import: answers `Ready`, feeds `Data` frames to the extractor
/// and installs the distro only when the whole stream was extracted.
pub async fn import(
    mut conn: Connection,
    name: String,
    settings: DistroSettings,
    top_dir: Option<String>,
    distros: Arc<Distros>,
) {
    if let Err(e) = crate::settings_check::check_limits(&settings.limits) {
        let resp = crate::lifecycle::LifecycleError::from(e).to_response();
        let _ = conn.send(Frame::Response(resp)).await;
        return;
    }
    let _reservation = match distros.reserve_import(&name).await {
        Ok(r) => r,
        Err(resp) => {
            let _ = conn.send(Frame::Response(resp)).await;
            return;
        }
    };
    let staging = match distros.store.begin_import(&name, &settings) {
        Ok(s) => s,
        Err(e) => {
            let _ = conn.send(Frame::Response(store_error_response(&e))).await;
            return;
        }
    };
    if conn.send(Frame::Response(Response::Ready)).await.is_err() {
        return;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let rootfs = staging.rootfs();
    let extractor = tokio::task::spawn_blocking(move || {
        archive::extract(
            ChannelReader {
                rx,
                current: Bytes::new(),
            },
            &rootfs,
        )
    });
    loop {
        let next = conn.next().await;
        let item = match next {
            Some(Ok(Frame::Data(bytes))) => Ok(bytes),
            Some(Ok(Frame::DataEnd)) => break,
            Some(Ok(other)) => Err(io::Error::other(format!(
                "unexpected {:?} frame during import",
                other.kind()
            ))),
            Some(Err(e)) => Err(io::Error::other(e)),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client disconnected before the archive ended",
            )),
        };
        let failed = item.is_err();
        // A closed channel means the extractor stopped early with an error.
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let result = extractor.await.unwrap_or_else(|e| {
        Err(archive::ImportError::Read(io::Error::other(format!(
            "extraction thread failed: {e}"
        ))))
    });
    let lifted = match (&result, &top_dir) {
        (Ok(_), Some(dir)) => staging.lift(dir),
        _ => Ok(()),
    };
    if result.is_ok() && lifted.is_ok() {
        if let Err(resp) = check_imported(&name, &staging, settings).await {
            drop(staging);
            let _ = conn.send(Frame::Response(resp)).await;
            return;
        }
    }
    let response = match (result, lifted) {
        (Ok(_), Err(e)) => {
            tracing::warn!(distro = %name, error = %crate::error_chain(&e), "import failed");
            drop(staging);
            store_error_response(&e)
        }
        (Ok(bytes), Ok(())) => match staging.commit() {
            Ok(()) => {
                tracing::info!(distro = %name, bytes, "imported");
                Response::Imported { bytes }
            }
            Err(e) => store_error_response(&e),
        },
        (Err(e), _) => {
            tracing::warn!(distro = %name, error = %crate::error_chain(&e), "import failed");
            // Dropping the staging directory removes everything extracted.
            drop(staging);
            let kind = match e.fault() {
                archive::ImportFault::Archive => ErrorKind::InvalidArchive,
                archive::ImportFault::Input => ErrorKind::BadRequest,
                archive::ImportFault::Destination => ErrorKind::Internal,
            };
            Response::error(
                kind,
                format!("import of {name} failed: {}", crate::error_chain(&e)),
            )
        }
    };
    let _ = conn.send(Frame::Response(response)).await;
}

/// Checks the settings an import asked for (a default user, systemd)
/// against the extracted files, before the distro is installed.
async fn check_imported(
    name: &str,
    staging: &crate::store::Staging,
    settings: DistroSettings,
) -> Result<(), Response> {
    let rootfs = staging.rootfs();
    let distro = name.to_string();
    let checked = crate::distro_root::off_runtime(name, move || {
        let root = crate::distro_root::DistroRoot::open(&distro, &rootfs)?;
        Ok(crate::settings_check::check_against_root(&root, &settings))
    })
    .await
    .map_err(crate::settings_check::SettingsError::from)
    .and_then(|r| r);
    checked.map_err(|e| {
        let e = crate::lifecycle::LifecycleError::from(e);
        tracing::warn!(distro = %name, error = %crate::error_chain(&e), "import refused");
        let mut resp = e.to_response();
        if let Response::Error(err) = &mut resp {
            err.message = format!("import of {name} refused: {}", err.message);
        }
        resp
    })
}

/// Blocking [`Write`] that hands chunks to the connection task.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// Serves an export: answers `Ready`, streams the tar as `Data` frames and
/// ends with `DataEnd` (or an error response).
pub async fn export(
    mut conn: Connection,
    name: String,
    compression: Compression,
    distros: Arc<Distros>,
) {
    let rootfs = match distros.store.rootfs(&name) {
        Ok(r) => r,
        Err(e) => {
            let _ = conn.send(Frame::Response(store_error_response(&e))).await;
            return;
        }
    };
    if conn.send(Frame::Response(Response::Ready)).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        archive::export(&rootfs, compression, &mut out)?;
        out.flush().map_err(archive::ExportError::Write)
    });
    while let Some(chunk) = rx.recv().await {
        if conn.send(Frame::Data(chunk)).await.is_err() {
            // Dropping the receiver makes the writer fail and stop.
            drop(rx);
            let _ = writer.await;
            return;
        }
    }
    let last = match writer.await {
        Ok(Ok(())) => Frame::DataEnd,
        Ok(Err(e)) => Frame::Response(Response::error(
            ErrorKind::Internal,
            format!("export of {name} failed: {}", crate::error_chain(&e)),
        )),
        Err(e) => Frame::Response(Response::error(
            ErrorKind::Internal,
            format!("export of {name} failed: {e}"),
        )),
    };
    let _ = conn.send(last).await;
}
