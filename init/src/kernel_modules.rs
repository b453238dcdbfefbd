//! Loading the kernel modules shipped in the initramfs, in the order the
//! host's initramfs builder resolved from each module's `depends=` (so no
//! `modprobe` or `modules.dep` is needed in the VM).

use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use thiserror::Error;

/// The load order file written by the initramfs builder: one module path
/// per line, dependencies first.
pub const ORDER_FILE: &str = "/lib/modules/distroctl.order";

/// Module parameters: none, every module runs with its defaults.
const NO_PARAMS: &CStr = c"";

/// Failure to load one module.
#[derive(Debug, Error)]
pub enum ModuleLoadError {
    /// The module file could not be opened.
    #[error("could not open module {}", path.display())]
    Open {
        /// The module file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the module.
    #[error("kernel refused module {}", path.display())]
    Load {
        /// The module file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Errno,
    },
}

/// What happened to a module that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Loaded now, taking this long (initialisation included).
    Now(Duration),
    /// It was already loaded or is built into the kernel.
    AlreadyPresent,
}

/// The module paths listed in an order file; blank lines and `#` comments
/// are ignored so the file stays readable when inspected by hand.
pub fn parse_order(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// Loads one module with `finit_module(2)`; the kernel reads (and checks
/// the signature of) the file itself, so init never holds its bytes.
pub fn load(path: &Path) -> Result<Loaded, ModuleLoadError> {
    let file = File::open(path).map_err(|source| ModuleLoadError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let started = Instant::now();
    match finit_module(&file, NO_PARAMS, ModuleInitFlags::empty()) {
        Ok(()) => Ok(Loaded::Now(started.elapsed())),
        Err(Errno::EEXIST) => Ok(Loaded::AlreadyPresent),
        Err(source) => Err(ModuleLoadError::Load {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keeps_listed_sequence() {
        let text =
            "/lib/modules/virtio.ko\n/lib/modules/virtio_ring.ko\n/lib/modules/virtio_mmio.ko\n";

        let order = parse_order(text);

        assert_eq!(
            order,
            vec![
                PathBuf::from("/lib/modules/virtio.ko"),
                PathBuf::from("/lib/modules/virtio_ring.ko"),
                PathBuf::from("/lib/modules/virtio_mmio.ko"),
            ]
        );
    }

    #[test]
    fn order_skips_blank_lines_comments_and_whitespace() {
        let text = "# written by distroctl\n\n  /lib/modules/vsock.ko  \r\n\t\n";

        let order = parse_order(text);

        assert_eq!(order, vec![PathBuf::from("/lib/modules/vsock.ko")]);
    }

    #[test]
    fn empty_order_loads_nothing() {
        assert!(parse_order("").is_empty());
    }

    #[test]
    fn load_of_missing_file_names_it() {
        let err = load(Path::new("/nonexistent/distroctl-test.ko")).unwrap_err();

        assert!(matches!(err, ModuleLoadError::Open { .. }));
        assert!(err.to_string().contains("distroctl-test.ko"));
    }
}
