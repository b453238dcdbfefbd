//! The kernel the utility VM boots.
//!
//! By default Debian's cloud kernel (`linux-image-cloud-amd64`): small,
//! virtio drivers as modules, fetched through the host's own apt
//! configuration and cached per version under
//! `$XDG_CACHE_HOME/distroctl/kernels/<version>/` as `vmlinuz` plus
//! `lib/modules/<version>/`. A kernel named in the config replaces it.
//!
//! A cache hit makes no apt call at all: the version last fetched is
//! remembered in `kernels/default`, so starting the VM works offline and
//! never waits for apt. Fetching a newer kernel means removing that file.

mod apt;
mod image;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process;

use thiserror::Error;

pub use image::ImageError;
use image::ImageInfo;

/// The metapackage that always depends on Debian's current cloud kernel.
pub const DEFAULT_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Prefix of Debian's versioned kernel image packages.
const IMAGE_PACKAGE_PREFIX: &str = "linux-image-";

/// File in the kernels cache naming the version of the default kernel.
const DEFAULT_POINTER: &str = "default";

/// The config's `kernel = …` / `modules = …` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSpec {
    /// A bzImage or ELF vmlinux to boot instead of Debian's cloud kernel.
    pub kernel: Option<PathBuf>,
    /// Its `lib/modules/<version>` tree, when its drivers are modules.
    pub modules: Option<PathBuf>,
}

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The image handed to the VMM.
    pub image: PathBuf,
    /// Its `lib/modules/<version>` tree; `None` when everything the VM needs
    /// is built in.
    pub modules_dir: Option<PathBuf>,
    /// The kernel release (`6.1.0-48-cloud-amd64`), or `unknown` for an ELF
    /// kernel configured without modules.
    pub version: String,
}

