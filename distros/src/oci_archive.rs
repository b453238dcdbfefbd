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

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

/// The root filesystem layer of the OCI archive `archive` (compressed as
/// `compression`, checksum `archive_sha256`), cached in `dir` as
/// `<layer digest>.<ext>`. A small `<archive_sha256>.oci-layer` file remembers
/// which layer an archive holds, so the archive is only scanned once.
pub(crate) fn extract_layer(archive: &CachedFile, dir: &Path) -> Result<CachedFile, OciError> {
    let pointer = dir.join(format!("{}.oci-layer", archive.sha256));
    if let Ok(digest) = fs::read_to_string(&pointer) {
        if let Some(cached) = download::cached_tarball(dir, digest.trim()) {
            return Ok(cached);
        }
    }
    let layout = |reason: String| OciError::Layout {
        path: archive.path.clone(),
        reason,
    };
    let small_blobs = scan_small_files(archive)?;
    let json = |name: &str| -> Result<&[u8], OciError> {
        small_blobs
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| layout(format!("{name} is missing")))
    };
    let index: Index = serde_json::from_slice(json("index.json")?)
        .map_err(|err| layout(format!("index.json: {err}")))?;
    let [manifest] = index.manifests.as_slice() else {
        return Err(layout(format!(
            "expected one image, found {}",
            index.manifests.len()
        )));
    };
    let manifest_bytes = json(&blob_path(&manifest.digest).map_err(layout)?)?;
    check_digest(&manifest.digest, manifest_bytes).map_err(layout)?;
    let manifest: Manifest =
        serde_json::from_slice(manifest_bytes).map_err(|err| layout(format!("manifest: {err}")))?;
    let [layer] = manifest.layers.as_slice() else {
        return Err(layout(format!(
            "expected one layer, found {}",
            manifest.layers.len()
        )));
    };
    tracing::info!(digest = %layer.digest, media_type = %layer.media_type, "unpacking root filesystem layer");
    let cached = copy_layer(archive, &layer.digest, dir)?;
    download::write_atomically(&pointer, cached.sha256.as_bytes()).map_err(|err| {
        OciError::Write {
            path: pointer.clone(),
            source: io::Error::other(err.to_string()),
        }
    })?;
    Ok(cached)
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
pub(crate) mod tests {
    use super::*;

    /// Builds an OCI archive (plain tar) holding one gzip layer with `rootfs_file`.
    pub(crate) fn oci_archive_bytes(rootfs_file: &[u8]) -> (Vec<u8>, String) {
        let mut layer_tar = tar::Builder::new(Vec::new());
        append(&mut layer_tar, "etc/os-release", rootfs_file);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer_tar.into_inner().unwrap()).unwrap();
        let layer = gz.finish().unwrap();
        let layer_digest = format!("sha256:{}", download::sha256_hex(&layer));
        let manifest = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
            layer.len()
        );
        let manifest_digest = format!("sha256:{}", download::sha256_hex(manifest.as_bytes()));
        let index =
            format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{manifest_digest}"}}]}}"#);

        let mut archive = tar::Builder::new(Vec::new());
        append(
            &mut archive,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        append(&mut archive, &blob_path(&layer_digest).unwrap(), &layer);
        append(
            &mut archive,
            &blob_path(&manifest_digest).unwrap(),
            manifest.as_bytes(),
        );
        append(&mut archive, "index.json", index.as_bytes());
        (archive.into_inner().unwrap(), layer_digest)
    }

    fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn cached_archive(dir: &Path, bytes: &[u8]) -> CachedFile {
        let sha256 = download::sha256_hex(bytes);
        let path = dir.join(format!("{sha256}.tar"));
        fs::write(&path, bytes).unwrap();
        CachedFile {
            path,
            sha256,
            compression: Compression::None,
        }
    }

    #[test]
    fn extract_layer_gives_verified_gzip_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, layer_digest) = oci_archive_bytes(b"ID=fedora\n");
        let archive = cached_archive(dir.path(), &bytes);

        let layer = extract_layer(&archive, dir.path()).unwrap();

        assert_eq!(layer.compression, Compression::Gzip);
        assert_eq!(format!("sha256:{}", layer.sha256), layer_digest);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
            File::open(&layer.path).unwrap(),
        ));
        let names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["etc/os-release"]);
    }

    #[test]
    fn extract_layer_reuses_the_cached_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = oci_archive_bytes(b"ID=fedora\n");
        let archive = cached_archive(dir.path(), &bytes);
        let first = extract_layer(&archive, dir.path()).unwrap();
        fs::write(&archive.path, b"no longer an archive").unwrap();

        let second = extract_layer(&archive, dir.path()).unwrap();

        assert_eq!(first, second);
    }

    #[test]
    fn extract_layer_rejects_archive_without_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        append(&mut builder, "oci-layout", b"{}");
        let archive = cached_archive(dir.path(), &builder.into_inner().unwrap());

        let err = extract_layer(&archive, dir.path()).unwrap_err().to_string();

        assert!(err.contains("index.json is missing"), "{err}");
    }
}
