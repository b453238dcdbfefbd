//! Taking the root filesystem layer out of an OCI image archive (Fedora's
//! container base image): `index.json` names a manifest blob, the manifest
//! names exactly one layer blob, and that layer is a tarball of the root
//! filesystem. Every blob is verified against its digest.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::compression::Compression;
use crate::download::{self, CachedFile};

/// Blobs up to this size are held in memory while the archive is scanned
/// for the index and manifest.
const SMALL_BLOB: u64 = 1 << 20;

/// Why the layer could not be taken out of an OCI archive.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Reading the archive failed.
    #[error("cannot read OCI archive {path}")]
    Read {
        /// The archive.
        path: PathBuf,
        /// The I/O or decompression error.
        #[source]
        source: io::Error,
    },
    /// Writing the layer into the cache failed.
    #[error("cannot write {path}")]
    Write {
        /// The layer file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The archive's structure is not what an OCI image archive holds.
    #[error("OCI archive {path} is not usable: {reason}")]
    Layout {
        /// The archive.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
}

/// `index.json`, an image index blob, or an image manifest blob: an index
/// lists `manifests`, a manifest lists `layers`.
#[derive(Deserialize)]
struct ImageJson {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

/// How many indexes may lead to the manifest (`index.json` → index → manifest).
const MAX_INDEX_DEPTH: usize = 4;

/// The root filesystem layer of the OCI archive `archive`, cached in `dir`
/// as `<layer digest>.<ext>`. A small `<archive sha256>.oci-layer` file
/// remembers which layer an archive holds, so the archive is only scanned
/// once.
pub(crate) fn extract_layer(archive: &CachedFile, dir: &Path) -> Result<CachedFile, OciError> {
    if let Some(cached) = cached_layer(dir, &archive.sha256) {
        return Ok(cached);
    }
    let pointer = pointer_path(dir, &archive.sha256);
    let layout = |reason: String| OciError::Layout {
        path: archive.path.clone(),
        reason,
    };
    let small_blobs = scan_small_files(archive)?;
    let mut name = "index.json".to_owned();
    let mut digest: Option<String> = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let bytes = small_blobs
            .get(&name)
            .ok_or_else(|| layout(format!("{name} is missing")))?;
        if let Some(digest) = &digest {
            check_digest(digest, bytes).map_err(layout)?;
        }
        let json: ImageJson =
            serde_json::from_slice(bytes).map_err(|err| layout(format!("{name}: {err}")))?;
        match (json.manifests, json.layers) {
            (_, Some(layers)) => {
                let [layer] = layers.as_slice() else {
                    return Err(layout(format!(
                        "expected one layer, found {}",
                        layers.len()
                    )));
                };
                tracing::info!(digest = %layer.digest, media_type = %layer.media_type, "unpacking root filesystem layer");
                let cached = copy_layer(archive, &layer.digest, dir)?;
                download::write_atomically(&pointer, cached.sha256.as_bytes()).map_err(
                    |source| OciError::Write {
                        path: pointer.clone(),
                        source,
                    },
                )?;
                return Ok(cached);
            }
            (Some(manifests), None) => {
                let manifest = native_manifest(&manifests).map_err(layout)?;
                name = blob_path(&manifest.digest).map_err(layout)?;
                digest = Some(manifest.digest.clone());
            }
            (None, None) => return Err(layout(format!("{name} lists no manifests or layers"))),
        }
    }
    Err(layout("image indexes nest too deeply".into()))
}

/// The layer taken earlier out of the archive with checksum `archive_sha256`.
pub(crate) fn cached_layer(dir: &Path, archive_sha256: &str) -> Option<CachedFile> {
    let digest = fs::read_to_string(pointer_path(dir, archive_sha256)).ok()?;
    let digest = digest.trim();
    let is_hex = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    is_hex
        .then(|| download::cached_tarball(dir, digest))
        .flatten()
}

fn pointer_path(dir: &Path, archive_sha256: &str) -> PathBuf {
    dir.join(format!("{archive_sha256}.oci-layer"))
}

/// The one manifest of an index, or the one for linux/amd64 among several.
fn native_manifest(manifests: &[Descriptor]) -> Result<&Descriptor, String> {
    if let [only] = manifests {
        return Ok(only);
    }
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| format!("none of {} images is for linux/amd64", manifests.len()))
}

