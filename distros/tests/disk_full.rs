//! A download into a full file system fails with one clear error naming the
//! file and "No space left on device", and keeps what arrived for a resume.
//!
//! The full file system is a 1 MiB tmpfs mounted in a private mount
//! namespace: the test runs this test binary again under `unshare -m`, so it
//! needs root and util-linux's `unshare`, and says so when it skips.

mod http_server;

use std::collections::VecDeque;
use std::path::Path;
use std::process::Command;

use distros::{acquire_url, AcquireOptions, ProgressMode};
use http_server::{Route, TestServer};

const URL_VAR: &str = "DISTROS_DISK_FULL_URL";
const DIR_VAR: &str = "DISTROS_DISK_FULL_DIR";

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("mounting a small tmpfs needs root");
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("util-linux `unshare` is not installed");
    }
    None
}

#[test]
fn disk_full_is_reported_and_keeps_the_partial_file() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED disk_full_is_reported_and_keeps_the_partial_file: {reason}");
        return;
    }
    let server = TestServer::start();
    let body: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    server.route(
        "/big.tar.gz",
        Route {
            body,
            honour_range: true,
            cuts: VecDeque::new(),
            status: None,
            wrong_range_start: None,
        },
    );
    let mount_point = tempfile::tempdir().unwrap();

    let output = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m none "$1" && exec "$2" --ignored --exact disk_full_child_process --nocapture"#)
        .arg("sh")
        .arg(mount_point.path())
        .arg(std::env::current_exe().unwrap())
        .env(URL_VAR, server.url("/big.tar.gz"))
        .env(DIR_VAR, mount_point.path())
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    // A full disk is not retried: one request only.
    assert_eq!(server.requests().len(), 1);
}

/// The half of the test that runs inside the private mount namespace.
#[test]
#[ignore = "run by disk_full_is_reported_and_keeps_the_partial_file inside a mount namespace"]
fn disk_full_child_process() {
    let url = std::env::var(URL_VAR).expect("started by the parent test");
    let dir = std::env::var(DIR_VAR).expect("started by the parent test");
    let cache = Path::new(&dir).join("cache");
    let options = AcquireOptions {
        refresh: false,
        progress: ProgressMode::Log,
    };

    let err = acquire_url(&url, Some(&"ab".repeat(32)), &cache, &options).unwrap_err();

    let mut line = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(next) = cause {
        line += &format!(": {next}");
        cause = next.source();
    }
    let partial = cache.join(format!("downloads/{}.partial", "ab".repeat(32)));
    assert!(
        line.contains(&format!("cannot write {}", partial.display())),
        "{line}"
    );
    assert!(line.contains("No space left on device"), "{line}");
    assert!(std::fs::metadata(&partial).unwrap().len() > 0);
}
