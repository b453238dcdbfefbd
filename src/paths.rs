//! Where distroctl keeps things on the host, following the XDG base
//! directory specification.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Creates `dir` (and missing parents) private to the user (0700), and
/// tightens it when it already exists with wider permissions: the data
/// and runtime directories hold distro files other users must not read.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    tighten(dir, 0o700)
}

/// Tightens an existing file to 0600; a missing one is fine.
pub fn private_file(path: &Path) -> io::Result<()> {
    match tighten(path, 0o600) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Opens `path` for writing (created 0600, or tightened to it), appending
/// or truncating.
pub fn create_private(path: &Path, append: bool) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Removes group and other permissions beyond `mode`.
fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    // Another user's file is refused elsewhere (with a reason), not changed.
    if meta.file_type().is_symlink() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    if meta.permissions().mode() & 0o7777 & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_dir_creates_0700_and_tightens_an_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();

        private_dir(&new).unwrap();
        private_dir(&open).unwrap();

        assert_eq!(mode(&new), 0o700);
        assert_eq!(mode(&open), 0o700);
    }

    #[test]
    fn private_files_are_created_0600_and_existing_ones_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.log");
        std::fs::write(&old, "x").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = dir.path().join("reopened.log");
        std::fs::write(&reopened, "keep\n").unwrap();
        std::fs::set_permissions(&reopened, std::fs::Permissions::from_mode(0o644)).unwrap();

        create_private(&dir.path().join("new.log"), false).unwrap();
        create_private(&reopened, true).unwrap();
        private_file(&old).unwrap();
        private_file(&dir.path().join("missing")).unwrap();

        assert_eq!(mode(&dir.path().join("new.log")), 0o600);
        assert_eq!(mode(&reopened), 0o600);
        assert_eq!(std::fs::read_to_string(&reopened).unwrap(), "keep\n");
        assert_eq!(mode(&old), 0o600);
    }
}
