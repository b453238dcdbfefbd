//! Which guest ports are forwarded to which host ports: the state the
//! forwarder keeps, `distroctl ports` lists, and the manager daemon will
//! serve. Pure bookkeeping, so the rules (one host port per guest port,
//! several guest listeners on one port share it) are tested without
//! sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use protocol::Listener;
use serde::{Deserialize, Serialize};

/// One active forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The port listening inside the VM.
    pub guest_port: u16,
    /// The guest addresses listening on it (`0.0.0.0`, `::`, loopback).
    pub guest_addresses: BTreeSet<IpAddr>,
    /// The host port asked for: `guest_port`, or a `port_forward` rule's
    /// `host_port`.
    #[serde(default)]
    pub wanted_port: u16,
    /// The host port connections are accepted on; differs from
    /// `wanted_port` when that was taken on the host.
    pub host_port: u16,
    /// The host addresses bound (127.0.0.1 and, where available, ::1).
    pub host_addresses: Vec<IpAddr>,
    /// The wanted host port was refused for lack of privileges (a port
    /// below 1024), not because something else has it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permission_denied: bool,
}

impl Forward {
    /// True when the host port had to differ from the one asked for.
    pub fn moved(&self) -> bool {
        self.host_port != self.wanted_port
    }
}

/// What the forwarder must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableAction {
    /// Start listening on the host for this guest port.
    Open(u16),
    /// Stop listening on the host for this guest port.
    Close(u16),
    /// Nothing changes on the host.
    None,
}

/// Guest ports being forwarded, and those seen but not (yet) open.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForwardTable {
    open: BTreeMap<u16, Forward>,
    pending: BTreeMap<u16, BTreeSet<IpAddr>>,
}

/// The table shared between the forwarder and its readers.
pub type SharedForwardTable = Arc<Mutex<ForwardTable>>;

impl ForwardTable {
    /// Records a guest listener; the first one on a port opens it.
    pub fn appeared(&mut self, listener: Listener) -> TableAction {
        if let Some(forward) = self.open.get_mut(&listener.port) {
            forward.guest_addresses.insert(listener.address);
            return TableAction::None;
        }
        let addresses = self.pending.entry(listener.port).or_default();
        let first = addresses.is_empty();
        addresses.insert(listener.address);
        if first {
            TableAction::Open(listener.port)
        } else {
            TableAction::None
        }
    }

    /// Forgets a guest listener; the last one on a port closes it.
    pub fn disappeared(&mut self, listener: Listener) -> TableAction {
        let port = listener.port;
        if let Some(forward) = self.open.get_mut(&port) {
            forward.guest_addresses.remove(&listener.address);
            if forward.guest_addresses.is_empty() {
                self.open.remove(&port);
                return TableAction::Close(port);
            }
            return TableAction::None;
        }
        if let Some(addresses) = self.pending.get_mut(&port) {
            addresses.remove(&listener.address);
            if addresses.is_empty() {
                self.pending.remove(&port);
                return TableAction::Close(port);
            }
        }
        TableAction::None
    }

    /// Records that the host listens for `guest_port`; returns the forward,
    /// or `None` when the guest listener went away meanwhile.
    pub fn opened(
        &mut self,
        guest_port: u16,
        wanted_port: u16,
        host_port: u16,
        host_addresses: Vec<IpAddr>,
    ) -> Option<Forward> {
        let guest_addresses = self.pending.remove(&guest_port)?;
        let forward = Forward {
            guest_port,
            guest_addresses,
            wanted_port,
            host_port,
            host_addresses,
            permission_denied: false,
        };
        self.open.insert(guest_port, forward.clone());
        Some(forward)
    }

    /// Notes that the host refused the wanted port for lack of privileges.
    pub fn mark_permission_denied(&mut self, guest_port: u16) {
        if let Some(forward) = self.open.get_mut(&guest_port) {
            forward.permission_denied = true;
        }
    }

    /// Forgets every port (the agent went away); returns the open ones.
    pub fn clear(&mut self) -> Vec<u16> {
        self.pending.clear();
        std::mem::take(&mut self.open).into_keys().collect()
    }

    /// The open forwards, by guest port.
    pub fn snapshot(&self) -> Vec<Forward> {
        self.open.values().cloned().collect()
    }
}

/// The forwards as the state file holds them: who serves them and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardState {
    /// PID of the process that owns the forwards (its death makes the file stale).
    pub pid: u32,
    /// The forwards.
    pub forwards: Vec<Forward>,
    /// Guest ports listening but not forwarded because the forwarder
    /// serves at most [`super::forward::MAX_FORWARDED_PORTS`].
    #[serde(default)]
    pub over_limit: usize,
}

