//! `distroctl port-forward`, `ports` and `proxy`.

use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use super::forward::{self, ForwardOptions};
use super::forward_table::{self, ForwardState, ForwardTable};
use super::relay::{self, RelayError};
use crate::agent_client::AgentAddr;

/// Runs the forwarder in the foreground until interrupted, publishing the
/// forwards in the runtime directory's `ports.json`. (The manager daemon
/// runs the same task and owns the table once it exists.)
pub async fn port_forward(agent: AgentAddr) -> std::io::Result<()> {
    let state_file = super::state_file();
    if let Some(parent) = state_file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let options = ForwardOptions {
        state_file: Some(state_file.clone()),
        ..ForwardOptions::default()
    };
    let table = Arc::new(Mutex::new(ForwardTable::default()));
    eprintln!("Forwarding the VM's listening ports to localhost; Ctrl-C stops");
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = forward::run(agent, options, table) => {}
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    let _ = std::fs::remove_file(&state_file);
    Ok(())
}

/// Prints the active forwards, read from the state file the forwarder
/// keeps (`$XDG_RUNTIME_DIR/distroctl/ports.json`); a file whose owner is
/// gone counts as no forwarder.
pub fn ports() {
    match ForwardState::read_live(&super::state_file()) {
        None => eprintln!(
            "No ports are forwarded: the utility VM is not running, or port_forwarding is off in the config"
        ),
        Some(state) if state.forwards.is_empty() => {
            eprintln!(
                "No ports are forwarded: nothing listens on localhost or all addresses in the VM"
            )
        }
        Some(state) => {
            print!("{}", forward_table::render(&state.forwards));
            if state.over_limit > 0 {
                eprintln!(
                    "{} more listening ports are not forwarded: at most {} are",
                    state.over_limit,
                    forward::MAX_FORWARDED_PORTS
                );
            }
        }
    }
}

/// Relays stdin/stdout to `port` in `distro`. On the distro's ssh port
/// (see `ssh-setup`), a stopped sshd is started first: after a VM restart
/// nothing else would start it.
pub async fn proxy(agent: &AgentAddr, distro: &str, port: u16) -> Result<(), RelayError> {
    let conn = match relay::open(agent, Some(distro), port).await {
        Err(RelayError::Refused { .. }) if port == crate::ide::ssh_config::ssh_port(distro) => {
            match crate::ide::sshd_start::start_if_installed(agent, distro, port).await {
                Ok(true) => open_after_start(agent, distro, port).await?,
                Ok(false) => relay::open(agent, Some(distro), port).await?,
                Err(source) => return Err(RelayError::Agent { port, source }),
            }
        }
        other => other?,
    };
    relay::splice(conn, tokio::io::stdin(), owned_stdout(), port).await?;
    Ok(())
}

/// Standard output as a file this relay owns: unbuffered (unlike
/// `std::io::stdout`, which holds bytes after the last newline), and closed
/// when the guest's side ends, which is how a `ProxyCommand`'s ssh sees the
/// connection end.
fn owned_stdout() -> tokio::fs::File {
    // SAFETY: fd 1 is open for the life of the process, and nothing else in
    // `distroctl proxy` writes to it (messages go to stderr), so taking
    // ownership of it (and closing it when done) affects no other user.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(1) };
    tokio::fs::File::from_std(std::fs::File::from(fd))
}

/// Opens the relay to a server that was just started and may take a
/// moment to listen.
async fn open_after_start(
    agent: &AgentAddr,
    distro: &str,
    port: u16,
) -> Result<crate::agent_client::Connection, RelayError> {
    let mut tries = 0;
    loop {
        match relay::open(agent, Some(distro), port).await {
            Err(RelayError::Refused { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The networking and IDE commands, flattened into the CLI's top level.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NetworkCommand {
    /// List the VM ports forwarded to localhost.
    Ports,
    /// Forward the VM's listening ports to localhost in the foreground.
    #[command(hide = true)]
    PortForward,
    /// Relay stdin/stdout to a TCP port in a distro (e.g. as ssh ProxyCommand).
    Proxy {
        /// Distro whose network to reach (distros share the VM's).
        name: String,
        /// TCP port.
        port: u16,
    },
    /// Write `Host <distro>.distroctl` entries for OpenSSH.
    SshConfig {
        /// Also include them from ~/.ssh/config (idempotent).
        #[arg(long)]
        install: bool,
    },
    /// Install and start an OpenSSH server in a distro and authorize your key.
    SshSetup {
        /// Distro to set up.
        name: String,
    },
}

/// Runs `cmd`; returns the exit status.
pub async fn run(
    cmd: NetworkCommand,
    agent: &AgentAddr,
) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    match cmd {
        NetworkCommand::Ports => ports(),
        NetworkCommand::PortForward => port_forward(agent.clone()).await?,
        NetworkCommand::Proxy { name, port } => proxy(agent, &name, port).await?,
        NetworkCommand::SshConfig { install } => {
            crate::ide::ssh_config::command(agent, install).await?
        }
        NetworkCommand::SshSetup { name } => {
            return Ok(crate::ide::ssh_setup::command(agent, &name).await?)
        }
    }
    Ok(0)
}
