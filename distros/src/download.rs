//! HTTP(S) downloads into the cache, verified by SHA-256 while streaming.
//!
//! A download is written to `<dir>/<sha256>.partial` and renamed to
//! `<dir>/<sha256>.<ext>` only once its checksum matches, so a finished name
//! in the cache is always a verified file and a second request for the same
//! checksum makes no network request. An interrupted transfer leaves the
//! partial file, and the next attempt continues it with a `Range` request.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::compression::{self, Compression};
use crate::progress::{ProgressMode, TransferProgress};

/// Transfers tried for one download before an interruption is final.
const MAX_ATTEMPTS: u32 = 4;
/// The largest checksum list accepted.
const MAX_TEXT_BYTES: u64 = 4 << 20;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No response: connection refused, host not found, TLS failure.
    #[error("request for {url} failed")]
    Request {
        /// The URL.
        url: String,
        /// What the HTTP client reported.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code and reason.
        status: String,
    },
    /// The connection broke during the body, on every attempt.
    #[error("download of {url} was interrupted {attempts} times")]
    Interrupted {
        /// The URL.
        url: String,
        /// How many transfers were tried.
        attempts: u32,
        /// The last interruption.
        #[source]
        source: io::Error,
    },
    /// The downloaded bytes are not the expected ones; the file was deleted.
    #[error("checksum mismatch for {url}: expected {expected}, got {got}")]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// The SHA-256 the catalog or user gave.
        expected: String,
        /// The SHA-256 of what arrived.
        got: String,
    },
    /// The download is not a tarball (no compression or tar header found).
    #[error("{url} did not give a tar archive (gzip, xz, zstd or plain tar)")]
    NotATarball {
        /// The URL.
        url: String,
    },
    /// A response was larger than a small text file may be.
    #[error("{url} is larger than {MAX_TEXT_BYTES} bytes")]
    TooLarge {
        /// The URL.
        url: String,
    },
    /// Reading or writing the cache failed (disk full, permissions).
    #[error("cannot write {path}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// A verified file in the download cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedFile {
    pub(crate) path: PathBuf,
    pub(crate) sha256: String,
    pub(crate) compression: Compression,
}

/// Lowercase hex of a digest.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

fn cache_error(path: &Path) -> impl FnOnce(io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Cache {
        path: path.to_owned(),
        source,
    }
}

/// The verified tarball with checksum `sha256` in `dir`, if present.
pub(crate) fn cached_tarball(dir: &Path, sha256: &str) -> Option<CachedFile> {
    compression::ALL.into_iter().find_map(|compression| {
        let path = dir.join(format!("{sha256}.{}", compression.extension()));
        path.is_file().then(|| CachedFile {
            path,
            sha256: sha256.to_owned(),
            compression,
        })
    })
}

/// Downloads over HTTP(S) with progress reporting.
pub(crate) struct Fetcher {
    /// Honours the `*_PROXY` environment variables.
    agent: ureq::Agent,
    /// For the loopback host, which is never reached through a proxy.
    direct_agent: ureq::Agent,
    progress: ProgressMode,
}

/// How one transfer ended without a complete file.
enum TransferFailure {
    /// The body broke off; the partial file holds what arrived.
    Interrupted(io::Error),
    /// Nothing to retry.
    Fatal(DownloadError),
}

/// A complete transfer into the partial file.
struct Transferred {
    sha256: String,
    /// Whether bytes from an earlier transfer were reused.
    resumed: bool,
}