impl ForwardState {
    /// Writes the state atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::io::Write::write_all(&mut crate::paths::create_private(&tmp, false)?, &json)?;
        std::fs::rename(tmp, path)
    }

    /// Reads the state, `None` when absent, unreadable or its owner is gone.
    pub fn read_live(path: &Path) -> Option<ForwardState> {
        let bytes = std::fs::read(path).ok()?;
        let state: ForwardState = serde_json::from_slice(&bytes).ok()?;
        let pid = nix::unistd::Pid::from_raw(state.pid as i32);
        nix::sys::signal::kill(pid, None).ok()?;
        Some(state)
    }
}

/// The table as lines for `distroctl ports`.
pub fn render(forwards: &[Forward]) -> String {
    let mut out = format!("{:<22} {:<10} {}\n", "HOST", "GUEST", "GUEST ADDRESSES");
    for f in forwards {
        let guest: Vec<String> = f.guest_addresses.iter().map(|a| a.to_string()).collect();
        let note = if f.moved() && f.permission_denied {
            format!("  (port {}: permission denied on the host)", f.wanted_port)
        } else if f.moved() {
            format!("  (port {} taken on the host)", f.wanted_port)
        } else if f.host_port != f.guest_port {
            "  (port_forward rule)".to_owned()
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:<22} {:<10} {}{note}\n",
            format!("localhost:{}", f.host_port),
            f.guest_port,
            guest.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: &str, port: u16) -> Listener {
        Listener {
            address: address.parse().unwrap(),
            port,
        }
    }

    fn localhost() -> Vec<IpAddr> {
        vec!["127.0.0.1".parse().unwrap()]
    }

    #[test]
    fn first_listener_opens_and_second_on_same_port_shares_it() {
        let mut table = ForwardTable::default();

        assert_eq!(table.appeared(at("0.0.0.0", 80)), TableAction::Open(80));
        assert_eq!(table.appeared(at("::", 80)), TableAction::None);
        let forward = table.opened(80, 80, 80, localhost()).unwrap();

        assert_eq!(forward.guest_addresses.len(), 2);
        assert_eq!(table.disappeared(at("::", 80)), TableAction::None);
        assert_eq!(table.disappeared(at("0.0.0.0", 80)), TableAction::Close(80));
        assert!(table.snapshot().is_empty());
    }

    #[test]
    fn listener_gone_before_the_host_opened_is_not_recorded() {
        let mut table = ForwardTable::default();
        table.appeared(at("127.0.0.1", 5000));

        assert_eq!(
            table.disappeared(at("127.0.0.1", 5000)),
            TableAction::Close(5000)
        );
        assert_eq!(table.opened(5000, 5000, 5000, localhost()), None);
        assert!(table.snapshot().is_empty());
    }

    #[test]
    fn moved_port_is_listed_with_a_note() {
        let mut table = ForwardTable::default();
        table.appeared(at("0.0.0.0", 8080));
        table.opened(8080, 8080, 41000, localhost());

        let text = render(&table.snapshot());

        assert!(text.contains("localhost:41000"), "{text}");
        assert!(text.contains("8080"), "{text}");
        assert!(text.contains("taken on the host"), "{text}");
    }

    #[test]
    fn port_moved_by_a_rule_is_listed_as_such_not_as_taken() {
        let mut table = ForwardTable::default();
        table.appeared(at("0.0.0.0", 8080));
        table.opened(8080, 18080, 18080, localhost());

        let text = render(&table.snapshot());

        assert!(text.contains("localhost:18080"), "{text}");
        assert!(text.contains("(port_forward rule)"), "{text}");
        assert!(!text.contains("taken"), "{text}");
    }

    #[test]
    fn clear_returns_open_ports_and_empties_the_table() {
        let mut table = ForwardTable::default();
        table.appeared(at("0.0.0.0", 1));
        table.opened(1, 1, 1, localhost());
        table.appeared(at("0.0.0.0", 2));

        assert_eq!(table.clear(), [1]);
        assert_eq!(table, ForwardTable::default());
    }

    #[test]
    fn state_file_of_a_dead_owner_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ports.json");
        let mut state = ForwardState {
            pid: std::process::id(),
            forwards: Vec::new(),
            over_limit: 0,
        };
        state.write(&path).unwrap();
        assert_eq!(ForwardState::read_live(&path), Some(state.clone()));

        state.pid = i32::MAX as u32;
        state.write(&path).unwrap();

        assert_eq!(ForwardState::read_live(&path), None);
    }

    #[test]
    fn refused_privileged_port_is_shown_as_permission_denied() {
        let mut table = ForwardTable::default();
        table.appeared(at("0.0.0.0", 80));
        table.opened(80, 80, 41000, localhost());

        table.mark_permission_denied(80);
        let text = render(&table.snapshot());

        assert!(
            text.contains("port 80: permission denied on the host"),
            "{text}"
        );
        assert!(!text.contains("taken"), "{text}");
    }
}
