//! `distroctl status`, `logs` and `config`: what is running, what it logged
//! and which settings are in force — without booting anything.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::{DistroState, Request, Response};

use crate::agent_client::{self, AgentAddr};
use crate::config::Config;
use crate::vm::{accel, control, shares, state};
use crate::AnyError;

/// Prints the VM's state and the distros (asking the agent only when the VM
/// already runs).
pub async fn show(agent_socket: &Option<PathBuf>) -> Result<(), AnyError> {
    let addr = match agent_socket {
        Some(path) => {
            println!("Agent:    {} (direct)", path.display());
            Some(AgentAddr::Unix(path.clone()))
        }
        None => {
            let paths = control::paths();
            match state::VmState::read(&paths.state_file()).filter(|_| state::is_running(&paths)) {
                Some(vm) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let up = now.saturating_sub(vm.started_at);
                    println!(
                        "VM:       running (up {}h {:02}m {:02}s)",
                        up / 3600,
                        up / 60 % 60,
                        up % 60
                    );
                    println!("Backend:  {} — {}", vm.backend, vm.reason);
                    println!("Kernel:   {}", vm.kernel_version);
                    println!("Memory:   {} MiB, {} CPUs", vm.memory_mib, vm.cpus);
                    println!("Console:  {}", vm.console_log.display());
                    print_shares(vm.shares.iter().map(|s| (&s.share, s.failed.as_deref())));
                    Some(control::agent_addr(&paths))
                }
                None => {
                    println!("VM:       stopped (the next command boots it)");
                    let config = Config::load(&Config::default_path())?;
                    let wanted = accel::Wanted {
                        choice: config.backend,
                        pvm_guest_kernel: config.kvm_flavor == crate::config::KvmFlavor::Pvm,
                        own_vmm_installed: control::guest_binary("distroctl-vmm").is_ok(),
                    };
                    match accel::choose_backend(&accel::HostFacts::probe(), &wanted) {
                        Ok(plan) => {
                            let name = match plan.monitor {
                                accel::Monitor::OwnVmm => "kvm",
                                accel::Monitor::Qemu { .. } => "qemu",
                            };
                            println!("Backend:  {name} — {}", plan.reason);
                        }
                        Err(why) => println!("Backend:  none — {why}"),
                    }
                    let home = std::env::var_os("HOME").map(PathBuf::from);
                    let plan = shares::plan(config.share_home, home.as_deref(), &config.mount);
                    print_shares(plan.shares.iter().map(|s| (s, None)));
                    for line in &plan.skipped {
                        println!("          {line}");
                    }
                    None
                }
            }
        }
    };
    if agent_socket.is_none() {
        match crate::manager::client::status().await {
            Ok(Some(m)) => {
                let idle = m
                    .idle_timeout_secs
                    .map_or("never stops when idle".to_string(), |s| {
                        format!("stops the VM after {s}s idle")
                    });
                println!(
                    "Manager:  running (pid {}), {} command(s) using the VM, {idle}",
                    m.pid, m.leases
                );
                if let Some(crash) = m.last_crash {
                    println!("Crash:    {crash}; see `distroctl logs`");
                }
            }
            Ok(None) => println!("Manager:  not running (commands start it)"),
            Err(e) => println!("Manager:  {}", crate::describe(&e, false)),
        }
    }
    let Some(addr) = addr else { return Ok(()) };
    let (_, resp) = agent_client::request(&addr, Request::List).await?;
    if let Response::Distros { distros } = resp {
        let running = distros
            .iter()
            .filter(|d| d.state == DistroState::Running)
            .count();
        println!("Distros:  {} installed, {running} running", distros.len());
        for d in distros {
            let mut state = match d.state {
                DistroState::Running => format!("running, {} processes", d.pids),
                DistroState::Stopped => "stopped".into(),
            };
            if d.settings.mounts == protocol::HostMounts::Off {
                state.push_str(", host shares off");
            }
            println!("  {:<24} {state}", d.name);
        }
    }
    Ok(())
}

/// The `Shares:` lines: each host directory, where distros see it, and
/// why it is not served when it is not.
fn print_shares<'a>(shares: impl Iterator<Item = (&'a shares::Share, Option<&'a str>)>) {
    let mut label = "Shares:  ";
    let mut any = false;
    for (share, failed) in shares {
        let mode = if share.read_only {
            "read-only"
        } else {
            "read-write"
        };
        match failed {
            None => println!(
                "{label} {} at {} ({mode})",
                share.host.display(),
                share.guest
            ),
            Some(why) => println!("{label} {why}"),
        }
        label = "         ";
        any = true;
    }
    if !any {
        println!("Shares:   none (share_home = false and no [[mount]] in config.toml)");
    }
}

