//! `distroctl install`: a distro from the catalog — fetch its root file
//! system (verified download or mmdebstrap), import it, and set it up for
//! the user: an account named like the host user, with a home directory and
//! sudo where the distro has it, as the distro's default user.
//!
//! The catalog is the built-in one plus the user's own files in
//! `~/.config/distroctl/catalog/*.toml`, which add distros or replace
//! built-in ones.

use std::path::PathBuf;

use distros::{AcquireOptions, Catalog, Release, RootfsTarball, UserSetup};
use protocol::{DistroSettings, ExecRequest, Request};

use crate::agent_client::{self, AgentAddr};
use crate::{exec, transfer, AnyError};

/// What to install, and as which distro.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The catalog release.
    pub release: Release,
    /// The distro name it gets.
    pub name: String,
}

/// Reads the catalog: built-in plus the user's files.
pub fn catalog() -> Result<Catalog, AnyError> {
    let dir = crate::paths::config_dir().join("catalog");
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            files.push((path.display().to_string(), text));
        }
    }
    Ok(Catalog::builtin_with(&files)?)
}

/// Resolves `spec` (`NAME` or `NAME:VERSION`) to a release and the name
/// the distro gets: the distro's own name for its default release, else
/// `NAME-VERSION` (as WSL names `Ubuntu-22.04`), unless `name` is given.
pub fn plan(catalog: &Catalog, spec: &str, name: Option<String>) -> Result<Plan, AnyError> {
    let release = catalog.resolve(spec)?.clone();
    let is_default = catalog
        .distros()
        .iter()
        .find(|d| d.name() == release.distro())
        .is_some_and(|d| d.default_version() == release.version());
    let name = name.unwrap_or_else(|| {
        if is_default {
            release.distro().to_string()
        } else {
            format!("{}-{}", release.distro(), release.version())
        }
    });
    Ok(Plan { release, name })
}

/// Gets the release's root file system into the cache (or finds it there).
pub async fn fetch(release: &Release, refresh: bool) -> Result<RootfsTarball, AnyError> {
    let release = release.clone();
    let cache = crate::paths::cache_dir();
    let options = AcquireOptions {
        refresh,
        ..AcquireOptions::default()
    };
    eprintln!(
        "Getting {} {} ({})",
        release.display_name(),
        release.version(),
        release.qualified_name()
    );
    let tarball = tokio::task::spawn_blocking(move || distros::acquire(&release, &cache, &options))
        .await
        .map_err(|e| format!("download task failed: {e}"))??;
    Ok(tarball)
}

/// Gets an archive from a URL into the cache, checked against `sha256`
/// when given.
pub async fn fetch_url(url: &str, sha256: Option<String>) -> Result<RootfsTarball, AnyError> {
    let url = url.to_string();
    let cache = crate::paths::cache_dir();
    let tarball = tokio::task::spawn_blocking(move || {
        distros::acquire_url(&url, sha256.as_deref(), &cache, &AcquireOptions::default())
    })
    .await
    .map_err(|e| format!("download task failed: {e}"))??;
    Ok(tarball)
}

/// Imports the fetched tarball as `plan.name` and sets up `user` (none:
/// the distro keeps root as its default user). `home_share` is the host
/// home directory shared with distros at the same path, if it is.
pub async fn install(
    agent: &AgentAddr,
    plan: &Plan,
    tarball: &RootfsTarball,
    user: Option<&str>,
    home_share: Option<&std::path::Path>,
) -> Result<(), AnyError> {
    let bytes = transfer::import(
        agent,
        &plan.name,
        &tarball.path,
        DistroSettings::default(),
        tarball.top_dir.clone(),
    )
    .await?;
    eprintln!(
        "Imported {} ({:.1} MiB)",
        plan.name,
        bytes as f64 / 1048576.0
    );
    let Some(user) = user else {
        return Ok(());
    };
    eprintln!("Creating user {user} in {}", plan.name);
    let home = user_home(user, home_share);
    if home != format!("/home/{user}") {
        eprintln!(
            "Your home directory is shared at /home/{user}; {user}'s own home in {} is {home}",
            plan.name
        );
    }
    let script = setup_script(plan.release.user_setup(), user, &home)?;
    let req = ExecRequest {
        distro: plan.name.clone(),
        argv: vec!["/bin/sh".into(), "-c".into(), script],
        user: Some("root".into()),
        ..ExecRequest::default()
    };
    let (code, output) = exec::output(agent, req).await?;
    let output = String::from_utf8_lossy(&output);
    for line in output.lines().filter(|l| l.starts_with("distroctl: ")) {
        eprintln!("{line}");
    }
    if code != 0 {
        return Err(format!(
            "setting up user {user} in {} failed (status {code}); the distro is installed, log in as root with `distroctl shell {} --user root`:\n{}",
            plan.name,
            plan.name,
            output.trim_end()
        )
        .into());
    }
    let settings = DistroSettings {
        default_user: Some(user.to_string()),
        ..DistroSettings::default()
    };
    agent_client::request(
        agent,
        Request::Configure {
            name: plan.name.clone(),
            settings,
        },
    )
    .await?;
    Ok(())
}

