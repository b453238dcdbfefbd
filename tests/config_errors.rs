//! `config.toml` mistakes as the user meets them: each bad value is one
//! line naming the file, the key, the value and what is allowed, before
//! any manager or VM starts.

mod common;

use std::process::Stdio;

use common::{binary, text};

fn config_error(config: Option<&str>) -> (String, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".config/distroctl");
    std::fs::create_dir_all(&dir).unwrap();
    match config {
        Some(text) => std::fs::write(dir.join("config.toml"), text).unwrap(),
        None => std::fs::create_dir(dir.join("config.toml")).unwrap(),
    }
    let out = std::process::Command::new(binary("distroctl"))
        .arg("config")
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{config:?} was accepted");
    (text(&out.stderr), home)
}

#[test]
fn each_bad_config_value_is_one_line_naming_key_value_and_what_is_allowed() {
    let cases = [
        (
            "boot_timeout = \"0s\"\n",
            "boot_timeout = \"0s\"",
            "at least 100ms",
        ),
        ("disk_size = \"1K\"\n", "disk_size = \"1K\"", "at least 64M"),
        ("cpus = \"many\"\n", "cpus = \"many\"", "a whole number"),
        ("memory = [1]\n", "memory = an array", "a size such as"),
        (
            "kernel = \"/nonexistent/vmlinuz\"\n",
            "kernel = \"/nonexistent/vmlinuz\"",
            "kernel image",
        ),
        (
            "modules = \"/nonexistent/6.1\"\n",
            "modules = \"/nonexistent/6.1\"",
            "module directory",
        ),
        (
            "idle_timeout = \"0\"\n",
            "idle_timeout = \"0\"",
            "\"never\"",
        ),
        ("share_home = 1\n", "share_home = 1", "true or false"),
        (
            "[[mount]]\nhost = \"data\"\n",
            "mount host = \"data\"",
            "absolute path",
        ),
        (
            "[[mount]]\nhost = \"/srv\"\nguest = \"/usr\"\n",
            "mount guest = \"/usr\"",
            "pick another guest path",
        ),
        (
            "virtiofsd = \"/nonexistent/virtiofsd\"\n",
            "virtiofsd = \"/nonexistent/virtiofsd\"",
            "cargo install virtiofsd",
        ),
    ];
    for (config, names, allowed) in cases {
        let (err, home) = config_error(Some(config));

        assert!(err.contains("config.toml"), "{config}: {err}");
        assert!(err.contains(names), "{config}: {err}");
        assert!(err.contains(allowed), "{config}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{config}: {err}");
        assert!(
            !home.path().join(".local").exists(),
            "{config}: started something"
        );
    }
}

#[test]
fn config_path_that_is_a_directory_is_one_line() {
    let (err, _home) = config_error(None);

    assert!(err.contains("config.toml: it is a directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
