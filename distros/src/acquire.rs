//! Getting a release's root filesystem tarball into the cache: download and
//! verify, or build with mmdebstrap, then unwrap an OCI archive's layer.
//!
//! Cache layout under the directory the caller gives:
//! - `downloads/<sha256>.<ext>`: verified downloads (and OCI layers), with
//!   `<sha256>.partial` while a transfer is under way or interrupted;
//! - `downloads/<sha256>.oci-layer`: which layer an OCI archive holds;
//! - `checksums/<key>`: SHA-256s read from published checksum lists;
//! - `mmdebstrap/<recipe hash>.tar`: tarballs built by mmdebstrap;
//! - `locks/<entry>.lock`: held while one process fills an entry.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cache_lock::CacheLock;
use crate::catalog::{Checksum, Release, Source, TarballLayout, TarballSource};
use crate::checksum_list;
use crate::compression::Compression;
use crate::download::{self, CachedFile, DownloadError, Fetcher};
use crate::mmdebstrap::{self, MmdebstrapError};
use crate::oci_archive::{self, OciError};
use crate::progress::ProgressMode;

/// How [`acquire`] and [`acquire_url`] behave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcquireOptions {
    /// Ignore what is cached: download or build again, and re-read
    /// published checksum lists.
    pub refresh: bool,
    /// How progress is shown.
    pub progress: ProgressMode,
}

/// A root filesystem tarball ready to be unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsTarball {
    /// The tarball in the cache. Callers must not modify or delete it.
    pub path: PathBuf,
    /// Its compression.
    pub compression: Compression,
    /// A top-level directory that holds the root filesystem and must be
    /// stripped from every path on extraction (`root.x86_64` for Arch).
    pub top_dir: Option<String>,
    /// The tarball's SHA-256 (for mmdebstrap builds: the recipe's hash).
    pub sha256: String,
}

/// Why a root filesystem could not be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Downloading the tarball or its checksum list failed.
    #[error("cannot download {what}")]
    Download {
        /// The release or URL.
        what: String,
        /// Why.
        #[source]
        source: DownloadError,
    },
    /// The published checksum list does not mention the tarball.
    #[error("{list} lists no SHA-256 for {file_name}")]
    NotInChecksumList {
        /// The checksum list URL.
        list: String,
        /// The file looked for.
        file_name: String,
    },
    /// A checksum given by the caller is malformed.
    #[error("`{value}` is not a SHA-256 (64 hex digits)")]
    BadChecksum {
        /// What was given.
        value: String,
    },
    /// mmdebstrap failed.
    #[error("cannot build {what}")]
    Build {
        /// The release.
        what: String,
        /// Why.
        #[source]
        source: MmdebstrapError,
    },
    /// The OCI archive's root filesystem layer could not be taken out.
    #[error("cannot unpack the root filesystem layer of {what}")]
    OciLayer {
        /// The release.
        what: String,
        /// Why.
        #[source]
        source: OciError,
    },
    /// The cache could not be prepared.
    #[error("cannot write {path}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Makes `release`'s root filesystem tarball available under `cache_dir`,
/// downloading or building it unless it is cached.
pub fn acquire(
    release: &Release,
    cache_dir: &Path,
    options: &AcquireOptions,
) -> Result<RootfsTarball, AcquireError> {
    let what = release.qualified_name();
    match release.source() {
        Source::Tarball(tarball) => acquire_tarball(&what, tarball, cache_dir, options),
        Source::Mmdebstrap(recipe) => {
            let _lock = lock_entry(cache_dir, &mmdebstrap::recipe_key(recipe))?;
            let built = mmdebstrap::build(
                recipe,
                &cache_dir.join("mmdebstrap"),
                options.refresh,
                options.progress,
            )
            .map_err(|source| AcquireError::Build { what, source })?;
            Ok(rootfs(built, None))
        }
    }
}

/// `release`'s root filesystem tarball if the cache already holds it;
/// never touches the network (for listings that show what is downloaded).
pub fn cached(release: &Release, cache_dir: &Path) -> Option<RootfsTarball> {
    match release.source() {
        Source::Mmdebstrap(recipe) => {
            mmdebstrap::cached(recipe, &cache_dir.join("mmdebstrap")).map(|f| rootfs(f, None))
        }
        Source::Tarball(tarball) => {
            let sha256 = match &tarball.checksum {
                Checksum::Sha256(sha256) => sha256.clone(),
                Checksum::Sha256List { url, file_name } => {
                    remembered_sha256(&remembered_path(cache_dir, url, file_name))?
                }
            };
            let downloads = cache_dir.join("downloads");
            match &tarball.layout {
                TarballLayout::Rootfs { top_dir } => download::cached_tarball(&downloads, &sha256)
                    .map(|f| rootfs(f, top_dir.clone())),
                TarballLayout::OciArchive => {
                    oci_archive::cached_layer(&downloads, &sha256).map(|f| rootfs(f, None))
                }
            }
        }
    }
}

