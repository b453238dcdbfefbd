//! Reading one catalog file: the TOML schema (unknown keys are refused) and
//! the checks that turn it into a [`Distro`].

use serde::Deserialize;

use super::model::{
    Checksum, Distro, MmdebstrapRecipe, Release, Source, TarballLayout, TarballSource, UserSetup,
};
use super::CatalogError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DistroFile {
    name: String,
    display_name: String,
    default: String,
    user_setup: UserSetupFile,
    releases: Vec<ReleaseFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSetupFile {
    package_manager: String,
    admin_group: String,
    sudo_in_base: bool,
    install_sudo: String,
    add_user: String,
    login_shell: String,
    #[serde(default)]
    prepare: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFile {
    version: String,
    #[serde(default)]
    aliases: Vec<String>,
    source: SourceFile,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum SourceFile {
    Tarball {
        url: String,
        sha256: Option<String>,
        sha256_url: Option<String>,
        sha256_file: Option<String>,
        top_dir: Option<String>,
        #[serde(default)]
        oci_archive: bool,
    },
    Mmdebstrap {
        suite: String,
        variant: String,
        #[serde(default)]
        include: Vec<String>,
    },
}

/// Parses and checks one catalog file. `file` names it in errors.
pub(super) fn parse_distro(file: &str, text: &str) -> Result<Distro, CatalogError> {
    let raw: DistroFile = toml::from_str(text).map_err(|source| CatalogError::Parse {
        file: file.to_owned(),
        source: Box::new(source),
    })?;
    let invalid = |key: String, reason: String| CatalogError::Invalid {
        file: file.to_owned(),
        key,
        reason,
    };

    check_word(&raw.name).map_err(|reason| invalid("name".into(), reason))?;
    if raw.display_name.trim().is_empty() {
        return Err(invalid("display_name".into(), "must not be empty".into()));
    }
    let user_setup = user_setup(raw.user_setup).map_err(|(key, reason)| invalid(key, reason))?;
    if raw.releases.is_empty() {
        return Err(invalid(
            "releases".into(),
            "needs at least one release".into(),
        ));
    }

    let mut releases: Vec<Release> = Vec::with_capacity(raw.releases.len());
    for (index, release) in raw.releases.into_iter().enumerate() {
        let at = |key: &str| format!("releases[{index}].{key}");
        check_word(&release.version).map_err(|reason| invalid(at("version"), reason))?;
        for alias in &release.aliases {
            check_word(alias).map_err(|reason| invalid(at("aliases"), reason))?;
        }
        for name in std::iter::once(&release.version).chain(&release.aliases) {
            if releases.iter().any(|other| other.matches(name)) {
                return Err(invalid(
                    at("version"),
                    format!("`{name}` names two releases"),
                ));
            }
        }
        let source = source(release.source)
            .map_err(|(key, reason)| invalid(at(&format!("source.{key}")), reason))?;
        releases.push(Release {
            distro: raw.name.clone(),
            display_name: raw.display_name.clone(),
            version: release.version,
            aliases: release.aliases,
            source,
            user_setup: user_setup.clone(),
        });
    }
    if !releases
        .iter()
        .any(|release| release.version == raw.default)
    {
        return Err(invalid(
            "default".into(),
            format!("`{}` is not the version of any release", raw.default),
        ));
    }
    Ok(Distro {
        name: raw.name,
        display_name: raw.display_name,
        default_version: raw.default,
        releases,
    })
}

impl Release {
    /// Whether `name` is this release's version or one of its aliases.
    pub(super) fn matches(&self, name: &str) -> bool {
        self.version == name || self.aliases.iter().any(|alias| alias == name)
    }
}

type KeyError = (String, String);

fn user_setup(raw: UserSetupFile) -> Result<UserSetup, KeyError> {
    let key = |name: &str| format!("user_setup.{name}");
    for (name, value) in [
        ("package_manager", &raw.package_manager),
        ("admin_group", &raw.admin_group),
        ("install_sudo", &raw.install_sudo),
    ] {
        if value.trim().is_empty() {
            return Err((key(name), "must not be empty".into()));
        }
    }
    if !raw.add_user.contains("{user}") {
        return Err((key("add_user"), "must contain `{user}`".into()));
    }
    if !raw.login_shell.starts_with('/') {
        return Err((key("login_shell"), "must be an absolute path".into()));
    }
    Ok(UserSetup {
        package_manager: raw.package_manager,
        admin_group: raw.admin_group,
        sudo_in_base: raw.sudo_in_base,
        install_sudo: raw.install_sudo,
        add_user: raw.add_user,
        login_shell: raw.login_shell,
        prepare: raw.prepare,
    })
}

fn source(raw: SourceFile) -> Result<Source, KeyError> {
    match raw {
        SourceFile::Tarball {
            url,
            sha256,
            sha256_url,
            sha256_file,
            top_dir,
            oci_archive,
        } => {
            check_download_url(&url).map_err(|reason| ("url".to_owned(), reason))?;
            let checksum = match (sha256, sha256_url, sha256_file) {
                (Some(sha256), None, None) => {
                    check_sha256(&sha256).map_err(|reason| ("sha256".to_owned(), reason))?;
                    Checksum::Sha256(sha256)
                }
                (None, Some(url), Some(file_name)) => {
                    check_download_url(&url).map_err(|reason| ("sha256_url".to_owned(), reason))?;
                    if file_name.is_empty() || file_name.contains('/') {
                        return Err(("sha256_file".into(), "must be a plain file name".into()));
                    }
                    Checksum::Sha256List { url, file_name }
                }
                _ => {
                    return Err((
                        "sha256".into(),
                        "give either `sha256`, or both `sha256_url` and `sha256_file`".into(),
                    ))
                }
            };
            let layout = match (top_dir, oci_archive) {
                (Some(_), true) => {
                    return Err((
                        "top_dir".into(),
                        "an OCI archive has no top directory".into(),
                    ))
                }
                (Some(dir), false) => {
                    check_word(&dir).map_err(|reason| ("top_dir".to_owned(), reason))?;
                    TarballLayout::Rootfs { top_dir: Some(dir) }
                }
                (None, false) => TarballLayout::Rootfs { top_dir: None },
                (None, true) => TarballLayout::OciArchive,
            };
            Ok(Source::Tarball(TarballSource {
                url,
                checksum,
                layout,
            }))
        }
        SourceFile::Mmdebstrap {
            suite,
            variant,
            include,
        } => {
            check_word(&suite).map_err(|reason| ("suite".to_owned(), reason))?;
            check_word(&variant).map_err(|reason| ("variant".to_owned(), reason))?;
            for package in &include {
                check_word(package).map_err(|reason| ("include".to_owned(), reason))?;
            }
            Ok(Source::Mmdebstrap(MmdebstrapRecipe {
                suite,
                variant,
                include,
            }))
        }
    }
}

/// Names, versions, suites and package names: non-empty, no whitespace, no
/// `:` (the `NAME:VERSION` separator), no `/`, no `,` (mmdebstrap's list
/// separator), and not starting with `-` (no option injection).
fn check_word(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.starts_with('-') {
        return Err(format!("`{value}` must not start with `-`"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | '/' | ','))
    {
        return Err(format!("`{value}` must not contain {bad:?}"));
    }
    Ok(())
}

/// A SHA-256 in the catalog is 64 lowercase hexadecimal digits.
fn check_sha256(value: &str) -> Result<(), String> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(format!(
            "`{value}` is not a SHA-256 (64 lowercase hex digits)"
        ))
    }
}

/// Catalog downloads are HTTPS. Plain HTTP is accepted only to the loopback
/// host, where a local caching proxy or test server cannot be intercepted.
fn check_download_url(url: &str) -> Result<(), String> {
    if let Some(rest) = url.strip_prefix("https://") {
        return if rest.is_empty() || rest.starts_with('/') {
            Err(format!("`{url}` has no host"))
        } else {
            Ok(())
        };
    }
    if url.starts_with("http://") && crate::download::is_loopback_url(url) {
        return Ok(());
    }
    Err(format!("`{url}` is not an https:// URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "demo"
display_name = "Demo Linux"
default = "1"

[user_setup]
package_manager = "apt"
admin_group = "sudo"
sudo_in_base = false
install_sudo = "apt-get install -y sudo"
add_user = "useradd -m {user}"
login_shell = "/bin/bash"

[[releases]]
version = "1"
aliases = ["one"]
source = { kind = "tarball", url = "https://example.org/demo.tar.gz", sha256 = "SHA" }
"#;

    fn minimal_with(from: &str, to: &str) -> String {
        MINIMAL.replace("SHA", &"ab".repeat(32)).replace(from, to)
    }

    /// The TOML reader's message for a file that does not fit the schema.
    fn parse_error(text: &str) -> String {
        match parse_distro("demo.toml", text) {
            Err(CatalogError::Parse { file, source }) => {
                assert_eq!(file, "demo.toml");
                source.to_string()
            }
            other => panic!("expected a Parse error, got {other:?}"),
        }
    }

    fn invalid_key(text: &str) -> (String, String) {
        match parse_distro("demo.toml", text) {
            Err(CatalogError::Invalid { file, key, reason }) => {
                assert_eq!(file, "demo.toml");
                (key, reason)
            }
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn parse_accepts_minimal_distro() {
        let distro = parse_distro("demo.toml", &minimal_with("", "")).unwrap();

        assert_eq!(distro.name(), "demo");
        assert_eq!(distro.default_release().aliases(), ["one"]);
        assert_eq!(
            distro.default_release().source(),
            &Source::Tarball(TarballSource {
                url: "https://example.org/demo.tar.gz".into(),
                checksum: Checksum::Sha256("ab".repeat(32)),
                layout: TarballLayout::Rootfs { top_dir: None },
            })
        );
    }

    #[test]
    fn parse_rejects_unknown_key_naming_file_and_key() {
        let text = minimal_with("sudo_in_base", "colour = 1\nsudo_in_base");

        let err = parse_error(&text);

        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn parse_rejects_unknown_key_inside_source() {
        let text = minimal_with("kind = \"tarball\"", "kind = \"tarball\", mirror = \"x\"");

        let err = parse_error(&text);

        assert!(err.contains("mirror"), "{err}");
    }

    #[test]
    fn parse_rejects_short_sha256() {
        let text = minimal_with(&"ab".repeat(32), "abc123");

        let (key, reason) = invalid_key(&text);

        assert_eq!(key, "releases[0].source.sha256");
        assert!(reason.contains("64"), "{reason}");
    }

    #[test]
    fn parse_rejects_uppercase_sha256() {
        let text = minimal_with(&"ab".repeat(32), &"AB".repeat(32));

        assert_eq!(invalid_key(&text).0, "releases[0].source.sha256");
    }

    #[test]
    fn parse_rejects_plain_http_to_remote_host() {
        let text = minimal_with("https://example.org", "http://example.org");

        let (key, reason) = invalid_key(&text);

        assert_eq!(key, "releases[0].source.url");
        assert!(reason.contains("https"), "{reason}");
    }

    #[test]
    fn parse_accepts_plain_http_to_loopback() {
        let text = minimal_with("https://example.org", "http://127.0.0.1:8080");

        assert!(parse_distro("demo.toml", &text).is_ok());
    }

    #[test]
    fn parse_rejects_default_without_release() {
        let text = minimal_with("default = \"1\"", "default = \"2\"");

        assert_eq!(invalid_key(&text).0, "default");
    }

    #[test]
    fn parse_rejects_alias_that_repeats_a_version() {
        let text = minimal_with("", "")
            + "\n[[releases]]\nversion = \"2\"\naliases = [\"one\"]\n\
               source = { kind = \"mmdebstrap\", suite = \"x\", variant = \"minbase\" }\n";

        let (key, reason) = invalid_key(&text);

        assert_eq!(key, "releases[1].version");
        assert!(reason.contains("one"), "{reason}");
    }

    #[test]
    fn parse_rejects_both_pinned_and_listed_checksum() {
        let text = minimal_with(
            "sha256 =",
            "sha256_url = \"https://example.org/SUMS\", sha256_file = \"demo.tar.gz\", sha256 =",
        );

        assert_eq!(invalid_key(&text).0, "releases[0].source.sha256");
    }

    #[test]
    fn parse_reads_checksum_list_source() {
        let text = minimal_with(
            &format!("sha256 = \"{}\"", "ab".repeat(32)),
            "sha256_url = \"https://example.org/SUMS\", sha256_file = \"demo.tar.gz\"",
        );

        let distro = parse_distro("demo.toml", &text).unwrap();

        let Source::Tarball(tarball) = distro.default_release().source() else {
            panic!("expected a tarball source");
        };
        assert_eq!(
            tarball.checksum,
            Checksum::Sha256List {
                url: "https://example.org/SUMS".into(),
                file_name: "demo.tar.gz".into()
            }
        );
    }

    #[test]
    fn parse_rejects_package_that_looks_like_an_option() {
        let text = minimal_with("", "")
            + "\n[[releases]]\nversion = \"2\"\nsource = { kind = \"mmdebstrap\", \
               suite = \"x\", variant = \"minbase\", include = [\"--foo\"] }\n";

        assert_eq!(invalid_key(&text).0, "releases[1].source.include");
    }

    #[test]
    fn parse_rejects_top_dir_on_oci_archive() {
        let text = minimal_with("sha256 =", "top_dir = \"x\", oci_archive = true, sha256 =");

        assert_eq!(invalid_key(&text).0, "releases[0].source.top_dir");
    }
}
