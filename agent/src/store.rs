//! The distros on the data disk: `DATA/distros/<name>/{rootfs,settings.json}`.
//!
//! New distros are extracted into a hidden staging directory and renamed into
//! place only when complete; deleted distros are renamed to a hidden name
//! before removal. A crash therefore leaves only hidden directories, which
//! [`Store::open`] removes, and never a half-present distro.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::DistroSettings;
use thiserror::Error;

/// Failure of a store operation.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The name does not match the allowed pattern.
    #[error("invalid distro name {0:?}: use 1-64 characters a-z, 0-9, '.', '_' or '-', starting with a letter or digit")]
    InvalidName(String),
    /// No distro of that name.
    #[error("distro {0} is not installed")]
    NotFound(String),
    /// The name is taken.
    #[error("distro {0} already exists; pick another name or unregister it first")]
    AlreadyExists(String),
    /// File system work failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The archive lacks the top directory its root file system should be in.
    #[error("the archive has no top directory {0:?} holding the root file system")]
    MissingTopDir(String),
    /// The stored settings file cannot be read.
    #[error("settings of distro {name} in {} are damaged", path.display())]
    BadSettings {
        /// Distro.
        name: String,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a distro name against `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bytes = name.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
    if first_ok && rest_ok && bytes.len() <= 64 {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_string()))
    }
}

/// Prefix of hidden work directories (staging imports, pending deletions).
const HIDDEN_PREFIX: &str = ".";

static NONCE: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The distro directory tree under the data directory.
#[derive(Debug, Clone)]
pub struct Store {
    distros: PathBuf,
}

/// A distro being imported: its files live in a hidden directory until
/// [`Staging::commit`]; dropping it uncommitted deletes them.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staging {
    /// Directory to extract the root file system into.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Makes the extracted `top_dir` (one directory name, e.g. Arch's
    /// `root.x86_64`) the root file system, dropping whatever else the
    /// archive held beside it.
    pub fn lift(&self, top_dir: &str) -> Result<(), StoreError> {
        let plain =
            !top_dir.is_empty() && top_dir != "." && top_dir != ".." && !top_dir.contains('/');
        let inner = self.rootfs().join(top_dir);
        let is_dir = plain
            && fs::symlink_metadata(&inner)
                .map(|m| m.file_type().is_dir())
                .unwrap_or(false);
        if !is_dir {
            return Err(StoreError::MissingTopDir(top_dir.to_string()));
        }
        let archive = self.dir.join("archive");
        fs::rename(self.rootfs(), &archive).map_err(io_err("rename", &archive))?;
        fs::rename(archive.join(top_dir), self.rootfs()).map_err(io_err("rename", &archive))?;
        fs::remove_dir_all(&archive).map_err(io_err("remove", &archive))
    }

    /// Moves the staged distro into place.
    pub fn commit(mut self) -> Result<(), StoreError> {
        // Extraction does not fsync file by file; one syncfs makes the whole
        // tree durable before it becomes visible under its name.
        let dir = fs::File::open(&self.dir).map_err(io_err("open", &self.dir))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)).map_err(|e| StoreError::Io {
            action: "flush",
            path: self.dir.clone(),
            source: e.into(),
        })?;
        // rename(2) onto a non-empty directory fails, so a distro that
        // appeared meanwhile is never overwritten.
        fs::rename(&self.dir, &self.target).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ENOTEMPTY)
            {
                StoreError::AlreadyExists(
                    self.target
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else {
                StoreError::Io {
                    action: "move the imported distro into",
                    path: self.target.clone(),
                    source: e,
                }
            }
        })?;
        self.committed = true;
        sync_dir(self.target.parent().unwrap_or(Path::new("/")));
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove staging directory");
            }
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`, removing work
    /// directories left by an interrupted import or deletion.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let distros = data_dir.join("distros");
        fs::create_dir_all(&distros).map_err(io_err("create", &distros))?;
        let store = Store { distros };
        for entry in fs::read_dir(&store.distros).map_err(io_err("read", &store.distros))? {
            let entry = entry.map_err(io_err("read", &store.distros))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(HIDDEN_PREFIX)
            {
                tracing::info!(dir = %entry.path().display(), "removing leftover work directory");
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove leftover work directory");
                }
            }
        }
        Ok(store)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.distros.join(name)
    }

    /// The root file system directory of an installed distro.
    pub fn rootfs(&self, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        let dir = self.dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        Ok(dir.join("rootfs"))
    }

    /// True when `name` is installed.
    pub fn exists(&self, name: &str) -> bool {
        validate_name(name).is_ok() && self.dir(name).is_dir()
    }

    /// Installed distro names, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.distros).map_err(io_err("read", &self.distros))? {
            let entry = entry.map_err(io_err("read", &self.distros))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_ok() && entry.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Starts an import of `name`: checks the name is free and creates the
    /// staging directory with the settings file.
    pub fn begin_import(
        &self,
        name: &str,
        settings: &DistroSettings,
    ) -> Result<Staging, StoreError> {
        validate_name(name)?;
        let target = self.dir(name);
        if target.exists() {
            return Err(StoreError::AlreadyExists(name.to_string()));
        }
        let dir = self
            .distros
            .join(format!("{HIDDEN_PREFIX}import-{name}-{}", unique_suffix()));
        let staging = Staging {
            dir,
            target,
            committed: false,
        };
        fs::create_dir(&staging.dir).map_err(io_err("create", &staging.dir))?;
        let rootfs = staging.rootfs();
        fs::create_dir(&rootfs).map_err(io_err("create", &rootfs))?;
        fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err("set permissions of", &rootfs))?;
        write_settings(&staging.dir, settings)?;
        Ok(staging)
    }

    /// Settings stored with `name`.
    pub fn settings(&self, name: &str) -> Result<DistroSettings, StoreError> {
        validate_name(name)?;
        let dir = self.dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        let path = dir.join("settings.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::BadSettings {
                name: name.to_string(),
                path,
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DistroSettings::default()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Replaces the settings stored with `name`.
    pub fn set_settings(&self, name: &str, settings: &DistroSettings) -> Result<(), StoreError> {
        self.rootfs(name)?;
        write_settings(&self.dir(name), settings)
    }

    /// Deletes `name` and its files. The distro disappears at once (a
    /// rename); the files are removed afterwards.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let dir = self.dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        let doomed = self
            .distros
            .join(format!("{HIDDEN_PREFIX}delete-{name}-{}", unique_suffix()));
        fs::rename(&dir, &doomed).map_err(io_err("move away", &dir))?;
        sync_dir(&self.distros);
        fs::remove_dir_all(&doomed).map_err(io_err("delete", &doomed))
    }
}