/// Downloads `url` into the cache for `distroctl import`. With
/// `expected_sha256` the file is verified and served from the cache next
/// time; without it, it is downloaded every time.
pub fn acquire_url(
    url: &str,
    expected_sha256: Option<&str>,
    cache_dir: &Path,
    options: &AcquireOptions,
) -> Result<RootfsTarball, AcquireError> {
    let expected = expected_sha256.map(normalise_sha256).transpose()?;
    let downloads = cache_dir.join("downloads");
    let entry = match &expected {
        Some(sha256) => sha256.clone(),
        None => format!("url-{}", download::sha256_hex(url.as_bytes())),
    };
    let _lock = lock_entry(cache_dir, &entry)?;
    if options.refresh {
        if let Some(sha256) = &expected {
            forget_download(&downloads, sha256)?;
        }
    }
    let file = Fetcher::new(options.progress)
        .download(url, expected.as_deref(), &downloads)
        .map_err(|source| AcquireError::Download {
            what: url.to_owned(),
            source,
        })?;
    Ok(rootfs(file, None))
}

fn acquire_tarball(
    what: &str,
    tarball: &TarballSource,
    cache_dir: &Path,
    options: &AcquireOptions,
) -> Result<RootfsTarball, AcquireError> {
    let fetcher = Fetcher::new(options.progress);
    let download_error = |source| AcquireError::Download {
        what: what.to_owned(),
        source,
    };
    let sha256 = match &tarball.checksum {
        Checksum::Sha256(sha256) => sha256.clone(),
        Checksum::Sha256List { url, file_name } => {
            listed_sha256(&fetcher, url, file_name, cache_dir, options.refresh)?
        }
    };
    let downloads = cache_dir.join("downloads");
    let _lock = lock_entry(cache_dir, &sha256)?;
    if options.refresh {
        forget_download(&downloads, &sha256)?;
    }
    let file = fetcher
        .download(&tarball.url, Some(&sha256), &downloads)
        .map_err(download_error)?;
    match &tarball.layout {
        TarballLayout::Rootfs { top_dir } => Ok(rootfs(file, top_dir.clone())),
        TarballLayout::OciArchive => {
            let layer = oci_archive::extract_layer(&file, &downloads).map_err(|source| {
                AcquireError::OciLayer {
                    what: what.to_owned(),
                    source,
                }
            })?;
            Ok(rootfs(layer, None))
        }
    }
}

/// The SHA-256 of `file_name` from the published list at `list_url`,
/// remembered in `checksums/` so that a cached tarball needs no network.
fn listed_sha256(
    fetcher: &Fetcher,
    list_url: &str,
    file_name: &str,
    cache_dir: &Path,
    refresh: bool,
) -> Result<String, AcquireError> {
    let remembered = remembered_path(cache_dir, list_url, file_name);
    if !refresh {
        if let Some(sha256) = remembered_sha256(&remembered) {
            return Ok(sha256);
        }
    }
    let list = fetcher
        .fetch_text(list_url)
        .map_err(|source| AcquireError::Download {
            what: list_url.to_owned(),
            source,
        })?;
    let sha256 = checksum_list::find_sha256(&list, file_name).ok_or_else(|| {
        AcquireError::NotInChecksumList {
            list: list_url.to_owned(),
            file_name: file_name.to_owned(),
        }
    })?;
    tracing::info!(
        list = list_url,
        file_name,
        sha256,
        "checksum read from published list"
    );
    download::write_atomically(&remembered, sha256.as_bytes()).map_err(|source| {
        AcquireError::Cache {
            path: remembered.clone(),
            source,
        }
    })?;
    Ok(sha256)
}

/// Where the SHA-256 read for `file_name` from `list_url` is remembered.
fn remembered_path(cache_dir: &Path, list_url: &str, file_name: &str) -> PathBuf {
    let key = download::sha256_hex(format!("{list_url}\n{file_name}").as_bytes());
    cache_dir.join("checksums").join(key)
}

fn remembered_sha256(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    normalise_sha256(text.trim()).ok()
}

/// Waits until no other process is filling cache entry `entry`, then
/// keeps others out until the returned lock is dropped.
fn lock_entry(cache_dir: &Path, entry: &str) -> Result<CacheLock, AcquireError> {
    let dir = cache_dir.join("locks");
    let cache_error = |path: &Path| {
        let path = path.to_owned();
        move |source| AcquireError::Cache { path, source }
    };
    fs::create_dir_all(&dir).map_err(cache_error(&dir))?;
    let path = dir.join(format!("{entry}.lock"));
    CacheLock::acquire(&path).map_err(cache_error(&path))
}

/// Removes the cached download with checksum `sha256`, so it is fetched again.
fn forget_download(downloads: &Path, sha256: &str) -> Result<(), AcquireError> {
    if let Some(cached) = download::cached_tarball(downloads, sha256) {
        fs::remove_file(&cached.path).map_err(|source| AcquireError::Cache {
            path: cached.path,
            source,
        })?;
    }
    Ok(())
}

fn normalise_sha256(value: &str) -> Result<String, AcquireError> {
    let lower = value.trim().to_ascii_lowercase();
    if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(lower)
    } else {
        Err(AcquireError::BadChecksum {
            value: value.to_owned(),
        })
    }
}

fn rootfs(file: CachedFile, top_dir: Option<String>) -> RootfsTarball {
    RootfsTarball {
        path: file.path,
        compression: file.compression,
        top_dir,
        sha256: file.sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_sha256_accepts_uppercase_and_rejects_short() {
        let upper = "AB".repeat(32);

        assert_eq!(normalise_sha256(&upper).unwrap(), "ab".repeat(32));
        assert!(matches!(
            normalise_sha256("abc"),
            Err(AcquireError::BadChecksum { .. })
        ));
    }
}