/// `blobs/sha256/<hex>` for a `sha256:<hex>` digest.
fn blob_path(digest: &str) -> Result<String, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or_else(|| format!("unsupported digest `{digest}`"))?;
    Ok(format!("blobs/sha256/{hex}"))
}

fn check_digest(digest: &str, bytes: &[u8]) -> Result<(), String> {
    let got = format!("sha256:{}", download::sha256_hex(bytes));
    if got == digest {
        Ok(())
    } else {
        Err(format!("blob {digest} has digest {got}"))
    }
}

fn open_entries(archive: &CachedFile) -> Result<tar::Archive<Box<dyn Read>>, OciError> {
    let read_error = |source| OciError::Read {
        path: archive.path.clone(),
        source,
    };
    let file = File::open(&archive.path).map_err(read_error)?;
    Ok(tar::Archive::new(
        archive.compression.decoder(file).map_err(read_error)?,
    ))
}

/// Every regular file up to [`SMALL_BLOB`] bytes, by path without `./`.
fn scan_small_files(archive: &CachedFile) -> Result<HashMap<String, Vec<u8>>, OciError> {
    let read_error = |source| OciError::Read {
        path: archive.path.clone(),
        source,
    };
    let mut tar = open_entries(archive)?;
    let mut files = HashMap::new();
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        if !entry.header().entry_type().is_file() || entry.size() > SMALL_BLOB {
            continue;
        }
        let name = entry_name(&entry).map_err(read_error)?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(read_error)?;
        files.insert(name, bytes);
    }
    Ok(files)
}

fn entry_name<R: Read>(entry: &tar::Entry<R>) -> io::Result<String> {
    let path = entry.path()?;
    let name = path.to_string_lossy();
    Ok(name.trim_start_matches("./").to_owned())
}

/// Streams the layer blob into the cache, verifying its digest.
fn copy_layer(archive: &CachedFile, digest: &str, dir: &Path) -> Result<CachedFile, OciError> {
    let layout = |reason: String| OciError::Layout {
        path: archive.path.clone(),
        reason,
    };
    let read_error = |source| OciError::Read {
        path: archive.path.clone(),
        source,
    };
    let wanted = blob_path(digest).map_err(layout)?;
    let hex = &digest["sha256:".len()..];
    let partial = dir.join(format!("{hex}.partial"));
    let write_error = |source| OciError::Write {
        path: partial.clone(),
        source,
    };
    let mut tar = open_entries(archive)?;
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        if entry_name(&entry).map_err(read_error)? != wanted {
            continue;
        }
        let mut out = File::create(&partial).map_err(write_error)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = entry.read(&mut buffer).map_err(read_error)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            out.write_all(&buffer[..read]).map_err(write_error)?;
        }
        out.sync_all().map_err(write_error)?;
        let got = download::to_hex(&hasher.finalize());
        if got != hex {
            download::remove_quietly(&partial);
            return Err(layout(format!("layer {digest} has digest sha256:{got}")));
        }
        let compression = Compression::of_file(&partial)
            .map_err(write_error)?
            .ok_or_else(|| layout(format!("layer {digest} is not a tarball")))?;
        let path = dir.join(format!("{hex}.{}", compression.extension()));
        fs::rename(&partial, &path).map_err(write_error)?;
        return Ok(CachedFile {
            path,
            sha256: hex.to_owned(),
            compression,
        });
    }
    Err(layout(format!("layer {digest} is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_path_accepts_only_sha256_digests() {
        let hex = "ab".repeat(32);

        assert_eq!(
            blob_path(&format!("sha256:{hex}")).unwrap(),
            format!("blobs/sha256/{hex}")
        );
        assert!(blob_path("sha512:abcd").is_err());
        assert!(blob_path("sha256:../../etc/passwd").is_err());
    }

    #[test]
    fn check_digest_names_both_digests_on_mismatch() {
        let err = check_digest(&format!("sha256:{}", "00".repeat(32)), b"x").unwrap_err();

        assert!(err.contains(&download::sha256_hex(b"x")), "{err}");
    }
}
