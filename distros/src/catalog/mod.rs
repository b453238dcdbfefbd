//! The distro catalog: one TOML file per distro, embedded in the binary,
//! and the resolution of `NAME[:VERSION]` to a release.

mod model;
mod parse;

pub use model::{
    Checksum, Distro, MmdebstrapRecipe, Release, Source, TarballLayout, TarballSource, UserSetup,
};

/// The catalog files built into the binary, as `(file name, contents)`.
const BUILTIN_FILES: &[(&str, &str)] = &[
    ("alpine.toml", include_str!("../../catalog/alpine.toml")),
    (
        "archlinux.toml",
        include_str!("../../catalog/archlinux.toml"),
    ),
    ("debian.toml", include_str!("../../catalog/debian.toml")),
    ("fedora.toml", include_str!("../../catalog/fedora.toml")),
    ("ubuntu.toml", include_str!("../../catalog/ubuntu.toml")),
];

/// Why the catalog could not be read or a name not resolved.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A catalog file is not valid TOML or does not fit the schema.
    #[error("catalog file {file} is malformed")]
    Parse {
        /// The catalog file.
        file: String,
        /// What the TOML reader reported (it names the key and line).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value in a catalog file is not acceptable.
    #[error("catalog file {file}: `{key}` {reason}")]
    Invalid {
        /// The catalog file.
        file: String,
        /// The offending key, as a path (`releases[0].source.sha256`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two catalog files describe a distro of the same name.
    #[error("catalog files {first} and {second} both describe `{name}`")]
    DuplicateDistro {
        /// The distro name.
        name: String,
        /// The first file.
        first: String,
        /// The second file.
        second: String,
    },
    /// No distro of that name.
    #[error("unknown distro `{name}`; available: {available}")]
    UnknownDistro {
        /// What was asked for.
        name: String,
        /// Every `NAME:VERSION` the catalog knows.
        available: String,
    },
    /// The distro exists but not that version.
    #[error("{distro} has no version `{version}`; available: {available}")]
    UnknownVersion {
        /// The distro.
        distro: String,
        /// What was asked for.
        version: String,
        /// The distro's versions and aliases.
        available: String,
    },
}

/// All distros the catalog knows, in name order.
#[derive(Debug, Clone)]
pub struct Catalog {
    distros: Vec<Distro>,
}

impl Catalog {
    /// The catalog built into the binary.
    ///
    /// # Panics
    /// If a built-in catalog file is invalid; the crate's tests check every
    /// one, so this is a build defect, not a runtime condition.
    pub fn builtin() -> Catalog {
        match Catalog::from_files(BUILTIN_FILES.iter().copied()) {
            Ok(catalog) => catalog,
            Err(err) => panic!("built-in distro catalog is invalid: {err}"),
        }
    }

    /// The built-in catalog with the user's own files on top: a user file
    /// adds a distro, or replaces the built-in one of the same name.
    pub fn builtin_with(user_files: &[(String, String)]) -> Result<Catalog, CatalogError> {
        let user = Catalog::from_files(user_files.iter().map(|(f, t)| (f.as_str(), t.as_str())))?;
        let mut catalog = Catalog::builtin();
        catalog
            .distros
            .retain(|d| !user.distros.iter().any(|u| u.name == d.name));
        catalog.distros.extend(user.distros);
        catalog.distros.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(catalog)
    }

    /// Reads a catalog from `(file name, contents)` pairs, checking each file
    /// and that no two describe the same distro.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalog, CatalogError> {
        let mut distros: Vec<(String, Distro)> = Vec::new();
        for (file, text) in files {
            let distro = parse::parse_distro(file, text)?;
            if let Some((first, _)) = distros.iter().find(|(_, d)| d.name == distro.name) {
                return Err(CatalogError::DuplicateDistro {
                    name: distro.name,
                    first: first.clone(),
                    second: file.to_owned(),
                });
            }
            distros.push((file.to_owned(), distro));
        }
        let mut distros: Vec<Distro> = distros.into_iter().map(|(_, d)| d).collect();
        distros.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Catalog { distros })
    }

    /// Every distro, in name order, for listing.
    pub fn distros(&self) -> &[Distro] {
        &self.distros
    }

    /// Looks up `NAME` (the default release), `NAME:VERSION` or `NAME:ALIAS`.
    pub fn resolve(&self, spec: &str) -> Result<&Release, CatalogError> {
        let (name, version) = match spec.split_once(':') {
            Some((name, version)) => (name, Some(version)),
            None => (spec, None),
        };
        let Some(distro) = self.distros.iter().find(|d| d.name == name) else {
            return Err(CatalogError::UnknownDistro {
                name: name.to_owned(),
                available: self.available(),
            });
        };
        let Some(version) = version else {
            return Ok(distro.default_release());
        };
        distro
            .releases
            .iter()
            .find(|release| release.matches(version))
            .ok_or_else(|| CatalogError::UnknownVersion {
                distro: distro.name.clone(),
                version: version.to_owned(),
                available: versions_of(distro),
            })
    }

    fn available(&self) -> String {
        let names: Vec<String> = self
            .distros
            .iter()
            .flat_map(|d| d.releases.iter().map(Release::qualified_name))
            .collect();
        names.join(", ")
    }
}

