//! What each command does once its arguments are parsed.

use std::path::PathBuf;

use protocol::{
    Compression, DistroInfo, DistroSettings, DistroState, ErrorKind, ExecRequest, Request,
    Response, TtyRequest,
};

use crate::agent_client::{self, AgentAddr, ClientError};
use crate::config::Config;
use crate::manager::client::{self as manager, Lease};
use crate::{
    exec, install, net, stats, status, terminal, transfer, AnyError, BackendArg, Cli, Command,
    ExecOpts,
};

/// The agent a command talks to, and the lease that keeps its VM up.
struct Session {
    addr: AgentAddr,
    lease: Option<Lease>,
}

impl Session {
    /// The agent given with `--agent-socket`, or the utility VM's, leased
    /// from the manager (which boots the VM when needed).
    async fn open(
        cli_socket: &Option<PathBuf>,
        backend: Option<BackendArg>,
    ) -> Result<Session, AnyError> {
        if let Some(path) = cli_socket {
            return Ok(Session {
                addr: AgentAddr::Unix(path.clone()),
                lease: None,
            });
        }
        // Check the config here too, so a mistake is reported before any
        // manager or VM is started.
        Config::load(&Config::default_path())?;
        let backend = backend.map(|b| match b {
            BackendArg::Auto => "auto",
            BackendArg::Qemu => "qemu",
            BackendArg::Kvm => "kvm",
        });
        let (addr, lease) = manager::acquire(backend).await?;
        Ok(Session {
            addr,
            lease: Some(lease),
        })
    }

    /// Installs a fetched catalog release, unless the name is taken.
    async fn install(
        &self,
        plan: &install::Plan,
        tarball: &distros::RootfsTarball,
        user: Option<&str>,
        config: &Config,
    ) -> Result<(), AnyError> {
        if self.distros().await?.iter().any(|d| d.name == plan.name) {
            return Err(format!(
                "{} is already installed: open it with `distroctl shell {}`, or pick another name with --name",
                plan.name, plan.name
            )
            .into());
        }
        let home_share = config
            .share_home
            .then(|| std::env::var_os("HOME").map(std::path::PathBuf::from))
            .flatten();
        if let Err(e) =
            install::install(&self.addr, plan, tarball, user, home_share.as_deref()).await
        {
            return match self.stop_reason(true).await {
                Some(reason) => {
                    Err(format!("the install of {} did not finish: {reason}", plan.name).into())
                }
                None => Err(e),
            };
        }
        if self.lease.is_some() {
            adopt_as_default(&plan.name, config)?;
        }
        Ok(())
    }

    async fn request(&self, req: Request) -> Result<Response, ClientError> {
        agent_client::request(&self.addr, req).await.map(|(_, r)| r)
    }

    async fn distros(&self) -> Result<Vec<DistroInfo>, ClientError> {
        match self.request(Request::List).await? {
            Response::Distros { distros } => Ok(distros),
            _ => Err(ClientError::Unexpected("list".into())),
        }
    }

    /// Runs a process; tells the user when the VM went away under it.
    async fn exec(&self, req: ExecRequest) -> Result<i32, AnyError> {
        let result = exec::run(&self.addr, req).await;
        if let Some(reason) = self.stop_reason(result.is_err()).await {
            eprintln!("distroctl: {reason}; the session ended");
            return Ok(result.unwrap_or(1));
        }
        Ok(result?)
    }

    /// Imports an archive; says so when the VM went away under it rather
    /// than blaming the connection.
    async fn import(
        &self,
        name: &str,
        file: &std::path::Path,
        settings: DistroSettings,
    ) -> Result<u64, AnyError> {
        let result = transfer::import(&self.addr, name, file, settings, None).await;
        let refused = matches!(
            &result,
            Err(transfer::TransferError::Agent(ClientError::Agent(_)))
        );
        match self.stop_reason(result.is_err() && !refused).await {
            Some(reason) if result.is_err() => {
                Err(format!("the import of {name} did not finish: {reason}").into())
            }
            _ => Ok(result?),
        }
    }

