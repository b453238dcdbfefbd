//! The validated catalog: distros, their releases, where each release's root
//! filesystem comes from, and how a default user is set up in it.

/// One distribution with all of its known releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distro {
    pub(crate) name: String,
    pub(crate) display_name: String,
    pub(crate) default_version: String,
    pub(crate) releases: Vec<Release>,
}

impl Distro {
    /// The short name users type (`ubuntu`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The human-readable name (`Ubuntu`).
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The version `NAME` alone resolves to.
    pub fn default_version(&self) -> &str {
        &self.default_version
    }

    /// The releases in catalog order.
    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    /// The release `NAME` alone resolves to.
    pub fn default_release(&self) -> &Release {
        self.releases
            .iter()
            .find(|release| release.version == self.default_version)
            .expect("catalog validation guarantees the default release exists")
    }
}

/// One installable release of a distro, with everything needed to acquire
/// and set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub(crate) distro: String,
    pub(crate) display_name: String,
    pub(crate) version: String,
    pub(crate) aliases: Vec<String>,
    pub(crate) source: Source,
    pub(crate) user_setup: UserSetup,
}

impl Release {
    /// The distro's short name (`ubuntu`).
    pub fn distro(&self) -> &str {
        &self.distro
    }

    /// The distro's human-readable name (`Ubuntu`).
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The release's version (`24.04`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Other names for the version (`noble`).
    pub fn aliases(&self) -> &[String] {
        &self.aliases
    }

    /// `NAME:VERSION`, the fully qualified name of this release.
    pub fn qualified_name(&self) -> String {
        format!("{}:{}", self.distro, self.version)
    }

    /// Where the root filesystem comes from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Hints for creating the default user inside the distro.
    pub fn user_setup(&self) -> &UserSetup {
        &self.user_setup
    }
}

/// Where a release's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An official root filesystem tarball downloaded over HTTPS.
    Tarball(TarballSource),
    /// A root filesystem built locally by `mmdebstrap` with the host's own
    /// apt configuration.
    Mmdebstrap(MmdebstrapRecipe),
}

/// A downloadable root filesystem tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballSource {
    /// The tarball's URL.
    pub url: String,
    /// How the download is verified.
    pub checksum: Checksum,
    /// How the root filesystem sits inside the download.
    pub layout: TarballLayout,
}

/// How a download is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// The SHA-256 of the file, 64 lowercase hex digits, pinned in the catalog.
    Sha256(String),
    /// The distro's published `SHA256SUMS`-style list, fetched over HTTPS,
    /// in which `file_name` is looked up.
    Sha256List {
        /// URL of the checksum list.
        url: String,
        /// The name the tarball has in that list.
        file_name: String,
    },
}

/// How the root filesystem sits inside a downloaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarballLayout {
    /// A tar of the root filesystem, optionally inside one top-level
    /// directory that must be stripped on extraction (Arch's `root.x86_64/`).
    Rootfs {
        /// The directory to strip, if any.
        top_dir: Option<String>,
    },
    /// An OCI image archive (Fedora's container base image) whose single
    /// layer is the root filesystem.
    OciArchive,
}

/// What `mmdebstrap` is asked to build. No mirror is named: mmdebstrap uses
/// the host's apt sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmdebstrapRecipe {
    /// The suite (`bookworm`).
    pub suite: String,
    /// The package selection variant (`minbase`, `important`, ...).
    pub variant: String,
    /// Extra packages to install.
    pub include: Vec<String>,
}

/// Hints for creating the default user inside a distro.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSetup {
    /// The distro's package manager (`apt`, `apk`, `dnf`, `pacman`).
    pub package_manager: String,
    /// The group whose members may use sudo (`sudo` or `wheel`).
    pub admin_group: String,
    /// Whether `sudo` is already in the root filesystem.
    pub sudo_in_base: bool,
    /// Shell command (run with `/bin/sh -c` as root) that installs sudo.
    pub install_sudo: String,
    /// Shell command template that creates the user: `{user}`, `{group}`
    /// (the admin group), `{shell}` and `{home}` (the home directory,
    /// `/home/USER` unless the shared host home is there) are replaced
    /// before it runs. Sudo
    /// rights come from a file the installer writes to `/etc/sudoers.d/`,
    /// since not every distro's sudoers enables the admin group.
    pub add_user: String,
    /// The login shell to give the default user.
    pub login_shell: String,
    /// Shell commands to run once as root, in order, before anything else
    /// (for example initialising Arch's pacman keyring).
    pub prepare: Vec<String>,
}