fn versions_of(distro: &Distro) -> String {
    let names: Vec<String> = distro
        .releases
        .iter()
        .map(|release| {
            if release.aliases.is_empty() {
                release.version.clone()
            } else {
                format!("{} ({})", release.version, release.aliases.join(", "))
            }
        })
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_validates_every_file() {
        let catalog = Catalog::from_files(BUILTIN_FILES.iter().copied()).unwrap();

        let names: Vec<&str> = catalog.distros().iter().map(Distro::name).collect();
        assert_eq!(names, ["alpine", "archlinux", "debian", "fedora", "ubuntu"]);
    }

    #[test]
    fn user_files_add_distros_and_replace_builtin_ones() {
        let user = |name: &str| {
            (
                format!("{name}.toml"),
                BUILTIN_FILES[0]
                    .1
                    .replacen("name = \"alpine\"", &format!("name = \"{name}\""), 1),
            )
        };

        let catalog = Catalog::builtin_with(&[user("mine"), user("debian")]).unwrap();

        let names: Vec<&str> = catalog.distros().iter().map(Distro::name).collect();
        assert_eq!(
            names,
            ["alpine", "archlinux", "debian", "fedora", "mine", "ubuntu"]
        );
        assert!(matches!(
            catalog.resolve("debian").unwrap().source(),
            Source::Tarball(_)
        ));
        assert!(Catalog::builtin_with(&[("bad.toml".into(), "x = 1".into())]).is_err());
    }

    #[test]
    fn builtin_file_names_match_distro_names() {
        for (file, text) in BUILTIN_FILES {
            let distro = parse::parse_distro(file, text).unwrap();
            assert_eq!(format!("{}.toml", distro.name()), *file);
        }
    }

    #[test]
    fn builtin_tarballs_are_pinned_or_listed_over_https() {
        for distro in Catalog::builtin().distros() {
            for release in distro.releases() {
                if let Source::Tarball(tarball) = release.source() {
                    assert!(tarball.url.starts_with("https://"), "{}", tarball.url);
                    if let Checksum::Sha256List { url, .. } = &tarball.checksum {
                        assert!(url.starts_with("https://"), "{url}");
                    }
                }
            }
        }
    }

    #[test]
    fn builtin_debian_uses_mmdebstrap_without_mirror() {
        let catalog = Catalog::builtin();

        let release = catalog.resolve("debian").unwrap();

        let Source::Mmdebstrap(recipe) = release.source() else {
            panic!("debian should be built with mmdebstrap");
        };
        assert_eq!(recipe.suite, "bookworm");
        assert!(recipe.include.iter().all(|p| !p.contains('.')));
    }

    #[test]
    fn builtin_debian_has_what_every_debian_user_expects() {
        let catalog = Catalog::builtin();

        for name in ["debian:12", "debian:13"] {
            let release = catalog.resolve(name).unwrap();
            let Source::Mmdebstrap(recipe) = release.source() else {
                panic!("{name} should be built with mmdebstrap");
            };
            for package in ["sudo", "ca-certificates", "procps", "less", "man-db"] {
                assert!(
                    recipe.include.iter().any(|p| p == package),
                    "{name} lacks {package}: {:?}",
                    recipe.include
                );
            }
        }
    }

    #[test]
    fn resolve_name_gives_default_release() {
        let catalog = Catalog::builtin();

        assert_eq!(catalog.resolve("ubuntu").unwrap().version(), "24.04");
        assert_eq!(catalog.resolve("debian").unwrap().version(), "12");
    }

    #[test]
    fn resolve_accepts_version_and_alias() {
        let catalog = Catalog::builtin();

        assert_eq!(catalog.resolve("ubuntu:22.04").unwrap().version(), "22.04");
        assert_eq!(catalog.resolve("ubuntu:noble").unwrap().version(), "24.04");
        assert_eq!(catalog.resolve("debian:trixie").unwrap().version(), "13");
    }

    #[test]
    fn resolve_unknown_distro_lists_what_exists() {
        let err = Catalog::builtin()
            .resolve("gentoo")
            .unwrap_err()
            .to_string();

        assert!(err.contains("unknown distro `gentoo`"), "{err}");
        assert!(err.contains("ubuntu:24.04"), "{err}");
        assert!(err.contains("alpine:"), "{err}");
    }

    #[test]
    fn resolve_unknown_version_lists_versions_and_aliases() {
        let err = Catalog::builtin()
            .resolve("ubuntu:18.04")
            .unwrap_err()
            .to_string();

        assert!(err.contains("no version `18.04`"), "{err}");
        assert!(err.contains("24.04 (noble"), "{err}");
    }

    #[test]
    fn from_files_rejects_two_files_for_one_distro() {
        let (_, alpine) = BUILTIN_FILES[0];

        let err = Catalog::from_files([("a.toml", alpine), ("b.toml", alpine)]).unwrap_err();

        assert!(
            matches!(&err, CatalogError::DuplicateDistro { first, second, .. }
                if first == "a.toml" && second == "b.toml"),
            "{err}"
        );
    }

    #[test]
    fn release_carries_user_setup_hints() {
        let catalog = Catalog::builtin();

        assert_eq!(
            catalog.resolve("fedora").unwrap().user_setup().admin_group,
            "wheel"
        );
        assert_eq!(
            catalog.resolve("ubuntu").unwrap().user_setup().admin_group,
            "sudo"
        );
    }
}