    /// Why the VM went away during this command, if it did. After a failure
    /// the manager's word may take up to a second (it notices a dead VM
    /// within one), so it is waited for before the connection is blamed.
    async fn stop_reason(&self, failed: bool) -> Option<String> {
        let lease = self.lease.as_ref()?;
        if failed {
            for _ in 0..20 {
                if lease.stop_reason().is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        lease.stop_reason()
    }
}

/// Runs one command; returns its exit status.
pub async fn run(cli: Cli) -> Result<i32, AnyError> {
    match &cli.command {
        Command::Status => return status::show(&cli.agent_socket).await.map(|()| 0),
        Command::Logs { name: None, lines } => return status::logs(*lines).map(|()| 0),
        Command::Logs {
            name: Some(name),
            lines,
        } => return status::distro_console(&cli.agent_socket, name, *lines).await,
        Command::Stats {
            names,
            watch,
            interval,
            json,
        } => {
            let args = stats::StatsArgs {
                names: names.clone(),
                watch: watch.then_some(*interval),
                json: *json,
            };
            return stats::run(&cli.agent_socket, args).await;
        }
        Command::Config => return status::config().map(|()| 0),
        Command::Network(net::commands::NetworkCommand::Ports) => {
            net::commands::ports();
            return Ok(0);
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "distroctl", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Unregister { name, yes: false }
            if !status::confirm(&format!("Delete distro {name} and all its files?"), "--yes")? =>
        {
            eprintln!("Kept {name}");
            return Ok(1);
        }
        Command::Install { list: true, .. } => {
            install::print_catalog(&install::catalog()?);
            return Ok(0);
        }
        Command::Shutdown if cli.agent_socket.is_none() => {
            if !manager::shutdown().await? {
                eprintln!("The utility VM is not running");
            }
            return Ok(0);
        }
        _ => {}
    }
    let config = Config::load(&Config::default_path())?;
    // `shell` without a name needs the default before anything starts.
    let shell_target = match &cli.command {
        Command::Shell { name, .. } => Some(default_or(name.clone(), &config)?),
        _ => None,
    };
    if let Command::Install {
        distro: Some(spec),
        name,
        user,
        refresh,
        ..
    } = &cli.command
    {
        let plan = install::plan(&install::catalog()?, spec, name.clone())?;
        let user = match user.as_deref() {
            Some("root") => None,
            Some(u) => Some(u.to_string()),
            None => install::host_user(),
        };
        if let Some(u) = &user {
            install::check_user_name(u)?;
        }
        // Download (or build) while the VM boots.
        let (session, tarball) = tokio::join!(
            Session::open(&cli.agent_socket, cli.backend),
            install::fetch(&plan.release, *refresh)
        );
        let (session, tarball) = (session?, tarball?);
        session
            .install(&plan, &tarball, user.as_deref(), &config)
            .await?;
        eprintln!(
            "Installed {}: open it with `distroctl shell {}`",
            plan.name, plan.name
        );
        return Ok(0);
    }
    let session = Session::open(&cli.agent_socket, cli.backend).await?;
    match cli.command {
        Command::Import {
            name,
            file,
            sha256,
            systemd,
        } => {
            let settings = DistroSettings {
                systemd,
                ..Default::default()
            };
            let url = file
                .to_str()
                .filter(|f| f.starts_with("https://") || f.starts_with("http://"));
            let file = match url {
                Some(url) => install::fetch_url(url, sha256).await?.path,
                None if sha256.is_some() => {
                    return Err("--sha256 applies to an archive downloaded from a URL".into())
                }
                None => file,
            };
            let bytes = session.import(&name, &file, settings).await?;
            eprintln!("Imported {name} ({:.1} MiB)", bytes as f64 / 1048576.0);
            if session.lease.is_some() {
                adopt_as_default(&name, &config)?;
            }
        }
        Command::Export {
            name,
            file,
            compress,
        } => {
            let compression = compress.unwrap_or_else(|| transfer::compression_for(&file));
            transfer::export(&session.addr, &name, &file, compression).await?;
        }
        Command::List { verbose } => print_list(&session.distros().await?, &config, verbose),
        Command::Start { name, install } => {
            let started = match session.request(Request::Start { name: name.clone() }).await {
                Err(ClientError::Agent(e)) if e.kind == ErrorKind::NotFound => {
                    let catalog = install::catalog()?;
                    if catalog.resolve(&name).is_err() {
                        return Err(ClientError::Agent(e).into());
                    }
                    let question = format!("{name} is not installed. Install it from the catalog?");
                    if !install && !status::confirm(&question, "--install")? {
                        return Ok(1);
                    }
                    let plan = install::plan(&catalog, &name, Some(name.clone()))?;
                    let tarball = install::fetch(&plan.release, false).await?;
                    let user = install::host_user();
                    session
                        .install(&plan, &tarball, user.as_deref(), &config)
                        .await?;
                    session
                        .request(Request::Start { name: name.clone() })
                        .await?
                }
                other => other?,
            };
            if let Response::Started {
                already_running, ..
            } = started
            {
                if already_running {
                    eprintln!("{name} is already running");
                }
            }
        }
        Command::SetDefault { name } => {
            if !session.distros().await?.iter().any(|d| d.name == name) {
                return Err(format!(
                    "no distro named {name}; `distroctl list` shows the installed ones"
                )
                .into());
            }
            Config::set_key(&Config::default_path(), "default_distro", Some(&name))?;
            eprintln!("{name} is now the default distro");
        }
        Command::Configure {
            name,
            default_user,
            systemd,
            memory_max,
            cpu_max,
            pids_max,
            network,
            mounts,
        } => {
            let distros = session.distros().await?;
            let Some(current) = distros.iter().find(|d| d.name == name) else {
                return Err(format!(
                    "no distro named {name}; `distroctl list` shows the installed ones"
                )
                .into());
            };
            let mut settings = current.settings.clone();
            if let Some(user) = default_user {
                settings.default_user = Some(user).filter(|u| !u.is_empty());
            }
            if let Some(systemd) = systemd {
                settings.systemd = systemd;
            }
            if let Some(bytes) = memory_max {
                settings.limits.memory_bytes = bytes.into_option();
            }
            if let Some(millis) = cpu_max {
                settings.limits.cpu_millis = millis.into_option();
            }
            if let Some(pids) = pids_max {
                settings.limits.pids = pids.into_option();
            }
            if let Some(network) = network {
                settings.network = network;
            }
            if let Some(mounts) = mounts {
                settings.mounts = mounts;
            }
            session
                .request(Request::Configure {
                    name: name.clone(),
                    settings: settings.clone(),
                })
                .await?;
            if current.state == DistroState::Running {
                for line in when_settings_apply(&name, &current.settings, &settings) {
                    eprintln!("{line}");
                }
            }
        }
        Command::Exec {
            name,
            opts,
            tty,
            no_tty,
            command,
        } => {
            let tty = tty || (!no_tty && terminal::is_interactive());
            return session.exec(exec_request(name, opts, command, tty)).await;
        }
        Command::Shell { opts, .. } => {
            let name = shell_target.expect("resolved above");
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
            return session
                .exec(exec_request(name, opts, Vec::new(), tty))
                .await;
        }
        Command::Terminate { name } => {
            session.request(Request::Terminate { name }).await?;
        }
        Command::Unregister { name, .. } => {
            session
                .request(Request::Unregister { name: name.clone() })
                .await?;
            eprintln!("Unregistered {name}");
        }
        Command::Shutdown => {
            session.request(Request::Shutdown).await?;
        }
        Command::Network(cmd) => return net::commands::run(cmd, &session.addr).await,
        Command::Daemon | Command::VmRun(_) => unreachable!("handled before the runtime starts"),
        Command::Install { .. } => unreachable!("handled before the session opens"),
        Command::Status
        | Command::Stats { .. }
        | Command::Logs { .. }
        | Command::Config
        | Command::Completions { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(0)
}

/// The named distro, or the configured default.
/// What `configure` of a running distro tells the user: the default user
/// applies from the next command and limits at once (the agent writes them
/// to the distro's cgroup), its init and network only from its next start.
pub(crate) fn when_settings_apply(
    name: &str,
    old: &protocol::DistroSettings,
    new: &protocol::DistroSettings,
) -> Vec<String> {
    let mut lines = Vec::new();
    if old.default_user != new.default_user {
        lines.push("The default user applies from the next exec or shell.".to_string());
    }
    if old.limits != new.limits {
        lines.push(format!("The limits apply to {name} now."));
    }
    let mut at_start = Vec::new();
    if old.systemd != new.systemd {
        at_start.push("--systemd");
    }
    if old.network != new.network {
        at_start.push("--network");
    }
    if old.mounts != new.mounts {
        at_start.push("--mounts");
    }
    if !at_start.is_empty() {
        lines.push(format!(
            "Saved; {} applies when {name} next starts (`distroctl terminate {name}` first).",
            at_start.join(" and ")
        ));
    }
    lines
}

fn default_or(name: Option<String>, config: &Config) -> Result<String, AnyError> {
    name.or_else(|| config.default_distro.clone()).ok_or_else(|| {
        "no distro named and no default distro: name one (`distroctl shell NAME`) or set one with `distroctl set-default NAME`".into()
    })
}

/// The first distro a user adds becomes the default, as in WSL.
fn adopt_as_default(name: &str, config: &Config) -> Result<(), AnyError> {
    if config.default_distro.is_none() {
        Config::set_key(&Config::default_path(), "default_distro", Some(name))?;
        eprintln!("{name} is the default distro (`distroctl shell` opens it)");
    }
    Ok(())
}

fn print_list(distros: &[DistroInfo], config: &Config, verbose: bool) {
    if distros.is_empty() {
        eprintln!("No distros installed. Import one with: distroctl import NAME FILE");
        return;
    }
    let default = config.default_distro.as_deref();
    if verbose {
        println!(
            "  {:<24} {:<8} {:>5} {:>10} {:>10} {:<10} INIT",
            "NAME", "STATE", "PIDS", "MEMORY", "DISK", "USER"
        );
    } else {
        println!("  {:<24} STATE", "NAME");
    }
    for d in distros {
        let marker = if Some(d.name.as_str()) == default {
            '*'
        } else {
            ' '
        };
        let state = match d.state {
            DistroState::Running => "running",
            DistroState::Stopped => "stopped",
        };
        if !verbose {
            println!("{marker} {:<24} {state}", d.name);
            continue;
        }
        let mem = d.memory_bytes.map(human).unwrap_or_else(|| "-".into());
        println!(
            "{marker} {:<24} {:<8} {:>5} {:>10} {:>10} {:<10} {}",
            d.name,
            state,
            d.pids,
            mem,
            human(d.disk_bytes),
            d.settings.default_user.as_deref().unwrap_or("root"),
            if d.settings.systemd {
                "systemd"
            } else {
                "reaper"
            }
        );
    }
}

fn exec_request(name: String, opts: ExecOpts, argv: Vec<String>, tty: bool) -> ExecRequest {
    let tty = tty.then(|| {
        let (rows, cols) = terminal::size();
        TtyRequest {
            rows,
            cols,
            term: std::env::var("TERM").ok(),
        }
    });
    ExecRequest {
        distro: name,
        argv,
        env: opts.env,
        cwd: opts.cwd,
        user: opts.user,
        tty,
    }
}

/// Parses `--compress`.
pub fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "gzip" | "gz" => Ok(Compression::Gzip),
        "xz" => Ok(Compression::Xz),
        "zstd" | "zst" => Ok(Compression::Zstd),
        _ => Err(format!(
            "unknown compression {s:?}: use none, gzip, xz or zstd"
        )),
    }
}

/// A byte count for people: `512 B`, `1.5 MiB`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
