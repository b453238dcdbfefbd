//! Where distroctl keeps things on the host, following the XDG base
//! directory specification.

use std::path::PathBuf;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

/// `$XDG_CONFIG_HOME/distroctl`.
pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("distroctl")
}

/// `$XDG_DATA_HOME/distroctl`: the data disk.
pub fn data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("distroctl")
}

/// `$XDG_CACHE_HOME/distroctl`: kernels, initramfs images.
pub fn cache_dir() -> PathBuf {
    xdg("XDG_CACHE_HOME", ".cache").join("distroctl")
}

/// `$XDG_RUNTIME_DIR/distroctl` (or `/run/user/UID/distroctl`, or a
/// directory under the data dir when neither exists): sockets, the VM lock,
/// the console log of the running VM.
pub fn runtime_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(v).join("distroctl");
    }
    let per_user = PathBuf::from(format!("/run/user/{}", nix::unistd::getuid()));
    if per_user.is_dir() {
        return per_user.join("distroctl");
    }
    data_dir().join("run")
}
