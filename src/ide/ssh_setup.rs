//! `distroctl ssh-setup NAME`: makes a distro reachable over OpenSSH.
//! Installs `openssh-server` with the distro's package manager (output
//! shown as it runs), starts sshd on the distro's own port (distros share
//! the VM's network, see [`ssh_port`]), gives the host user an account of
//! the same name with the host's public key in `authorized_keys`, and
//! rewrites the `ssh-config` entries.

use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::ExecRequest;
use thiserror::Error;

use super::ssh_config::{self, host_user, identity_file, ssh_port, SshConfigError, HOST_SUFFIX};
use crate::agent_client::{AgentAddr, ClientError};

/// Exit status of the setup script when the distro has no package manager
/// it knows.
const NO_PACKAGE_MANAGER: i32 = 3;

/// Runs inside the distro as root: `$1` port, `$2` user, `$3` public key.
const SETUP_SCRIPT: &str = r#"
set -e
port=$1 user=$2 key=$3
if [ ! -x /usr/sbin/sshd ]; then
    echo "distroctl: installing openssh-server" >&2
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends openssh-server
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y openssh-server
    elif command -v apk >/dev/null 2>&1; then
        apk add openssh-server
    elif command -v pacman >/dev/null 2>&1; then
        pacman -Sy --noconfirm openssh
    else
        exit 3
    fi
fi
if ! id -u "$user" >/dev/null 2>&1; then
    useradd -m -s /bin/sh "$user" 2>/dev/null || adduser -D "$user"
    # No password, but not locked: sshd refuses locked accounts.
    usermod -p '*' "$user" 2>/dev/null || passwd -u "$user" 2>/dev/null || true
fi
home=$(getent passwd "$user" | cut -d: -f6)
group=$(id -g "$user")
mkdir -p "$home/.ssh"
touch "$home/.ssh/authorized_keys"
grep -qxF "$key" "$home/.ssh/authorized_keys" || printf '%s\n' "$key" >> "$home/.ssh/authorized_keys"
chown "$user:$group" "$home/.ssh" "$home/.ssh/authorized_keys"
chmod 700 "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"
mkdir -p /run/sshd
ssh-keygen -A >/dev/null
pidfile=/run/distroctl-sshd.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "distroctl: sshd already runs on port $port" >&2
else
    /usr/sbin/sshd -p "$port" -o PidFile="$pidfile"
    echo "distroctl: sshd started on port $port" >&2
fi
"#;

/// Setting up ssh failed.
#[derive(Debug, Error)]
pub enum SshSetupError {
    /// `ssh-keygen` could not make the key.
    #[error("cannot create the ssh key {}; is openssh-client installed?", path.display())]
    Keygen {
        /// The key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The public key could not be read.
    #[error("cannot read the public key {}", path.display())]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The setup could not run in the distro.
    #[error("cannot run the setup in distro {distro}")]
    Exec {
        /// Distro.
        distro: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// The distro has no package manager distroctl knows.
    #[error("distro {0} has no package manager distroctl knows (apt-get, dnf, apk, pacman); install an OpenSSH server in it yourself")]
    NoPackageManager(String),
    /// The setup script failed.
    #[error(
        "setting up sshd in distro {distro} failed (exit status {status}; see the output above)"
    )]
    Failed {
        /// Distro.
        distro: String,
        /// Exit status.
        status: i32,
    },
    /// The ssh config could not be written.
    #[error("sshd runs, but the ssh config could not be written")]
    Config(#[source] SshConfigError),
}

/// Makes sure `identity` exists, creating an ed25519 key without
/// passphrase when it does not; returns the public key line.
pub fn ensure_key(identity: &Path) -> Result<String, SshSetupError> {
    let public = identity.with_extension("pub");
    if !identity.exists() {
        let keygen_err = |source| SshSetupError::Keygen {
            path: identity.to_owned(),
            source,
        };
        if let Some(dir) = identity.parent() {
            std::fs::create_dir_all(dir).map_err(keygen_err)?;
        }
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "distroctl", "-f"])
            .arg(identity)
            .status()
            .map_err(keygen_err)?;
        if !status.success() {
            return Err(keygen_err(std::io::Error::other(format!(
                "ssh-keygen exited with {status}"
            ))));
        }
        eprintln!("Created the ssh key {}", identity.display());
    }
    let text = std::fs::read_to_string(&public).map_err(|source| SshSetupError::PublicKey {
        path: public.clone(),
        source,
    })?;
    Ok(text.trim().to_owned())
}

/// Runs the setup for `distro`; returns the exit status for the CLI.
pub async fn command(agent: &AgentAddr, distro: &str) -> Result<i32, SshSetupError> {
    let key = ensure_key(&identity_file())?;
    let port = ssh_port(distro);
    let user = host_user();
    let request = ExecRequest {
        distro: distro.to_owned(),
        argv: vec![
            "sh".into(),
            "-c".into(),
            SETUP_SCRIPT.into(),
            "distroctl-ssh-setup".into(),
            port.to_string(),
            user.clone(),
            key,
        ],
        user: Some("root".into()),
        ..Default::default()
    };
    let status = crate::exec::run(agent, request)
        .await
        .map_err(|source| SshSetupError::Exec {
            distro: distro.to_owned(),
            source,
        })?;
    match status {
        0 => {}
        NO_PACKAGE_MANAGER => return Err(SshSetupError::NoPackageManager(distro.to_owned())),
        status => {
            return Err(SshSetupError::Failed {
                distro: distro.to_owned(),
                status,
            })
        }
    }
    let config = ssh_config::write_for_all(agent)
        .await
        .map_err(SshSetupError::Config)?;
    println!(
        "Ready: ssh -F {} {distro}{HOST_SUFFIX}   (or run `distroctl ssh-config --install` once, then ssh {distro}{HOST_SUFFIX})",
        config.display()
    );
    Ok(0)
}