/// The home directory of the distro's default user `user`: `/home/USER`,
/// unless the host home shared with distros (`home_share`) is that very
/// path; then, as Lima does, `/home/USER.linux`, so the distro's own
/// dotfiles and the host's never hide each other. The host home stays at
/// its usual path, where host paths work unchanged.
pub fn user_home(user: &str, home_share: Option<&std::path::Path>) -> String {
    let usual = format!("/home/{user}");
    match home_share {
        Some(shared) if shared == std::path::Path::new(&usual) => format!("{usual}.linux"),
        _ => usual,
    }
}

/// The host user's name, which the distro's default user is named after;
/// `None` for root (the distro then keeps root as its default user).
pub fn host_user() -> Option<String> {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return None;
    }
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
}

/// Checks a user name against what every distro's tools accept.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= 32 {
        Ok(())
    } else {
        Err(format!(
            "invalid user name {name:?}: use up to 32 characters a-z, 0-9, '_' or '-', starting with a letter or '_'"
        ))
    }
}

/// The root shell script that prepares the distro and creates `user`:
/// the distro's own preparation, the account (if missing), sudo (installed
/// when the base lacks it and the network allows) and a sudoers rule.
fn setup_script(setup: &UserSetup, user: &str, home: &str) -> Result<String, String> {
    check_user_name(user)?;
    let add_user = setup
        .add_user
        .replace("{user}", user)
        .replace("{home}", home)
        .replace("{group}", &setup.admin_group)
        .replace("{shell}", &setup.login_shell);
    let mut script = String::from("set -e\nexec 2>&1\n");
    for step in &setup.prepare {
        script.push_str(step);
        script.push('\n');
    }
    script.push_str(&format!(
        "if ! id -u {user} >/dev/null 2>&1; then\n  {add_user}\nfi\n"
    ));
    if !setup.sudo_in_base {
        script.push_str(&format!(
            "if ! command -v sudo >/dev/null 2>&1; then\n  ( {} ) >/tmp/distroctl-sudo.log 2>&1 || echo 'distroctl: sudo could not be installed (is the network up?); use `--user root` for root commands'\nfi\n",
            setup.install_sudo
        ));
    }
    script.push_str(&format!(
        "if command -v sudo >/dev/null 2>&1; then\n  mkdir -p /etc/sudoers.d\n  echo '{user} ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/distroctl-{user}\n  chmod 0440 /etc/sudoers.d/distroctl-{user}\nfi\n"
    ));
    Ok(script)
}

/// Prints the catalog (`distroctl install --list`).
pub fn print_catalog(catalog: &Catalog) {
    println!("{:<12} {:<10} {:<20} SOURCE", "NAME", "VERSION", "ALIASES");
    for distro in catalog.distros() {
        for release in distro.releases() {
            let default = if release.version() == distro.default_version() {
                " (default)"
            } else {
                ""
            };
            let source = match release.source() {
                distros::Source::Mmdebstrap(_) => "mmdebstrap (host apt)",
                distros::Source::Tarball(_) => "rootfs tarball",
            };
            println!(
                "{:<12} {:<10} {:<20} {source}{default}",
                distro.name(),
                release.version(),
                release.aliases().join(",")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_release_keeps_the_distro_name_and_others_get_the_version() {
        let catalog = Catalog::builtin();

        assert_eq!(plan(&catalog, "ubuntu", None).unwrap().name, "ubuntu");
        assert_eq!(plan(&catalog, "ubuntu:24.04", None).unwrap().name, "ubuntu");
        assert_eq!(
            plan(&catalog, "ubuntu:jammy", None).unwrap().name,
            "ubuntu-22.04"
        );
        assert_eq!(
            plan(&catalog, "debian:trixie", Some("dev".into()))
                .unwrap()
                .name,
            "dev"
        );
        assert!(plan(&catalog, "gentoo", None).is_err());
    }

    #[test]
    fn user_names_are_checked() {
        for ok in ["alice", "_svc", "bob-2", "a_b"] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "1abc", "a b", "a;rm", "x'y", &"a".repeat(33)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn setup_script_creates_the_user_and_a_sudo_rule() {
        let catalog = Catalog::builtin();
        let setup = catalog.resolve("alpine").unwrap().user_setup();

        let script = setup_script(setup, "alice", "/home/alice.linux").unwrap();

        assert!(
            script.contains(
                "adduser -D -h /home/alice.linux -s /bin/sh alice && addgroup alice wheel"
            ),
            "{script}"
        );
        assert!(script.contains("apk add --no-cache sudo"), "{script}");
        assert!(
            script.contains("'alice ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/distroctl-alice")
        );
        assert!(setup_script(setup, "x; rm -rf /", "/home/x").is_err());
    }

    #[test]
    fn the_users_home_moves_aside_only_when_the_shared_host_home_is_at_its_path() {
        use std::path::Path;

        assert_eq!(user_home("alice", None), "/home/alice");
        assert_eq!(
            user_home("alice", Some(Path::new("/home/bob"))),
            "/home/alice"
        );
        assert_eq!(
            user_home("alice", Some(Path::new("/srv/alice"))),
            "/home/alice"
        );
        assert_eq!(
            user_home("alice", Some(Path::new("/home/alice"))),
            "/home/alice.linux"
        );
    }

    #[test]
    fn setup_script_is_valid_posix_sh() {
        let catalog = Catalog::builtin();
        let script = setup_script(
            catalog.resolve("debian").unwrap().user_setup(),
            "alice",
            "/home/alice",
        )
        .unwrap();
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
