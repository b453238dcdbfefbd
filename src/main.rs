//! `distroctl`: Linux distributions on a Linux host, each in its own
//! isolated environment inside one shared utility VM.

mod agent_client;
mod commands;
mod config;
mod exec;
mod export_output;
mod guest;
mod ide;
mod install;
mod manager;
mod net;
mod paths;
mod stats;
mod status;
mod terminal;
mod transfer;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use protocol::Compression;

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
    /// Install a distro from the catalog (see `install --list`).
    Install {
        /// NAME or NAME:VERSION, e.g. `debian`, `ubuntu:22.04`, `ubuntu:jammy`.
        #[arg(required_unless_present = "list")]
        distro: Option<String>,
        /// Name for the new distro (default: the distro's name, plus the
        /// version when it is not the default one).
        #[arg(long)]
        name: Option<String>,
        /// Default user to create (default: your user name; `root` creates none).
        #[arg(long)]
        user: Option<String>,
        /// Show the catalog instead.
        #[arg(long)]
        list: bool,
        /// Download or build the root file system again even when cached.
        #[arg(long)]
        refresh: bool,
    },
    /// Import a distro from a tar archive (plain, gzip, xz or zstd).
    Import {
        /// Name for the new distro.
        name: String,
        /// Archive file, an http(s) URL, or `-` for standard input.
        file: PathBuf,
        /// Expected SHA-256 of a downloaded archive.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
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
        #[arg(long, value_parser = commands::parse_compression)]
        compress: Option<Compression>,
    },
    /// List the distros (`*` marks the default).
    #[command(alias = "ls")]
    List {
        /// Also show processes, memory, disk use and settings.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Start a distro and return.
    Start {
        /// Distro to start.
        name: String,
        /// Install it from the catalog first when it is not installed.
        #[arg(long)]
        install: bool,
    },
    /// Make a distro the one `distroctl shell` opens when none is named.
    SetDefault {
        /// Distro to make the default.
        name: String,
    },
    /// Change the settings stored with a distro (they apply at its next start).
    Configure {
        /// Distro to change.
        name: String,
        /// User that exec and shell use when none is given.
        #[arg(long, value_name = "USER")]
        default_user: Option<String>,
        /// Run the distro's own systemd as its PID 1.
        #[arg(long, value_name = "BOOL")]
        systemd: Option<bool>,
        /// Memory limit (e.g. 2G; `none` or 0 removes the limit).
        #[arg(long, value_name = "SIZE", value_parser = parse_memory_max)]
        memory_max: Option<LimitArg<u64>>,
        /// CPU limit in CPUs (e.g. 1.5; `none` removes the limit).
        #[arg(long, value_name = "CPUS", value_parser = parse_cpu_max, allow_hyphen_values = true)]
        cpu_max: Option<LimitArg<u32>>,
        /// Process limit (`none` removes the limit).
        #[arg(long, value_name = "N", value_parser = parse_pids_max, allow_hyphen_values = true)]
        pids_max: Option<LimitArg<u32>>,
        /// `shared` (the VM's network, like every distro by default) or
        /// `isolated` (a network namespace and address of its own).
        #[arg(long, value_name = "MODE", value_parser = parse_network_mode)]
        network: Option<protocol::NetworkMode>,
        /// `on` (the host directories shared with the VM, such as your
        /// home, appear in the distro; the default) or `off`.
        #[arg(long, value_name = "on|off", value_parser = parse_host_mounts)]
        mounts: Option<protocol::HostMounts>,
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
        /// Distro to enter (default: the default distro).
        name: Option<String>,
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
    /// Show each running distro's CPU, memory, processes and disk I/O, and
    /// the utility VM's memory and data disk (never boots the VM).
    Stats {
        /// Distros to show, running or stopped (default: every running one).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Refresh until Ctrl-C, like `top`.
        #[arg(short, long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, value_name = "SECS", default_value = "2", requires = "watch", value_parser = stats::parse_interval)]
        interval: std::time::Duration,
        /// Print JSON: one document, or with --watch one line per sample.
        #[arg(long)]
        json: bool,
    },
    /// Show the end of the utility VM's logs (manager, console, runner), or
    /// with NAME the console of a distro that runs its own systemd.
    Logs {
        /// A distro's console instead (what its own systemd printed as it
        /// booted and stopped).
        name: Option<String>,
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
    /// Run the manager in the foreground (commands start it on demand; it
    /// owns the utility VM and stops it when idle).
    Daemon,
    /// Run the utility VM (started by the manager, detached).
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
    /// Our own VMM on /dev/kvm (hardware virtualization, or a PVM host with
    /// a PVM guest kernel).
    Kvm,
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

/// A resource limit given to `configure`: a value, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimitArg<T> {
    /// `none`: remove the limit.
    Unlimited,
    /// This limit.
    Limit(T),
}

impl<T> LimitArg<T> {
    fn into_option(self) -> Option<T> {
        match self {
            LimitArg::Unlimited => None,
            LimitArg::Limit(v) => Some(v),
        }
    }
}

fn parse_memory_max(s: &str) -> Result<LimitArg<u64>, String> {
    match s {
        "none" => Ok(LimitArg::Unlimited),
        _ => match config::parse_size(s)? {
            0 => Ok(LimitArg::Unlimited),
            bytes => Ok(LimitArg::Limit(bytes)),
        },
    }
}

/// CPUs (`1.5`) as thousandths of a CPU, 1 to 4096000.
fn parse_cpu_max(s: &str) -> Result<LimitArg<u32>, String> {
    if s == "none" {
        return Ok(LimitArg::Unlimited);
    }
    let millis = s
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite())
        .map(|c| (c * 1000.0).round())
        .filter(|m| (1.0..=4_096_000.0).contains(m));
    match millis {
        Some(m) => Ok(LimitArg::Limit(m as u32)),
        None => {
            Err("use a number of CPUs from 0.001 to 4096 (e.g. 1.5), or `none` for no limit".into())
        }
    }
}

fn parse_pids_max(s: &str) -> Result<LimitArg<u32>, String> {
    if s == "none" {
        return Ok(LimitArg::Unlimited);
    }
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(LimitArg::Limit(n)),
        _ => Err(format!(
            "use a number of processes from 1 to {}, or `none` for no limit",
            u32::MAX
        )),
    }
}

