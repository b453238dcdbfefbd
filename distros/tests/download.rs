//! Downloads through the real HTTP client against a local server: checksum
//! verification, the cache, resuming, restarts and error reporting.

mod http_server;

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use distros::{
    acquire, acquire_url, cached, AcquireError, AcquireOptions, Catalog, Compression,
    DownloadError, ProgressMode, RootfsTarball,
};
use http_server::{Request, Route, TestServer};
use sha2::{Digest, Sha256};

const OPTIONS: AcquireOptions = AcquireOptions {
    refresh: false,
    progress: ProgressMode::Log,
};

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A gzip root filesystem tarball of about 1 MiB that does not compress, so
/// that cutting the transfer halfway leaves a real partial file.
fn rootfs_tar_gz(top_dir: &str) -> Vec<u8> {
    let mut noise = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut noise {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("etc/os-release", &b"ID=test\n"[..]),
        ("usr/lib/blob", &noise),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("{top_dir}{path}"), data)
            .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn serve(server: &TestServer, path: &str, body: &[u8], cuts: &[usize], honour_range: bool) {
    server.route(
        path,
        Route {
            body: body.to_vec(),
            honour_range,
            cuts: cuts.iter().copied().collect::<VecDeque<_>>(),
            status: None,
            wrong_range_start: None,
        },
    );
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn request(path: &str, range: Option<String>) -> Request {
    Request {
        path: path.to_owned(),
        range,
    }
}

/// A server serving one fixture tarball at `/rootfs.tar.gz`, and an empty cache.
struct Fixture {
    server: TestServer,
    body: Vec<u8>,
    sha: String,
    cache: tempfile::TempDir,
}

impl Fixture {
    /// `cuts`: cut the first responses after that many body bytes.
    fn new(cuts: &[usize], honour_range: bool) -> Fixture {
        let server = TestServer::start();
        let body = rootfs_tar_gz("");
        serve(&server, "/rootfs.tar.gz", &body, cuts, honour_range);
        Fixture {
            server,
            sha: sha256_hex(&body),
            body,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn fetch(&self, expected: Option<&str>) -> Result<RootfsTarball, AcquireError> {
        acquire_url(
            &self.server.url("/rootfs.tar.gz"),
            expected,
            self.cache.path(),
            &OPTIONS,
        )
    }

    /// Leaves `bytes` as the partial download an earlier run was cut off in.
    fn leave_partial(&self, bytes: &[u8]) {
        fs::write(
            self.downloads().join(format!("{}.partial", self.sha)),
            bytes,
        )
        .unwrap();
    }

    /// Asserts the download tried to continue at byte 1000, then started over.
    fn assert_resumed_then_restarted(&self) {
        assert_eq!(
            self.server.requests(),
            [
                request("/rootfs.tar.gz", Some("bytes=1000-".into())),
                request("/rootfs.tar.gz", None),
            ]
        );
    }

    fn downloads(&self) -> PathBuf {
        let dir = self.cache.path().join("downloads");
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// The error and its causes on one line, as the CLI shows them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        text += &format!(": {next}");
        cause = next.source();
    }
    text
}

#[test]
fn verified_download_is_cached_and_second_acquire_makes_no_request() {
    let f = Fixture::new(&[], true);

    let first = f.fetch(Some(&f.sha)).unwrap();
    let second = f.fetch(Some(&f.sha)).unwrap();

    assert_eq!(first.path, f.downloads().join(format!("{}.tar.gz", f.sha)));
    assert_eq!(first.compression, Compression::Gzip);
    assert_eq!(fs::read(&first.path).unwrap(), f.body);
    assert_eq!(second, first);
    assert_eq!(f.server.requests(), [request("/rootfs.tar.gz", None)]);
}

#[test]
fn wrong_checksum_is_refused_and_only_the_bad_file_is_deleted() {
    let f = Fixture::new(&[], true);
    let other = f.downloads().join(format!("{}.tar.xz", "cd".repeat(32)));
    fs::write(&other, b"an unrelated cached download").unwrap();
    let wrong = "ab".repeat(32);

    let err = f.fetch(Some(&wrong)).unwrap_err();

    let AcquireError::Download {
        source: DownloadError::ChecksumMismatch { expected, got, .. },
        ..
    } = &err
    else {
        panic!("expected a checksum mismatch, got {err:?}");
    };
    assert_eq!(expected, &wrong);
    assert_eq!(got, &f.sha);
    let line = chain(&err);
    assert!(
        line.contains(&format!("expected {wrong}, got {got}")),
        "{line}"
    );
    assert_eq!(
        files_in(&f.downloads()),
        [other.file_name().unwrap().to_string_lossy()]
    );
}

#[test]
fn interrupted_download_resumes_with_range_and_gives_the_right_bytes() {
    let half = rootfs_tar_gz("").len() / 2;
    let f = Fixture::new(&[half], true);

    let tarball = f.fetch(Some(&f.sha)).unwrap();

    assert_eq!(fs::read(&tarball.path).unwrap(), f.body);
    assert_eq!(
        f.server.requests(),
        [
            request("/rootfs.tar.gz", None),
            request("/rootfs.tar.gz", Some(format!("bytes={half}-"))),
        ]
    );
    assert_eq!(files_in(&f.downloads()), [format!("{}.tar.gz", f.sha)]);
}

#[test]
fn partial_file_from_an_earlier_run_is_continued() {
    let f = Fixture::new(&[], true);
    f.leave_partial(&f.body[..1000]);

    let tarball = f.fetch(Some(&f.sha)).unwrap();

    assert_eq!(fs::read(&tarball.path).unwrap(), f.body);
    assert_eq!(
        f.server.requests(),
        [request("/rootfs.tar.gz", Some("bytes=1000-".into()))]
    );
}

#[test]
fn server_ignoring_range_gets_a_clean_restart() {
    let third = rootfs_tar_gz("").len() / 3;
    let f = Fixture::new(&[third], false);

    let tarball = f.fetch(Some(&f.sha)).unwrap();

    assert_eq!(fs::read(&tarball.path).unwrap(), f.body);
    let requests = f.server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].range, Some(format!("bytes={third}-")));
}

#[test]
fn range_answered_from_the_wrong_offset_restarts_cleanly() {
    let f = Fixture::new(&[], true);
    f.server.route(
        "/rootfs.tar.gz",
        Route {
            body: f.body.clone(),
            honour_range: true,
            wrong_range_start: Some(0),
            ..Route::default()
        },
    );
    f.leave_partial(&f.body[..1000]);

    let tarball = f.fetch(Some(&f.sha)).unwrap();

    assert_eq!(fs::read(&tarball.path).unwrap(), f.body);
    f.assert_resumed_then_restarted();
}

#[test]
fn corrupt_partial_file_fails_checksum_then_downloads_cleanly() {
    let f = Fixture::new(&[], true);
    f.leave_partial(&[0u8; 1000]);

    let tarball = f.fetch(Some(&f.sha)).unwrap();

    assert_eq!(fs::read(&tarball.path).unwrap(), f.body);
    f.assert_resumed_then_restarted();
}

#[test]
fn download_cut_off_on_every_attempt_reports_interruption() {
    let f = Fixture::new(&[10_000; 4], true);

    let err = f.fetch(Some(&f.sha)).unwrap_err();

    assert!(
        matches!(
            &err,
            AcquireError::Download {
                source: DownloadError::Interrupted { attempts: 4, .. },
                ..
            }
        ),
        "{err:?}"
    );
    // What arrived is kept for the next run to continue.
    let partial = f.downloads().join(format!("{}.partial", f.sha));
    assert_eq!(fs::read(partial).unwrap(), f.body[..40_000]);
}

#[test]
fn not_found_is_one_clear_error_with_the_status() {
    let f = Fixture::new(&[], true);
    let url = f.server.url("/missing.tar.gz");

    let err = acquire_url(&url, Some(&f.sha), f.cache.path(), &OPTIONS).unwrap_err();

    let line = chain(&err);
    assert!(
        line.contains(&format!("{url} answered HTTP 404 Not Found")),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
    assert_eq!(
        files_in(&f.downloads()),
        Vec::<String>::new(),
        "no empty .partial left"
    );
}

#[test]
fn server_error_status_is_reported() {
    let f = Fixture::new(&[], true);
    f.server.route(
        "/rootfs.tar.gz",
        Route {
            status: Some(503),
            ..Route::default()
        },
    );

    let err = f.fetch(None).unwrap_err();

    assert!(chain(&err).contains("HTTP 503"), "{}", chain(&err));
    assert_eq!(
        files_in(&f.downloads()),
        Vec::<String>::new(),
        "no empty .partial left"
    );
}

#[test]
fn connection_refused_is_reported() {
    // Bind and drop to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/rootfs.tar.gz");

    let err = acquire_url(&url, None, cache.path(), &OPTIONS).unwrap_err();

    let line = chain(&err).to_lowercase();
    assert!(
        line.contains(&format!("request for {url} failed")),
        "{line}"
    );
    assert!(line.contains("refused"), "{line}");
    assert_eq!(
        files_in(&cache.path().join("downloads")),
        Vec::<String>::new(),
        "no empty .partial left"
    );
}

#[test]
fn unverified_download_that_is_not_a_tarball_is_refused_and_removed() {
    let f = Fixture::new(&[], true);
    serve(
        &f.server,
        "/rootfs.tar.gz",
        b"<html>moved</html>",
        &[],
        true,
    );

    let err = f.fetch(None).unwrap_err();

    assert!(
        chain(&err).contains("did not give a tar archive"),
        "{}",
        chain(&err)
    );
    assert!(files_in(&f.downloads()).is_empty());
}

#[test]
fn unverified_download_is_named_by_its_checksum() {
    let f = Fixture::new(&[], true);

    let tarball = f.fetch(None).unwrap();

    assert_eq!(tarball.sha256, f.sha);
    assert_eq!(fs::read(&tarball.path).unwrap(), f.body);
}

/// A one-release catalog whose tarball lives on the test server.
fn test_catalog(server: &TestServer, source: &str) -> Catalog {
    let text = format!(
        r#"
name = "testos"
display_name = "Test OS"
default = "1"

[user_setup]
package_manager = "apt"
admin_group = "sudo"
sudo_in_base = false
install_sudo = "true"
add_user = "useradd {{user}}"
login_shell = "/bin/sh"

[[releases]]
version = "1"
source = {{ kind = "tarball", url = "{}", {source} }}
"#,
        server.url("/rootfs.tar.gz")
    );
    Catalog::from_files([("testos.toml", text.as_str())]).unwrap()
}

#[test]
fn acquire_release_reports_top_dir_to_strip_and_is_then_cached() {
    let server = TestServer::start();
    let body = rootfs_tar_gz("root.x86_64/");
    serve(&server, "/rootfs.tar.gz", &body, &[], true);
    let catalog = test_catalog(
        &server,
        &format!(
            "sha256 = \"{}\", top_dir = \"root.x86_64\"",
            sha256_hex(&body)
        ),
    );
    let release = catalog.resolve("testos").unwrap();
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(cached(release, cache.path()), None);

    let tarball = acquire(release, cache.path(), &OPTIONS).unwrap();

    assert_eq!(tarball.top_dir.as_deref(), Some("root.x86_64"));
    assert_eq!(fs::read(&tarball.path).unwrap(), body);
    assert_eq!(cached(release, cache.path()), Some(tarball));
}

#[test]
fn acquire_release_takes_checksum_from_published_list_and_remembers_it() {
    let server = TestServer::start();
    let body = rootfs_tar_gz("");
    serve(&server, "/rootfs.tar.gz", &body, &[], true);
    let list = format!(
        "{}  other.tar.gz\n{} *rootfs.tar.gz\n",
        "ab".repeat(32),
        sha256_hex(&body)
    );
    serve(&server, "/SHA256SUMS", list.as_bytes(), &[], true);
    let catalog = test_catalog(
        &server,
        &format!(
            "sha256_url = \"{}\", sha256_file = \"rootfs.tar.gz\"",
            server.url("/SHA256SUMS")
        ),
    );
    let release = catalog.resolve("testos:1").unwrap();
    let cache = tempfile::tempdir().unwrap();

    let first = acquire(release, cache.path(), &OPTIONS).unwrap();
    let second = acquire(release, cache.path(), &OPTIONS).unwrap();

    assert_eq!(first.sha256, sha256_hex(&body));
    assert_eq!(second, first);
    assert_eq!(
        server.requests(),
        [
            request("/SHA256SUMS", None),
            request("/rootfs.tar.gz", None)
        ]
    );
}

#[test]
fn acquire_release_missing_from_published_list_names_list_and_file() {
    let server = TestServer::start();
    serve(&server, "/SHA256SUMS", b"", &[], true);
    let catalog = test_catalog(
        &server,
        &format!(
            "sha256_url = \"{}\", sha256_file = \"rootfs.tar.gz\"",
            server.url("/SHA256SUMS")
        ),
    );
    let cache = tempfile::tempdir().unwrap();

    let err = acquire(catalog.resolve("testos").unwrap(), cache.path(), &OPTIONS).unwrap_err();

    assert!(
        matches!(&err, AcquireError::NotInChecksumList { file_name, .. } if file_name == "rootfs.tar.gz"),
        "{err:?}"
    );
}

#[test]
fn refresh_downloads_a_cached_release_again() {
    let server = TestServer::start();
    let body = rootfs_tar_gz("");
    serve(&server, "/rootfs.tar.gz", &body, &[], true);
    let catalog = test_catalog(&server, &format!("sha256 = \"{}\"", sha256_hex(&body)));
    let release = catalog.resolve("testos").unwrap();
    let cache = tempfile::tempdir().unwrap();
    acquire(release, cache.path(), &OPTIONS).unwrap();

    let refresh = AcquireOptions {
        refresh: true,
        ..OPTIONS
    };
    let tarball = acquire(release, cache.path(), &refresh).unwrap();

    assert_eq!(fs::read(&tarball.path).unwrap(), body);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn concurrent_acquires_of_one_tarball_download_it_once() {
    let f = Fixture::new(&[], true);

    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| f.fetch(Some(&f.sha)));
        let second = scope.spawn(|| f.fetch(Some(&f.sha)));
        (first.join().unwrap(), second.join().unwrap())
    });

    assert_eq!(first.unwrap(), second.unwrap());
    assert_eq!(f.server.requests().len(), 1);
}
