//! `distroctl stats`: each running distro's CPU, memory, processes and
//! block I/O (from its cgroup, read by the agent) and the VM's memory and
//! data disk, once or refreshed like `top`. Never boots the VM.

pub mod host;
pub mod report;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use protocol::{ErrorKind, Request, Response};

use crate::agent_client::{self, AgentAddr, ClientError};
use crate::vm::{control, state};
use crate::AnyError;
use report::Sample;

/// Time between the two samples of a one-shot `stats`, for its CPU %.
const FIRST_INTERVAL: Duration = Duration::from_millis(500);

/// What to show and how.
#[derive(Debug, Clone)]
pub struct StatsArgs {
    /// Distros to show; every running one when empty.
    pub names: Vec<String>,
    /// Refresh at this interval until interrupted.
    pub watch: Option<Duration>,
    /// JSON instead of a table.
    pub json: bool,
}

/// Where samples come from: an agent, and the VM it runs in when it is the
/// utility VM's.
struct Source {
    addr: AgentAddr,
    vm: bool,
}

impl Source {
    /// The agent given with `--agent-socket`, or the running VM's; an error
    /// line when the VM is not running (stats does not boot it).
    fn open(agent_socket: &Option<PathBuf>) -> Result<Source, AnyError> {
        if let Some(path) = agent_socket {
            return Ok(Source {
                addr: AgentAddr::Unix(path.clone()),
                vm: false,
            });
        }
        if running_vm().is_none() {
            return Err(not_running().into());
        }
        Ok(Source {
            addr: control::agent_addr(&control::paths()),
            vm: true,
        })
    }

    async fn sample(&self, names: &[String]) -> Result<Sample, AnyError> {
        let request = Request::Stats {
            names: names.to_vec(),
        };
        let response = match agent_client::request(&self.addr, request).await {
            Ok((_, r)) => r,
            Err(ClientError::Agent(e)) if e.kind == ErrorKind::NotFound => {
                return Err(format!("{e}; `distroctl list` shows the installed distros").into())
            }
            Err(_) if self.vm && running_vm().is_none() => {
                return Err("the utility VM stopped".into())
            }
            Err(e) => return Err(e.into()),
        };
        let Response::Stats {
            sampled_at_usec,
            distros,
            guest,
        } = response
        else {
            return Err(ClientError::Unexpected("stats".into()).into());
        };
        // Read after the agent answered, so a VM that stopped meanwhile
        // is not described by a stale vm.json.
        let vm = if self.vm {
            let vm = running_vm().ok_or("the utility VM stopped")?;
            Some(host::read(
                &control::paths(),
                &vm,
                &control::data_disk_path(),
            ))
        } else {
            None
        };
        Ok(Sample {
            sampled_at_usec,
            distros,
            guest,
            vm,
        })
    }
}

/// `vm.json` of the running VM.
pub(crate) fn running_vm() -> Option<state::VmState> {
    let paths = control::paths();
    state::VmState::read(&paths.state_file()).filter(|_| state::is_running(&paths))
}

fn not_running() -> String {
    "the utility VM is not running; start a distro with `distroctl start NAME` (stats never boots the VM)".into()
}

/// Runs `stats`; returns the exit status.
pub async fn run(agent_socket: &Option<PathBuf>, args: StatsArgs) -> Result<i32, AnyError> {
    let source = Source::open(agent_socket)?;
    let mut before = source.sample(&args.names).await?;
    tokio::time::sleep(FIRST_INTERVAL).await;
    let Some(interval) = args.watch else {
        let now = source.sample(&args.names).await?;
        if args.json {
            println!("{}", report::json(Some(&before), &now, true));
        } else {
            print!("{}", report::table(Some(&before), &now));
        }
        return Ok(0);
    };
    let redraw = std::io::stdout().is_terminal() && !args.json;
    loop {
        let now = source.sample(&args.names).await?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", report::json(Some(&before), &now, false))?;
        } else if redraw {
            // Home, each line cleared to its end, then the rest of the
            // screen: a redraw without flicker.
            let frame = report::table(Some(&before), &now).replace('\n', "\x1b[K\n");
            write!(out, "\x1b[H{frame}\x1b[J")?;
        } else {
            writeln!(out, "{}", report::table(Some(&before), &now))?;
        }
        out.flush()?;
        drop(out);
        before = now;
        tokio::time::sleep(interval).await;
    }
}

/// Parses `--interval`: seconds, 0.1 to 3600.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| (0.1..=3600.0).contains(v))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "use a number of seconds from 0.1 to 3600 (e.g. 2 or 0.5)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_takes_seconds_in_range() {
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "0.01", "-1", "3601", "NaN", "soon"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