impl Fetcher {
    /// A fetcher reporting progress as `progress` says.
    pub(crate) fn new(progress: ProgressMode) -> Fetcher {
        let agent = |proxy: Option<ureq::Proxy>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(proxy)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                // Per read, not per body: a large download on a slow link is
                // fine, a connection that stops delivering is not.
                .timeout_per_read(Some(Duration::from_secs(60)))
                .user_agent(concat!("distroctl/", env!("CARGO_PKG_VERSION")))
                // The system's trust store, so that a CA the administrator
                // added (a company proxy, a private mirror) is trusted too.
                .tls_config(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                        .build(),
                )
                .build()
                .into()
        };
        Fetcher {
            agent: agent(ureq::Proxy::try_from_env()),
            direct_agent: agent(None),
            progress,
        }
    }

    /// Fetches a small text file (a checksum list) into memory.
    pub(crate) fn fetch_text(&self, url: &str) -> Result<String, DownloadError> {
        let response = self.get(url, None)?;
        check_status(url, response.status(), &[200])?;
        let mut text = String::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_TEXT_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| DownloadError::Interrupted {
                url: url.to_owned(),
                attempts: 1,
                source,
            })?;
        if text.len() as u64 > MAX_TEXT_BYTES {
            return Err(DownloadError::TooLarge {
                url: url.to_owned(),
            });
        }
        Ok(text)
    }

    /// Downloads `url` into `dir` unless a file with `expected` checksum is
    /// already cached there. Without `expected`, the file is always fetched
    /// and named after the checksum of what arrived.
    pub(crate) fn download(
        &self,
        url: &str,
        expected: Option<&str>,
        dir: &Path,
    ) -> Result<CachedFile, DownloadError> {
        if let Some(cached) = expected.and_then(|sha256| cached_tarball(dir, sha256)) {
            tracing::info!(url, path = %cached.path.display(), "using cached download");
            return Ok(cached);
        }
        fs::create_dir_all(dir).map_err(cache_error(dir))?;
        let partial = match expected {
            Some(sha256) => dir.join(format!("{sha256}.partial")),
            None => {
                let partial = dir.join(format!("url-{}.partial", sha256_hex(url.as_bytes())));
                // Without a checksum, bytes left by an earlier run cannot be
                // told apart from a file that has since changed on the
                // server: only interruptions within this call are resumed.
                remove_quietly(&partial);
                partial
            }
        };
        let result = self.download_into(url, expected, dir, &partial);
        // A request that failed before any byte arrived (refused, HTTP
        // 404) leaves nothing behind; a partial file with bytes is kept
        // for the next attempt to continue.
        if result.is_err() && fs::metadata(&partial).is_ok_and(|m| m.len() == 0) {
            remove_quietly(&partial);
        }
        result
    }

    /// The transfer attempts of [`Self::download`] into `partial`.
    fn download_into(
        &self,
        url: &str,
        expected: Option<&str>,
        dir: &Path,
        partial: &Path,
    ) -> Result<CachedFile, DownloadError> {
        let partial = partial.to_path_buf();
        let mut attempts = 0;
        let mut restarted_after_mismatch = false;
        loop {
            attempts += 1;
            let transferred = match self.transfer(url, &partial) {
                Ok(transferred) => transferred,
                Err(TransferFailure::Interrupted(source)) if attempts < MAX_ATTEMPTS => {
                    tracing::warn!(url, attempt = attempts, error = %source, "download interrupted; resuming");
                    continue;
                }
                Err(TransferFailure::Interrupted(source)) => {
                    return Err(DownloadError::Interrupted {
                        url: url.to_owned(),
                        attempts,
                        source,
                    })
                }
                Err(TransferFailure::Fatal(err)) => return Err(err),
            };
            match expected {
                Some(sha256) if transferred.sha256 != sha256 => {
                    remove_quietly(&partial);
                    // The bytes kept from an earlier transfer may be what is
                    // wrong (the file changed on the server between tries):
                    // one clean download decides.
                    if transferred.resumed && !restarted_after_mismatch {
                        tracing::warn!(url, "resumed download failed its checksum; downloading again from the start");
                        restarted_after_mismatch = true;
                        continue;
                    }
                    return Err(DownloadError::ChecksumMismatch {
                        url: url.to_owned(),
                        expected: sha256.to_owned(),
                        got: transferred.sha256,
                    });
                }
                _ => return finish(url, &partial, dir, transferred.sha256),
            }
        }
    }

    fn get(
        &self,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, DownloadError> {
        let agent = if is_loopback_url(url) {
            &self.direct_agent
        } else {
            &self.agent
        };
        let mut request = agent.get(url);
        if let Some(start) = range_from {
            request = request.header("Range", format!("bytes={start}-"));
        }
        request.call().map_err(|source| DownloadError::Request {
            url: url.to_owned(),
            source: Box::new(source),
        })
    }

    /// One transfer into `partial`, continuing what it already holds.
    fn transfer(&self, url: &str, partial: &Path) -> Result<Transferred, TransferFailure> {
        let fatal_cache = |source| TransferFailure::Fatal(cache_error(partial)(source));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
            .map_err(fatal_cache)?;
        let mut hasher = Sha256::new();
        let mut have = io::copy(&mut file, &mut hasher).map_err(fatal_cache)?;

        let response = self
            .get(url, (have > 0).then_some(have))
            .map_err(TransferFailure::Fatal)?;
        let status = response.status().as_u16();
        let mut total = response.body().content_length();
        match status {
            206 if have > 0 => match content_range_start(&response) {
                Some(start) if start == have => total = total.map(|len| len + have),
                _ => {
                    tracing::info!(
                        url,
                        "server answered a different range; downloading from the start"
                    );
                    drop(response);
                    file.set_len(0).map_err(fatal_cache)?;
                    return self.transfer(url, partial);
                }
            },
            200 => {
                if have > 0 {
                    tracing::info!(
                        url,
                        "server ignored the range request; downloading from the start"
                    );
                    file.set_len(0).map_err(fatal_cache)?;
                    file.seek(SeekFrom::Start(0)).map_err(fatal_cache)?;
                    hasher = Sha256::new();
                    have = 0;
                }
            }
            // Everything has already arrived: the partial file is complete.
            416 if have > 0 => {
                return Ok(Transferred {
                    sha256: to_hex(&hasher.finalize()),
                    resumed: true,
                })
            }
            _ => {
                check_status(url, response.status(), &[200]).map_err(TransferFailure::Fatal)?;
            }
        }
        let resumed = have > 0;
        let file_name = url.rsplit('/').find(|part| !part.is_empty()).unwrap_or(url);
        let mut progress = TransferProgress::start(self.progress, file_name, total, have);
        let mut body = response.into_body().into_reader();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(TransferFailure::Interrupted(err)),
            };
            file.write_all(&buffer[..read]).map_err(fatal_cache)?;
            hasher.update(&buffer[..read]);
            progress.advance(read as u64);
        }
        file.sync_all().map_err(fatal_cache)?;
        progress.finish();
        Ok(Transferred {
            sha256: to_hex(&hasher.finalize()),
            resumed,
        })
    }
}

