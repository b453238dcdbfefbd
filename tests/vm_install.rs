//! `distroctl install` from a catalog entry served by a local HTTP server:
//! the checksum is verified, a wrong one is refused, an interrupted
//! download registers nothing and resumes next time, and the installed
//! distro gets a default user with a home directory.

mod common;
#[path = "../distros/tests/http_server/mod.rs"]
#[allow(dead_code)]
mod http_server;

use std::io::Write;

use common::vm::TestVm;
use common::{debian_rootfs, list_row, text, Cli};
use http_server::{Route, TestServer};
use sha2::{Digest, Sha256};

/// The Debian test rootfs, gzip-compressed with a name unique to this run
/// so that no earlier run's download cache can answer for it.
fn unique_fixture() -> (Vec<u8>, String) {
    let tar = std::fs::read(debian_rootfs()).unwrap();
    let mut gz = flate2::GzBuilder::new()
        .filename(format!(
            "fixture-{}-{}.tar",
            std::process::id(),
            rand::random::<u64>()
        ))
        .write(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let body = gz.finish().unwrap();
    let sha = format!("{:x}", Sha256::digest(&body));
    (body, sha)
}

/// A catalog file for a distro named `fixture` downloaded from `url`.
fn write_catalog(vm: &TestVm, url: &str, sha256: &str) {
    let dir = vm.home.path().join(".config/distroctl/catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("fixture.toml"),
        format!(
            r#"name = "fixture"
display_name = "Fixture Linux"
default = "1"

[user_setup]
package_manager = "apt"
admin_group = "sudo"
sudo_in_base = false
install_sudo = "false"
add_user = "useradd --create-home --shell {{shell}} --groups {{group}} {{user}}"
login_shell = "/bin/bash"

[[releases]]
version = "1"
source = {{ kind = "tarball", url = "{url}", sha256 = "{sha256}" }}
"#
        ),
    )
    .unwrap();
}

/// Serves a fresh [`unique_fixture`] at `/fixture.tar.gz`, honouring
/// `Range`; each of the first `cuts` responses is cut after a twentieth of
/// the body, later ones are whole. Returns the server, the URL and the
/// fixture's SHA-256.
fn serve_fixture(cuts: usize) -> (TestServer, String, String) {
    let server = TestServer::start();
    let (body, sha) = unique_fixture();
    let len = body.len();
    server.route(
        "/fixture.tar.gz",
        Route {
            body,
            honour_range: true,
            cuts: std::iter::repeat_n(len / 20, cuts).collect(),
            ..Route::default()
        },
    );
    let url = server.url("/fixture.tar.gz");
    (server, url, sha)
}

fn installed(vm: &TestVm) -> String {
    text(&vm.ok(&["list"]).stdout)
}

#[test]
fn install_verifies_the_download_and_creates_the_default_user() {
    let vm = TestVm::new("");
    // Each of the first install's attempts is cut short.
    let (server, url, sha) = serve_fixture(4);
    write_catalog(&vm, &url, &sha);

    let out = vm.run(&["install", "fixture", "--user", "alice"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        !installed(&vm).contains("fixture"),
        "half-registered after a cut download"
    );

    // The next install resumes where the last one stopped.
    let out = vm.ok(&["install", "fixture", "--user", "alice"]);
    let err = text(&out.stderr);
    assert!(err.contains("Installed fixture"), "{err}");
    assert!(
        server.requests().iter().any(|r| r.range.is_some()),
        "{:?}",
        server.requests()
    );
    let list = text(&vm.ok(&["list", "-v"]).stdout);
    assert!(list_row(&list, "fixture").contains("alice"), "{list}");
    assert!(
        list.starts_with("NAME") || list.contains("* fixture"),
        "{list}"
    );
    assert_eq!(
        vm.sh("fixture", "id -un; echo $HOME; test -d $HOME && echo home"),
        "alice\n/home/alice\nhome\n"
    );
    let groups = vm.sh("fixture", "id -Gn");
    assert!(groups.contains("sudo"), "{groups}");

    let again = vm.run(&["install", "fixture"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("already installed"),
        "{again:?}"
    );
}

#[test]
fn wrong_checksum_is_refused_and_nothing_is_registered() {
    let vm = TestVm::new("");
    let (_server, url, sha) = serve_fixture(0);
    let wrong: String = sha.chars().rev().collect();
    write_catalog(&vm, &url, &wrong);
    vm.ok(&["import", "witness", debian_rootfs().to_str().unwrap()]);

    let out = vm.run(&["install", "fixture"]);

    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("checksum") || err.contains("SHA-256"), "{err}");
    let list = installed(&vm);
    assert!(
        !list.contains("fixture") && list.contains("witness"),
        "{list}"
    );
    let downloads = common::vm::shared_cache().join("distroctl/downloads");
    let kept: Vec<_> = std::fs::read_dir(&downloads)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        kept.iter()
            .all(|n| !n.to_string_lossy().starts_with(&wrong)),
        "{kept:?}"
    );
}

#[test]
fn start_offers_to_install_a_missing_catalog_distro() {
    let vm = TestVm::new("");
    let (server, url, sha) = serve_fixture(0);
    write_catalog(&vm, &url, &sha);

    let asked = vm.run(&["start", "fixture"]);
    assert_eq!(asked.status.code(), Some(1));
    let err = text(&asked.stderr);
    assert!(
        err.contains("not installed") && err.contains("--install"),
        "{err}"
    );
    assert!(
        server.requests().is_empty(),
        "nothing downloaded without consent"
    );

    vm.ok(&["start", "fixture", "--install"]);
    let list = text(&vm.ok(&["list"]).stdout);
    assert!(list_row(&list, "fixture").contains("running"), "{list}");
    let out = vm.run(&["start", "nosuch", "--install"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nosuch"), "{out:?}");
}

#[test]
fn unknown_catalog_distro_lists_what_exists() {
    let vm = TestVm::new("");

    let out = vm.run(&["install", "gentoo"]);

    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("gentoo") && err.contains("ubuntu"), "{err}");
    assert!(vm.state().is_none(), "nothing booted");
    let listed = text(&vm.ok(&["install", "--list"]).stdout);
    assert!(
        listed.contains("debian") && listed.contains("jammy"),
        "{listed}"
    );
}
