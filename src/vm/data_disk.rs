//! The data disk: a sparse raw image with one ext4 file system holding every
//! distro, created on first start.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Failure to create the data disk.
#[derive(Debug, Error)]
pub enum DataDiskError {
    /// `mkfs.ext4` is not installed.
    #[error("mkfs.ext4 is missing; install it with: sudo apt-get install e2fsprogs")]
    MkfsMissing,
    /// Creating or sizing the image file failed.
    #[error("cannot create the data disk {}", path.display())]
    Create {
        /// The image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 failed on {}: {stderr}", path.display())]
    Mkfs {
        /// The image.
        path: PathBuf,
        /// What it printed.
        stderr: String,
    },
}

/// Creates `path` as a sparse ext4 image of `size` bytes unless it exists.
/// Returns true when it was created. A half-made image never stays behind:
/// it is built under a temporary name and renamed when complete.
pub fn ensure(path: &Path, size: u64) -> Result<bool, DataDiskError> {
    if path.exists() {
        // Images made before disks were private are tightened.
        crate::paths::private_file(path).map_err(|source| DataDiskError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(false);
    }
    let create_err = |source| DataDiskError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        crate::paths::private_dir(dir).map_err(create_err)?;
    }
    let tmp = path.with_extension("img.partial");
    // 0600: the disk holds every distro's files.
    let file = crate::paths::create_private(&tmp, false).map_err(create_err)?;
    file.set_len(size).map_err(create_err)?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "distroctl-data", "-m", "0"])
        // Lazy init keeps the 64 GiB image sparse and creation instant; the
        // guest kernel finishes it in the background.
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(&tmp)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(&tmp);
            return Err(DataDiskError::MkfsMissing);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(create_err(e));
        }
    };
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataDiskError::Mkfs {
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, path).map_err(create_err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn ensure_creates_a_sparse_ext4_image_once() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("SKIP: mkfs.ext4 is not installed (apt-get install e2fsprogs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");

        assert!(ensure(&img, 8 << 30).unwrap());
        assert!(!ensure(&img, 8 << 30).unwrap());

        let meta = std::fs::metadata(&img).unwrap();
        assert_eq!(meta.len(), 8 << 30);
        assert_eq!(meta.mode() & 0o777, 0o600, "private to the user");
        assert!(meta.blocks() * 512 < 256 << 20, "image is not sparse");
        let mut magic = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&img).unwrap(),
            &mut magic,
            1024 + 56,
        )
        .unwrap();
        assert_eq!(magic, [0x53, 0xef], "ext4 superblock magic");
    }
}