fn parse_network_mode(s: &str) -> Result<protocol::NetworkMode, String> {
    match s {
        "shared" => Ok(protocol::NetworkMode::Shared),
        "isolated" => Ok(protocol::NetworkMode::Isolated),
        _ => Err(format!(
            "unknown network mode {s:?}: use shared or isolated"
        )),
    }
}

fn parse_host_mounts(s: &str) -> Result<protocol::HostMounts, String> {
    match s {
        "on" => Ok(protocol::HostMounts::On),
        "off" => Ok(protocol::HostMounts::Off),
        _ => Err(format!("unknown value {s:?} for --mounts: use on or off")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Daemon = cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(if cli.verbose { "debug" } else { "info" })
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
        return match manager::server::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("distroctl daemon: {}", describe(&e, true));
                ExitCode::from(1)
            }
        };
    }
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
    let code = match runtime.block_on(commands::run(cli)) {
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
pub(crate) fn describe(e: &(dyn std::error::Error + 'static), verbose: bool) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_takes_cpus_or_none_and_refuses_zero_and_negative() {
        assert_eq!(parse_cpu_max("1.5"), Ok(LimitArg::Limit(1500)));
        assert_eq!(parse_cpu_max("0.001"), Ok(LimitArg::Limit(1)));
        assert_eq!(parse_cpu_max("none"), Ok(LimitArg::Unlimited));
        for bad in ["0", "-1", "0.0001", "4097", "NaN", "inf", "many"] {
            let err = parse_cpu_max(bad).unwrap_err();
            assert!(
                err.contains("0.001 to 4096") && err.contains("`none`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn pids_max_takes_a_positive_count_or_none() {
        assert_eq!(parse_pids_max("200"), Ok(LimitArg::Limit(200)));
        assert_eq!(parse_pids_max("none"), Ok(LimitArg::Unlimited));
        for bad in ["0", "-1", "4294967296", "lots"] {
            let err = parse_pids_max(bad).unwrap_err();
            assert!(
                err.contains("from 1 to") && err.contains("`none`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn settings_messages_say_when_each_change_applies() {
        let old = protocol::DistroSettings::default();
        let new = protocol::DistroSettings {
            default_user: Some("alice".into()),
            systemd: true,
            limits: protocol::Limits {
                pids: Some(10),
                ..Default::default()
            },
            ..Default::default()
        };

        let lines = commands::when_settings_apply("d", &old, &new);
        let unchanged = commands::when_settings_apply("d", &new, &new);

        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("next exec"), "{lines:?}");
        assert!(lines[1].contains("now"), "{lines:?}");
        assert!(
            lines[2].contains("--systemd applies when d next starts"),
            "{lines:?}"
        );
        assert!(unchanged.is_empty());
    }
}
