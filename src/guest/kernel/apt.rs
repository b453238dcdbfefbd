//! Debian kernel packages through the host's own apt: `apt-cache show` to
//! follow the metapackage, `apt-get download` (no root needed) and
//! `dpkg-deb -x` to unpack. No mirror is ever named here: apt's sources
//! decide where packages come from.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Output};

use super::{KernelError, PackageSource, ToolOutput, IMAGE_PACKAGE_PREFIX};

/// apt and dpkg on the host.
pub(super) struct Apt;

impl PackageSource for Apt {
    fn image_package(&self, metapackage: &str) -> Result<String, KernelError> {
        let args = ["show", "--no-all-versions", metapackage];
        let output = run("apt-cache", "apt", &args, None)?;
        if !output.status.success() {
            return Err(failure("apt-cache", &args, metapackage, output));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        image_dependency(&text, metapackage).ok_or_else(|| KernelError::PackageLayout {
            package: metapackage.to_owned(),
            what: "dependency on a linux-image package".to_owned(),
        })
    }

    fn fetch_and_unpack(&self, package: &str, into: &Path) -> Result<(), KernelError> {
        let downloads = into.join(".deb");
        fs::create_dir_all(&downloads).map_err(|source| KernelError::Cache {
            action: "create",
            path: downloads.clone(),
            source,
        })?;
        let args = ["download", package];
        let output = run("apt-get", "apt", &args, Some(&downloads))?;
        if !output.status.success() {
            return Err(failure("apt-get", &args, package, output));
        }
        let deb = find_deb(&downloads).ok_or_else(|| KernelError::PackageLayout {
            package: package.to_owned(),
            what: ".deb file after download".to_owned(),
        })?;
        let args = [OsStr::new("-x"), deb.as_os_str(), into.as_os_str()];
        let output = run("dpkg-deb", "dpkg", &args, None)?;
        if !output.status.success() {
            return Err(failure("dpkg-deb", &args, package, output));
        }
        let _ = fs::remove_dir_all(&downloads);
        Ok(())
    }
}

/// Runs `tool`, capturing its output; a missing program names the package
/// that provides it. apt's messages are forced to English so they can be
/// recognised.
fn run<S: AsRef<OsStr>>(
    tool: &'static str,
    package: &'static str,
    args: &[S],
    dir: Option<&Path>,
) -> Result<Output, KernelError> {
    let mut command = Command::new(tool);
    command.args(args).env("LC_ALL", "C");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.output().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KernelError::ToolMissing {
            tool,
            package,
            source,
        },
        _ => KernelError::Spawn { tool, source },
    })
}

/// Turns a failed run into "package not found" when apt says so, and into
/// the command's own message otherwise.
fn failure<S: AsRef<OsStr>>(tool: &str, args: &[S], package: &str, output: Output) -> KernelError {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if says_package_unknown(&stderr) {
        return KernelError::PackageNotFound {
            package: package.to_owned(),
        };
    }
    KernelError::ToolFailed {
        command: command_line(tool, args),
        source: ToolOutput {
            status: output.status,
            stderr,
        },
    }
}

fn command_line<S: AsRef<OsStr>>(tool: &str, args: &[S]) -> String {
    let mut line = tool.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// apt's wording for an unknown package, from `apt-cache show` and
/// `apt-get download` respectively (and for virtual packages).
fn says_package_unknown(stderr: &str) -> bool {
    [
        "No packages found",
        "Unable to locate package",
        "Can't select ",
    ]
    .iter()
    .any(|phrase| stderr.contains(phrase))
}

/// The versioned image package in the `Depends:` of the first record of
/// `apt-cache show` output.
pub(super) fn image_dependency(show: &str, metapackage: &str) -> Option<String> {
    let record = show.split("\n\n").next()?;
    let depends = record
        .lines()
        .find_map(|line| line.strip_prefix("Depends:"))?;
    depends
        .split([',', '|'])
        .filter_map(|alternative| alternative.split_whitespace().next())
        .find(|name| name.starts_with(IMAGE_PACKAGE_PREFIX) && *name != metapackage)
        .map(str::to_owned)
}

fn find_deb(dir: &Path) -> Option<std::path::PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "deb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.172+1)
Version: 6.1.172-1
Depends: linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)
Description: Linux for x86-64 cloud (meta-package)

";

    #[test]
    fn metapackage_dependency_is_the_versioned_image() {
        let package = image_dependency(SHOW, "linux-image-cloud-amd64");

        assert_eq!(package.as_deref(), Some("linux-image-6.1.0-48-cloud-amd64"));
    }

    #[test]
    fn only_the_first_record_counts() {
        let two = format!(
            "{SHOW}Package: linux-image-cloud-amd64\nDepends: linux-image-5.10.0-1-cloud-amd64\n"
        );

        let package = image_dependency(&two, "linux-image-cloud-amd64");

        assert_eq!(package.as_deref(), Some("linux-image-6.1.0-48-cloud-amd64"));
    }

    #[test]
    fn non_image_dependencies_are_skipped() {
        let show = "Package: m\nDepends: kmod, linux-base (>= 4.3~) | initramfs-tools, linux-image-6.12.9-cloud-amd64\n";

        let package = image_dependency(show, "m");

        assert_eq!(package.as_deref(), Some("linux-image-6.12.9-cloud-amd64"));
    }

    #[test]
    fn record_without_depends_has_no_image() {
        assert_eq!(image_dependency("Package: x\nVersion: 1\n", "x"), None);
    }

    #[test]
    fn apt_unknown_package_messages_are_recognised() {
        assert!(says_package_unknown("E: No packages found"));
        assert!(says_package_unknown(
            "E: Unable to locate package linux-image-foo"
        ));
        assert!(!says_package_unknown(
            "E: Failed to fetch http://…  404 Not Found"
        ));
    }

    #[test]
    fn missing_tool_names_its_package() {
        let err = run("distroctl-no-such-tool", "some-package", &["x"], None).unwrap_err();

        assert!(matches!(
            err,
            KernelError::ToolMissing {
                package: "some-package",
                ..
            }
        ));
        assert!(err
            .to_string()
            .contains("install the `some-package` package"));
    }
}
