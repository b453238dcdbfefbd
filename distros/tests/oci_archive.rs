//! A release published as an OCI image archive (Fedora's container base
//! image: an xz-compressed tar holding `index.json`, a manifest blob and one
//! layer blob) comes out of `acquire` as its root filesystem layer.

mod http_server;

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};

use distros::{acquire, cached, AcquireError, AcquireOptions, Catalog, Compression, ProgressMode};
use http_server::{Route, TestServer};
use sha2::{Digest, Sha256};

const OPTIONS: AcquireOptions = AcquireOptions {
    refresh: false,
    progress: ProgressMode::Log,
};

fn digest(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn blob(digest: &str) -> String {
    format!("blobs/sha256/{}", &digest["sha256:".len()..])
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, path, data).unwrap();
}

/// How `index.json` leads to the image manifest.
#[derive(Clone, Copy)]
enum IndexShape {
    /// `index.json` lists the manifest.
    Direct,
    /// `index.json` lists an image index that lists an arm64 and an amd64
    /// manifest.
    MultiPlatform,
}

/// An xz-compressed OCI archive whose layer (gzip) holds `etc/os-release`,
/// with `layers` copies of that layer listed in the manifest; and the
/// layer's digest.
fn oci_archive(layers: usize, shape: IndexShape) -> (Vec<u8>, String) {
    let mut rootfs = tar::Builder::new(Vec::new());
    append(&mut rootfs, "etc/os-release", b"ID=fedora\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&rootfs.into_inner().unwrap()).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = digest(&layer);
    let descriptor = format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}"#,
        layer.len()
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"layers":[{}]}}"#,
        vec![descriptor; layers].join(",")
    );
    let manifest_digest = digest(manifest.as_bytes());
    let mut archive = tar::Builder::new(Vec::new());
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    append(&mut archive, &blob(&layer_digest), &layer);
    append(&mut archive, &blob(&manifest_digest), manifest.as_bytes());
    let top_digest = match shape {
        IndexShape::Direct => manifest_digest,
        IndexShape::MultiPlatform => {
            let platforms = format!(
                r#"{{"schemaVersion":2,"manifests":[
                    {{"digest":"{}","platform":{{"architecture":"arm64","os":"linux"}}}},
                    {{"digest":"{manifest_digest}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
                digest(b"an arm64 manifest that is not in the archive")
            );
            let platforms_digest = digest(platforms.as_bytes());
            append(&mut archive, &blob(&platforms_digest), platforms.as_bytes());
            platforms_digest
        }
    };
    let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{top_digest}"}}]}}"#);
    append(&mut archive, "index.json", index.as_bytes());
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&archive.into_inner().unwrap()).unwrap();
    (xz.finish().unwrap(), layer_digest)
}

/// A catalog with one OCI-archive release served by `server`.
fn serve_release(server: &TestServer, archive: &[u8]) -> Catalog {
    server.route(
        "/image.oci.tar.xz",
        Route {
            body: archive.to_vec(),
            honour_range: true,
            cuts: VecDeque::new(),
            status: None,
            wrong_range_start: None,
        },
    );
    let text = format!(
        r#"
name = "fedora"
display_name = "Fedora"
default = "44"

[user_setup]
package_manager = "dnf"
admin_group = "wheel"
sudo_in_base = false
install_sudo = "dnf install -y sudo"
add_user = "useradd {{user}}"
login_shell = "/bin/bash"

[[releases]]
version = "44"
source = {{ kind = "tarball", url = "{}", sha256 = "{}", oci_archive = true }}
"#,
        server.url("/image.oci.tar.xz"),
        &digest(archive)["sha256:".len()..]
    );
    Catalog::from_files([("fedora.toml", text.as_str())]).unwrap()
}

#[test]
fn oci_archive_release_gives_its_verified_layer() {
    let server = TestServer::start();
    let (archive, layer_digest) = oci_archive(1, IndexShape::Direct);
    let catalog = serve_release(&server, &archive);
    let cache = tempfile::tempdir().unwrap();

    let tarball = acquire(catalog.resolve("fedora").unwrap(), cache.path(), &OPTIONS).unwrap();

    assert_eq!(tarball.compression, Compression::Gzip);
    assert_eq!(tarball.top_dir, None);
    assert_eq!(format!("sha256:{}", tarball.sha256), layer_digest);
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(&tarball.path).unwrap(),
    ));
    let mut entry = layer.entries().unwrap().next().unwrap().unwrap();
    let mut text = String::new();
    entry.read_to_string(&mut text).unwrap();
    assert_eq!(entry.path().unwrap().to_str(), Some("etc/os-release"));
    assert_eq!(text, "ID=fedora\n");
}

#[test]
fn oci_archive_layer_is_reused_without_rescanning() {
    let server = TestServer::start();
    let (archive, _) = oci_archive(1, IndexShape::Direct);
    let catalog = serve_release(&server, &archive);
    let release = catalog.resolve("fedora:44").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let first = acquire(release, cache.path(), &OPTIONS).unwrap();
    let archive_file = cache
        .path()
        .join(format!("downloads/{}.tar.xz", &digest(&archive)[7..]));
    // Were the archive read again, this would fail.
    fs::write(&archive_file, b"truncated").unwrap();

    let second = acquire(release, cache.path(), &OPTIONS).unwrap();

    assert_eq!(second, first);
    assert_eq!(cached(release, cache.path()), Some(first));
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn oci_archive_with_two_layers_is_refused() {
    let server = TestServer::start();
    let (archive, _) = oci_archive(2, IndexShape::Direct);
    let catalog = serve_release(&server, &archive);
    let cache = tempfile::tempdir().unwrap();

    let err = acquire(catalog.resolve("fedora").unwrap(), cache.path(), &OPTIONS).unwrap_err();

    let AcquireError::OciLayer { source, .. } = &err else {
        panic!("expected an OCI layer error, got {err:?}");
    };
    assert!(
        source.to_string().contains("expected one layer, found 2"),
        "{source}"
    );
}

#[test]
fn oci_archive_with_platform_index_gives_the_amd64_layer() {
    let server = TestServer::start();
    let (archive, layer_digest) = oci_archive(1, IndexShape::MultiPlatform);
    let catalog = serve_release(&server, &archive);
    let cache = tempfile::tempdir().unwrap();

    let tarball = acquire(catalog.resolve("fedora").unwrap(), cache.path(), &OPTIONS).unwrap();

    assert_eq!(format!("sha256:{}", tarball.sha256), layer_digest);
}
