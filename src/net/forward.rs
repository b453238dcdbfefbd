//! Automatic localhost forwarding: every TCP port that listens on a
//! wildcard or loopback address inside the VM is served on the host's
//! 127.0.0.1 and ::1 under the same number (another one when the host has
//! it taken), as WSL2 does. The forwarder keeps the agent's `watch_ports`
//! stream open, opens and closes host listeners as guest listeners come and
//! go, relays each accepted connection through its own `connect` request,
//! and starts over when the agent restarts or the VM reboots.
//!
//! It also keeps the guest clock honest: when the host's realtime clock
//! jumps against its monotonic clock (the host was suspended, or its time
//! was set), it opens one connection whose hello carries the host's time.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use protocol::{PortChange, Request, Response};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::forward_table::{ForwardState, SharedForwardTable, TableAction};
use super::port_rules::{self, PortAction, PortRule};
use super::relay;
use crate::agent_client::{self, AgentAddr, ClientError};

/// How often the clocks are compared.
const CLOCK_CHECK: Duration = Duration::from_secs(5);

/// A realtime jump beyond this against the monotonic clock means suspend
/// or a clock change.
const CLOCK_JUMP: Duration = Duration::from_secs(2);

/// Most guest ports forwarded at once (two host listeners each). Distros
/// share the VM's network, so one distro listening on thousands of ports
/// would otherwise exhaust the manager's open files for everyone.
pub const MAX_FORWARDED_PORTS: usize = 256;

/// How the forwarder behaves.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// Host addresses to listen on; the first decides the host port.
    pub host_addresses: Vec<IpAddr>,
    /// Wait between attempts to reach the agent.
    pub reconnect_delay: Duration,
    /// Where to publish the forwards for `distroctl ports`, if anywhere.
    pub state_file: Option<PathBuf>,
    /// Ports kept off the host or moved to another host port.
    pub rules: Vec<PortRule>,
    /// Most guest ports forwarded at once.
    pub max_ports: usize,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            host_addresses: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            reconnect_delay: Duration::from_secs(1),
            state_file: None,
            rules: Vec::new(),
            max_ports: MAX_FORWARDED_PORTS,
        }
    }
}

/// The port watch ended.
#[derive(Debug, Error)]
pub enum ForwardError {
    /// The agent could not be reached or the stream broke.
    #[error("the port watch stream to the agent ended")]
    Agent(#[source] ClientError),
    /// The agent answered something other than port events.
    #[error("the agent answered the port watch with {0}")]
    Unexpected(String),
}

/// Runs forever: watches the agent at `agent` and keeps `table` (and the
/// state file) equal to what is forwarded.
pub async fn run(agent: AgentAddr, options: ForwardOptions, table: SharedForwardTable) {
    let mut forwarder = Forwarder {
        agent,
        options,
        table,
        listeners: HashMap::new(),
        over_limit: BTreeSet::new(),
        clock: ClockWatch::new(),
    };
    loop {
        match forwarder.watch().await {
            Ok(()) => tracing::info!("the agent closed the port watch; reconnecting"),
            Err(e) => tracing::debug!(error = %crate::describe(&e, true), "port watch ended"),
        }
        forwarder.stop_all();
        tokio::time::sleep(forwarder.options.reconnect_delay).await;
    }
}

struct Forwarder {
    agent: AgentAddr,
    options: ForwardOptions,
    table: SharedForwardTable,
    listeners: HashMap<u16, Vec<JoinHandle<()>>>,
    /// Guest ports listening beyond `max_ports`, not forwarded.
    over_limit: BTreeSet<u16>,
    clock: ClockWatch,
}

impl Forwarder {
    /// One watch stream, until it ends.
    async fn watch(&mut self) -> Result<(), ForwardError> {
        let (mut conn, first) = agent_client::request(&self.agent, Request::WatchPorts)
            .await
            .map_err(ForwardError::Agent)?;
        tracing::info!("watching the VM's listening ports");
        self.publish();
        self.event(first).await?;
        let mut tick = tokio::time::interval(CLOCK_CHECK);
        loop {
            tokio::select! {
                next = agent_client::response(&mut conn) => match next {
                    Ok(resp) => self.event(resp).await?,
                    Err(ClientError::Disconnected) => return Ok(()),
                    Err(e) => return Err(ForwardError::Agent(e)),
                },
                _ = tick.tick() => {
                    if self.clock.jumped() {
                        self.resync_clock().await;
                    }
                }
            }
        }
    }

    async fn event(&mut self, resp: Response) -> Result<(), ForwardError> {
        let Response::PortEvent { change, listener } = resp else {
            return Err(ForwardError::Unexpected(format!("{resp:?}")));
        };
        let action = {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            match change {
                PortChange::Appeared => table.appeared(listener),
                PortChange::Disappeared => table.disappeared(listener),
            }
        };
        match action {
            TableAction::Open(port) => self.open(port).await,
            TableAction::Close(port) => self.close(port),
            TableAction::None => {}
        }
        self.publish();
        Ok(())
    }