/// Failure to find, fetch or validate the kernel.
#[derive(Debug, Error)]
pub enum KernelError {
    /// A host tool needed to fetch the default kernel is not installed.
    #[error("`{tool}` is not installed; install the `{package}` package, or set `kernel = \"/path/to/bzImage\"` in the config")]
    ToolMissing {
        /// The program.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// apt does not know the package.
    #[error("apt has no package {package}; run `apt-get update`, or set `kernel = \"/path/to/bzImage\"` (and optionally `modules = \"/path/to/lib/modules/<version>\"`) in the config")]
    PackageNotFound {
        /// The package.
        package: String,
    },
    /// A host tool could not be started.
    #[error("could not run `{tool}`")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An apt or dpkg command failed.
    #[error("`{command}` failed")]
    ToolFailed {
        /// The command line.
        command: String,
        /// What it printed.
        #[source]
        source: ToolOutput,
    },
    /// The package does not contain what a kernel package should.
    #[error("package {package} has no {what}")]
    PackageLayout {
        /// The package.
        package: String,
        /// What is missing.
        what: String,
    },
    /// The kernel cache could not be read or written.
    #[error("could not {action} {}", path.display())]
    Cache {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel image could not be read.
    #[error("could not read kernel {}", path.display())]
    ReadImage {
        /// The image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a kernel this project can boot.
    #[error("{} is not a usable kernel image", path.display())]
    BadImage {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// `modules` names something that is not a directory.
    #[error("configured modules directory {} is not a directory", path.display())]
    ModulesNotADirectory {
        /// The configured path.
        path: PathBuf,
    },
    /// `modules` without `kernel` would pair modules with a different kernel.
    #[error("`modules` is set without `kernel`; set both or neither")]
    ModulesWithoutKernel,
    /// The image and the modules tree are for different releases, so the
    /// modules would be refused at boot.
    #[error("kernel {} is release {kernel}, but the modules in {} are for {modules}", image.display(), modules_dir.display())]
    VersionMismatch {
        /// The image.
        image: PathBuf,
        /// Its release.
        kernel: String,
        /// The modules tree.
        modules_dir: PathBuf,
        /// Its release (the directory's name).
        modules: String,
    },
}

/// What a failed command printed, kept as the error's cause.
#[derive(Debug, Error)]
#[error("{status}: {stderr}")]
pub struct ToolOutput {
    /// How it exited.
    pub status: process::ExitStatus,
    /// Its standard error, trimmed.
    pub stderr: String,
}

/// Where kernels and images are cached: `$XDG_CACHE_HOME/distroctl`, or
/// `~/.cache/distroctl`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("distroctl"))
}

/// The kernel to boot: the configured one (validated), else Debian's cloud
/// kernel from the cache under `cache_dir`, fetched with apt on a miss.
pub fn resolve(spec: &KernelSpec, cache_dir: &Path) -> Result<Kernel, KernelError> {
    resolve_with(spec, cache_dir, &apt::Apt)
}

/// Where Debian kernel packages come from; apt in production, a fake in
/// tests (which must not depend on the host's apt lists or network).
trait PackageSource {
    /// The versioned package `metapackage` currently depends on.
    fn image_package(&self, metapackage: &str) -> Result<String, KernelError>;
    /// Downloads `package` and unpacks its files below `into`.
    fn fetch_and_unpack(&self, package: &str, into: &Path) -> Result<(), KernelError>;
}

fn resolve_with(
    spec: &KernelSpec,
    cache_dir: &Path,
    source: &dyn PackageSource,
) -> Result<Kernel, KernelError> {
    match (&spec.kernel, &spec.modules) {
        (Some(image), modules) => configured(image, modules.as_deref()),
        (None, Some(_)) => Err(KernelError::ModulesWithoutKernel),
        (None, None) => default_kernel(&cache_dir.join("kernels"), source),
    }
}

fn configured(image: &Path, modules: Option<&Path>) -> Result<Kernel, KernelError> {
    let info = inspect_file(image)?;
    let Some(modules) = modules else {
        return Ok(Kernel {
            image: image.to_path_buf(),
            modules_dir: None,
            version: info.version.unwrap_or_else(|| "unknown".to_owned()),
        });
    };
    if !modules.is_dir() {
        return Err(KernelError::ModulesNotADirectory {
            path: modules.to_path_buf(),
        });
    }
    let modules_release = modules
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(kernel) = info.version.as_ref().filter(|v| **v != modules_release) {
        return Err(KernelError::VersionMismatch {
            image: image.to_path_buf(),
            kernel: kernel.clone(),
            modules_dir: modules.to_path_buf(),
            modules: modules_release,
        });
    }
    Ok(Kernel {
        image: image.to_path_buf(),
        modules_dir: Some(modules.to_path_buf()),
        version: info.version.unwrap_or(modules_release),
    })
}

/// Reads the start of `path` and checks it is a kernel image.
fn inspect_file(path: &Path) -> Result<ImageInfo, KernelError> {
    let read_error = |source| KernelError::ReadImage {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_error)?;
    let mut head = Vec::with_capacity(image::HEADER_BYTES);
    file.take(image::HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(read_error)?;
    image::inspect(&head).map_err(|source| KernelError::BadImage {
        path: path.to_path_buf(),
        source,
    })
}

fn default_kernel(kernels: &Path, source: &dyn PackageSource) -> Result<Kernel, KernelError> {
    if let Some(kernel) = cached_default(kernels) {
        return Ok(kernel);
    }
    let package = source.image_package(DEFAULT_METAPACKAGE)?;
    let version = release_of(&package)?;
    let kernel = match cached(kernels, &version) {
        Some(kernel) => kernel,
        None => {
            eprintln!("fetching Debian cloud kernel {version}…");
            let kernel = fetch(kernels, &package, &version, source)?;
            eprintln!(
                "cached kernel {version} in {}",
                kernels.join(&version).display()
            );
            kernel
        }
    };
    write_atomically(&kernels.join(DEFAULT_POINTER), version.as_bytes())?;
    Ok(kernel)
}

/// `linux-image-6.1.0-48-cloud-amd64` → `6.1.0-48-cloud-amd64`, refusing
/// anything that could not be one path component.
fn release_of(package: &str) -> Result<String, KernelError> {
    package
        .strip_prefix(IMAGE_PACKAGE_PREFIX)
        .filter(|v| !v.is_empty() && !v.contains('/') && *v != "." && *v != "..")
        .map(str::to_owned)
        .ok_or_else(|| KernelError::PackageLayout {
            package: DEFAULT_METAPACKAGE.to_owned(),
            what: format!("usable kernel image dependency (got {package:?})"),
        })
}

/// The default kernel the cache remembers, if it is still complete.
fn cached_default(kernels: &Path) -> Option<Kernel> {
    let version = fs::read_to_string(kernels.join(DEFAULT_POINTER)).ok()?;
    cached(kernels, version.trim())
}

fn cached(kernels: &Path, version: &str) -> Option<Kernel> {
    let dir = kernels.join(version);
    let image = dir.join("vmlinuz");
    let modules_dir = dir.join("lib/modules").join(version);
    (image.is_file() && modules_dir.is_dir()).then(|| Kernel {
        image,
        modules_dir: Some(modules_dir),
        version: version.to_owned(),
    })
}

/// Downloads and unpacks `package` in a staging directory beside the cache
/// entry, then renames the finished entry into place, so an interrupted
/// fetch never leaves a half-filled `<version>/` that looks complete.
fn fetch(
    kernels: &Path,
    package: &str,
    version: &str,
    source: &dyn PackageSource,
) -> Result<Kernel, KernelError> {
    let staging = kernels.join(format!(".staging-{version}-{}", process::id()));
    let result = fetch_into(&staging, kernels, package, version, source);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn fetch_into(
    staging: &Path,
    kernels: &Path,
    package: &str,
    version: &str,
    source: &dyn PackageSource,
) -> Result<Kernel, KernelError> {
    let cache_error = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Cache {
            action,
            path,
            source,
        }
    };
    let _ = fs::remove_dir_all(staging);
    let unpacked = staging.join("package");
    let entry = staging.join("entry");
    fs::create_dir_all(&unpacked).map_err(cache_error("create", &unpacked))?;
    source.fetch_and_unpack(package, &unpacked)?;

    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        return Err(KernelError::PackageLayout {
            package: package.to_owned(),
            what: format!("boot/vmlinuz-{version}"),
        });
    }
    inspect_file(&vmlinuz)?;
    // Merged-/usr packages ship modules under usr/lib/modules.
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| unpacked.join(dir).join(version))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| KernelError::PackageLayout {
            package: package.to_owned(),
            what: format!("lib/modules/{version}"),
        })?;

    let entry_modules = entry.join("lib/modules");
    fs::create_dir_all(&entry_modules).map_err(cache_error("create", &entry_modules))?;
    fs::rename(&vmlinuz, entry.join("vmlinuz")).map_err(cache_error("move", &vmlinuz))?;
    fs::rename(&modules, entry_modules.join(version)).map_err(cache_error("move", &modules))?;
    let target = kernels.join(version);
    if target.exists() && cached(kernels, version).is_none() {
        // A damaged entry (files deleted by hand): replace it.
        fs::remove_dir_all(&target).map_err(cache_error("replace", &target))?;
    }
    if let Err(e) = fs::rename(&entry, &target) {
        // Another distroctl finished the same fetch first: use its copy.
        if cached(kernels, version).is_none() {
            return Err(cache_error("fill", &target)(e));
        }
    }
    cached(kernels, version).ok_or_else(|| KernelError::Cache {
        action: "find the fetched kernel in",
        path: target,
        source: io::ErrorKind::NotFound.into(),
    })
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), KernelError> {
    let temporary = path.with_extension(format!("tmp-{}", process::id()));
    fs::write(&temporary, contents)
        .and_then(|()| fs::rename(&temporary, path))
        .map_err(|source| KernelError::Cache {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::image::synthetic_bzimage;
    use super::*;

    const RELEASE: &str = "6.1.0-48-cloud-amd64";
    const PACKAGE: &str = "linux-image-6.1.0-48-cloud-amd64";

    /// A package source that writes a small fake kernel package and counts
    /// how often it is asked.
    #[derive(Default)]
    struct FakeApt {
        lookups: Cell<u32>,
        fetches: Cell<u32>,
        missing: bool,
        without_modules: bool,
    }

    impl PackageSource for FakeApt {
        fn image_package(&self, metapackage: &str) -> Result<String, KernelError> {
            self.lookups.set(self.lookups.get() + 1);
            if self.missing {
                return Err(KernelError::PackageNotFound {
                    package: metapackage.to_owned(),
                });
            }
            Ok(PACKAGE.to_owned())
        }

        fn fetch_and_unpack(&self, _package: &str, into: &Path) -> Result<(), KernelError> {
            self.fetches.set(self.fetches.get() + 1);
            fs::create_dir_all(into.join("boot")).unwrap();
            fs::write(
                into.join(format!("boot/vmlinuz-{RELEASE}")),
                synthetic_bzimage(RELEASE),
            )
            .unwrap();
            if !self.without_modules {
                let kernel = into.join(format!("lib/modules/{RELEASE}/kernel"));
                fs::create_dir_all(&kernel).unwrap();
                fs::write(kernel.join("virtio.ko"), b"module").unwrap();
            }
            Ok(())
        }
    }

    #[test]
    fn default_kernel_is_fetched_into_versioned_cache() {
        let cache = tempfile::tempdir().unwrap();
        let apt = FakeApt::default();

        let kernel = resolve_with(&KernelSpec::default(), cache.path(), &apt).unwrap();

        let entry = cache.path().join("kernels").join(RELEASE);
        assert_eq!(kernel.version, RELEASE);
        assert_eq!(kernel.image, entry.join("vmlinuz"));
        assert_eq!(
            kernel.modules_dir,
            Some(entry.join("lib/modules").join(RELEASE))
        );
        assert!(entry
            .join("lib/modules")
            .join(RELEASE)
            .join("kernel/virtio.ko")
            .is_file());
        assert_eq!(apt.fetches.get(), 1);
    }

    #[test]
    fn cache_hit_makes_no_apt_call() {
        let cache = tempfile::tempdir().unwrap();
        let first = FakeApt::default();
        resolve_with(&KernelSpec::default(), cache.path(), &first).unwrap();
        let second = FakeApt::default();

        let kernel = resolve_with(&KernelSpec::default(), cache.path(), &second).unwrap();

        assert_eq!(kernel.version, RELEASE);
        assert_eq!((second.lookups.get(), second.fetches.get()), (0, 0));
    }

    #[test]
    fn incomplete_cache_entry_is_fetched_again() {
        let cache = tempfile::tempdir().unwrap();
        resolve_with(&KernelSpec::default(), cache.path(), &FakeApt::default()).unwrap();
        fs::remove_file(cache.path().join("kernels").join(RELEASE).join("vmlinuz")).unwrap();
        let apt = FakeApt::default();

        let kernel = resolve_with(&KernelSpec::default(), cache.path(), &apt).unwrap();

        assert_eq!(apt.fetches.get(), 1);
        assert!(kernel.image.is_file());
    }

    #[test]
    fn failed_fetch_leaves_no_cache_entry_or_staging() {
        let cache = tempfile::tempdir().unwrap();
        let apt = FakeApt {
            without_modules: true,
            ..FakeApt::default()
        };

        let err = resolve_with(&KernelSpec::default(), cache.path(), &apt).unwrap_err();

        assert!(matches!(err, KernelError::PackageLayout { .. }), "{err}");
        let left: Vec<_> = fs::read_dir(cache.path().join("kernels"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn unknown_package_error_names_the_config_key() {
        let cache = tempfile::tempdir().unwrap();
        let apt = FakeApt {
            missing: true,
            ..FakeApt::default()
        };

        let err = resolve_with(&KernelSpec::default(), cache.path(), &apt).unwrap_err();

        let message = err.to_string();
        assert!(message.contains(DEFAULT_METAPACKAGE), "{message}");
        assert!(
            message.contains("kernel = \"/path/to/bzImage\""),
            "{message}"
        );
    }

    #[test]
    fn configured_kernel_overrides_default_without_apt() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        fs::write(&image, synthetic_bzimage("6.9.0-custom")).unwrap();
        let apt = FakeApt::default();
        let spec = KernelSpec {
            kernel: Some(image.clone()),
            modules: None,
        };

        let kernel = resolve_with(&spec, dir.path(), &apt).unwrap();

        assert_eq!(
            kernel,
            Kernel {
                image,
                modules_dir: None,
                version: "6.9.0-custom".to_owned()
            }
        );
        assert_eq!(apt.lookups.get(), 0);
    }

    #[test]
    fn configured_modules_must_match_the_kernel_release() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        fs::write(&image, synthetic_bzimage("6.9.0")).unwrap();
        let modules = dir.path().join("lib/modules/6.8.0");
        fs::create_dir_all(&modules).unwrap();
        let spec = KernelSpec {
            kernel: Some(image),
            modules: Some(modules),
        };

        let err = resolve_with(&spec, dir.path(), &FakeApt::default()).unwrap_err();

        assert!(matches!(err, KernelError::VersionMismatch { .. }), "{err}");
    }

    #[test]
    fn configured_modules_of_matching_release_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        fs::write(&image, synthetic_bzimage("6.9.0")).unwrap();
        let modules = dir.path().join("lib/modules/6.9.0");
        fs::create_dir_all(&modules).unwrap();
        let spec = KernelSpec {
            kernel: Some(image),
            modules: Some(modules.clone()),
        };

        let kernel = resolve_with(&spec, dir.path(), &FakeApt::default()).unwrap();

        assert_eq!(kernel.modules_dir, Some(modules));
    }

    #[test]
    fn corrupt_configured_kernel_is_rejected_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        let mut bytes = synthetic_bzimage("6.9.0");
        bytes[0x202..0x206].copy_from_slice(b"JUNK");
        fs::write(&image, bytes).unwrap();
        let spec = KernelSpec {
            kernel: Some(image),
            modules: None,
        };

        let err = resolve_with(&spec, dir.path(), &FakeApt::default()).unwrap_err();

        assert!(matches!(err, KernelError::BadImage { .. }), "{err}");
        assert!(err.to_string().contains("bzImage"));
    }

    #[test]
    fn missing_configured_kernel_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = KernelSpec {
            kernel: Some(dir.path().join("nope")),
            modules: None,
        };

        let err = resolve_with(&spec, dir.path(), &FakeApt::default()).unwrap_err();

        assert!(matches!(err, KernelError::ReadImage { .. }));
    }

    #[test]
    fn modules_without_kernel_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = KernelSpec {
            kernel: None,
            modules: Some(dir.path().to_path_buf()),
        };

        let err = resolve_with(&spec, dir.path(), &FakeApt::default()).unwrap_err();

        assert!(matches!(err, KernelError::ModulesWithoutKernel));
    }

    #[test]
    fn release_is_taken_from_the_package_name() {
        assert_eq!(release_of(PACKAGE).unwrap(), RELEASE);
        assert!(release_of("linux-image-").is_err());
        assert!(release_of("linux-image-../x").is_err());
        assert!(release_of("linux-headers-6.1").is_err());
    }
}