/// Prints the end of the console log and the runner log.
pub fn logs(lines: usize) -> Result<(), AnyError> {
    let console = control::console_log_path();
    let runner = control::paths().runner_log();
    let manager = crate::manager::manager_log();
    for (title, path) in [
        ("manager", manager),
        ("console", console),
        ("runner", runner),
    ] {
        println!("==> {title}: {} <==", path.display());
        if path.exists() {
            println!("{}", state::log_tail(&path, lines));
        } else {
            println!("(no log yet: the VM has not been started)");
        }
    }
    Ok(())
}

/// `logs NAME`: the last `lines` lines of the distro's console, read from
/// the agent of the running VM (never boots it); the exit status.
pub async fn distro_console(
    agent_socket: &Option<PathBuf>,
    name: &str,
    lines: usize,
) -> Result<i32, AnyError> {
    let addr = match agent_socket {
        Some(path) => AgentAddr::Unix(path.clone()),
        None if crate::stats::running_vm().is_none() => {
            return Err(format!(
                "the utility VM is not running; a distro's console is kept in the VM                  (`distroctl start {name}`, then `distroctl logs {name}`)"
            )
            .into())
        }
        None => control::agent_addr(&control::paths()),
    };
    let request = Request::ConsoleLog {
        name: name.to_string(),
        lines: u32::try_from(lines).unwrap_or(u32::MAX),
    };
    match agent_client::request(&addr, request).await {
        Ok((_, Response::ConsoleLog { text: Some(text) })) => {
            println!("{text}");
            Ok(0)
        }
        Ok((_, Response::ConsoleLog { text: None })) => Err(format!(
            "{name} has no console log: only a distro that runs its own systemd has one \
             (`distroctl configure {name} --systemd true`)"
        )
        .into()),
        Ok(_) => Err(agent_client::ClientError::Unexpected("console_log".into()).into()),
        Err(agent_client::ClientError::Agent(e)) if e.kind == protocol::ErrorKind::NotFound => {
            Err(format!("{e}; `distroctl list` shows the installed distros").into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints the effective configuration.
pub fn config() -> Result<(), AnyError> {
    let path = Config::default_path();
    let c = Config::load(&path)?;
    let source = if path.exists() {
        ""
    } else {
        " (not present: defaults)"
    };
    println!("# {}{source}", path.display());
    println!("memory = \"{}M\"", c.memory >> 20);
    println!("cpus = {}", c.cpus);
    println!("disk_size = \"{}G\"", c.disk_size >> 30);
    println!("boot_timeout = \"{}s\"", c.boot_timeout.as_secs());
    println!(
        "backend = \"{}\"",
        format!("{:?}", c.backend).to_lowercase()
    );
    println!(
        "kvm_flavor = \"{}\"",
        format!("{:?}", c.kvm_flavor).to_lowercase()
    );
    match &c.kernel {
        Some(k) => println!("kernel = \"{}\"", k.display()),
        None => println!("# kernel: Debian's linux-image-cloud-amd64 (fetched with apt)"),
    }
    if let Some(m) = &c.modules {
        println!("modules = \"{}\"", m.display());
    }
    match c.idle_timeout {
        Some(t) => println!("idle_timeout = \"{}s\"", t.as_secs()),
        None => println!("idle_timeout = \"never\""),
    }
    println!(
        "memory_reclaim = \"{}\"",
        format!("{:?}", c.memory_reclaim).to_lowercase()
    );
    match &c.default_distro {
        Some(d) => println!("default_distro = \"{d}\""),
        None => println!("# default_distro: none yet (the first distro installed becomes it)"),
    }
    println!("port_forwarding = {}", c.port_forwarding);
    println!("share_home = {}", c.share_home);
    for m in &c.mount {
        println!(
            "[[mount]]\nhost = \"{}\"\nguest = \"{}\"\nread_only = {}",
            m.host.display(),
            m.guest,
            m.read_only
        );
    }
    Ok(())
}

/// Asks a yes/no question on the terminal. Without a terminal there is no
/// one to ask: that is an error telling the user to pass `flag`.
pub fn confirm(question: &str, flag: &str) -> Result<bool, AnyError> {
    if !std::io::stdin().is_terminal() {
        return Err(
            format!("{question} Not confirmed: pass {flag} to confirm without a terminal").into(),
        );
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