    async fn open(&mut self, guest_port: u16) {
        let wanted = match port_rules::decide(&self.options.rules, guest_port) {
            PortAction::Ignore => {
                tracing::info!(
                    guest_port,
                    "guest port {guest_port} is not forwarded: a port_forward rule ignores it"
                );
                return;
            }
            PortAction::HostPort(port) => port,
        };
        if self.listeners.len() >= self.options.max_ports {
            if self.over_limit.is_empty() {
                tracing::warn!(
                    guest_port,
                    "the VM listens on more than {} ports; guest port {guest_port} and further ones are not forwarded",
                    self.options.max_ports
                );
            }
            self.over_limit.insert(guest_port);
            return;
        }
        let (bound, refused) = match bind(wanted, &self.options.host_addresses).await {
            Ok(bound) => bound,
            Err(e) => {
                tracing::warn!(guest_port, error = %e, "cannot listen on the host for guest port");
                return;
            }
        };
        let host_port = bound.first().map_or(0, |(_, l)| local_port(l));
        let addresses: Vec<IpAddr> = bound.iter().map(|(a, _)| *a).collect();
        let forward = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .opened(guest_port, wanted, host_port, addresses);
        if forward.is_none() {
            return;
        }
        if refused == Some(Refusal::PermissionDenied) {
            self.table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .mark_permission_denied(guest_port);
        }
        if host_port != wanted {
            let why = match refused {
                Some(Refusal::PermissionDenied) => "refused: permission denied (a privileged port)",
                _ => "taken",
            };
            tracing::warn!(
                guest_port,
                host_port,
                "host port {wanted} is {why}; guest port {guest_port} is forwarded on localhost:{host_port}"
            );
        } else if host_port != guest_port {
            tracing::info!(
                guest_port,
                host_port,
                "forwarding localhost:{host_port} to guest port {guest_port}"
            );
        } else {
            tracing::info!(guest_port, "forwarding localhost:{guest_port}");
        }
        let tasks = bound
            .into_iter()
            .map(|(_, listener)| {
                tokio::spawn(accept_loop(listener, self.agent.clone(), guest_port))
            })
            .collect();
        self.listeners.insert(guest_port, tasks);
    }

    fn close(&mut self, guest_port: u16) {
        self.over_limit.remove(&guest_port);
        if let Some(tasks) = self.listeners.remove(&guest_port) {
            tracing::info!(guest_port, "guest port closed; forward stopped");
            for task in tasks {
                task.abort();
            }
        }
    }

    fn stop_all(&mut self) {
        let ports = self.table.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for port in ports {
            self.close(port);
        }
        self.listeners.clear();
        self.over_limit.clear();
        self.publish();
    }

    /// Writes the state file, when there is one.
    fn publish(&self) {
        let Some(path) = &self.options.state_file else {
            return;
        };
        let forwards = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot();
        let state = ForwardState {
            pid: std::process::id(),
            forwards,
            over_limit: self.over_limit.len(),
        };
        if let Err(e) = state.write(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the forward state");
        }
    }

    /// A connection's hello carries the host's clock; the agent steps the
    /// guest's when they differ.
    async fn resync_clock(&self) {
        match agent_client::connect(&self.agent).await {
            Ok(_) => tracing::info!("host clock jumped; guest clock re-synchronised"),
            Err(e) => tracing::debug!(error = %e, "clock re-synchronisation failed"),
        }
    }
}

fn local_port(listener: &TcpListener) -> u16 {
    listener.local_addr().map_or(0, |a| a.port())
}

/// Why the wanted host port could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Something else listens on it.
    Taken,
    /// A privileged port, and the manager may not bind it.
    PermissionDenied,
}

impl Refusal {
    /// The refusals that a free port replaces; other errors are failures.
    fn of(e: &std::io::Error) -> Option<Refusal> {
        match e.kind() {
            std::io::ErrorKind::AddrInUse => Some(Refusal::Taken),
            std::io::ErrorKind::PermissionDenied => Some(Refusal::PermissionDenied),
            _ => None,
        }
    }
}

type Bound = Vec<(IpAddr, TcpListener)>;

/// Listens on `port` at the first address, or on a free port when that is
/// taken (or privileged), then on the same port at the others where
/// possible. Says why the wanted port was not used.
async fn bind(port: u16, addresses: &[IpAddr]) -> std::io::Result<(Bound, Option<Refusal>)> {
    let Some((&first, rest)) = addresses.split_first() else {
        return Ok((Vec::new(), None));
    };
    let (listener, refused) = match TcpListener::bind(SocketAddr::new(first, port)).await {
        Ok(l) => (l, None),
        Err(e) => match Refusal::of(&e) {
            Some(refusal) => (
                TcpListener::bind(SocketAddr::new(first, 0)).await?,
                Some(refusal),
            ),
            None => return Err(e),
        },
    };
    let host_port = local_port(&listener);
    let mut bound = vec![(first, listener)];
    for &address in rest {
        match TcpListener::bind(SocketAddr::new(address, host_port)).await {
            Ok(l) => bound.push((address, l)),
            Err(e) => {
                tracing::debug!(%address, host_port, error = %e, "not forwarding on this address")
            }
        }
    }
    Ok((bound, refused))
}

