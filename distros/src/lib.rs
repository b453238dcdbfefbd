//! The distro catalog and root filesystem acquisition for `distroctl`.
//!
//! The catalog is one TOML file per distro (`distros/catalog/*.toml`),
//! embedded in the binary. Each release says where its root filesystem comes
//! from: an official tarball pinned by SHA-256 (or by the distro's published
//! checksum list), or, for Debian, `mmdebstrap` run with the host's own apt
//! configuration. Everything here is synchronous.
//!
//! # Public API
//!
//! ```text
//! Catalog::builtin() -> Catalog
//! Catalog::from_files(impl IntoIterator<Item = (&str, &str)>) -> Result<Catalog, CatalogError>
//! Catalog::resolve(&self, "NAME" | "NAME:VERSION" | "NAME:ALIAS") -> Result<&Release, CatalogError>
//! Catalog::distros(&self) -> &[Distro]          // for `distroctl list --online`
//!
//! Distro: name(), display_name(), default_version(), releases(), default_release()
//! Release: distro(), display_name(), version(), aliases(), qualified_name(),
//!          source() -> &Source, user_setup() -> &UserSetup
//! UserSetup { package_manager, admin_group, sudo_in_base, install_sudo,
//!             add_user, login_shell, prepare }
//!
//! acquire(&Release, cache_dir: &Path, &AcquireOptions) -> Result<RootfsTarball, AcquireError>
//! cached(&Release, cache_dir: &Path) -> Option<RootfsTarball>     // no network
//! acquire_url(url: &str, expected_sha256: Option<&str>, cache_dir: &Path, &AcquireOptions)
//!     -> Result<RootfsTarball, AcquireError>
//! AcquireOptions { refresh: bool, progress: ProgressMode::{Auto, Log} }
//! RootfsTarball { path, compression: Compression::{None, Gzip, Xz, Zstd},
//!                 top_dir: Option<String>, sha256 }
//! ```
//!
//! A [`RootfsTarball`] is always a tar of a root filesystem: an OCI image
//! archive (Fedora) has already been reduced to its layer. Its `top_dir`,
//! when set, must be stripped from every entry on extraction (Arch's
//! `root.x86_64/`); it maps onto the agent's `Request::Import { top_dir }`,
//! and `Compression` converts into `protocol::Compression` with `into()`.
//! The file belongs to the cache: read it, never move or delete it.
//!
//! Cache layout under `cache_dir`: `downloads/<sha256>.<ext>` (verified
//! files; `<sha256>.partial` while a transfer is under way or interrupted),
//! `mmdebstrap/<recipe hash>.tar`, `checksums/` (values read from published
//! lists) and `locks/` (one process fills an entry at a time).
//!
//! # Example
//!
//! ```no_run
//! use distros::{acquire, AcquireOptions, Catalog};
//!
//! let catalog = Catalog::builtin();
//! let release = catalog.resolve("ubuntu:noble")?;
//! let tarball = acquire(release, "/var/cache/distroctl".as_ref(), &AcquireOptions::default())?;
//! println!("{} ({:?})", tarball.path.display(), tarball.compression);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Errors are one enum per step ([`CatalogError`], [`AcquireError`] with
//! [`DownloadError`], [`MmdebstrapError`] and [`OciError`] as causes); each
//! message says what failed and the cause is in `source()`.

mod acquire;
mod cache_lock;
pub mod catalog;
mod checksum_list;
mod compression;
mod download;
mod mmdebstrap;
mod oci_archive;
mod progress;

pub use acquire::{acquire, acquire_url, cached, AcquireError, AcquireOptions, RootfsTarball};
pub use catalog::{
    Catalog, CatalogError, Checksum, Distro, MmdebstrapRecipe, Release, Source, TarballLayout,
    TarballSource, UserSetup,
};
pub use compression::Compression;
pub use download::DownloadError;
pub use mmdebstrap::MmdebstrapError;
pub use oci_archive::OciError;
pub use progress::ProgressMode;