/// Moves a verified partial file to its final name.
fn finish(
    url: &str,
    partial: &Path,
    dir: &Path,
    sha256: String,
) -> Result<CachedFile, DownloadError> {
    let Some(compression) = Compression::of_file(partial).map_err(cache_error(partial))? else {
        remove_quietly(partial);
        return Err(DownloadError::NotATarball {
            url: url.to_owned(),
        });
    };
    let path = dir.join(format!("{sha256}.{}", compression.extension()));
    fs::rename(partial, &path).map_err(cache_error(&path))?;
    tracing::info!(url, path = %path.display(), "download verified");
    Ok(CachedFile {
        path,
        sha256,
        compression,
    })
}

fn check_status(
    url: &str,
    status: ureq::http::StatusCode,
    accepted: &[u16],
) -> Result<(), DownloadError> {
    if accepted.contains(&status.as_u16()) {
        return Ok(());
    }
    Err(DownloadError::Status {
        url: url.to_owned(),
        status: format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        )
        .trim_end()
        .to_owned(),
    })
}

/// The first byte position of a `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// Whether `url` points at this machine (`127.0.0.1`, `localhost`, `[::1]`).
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// Deletes a file that failed verification; a missing file is no error.
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(err) = fs::remove_file(path) {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %err, "could not delete a bad download");
        }
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so
/// readers never see half a file.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("partial");
    let mut file = File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_hex_is_lowercase_and_padded() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xab]), "000fab");
    }

    #[test]
    fn sha256_hex_of_empty_input_is_the_known_value() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn is_loopback_url_recognises_only_this_machine() {
        assert!(is_loopback_url("http://127.0.0.1:8080/x.tar"));
        assert!(is_loopback_url("http://localhost/x.tar"));
        assert!(is_loopback_url("http://[::1]:80/x.tar"));
        assert!(!is_loopback_url("http://127.0.0.1.example.org/x.tar"));
        assert!(!is_loopback_url("https://example.org/127.0.0.1"));
    }

    #[test]
    fn cached_tarball_finds_only_finished_files() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        fs::write(dir.path().join(format!("{sha}.partial")), b"x").unwrap();

        assert_eq!(cached_tarball(dir.path(), &sha), None);

        fs::write(dir.path().join(format!("{sha}.tar.zst")), b"x").unwrap();
        let cached = cached_tarball(dir.path(), &sha).unwrap();
        assert_eq!(cached.compression, Compression::Zstd);
    }

    #[test]
    fn write_atomically_replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/value");

        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("partial").exists());
    }
}