async fn accept_loop(listener: TcpListener, agent: AgentAddr, guest_port: u16) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let result = match relay::open(&agent, None, guest_port).await {
                Ok(conn) => {
                    let (read, write) = stream.split();
                    relay::splice(conn, read, write, guest_port).await.map(drop)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let error = crate::describe(&e, true);
                if e.is_from_server() {
                    tracing::debug!(%peer, guest_port, %error, "forwarded connection ended abnormally");
                } else {
                    tracing::warn!(%peer, guest_port, %error, "forwarded connection failed");
                }
                // Closing with a reset, not an end of stream, so the client
                // cannot take a cut-off reply for a complete one.
                let _ = stream.set_zero_linger();
            }
        });
    }
}

/// Notices realtime jumps against the monotonic clock.
struct ClockWatch {
    mono: Instant,
    real: SystemTime,
}

impl ClockWatch {
    fn new() -> ClockWatch {
        ClockWatch {
            mono: Instant::now(),
            real: SystemTime::now(),
        }
    }

    /// True when realtime moved by more than [`CLOCK_JUMP`] beyond (or
    /// short of) monotonic time since the last call.
    fn jumped(&mut self) -> bool {
        let (mono, real) = (Instant::now(), SystemTime::now());
        let jumped = clock_jumped(
            mono.duration_since(self.mono),
            real.duration_since(self.real).ok(),
        );
        (self.mono, self.real) = (mono, real);
        jumped
    }
}

/// `real` is `None` when realtime went backwards.
fn clock_jumped(mono: Duration, real: Option<Duration>) -> bool {
    match real {
        None => true,
        Some(real) => real.abs_diff(mono) > CLOCK_JUMP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn clock_jump_needs_more_than_the_threshold() {
        let five = Duration::from_secs(5);

        assert!(!clock_jumped(five, Some(five + Duration::from_millis(500))));
        assert!(clock_jumped(five, Some(Duration::from_secs(3600))));
        assert!(clock_jumped(five, None));
    }

    #[tokio::test]
    async fn taken_host_port_is_replaced_by_a_free_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();

        let (bound, refused) = bind(port, &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .await
            .unwrap();

        let host_port = local_port(&bound[0].1);
        assert_eq!(refused, Some(Refusal::Taken));
        assert_ne!(host_port, port);
        assert_ne!(host_port, 0);
    }

    #[tokio::test]
    async fn free_host_port_keeps_the_guest_number() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);

        let (bound, refused) = bind(port, &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .await
            .unwrap();

        assert_eq!(local_port(&bound[0].1), port);
        assert_eq!(refused, None);
    }

    #[test]
    fn privileged_port_refusal_is_permission_denied_not_taken() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let other = std::io::Error::from(std::io::ErrorKind::InvalidInput);

        assert_eq!(Refusal::of(&denied), Some(Refusal::PermissionDenied));
        assert_eq!(Refusal::of(&in_use), Some(Refusal::Taken));
        assert_eq!(Refusal::of(&other), None);
    }

    #[tokio::test]
    async fn ports_beyond_the_limit_are_not_opened_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let state_file = dir.path().join("ports.json");
        let mut forwarder = Forwarder {
            agent: AgentAddr::Unix(dir.path().join("no-agent.sock")),
            options: ForwardOptions {
                host_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                state_file: Some(state_file.clone()),
                max_ports: 2,
                ..Default::default()
            },
            table: Arc::default(),
            listeners: HashMap::new(),
            over_limit: BTreeSet::new(),
            clock: ClockWatch::new(),
        };
        let event = |change, port| Response::PortEvent {
            change,
            listener: protocol::Listener {
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            },
        };

        for port in [41001, 41002, 41003, 41004, 41005] {
            forwarder
                .event(event(PortChange::Appeared, port))
                .await
                .unwrap();
        }
        let crowded = ForwardState::read_live(&state_file).unwrap();
        forwarder
            .event(event(PortChange::Disappeared, 41005))
            .await
            .unwrap();
        let after_one_left = ForwardState::read_live(&state_file).unwrap();

        assert_eq!(forwarder.listeners.len(), 2);
        assert_eq!(crowded.forwards.len(), 2);
        assert_eq!(crowded.over_limit, 3);
        assert_eq!(after_one_left.over_limit, 2);
    }
}
