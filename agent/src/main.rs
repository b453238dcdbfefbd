//! `distroctl-agent`: the guest agent binary.

use std::path::PathBuf;

use agent::distro_init;
use agent::lifecycle::Distros;
use agent::server::{Agent, ListenAddr};
use agent::store::Store;
use clap::Parser;

/// The distroctl guest agent: imports, starts and runs distros, each in its
/// own namespaces, on behalf of the host.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to serve on: `vsock:PORT` or `unix:PATH` (repeatable).
    #[arg(long = "listen", default_value = "vsock:1024")]
    listen: Vec<ListenAddr>,
    /// Directory holding the distros.
    #[arg(long, default_value = "/data")]
    data_dir: PathBuf,
    /// cgroup2 mount under which distro groups are made.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
}

fn main() {
    // A distro's PID 1 is this binary started as plain `init` (so `ps` in
    // the distro shows no VM paths); its settings arrive on stdin.
    if std::env::var_os(distro_init::ROLE_ENV).is_some() {
        std::env::remove_var(distro_init::ROLE_ENV);
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_else(|_| "nameserver 10.0.2.3\n".into());
        distro_init::run_from_stdin(strip_comments(&resolv_conf));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DISTROCTL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Inside the VM stderr is the serial console: a terminal, but one
        // that ends up in a log file, so colours only with a TERM.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("TERM").is_some(),
        )
        .init();
    if let Err(e) = run(cli) {
        eprintln!("distroctl-agent: {}", agent::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::main]
async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&cli.data_dir)?;
    let cgroups = agent::cgroup::Cgroups::detect(&cli.cgroup_root);
    let exe = std::env::current_exe()?;
    let distros = Distros::new(store, cgroups, exe);
    distros.set_host_shares(agent::host_shares::mount_all());
    distros.adopt_running().await;
    let agent = Agent::new(distros);
    agent.serve(&cli.listen).await?;
    Ok(())
}
