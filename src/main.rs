//! `distroctl`: Linux distributions on a Linux host, each in its own
//! isolated environment inside one shared utility VM.

mod agent_client;
mod config;
mod exec;
mod guest;
mod ide;
mod net;
mod paths;
mod status;
mod terminal;
mod transfer;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use protocol::{
    Compression, DistroSettings, DistroState, ExecRequest, Request, Response, TtyRequest,
};

use crate::agent_client::{AgentAddr, ClientError};
use crate::config::{BackendChoice, Config};

/// Run Linux distributions side by side, like WSL2 on a Linux host.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Talk straight to an agent listening on this Unix socket (tests and
    /// debugging; normally the utility VM's agent is used).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "DISTROCTL_AGENT_SOCKET"
    )]
    agent_socket: Option<PathBuf>,
    /// VM monitor for the utility VM (overrides `backend` in the config).
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendArg>,
    /// Show the full cause of errors and debug logs.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import a distro from a tar archive (plain, gzip, xz or zstd).
    Import {
        /// Name for the new distro.
        name: String,
        /// Archive file, or `-` for standard input.
        file: PathBuf,
        /// Run the distro's own systemd as its PID 1.
        #[arg(long)]
        systemd: bool,
    },
    /// Export a distro as a tar archive (compression from the extension:
    /// .tar, .tar.gz, .tar.xz, .tar.zst).
    Export {
        /// Distro to export.
        name: String,
        /// Output file, or `-` for standard output.
        file: PathBuf,
        /// Compression, overriding the extension (none, gzip, xz, zstd).
        #[arg(long, value_parser = parse_compression)]
        compress: Option<Compression>,
    },
    /// List the distros.
    #[command(alias = "ls")]
    List,
    /// Start a distro and return.
    Start {
        /// Distro to start.
        name: String,
    },
    /// Run a command in a distro (starting it if needed).
    #[command(alias = "run")]
    Exec {
        /// Distro to run in.
        name: String,
        #[command(flatten)]
        opts: ExecOpts,
        /// Allocate a terminal even when stdio is not one.
        #[arg(short = 't', long, conflicts_with = "no_tty")]
        tty: bool,
        /// Never allocate a terminal.
        #[arg(short = 'T', long)]
        no_tty: bool,
        /// Command and arguments.
        /// (`--` before it is optional, so `rsync -e 'distroctl exec'` works.)
        #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Open an interactive login shell in a distro.
    Shell {
        /// Distro to enter.
        name: String,
        #[command(flatten)]
        opts: ExecOpts,
    },
    /// Stop every process of a distro; its files stay.
    Terminate {
        /// Distro to stop.
        name: String,
    },
    /// Stop a distro and delete it with all its files.
    Unregister {
        /// Distro to delete.
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        yes: bool,
    },
    /// Show the utility VM (backend and why, state, uptime, memory) and the distros.
    Status,
    /// Show the end of the utility VM's console log and the VM runner's log.
    Logs {
        /// Lines of each log.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// Show the effective configuration and where it comes from.
    Config,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// Shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Stop every distro, flush the data disk and stop the utility VM.
    Shutdown,
    /// Run the utility VM (started by distroctl itself, detached).
    #[command(hide = true)]
    VmRun(vm::runner::RunnerArgs),
    #[command(flatten)]
    Network(net::commands::NetworkCommand),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendArg {
    /// The best backend this host can run.
    Auto,
    /// QEMU (`-M microvm`), with KVM when the host has hardware
    /// virtualization and emulation otherwise.
    Qemu,
}

#[derive(Debug, clap::Args)]
struct ExecOpts {
    /// User name or uid inside the distro (default: the distro's default user, else root).
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the distro (default: the user's home).
    #[arg(long = "cd", value_name = "DIR")]
    cwd: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::VmRun(args) = cli.command {
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
        return match vm::runner::run(args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("distroctl vm-run: {}", describe(&e, true));
                ExitCode::from(1)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(if cli.verbose { "debug" } else { "warn" })
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let verbose = cli.verbose;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("distroctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("distroctl: {}", describe(e.as_ref(), verbose));
            1
        }
    };
    // A task may still block on reading stdin; exit without waiting for it.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// The error line: the message and its first cause, or the whole chain
/// with `-v`.
fn describe(e: &(dyn std::error::Error + 'static), verbose: bool) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut causes = 0;
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            if !verbose && causes == 1 {
                break;
            }
            text.push_str(": ");
            text.push_str(&part);
            causes += 1;
        }
        source = s.source();
    }
    text
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

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

/// The agent to talk to: the one given on the command line, or the utility
/// VM's (booting it when needed).
async fn agent(
    cli_socket: &Option<PathBuf>,
    backend: Option<BackendArg>,
) -> Result<AgentAddr, AnyError> {
    if let Some(path) = cli_socket {
        return Ok(AgentAddr::Unix(path.clone()));
    }
    let mut config = Config::load(&Config::default_path())?;
    match backend {
        Some(BackendArg::Auto) => config.backend = BackendChoice::Auto,
        Some(BackendArg::Qemu) => config.backend = BackendChoice::Qemu,
        None => {}
    }
    Ok(vm::control::ensure_running(&config).await?)
}

async fn run(cli: Cli) -> Result<i32, AnyError> {
    match &cli.command {
        Command::Status => return status::show(&cli.agent_socket).await.map(|()| 0),
        Command::Logs { lines } => return status::logs(*lines).map(|()| 0),
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
            if !status::confirm(&format!("Delete distro {name} and all its files?"))? =>
        {
            eprintln!("Kept {name}");
            return Ok(1);
        }
        _ => {}
    }
    if matches!(cli.command, Command::Shutdown) && cli.agent_socket.is_none() {
        if !vm::control::shutdown().await? {
            eprintln!("The utility VM is not running");
        }
        return Ok(0);
    }
    let socket = agent(&cli.agent_socket, cli.backend).await?;
    let simple = |req: Request| {
        let socket = socket.clone();
        async move { agent_client::request(&socket, req).await.map(|(_, r)| r) }
    };
    match cli.command {
        Command::Import {
            name,
            file,
            systemd,
        } => {
            let settings = DistroSettings {
                systemd,
                ..Default::default()
            };
            let bytes = transfer::import(&socket, &name, &file, settings).await?;
            eprintln!("Imported {name} ({:.1} MiB)", bytes as f64 / 1048576.0);
        }
        Command::Export {
            name,
            file,
            compress,
        } => {
            let compression = compress.unwrap_or_else(|| transfer::compression_for(&file));
            transfer::export(&socket, &name, &file, compression).await?;
        }
        Command::List => {
            let Response::Distros { distros } = simple(Request::List).await? else {
                return Err(ClientError::Unexpected("list".into()).into());
            };
            if distros.is_empty() {
                eprintln!("No distros installed. Import one with: distroctl import NAME FILE");
            } else {
                println!(
                    "{:<24} {:<8} {:>5} {:>10} {:>10}",
                    "NAME", "STATE", "PIDS", "MEMORY", "DISK"
                );
                for d in distros {
                    let state = match d.state {
                        DistroState::Running => "running",
                        DistroState::Stopped => "stopped",
                    };
                    let mem = d.memory_bytes.map(human).unwrap_or_else(|| "-".into());
                    println!(
                        "{:<24} {:<8} {:>5} {:>10} {:>10}",
                        d.name,
                        state,
                        d.pids,
                        mem,
                        human(d.disk_bytes)
                    );
                }
            }
        }
        Command::Start { name } => {
            if let Response::Started {
                already_running, ..
            } = simple(Request::Start { name: name.clone() }).await?
            {
                if already_running {
                    eprintln!("{name} is already running");
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
            return Ok(exec::run(&socket, exec_request(name, opts, command, tty)).await?);
        }
        Command::Shell { name, opts } => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
            return Ok(exec::run(&socket, exec_request(name, opts, Vec::new(), tty)).await?);
        }
        Command::Terminate { name } => {
            simple(Request::Terminate { name }).await?;
        }
        Command::Unregister { name, .. } => {
            simple(Request::Unregister { name: name.clone() }).await?;
            eprintln!("Unregistered {name}");
        }
        Command::Shutdown => {
            simple(Request::Shutdown).await?;
        }
        Command::Network(cmd) => return net::commands::run(cmd, &socket).await,
        Command::VmRun(_) => unreachable!("handled before the runtime starts"),
        Command::Status | Command::Logs { .. } | Command::Config | Command::Completions { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(0)
}

fn human(bytes: u64) -> String {
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
