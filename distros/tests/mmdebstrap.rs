//! Building a Debian root filesystem with the real mmdebstrap. Runs only
//! where mmdebstrap is installed and the host's apt mirror answers; it says
//! why when it skips. The build is cached per day under
//! /var/cache/distroctl-tests, so only the first run of a day pays for it.

use std::fs;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use distros::{acquire, cached, AcquireOptions, Catalog, Compression, ProgressMode};

const CATALOG: &str = r#"
name = "debian"
display_name = "Debian"
default = "12"

[user_setup]
package_manager = "apt"
admin_group = "sudo"
sudo_in_base = false
install_sudo = "apt-get install -y sudo"
add_user = "useradd --create-home {user}"
login_shell = "/bin/bash"

[[releases]]
version = "12"
source = { kind = "mmdebstrap", suite = "bookworm", variant = "minbase" }
"#;

/// The hosts named by the host's apt sources (one-line and deb822 forms).
fn apt_source_hosts() -> Vec<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|ext| ext == "list" || ext == "sources")
                }),
        );
    }
    let mut hosts = Vec::new();
    for text in files.iter().filter_map(|f| fs::read_to_string(f).ok()) {
        let uncommented = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""));
        for word in uncommented.flat_map(str::split_whitespace) {
            let rest = word
                .strip_prefix("http://")
                .or_else(|| word.strip_prefix("https://"));
            if let Some(host) = rest.and_then(|r| r.split('/').next()) {
                hosts.push(host.to_owned());
            }
        }
    }
    hosts
}

/// Why the build cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("mmdebstrap is not installed".into());
    }
    let hosts = apt_source_hosts();
    let Some(host) = hosts.first() else {
        return Some("the host's apt configuration names no http(s) mirror".into());
    };
    let port = if host.contains(':') { "" } else { ":80" };
    let reachable = format!("{host}{port}")
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok());
    (!reachable).then(|| format!("the host's apt mirror {host} is not reachable"))
}

/// Today's cache; earlier days' caches are removed so they do not pile up.
fn cache_dir() -> PathBuf {
    let days = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let parent = Path::new("/var/cache/distroctl-tests");
    let today = format!("distros-mmdebstrap-day{days}");
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("distros-mmdebstrap-day") && name != today {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    parent.join(today)
}

/// The contents of `name` in a plain tar, if present.
fn file_in_tar(path: &Path, name: &str) -> Option<String> {
    let mut tar = tar::Archive::new(fs::File::open(path).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            == name
        {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            return Some(text);
        }
    }
    None
}

#[test]
fn mmdebstrap_builds_bookworm_and_caches_it() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED mmdebstrap_builds_bookworm_and_caches_it: {reason}");
        return;
    }
    let catalog = Catalog::from_files([("debian.toml", CATALOG)]).unwrap();
    let release = catalog.resolve("debian:12").unwrap();
    let cache = cache_dir();
    let options = AcquireOptions {
        refresh: false,
        progress: ProgressMode::Log,
    };

    let started = Instant::now();
    let tarball = acquire(release, &cache, &options).unwrap();
    eprintln!(
        "mmdebstrap tarball {} ready in {:.1} s",
        tarball.path.display(),
        started.elapsed().as_secs_f64()
    );
    let again = Instant::now();
    let second = acquire(release, &cache, &options).unwrap();

    assert_eq!(tarball.compression, Compression::None);
    assert!(tarball.path.starts_with(cache.join("mmdebstrap")));
    let version = file_in_tar(&tarball.path, "etc/debian_version").expect("etc/debian_version");
    assert!(version.starts_with("12."), "debian_version {version:?}");
    assert_eq!(second, tarball);
    assert_eq!(cached(release, &cache), Some(tarball.clone()));
    assert!(again.elapsed() < Duration::from_secs(1));
    // Only this recipe's build: the other test here builds another recipe in
    // the same cache at the same time, and its build in progress is partial.
    let key = tarball
        .path
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let leftovers: Vec<_> = fs::read_dir(cache.join("mmdebstrap"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&key) && name.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The entry names of a plain tar, without a leading `./`.
fn names_in_tar(path: &Path) -> Vec<String> {
    let mut tar = tar::Archive::new(fs::File::open(path).unwrap());
    tar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            name.trim_start_matches("./").to_owned()
        })
        .collect()
}

#[test]
fn builtin_debian_has_the_everyday_tools() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED builtin_debian_has_the_everyday_tools: {reason}");
        return;
    }
    let catalog = Catalog::builtin();
    let release = catalog.resolve("debian:12").unwrap();
    let options = AcquireOptions {
        refresh: false,
        progress: ProgressMode::Log,
    };

    let tarball = acquire(release, &cache_dir(), &options).unwrap();

    let names = names_in_tar(&tarball.path);
    for tool in [
        "usr/bin/ps",
        "usr/bin/free",
        "usr/bin/less",
        "usr/bin/sudo",
        "usr/bin/man",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(names.iter().any(|n| n == tool), "{tool} is missing");
    }
}