/// Writes `settings.json` atomically (temporary file, fsync, rename).
fn write_settings(dir: &Path, settings: &DistroSettings) -> Result<(), StoreError> {
    let path = dir.join("settings.json");
    let tmp = dir.join(".settings.json.tmp");
    let json = serde_json::to_vec_pretty(settings).expect("settings serialise");
    fs::write(&tmp, json).map_err(io_err("write", &tmp))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("flush", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("replace", &path))
}

/// Bytes the files under `root` occupy (allocated blocks, hardlinks counted
/// once, symlinks not followed).
pub fn disk_usage(root: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_name_accepts_pattern() {
        for ok in ["debian", "ubuntu-24.04", "a", "0x_y", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn validate_name_rejects_others() {
        for bad in [
            "",
            "Debian",
            "-x",
            ".x",
            "a/b",
            "..",
            "a b",
            &"a".repeat(65),
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();

        let staging = store.begin_import("d", &DistroSettings::default()).unwrap();
        fs::write(staging.rootfs().join("f"), b"x").unwrap();
        drop(staging);

        assert!(store.names().unwrap().is_empty());
        assert_eq!(fs::read_dir(tmp.path().join("distros")).unwrap().count(), 0);
    }

    #[test]
    fn lift_makes_the_top_dir_the_root_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let staging = store
            .begin_import("arch", &DistroSettings::default())
            .unwrap();
        fs::create_dir_all(staging.rootfs().join("root.x86_64/etc")).unwrap();
        fs::write(staging.rootfs().join("root.x86_64/etc/os-release"), b"arch").unwrap();
        fs::write(staging.rootfs().join("version"), b"stray").unwrap();

        staging.lift("root.x86_64").unwrap();
        staging.commit().unwrap();

        let root = store.rootfs("arch").unwrap();
        assert_eq!(fs::read(root.join("etc/os-release")).unwrap(), b"arch");
        assert!(!root.join("version").exists());
        assert!(!root.join("root.x86_64").exists());
    }

    #[test]
    fn lift_refuses_a_missing_symlinked_or_nested_top_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let staging = store.begin_import("x", &DistroSettings::default()).unwrap();
        fs::create_dir_all(staging.rootfs().join("a/b")).unwrap();
        std::os::unix::fs::symlink("/", staging.rootfs().join("link")).unwrap();

        for bad in ["missing", "link", "a/b", "..", ""] {
            assert!(
                matches!(staging.lift(bad), Err(StoreError::MissingTopDir(_))),
                "{bad}"
            );
        }
        assert!(staging.rootfs().join("a/b").is_dir(), "nothing moved");
    }

    #[test]
    fn committed_staging_is_installed_with_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let settings = DistroSettings {
            systemd: true,
            ..Default::default()
        };

        store
            .begin_import("d", &settings)
            .unwrap()
            .commit()
            .unwrap();

        assert_eq!(store.names().unwrap(), vec!["d".to_string()]);
        assert_eq!(store.settings("d").unwrap(), settings);
    }

    #[test]
    fn begin_import_refuses_existing_name() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store
            .begin_import("d", &DistroSettings::default())
            .unwrap()
            .commit()
            .unwrap();

        let err = store
            .begin_import("d", &DistroSettings::default())
            .unwrap_err();

        assert!(matches!(err, StoreError::AlreadyExists(_)));
    }

    #[test]
    fn open_removes_leftover_work_directories() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("distros/.import-x-1-0/rootfs")).unwrap();
        fs::create_dir_all(tmp.path().join("distros/keep/rootfs")).unwrap();

        let store = Store::open(tmp.path()).unwrap();

        assert_eq!(store.names().unwrap(), vec!["keep".to_string()]);
        assert!(!tmp.path().join("distros/.import-x-1-0").exists());
    }

    #[test]
    fn remove_deletes_only_that_distro() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for n in ["a", "b"] {
            store
                .begin_import(n, &DistroSettings::default())
                .unwrap()
                .commit()
                .unwrap();
        }

        store.remove("a").unwrap();

        assert_eq!(store.names().unwrap(), vec!["b".to_string()]);
        assert!(matches!(store.remove("a"), Err(StoreError::NotFound(_))));
    }
}
