//! Per-port forwarding rules from `config.toml`: keep some guest ports
//! off the host (a database meant to stay inside the VM), or serve one on
//! a different host port. Without a matching rule a guest port is
//! forwarded on its own number.
//!
//! ```toml
//! [[port_forward]]
//! guest_port = 5432
//! ignore = true
//!
//! [[port_forward]]
//! guest_ports = [9000, 9100]   # both ends included
//! ignore = true
//!
//! [[port_forward]]
//! guest_port = 8080
//! host_port = 18080
//! ```
//!
//! The first rule that matches a port decides.

use serde::Deserialize;
use thiserror::Error;

/// A `[[port_forward]]` entry that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortRuleError {
    /// Neither or both of `guest_port` and `guest_ports`.
    #[error("a [[port_forward]] entry needs exactly one of guest_port or guest_ports")]
    GuestPorts,
    /// A range whose first port is above its last.
    #[error("port_forward guest_ports = [{0}, {1}] is not a range: put the lower port first")]
    Range(u16, u16),
    /// Port 0 is not a port.
    #[error("port_forward ports must be between 1 and 65535, not 0")]
    Zero,
    /// Neither an action nor a mapping.
    #[error("a [[port_forward]] entry needs ignore = true or host_port")]
    NoAction,
    /// Both `ignore` and `host_port`.
    #[error("a [[port_forward]] entry cannot both ignore a port and give it a host_port")]
    Both,
    /// A host port for a range of guest ports.
    #[error("host_port maps a single guest_port; a guest_ports range can only be ignored")]
    RangeHostPort,
}

/// What a rule does with the ports it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAction {
    /// Not forwarded.
    Ignore,
    /// Forwarded on this host port (another one when it is taken).
    HostPort(u16),
}

/// One validated `[[port_forward]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPortRule")]
pub struct PortRule {
    /// First guest port matched.
    pub first: u16,
    /// Last guest port matched (the same as `first` for one port).
    pub last: u16,
    /// What happens to them.
    pub action: PortAction,
}

/// The entry as written, before its fields are checked against each other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortRule {
    guest_port: Option<u16>,
    guest_ports: Option<(u16, u16)>,
    host_port: Option<u16>,
    #[serde(default)]
    ignore: bool,
}

impl TryFrom<RawPortRule> for PortRule {
    type Error = PortRuleError;

    fn try_from(raw: RawPortRule) -> Result<Self, Self::Error> {
        let (first, last) = match (raw.guest_port, raw.guest_ports) {
            (Some(port), None) => (port, port),
            (None, Some((first, last))) if first <= last => (first, last),
            (None, Some((first, last))) => return Err(PortRuleError::Range(first, last)),
            _ => return Err(PortRuleError::GuestPorts),
        };
        if first == 0 || raw.host_port == Some(0) {
            return Err(PortRuleError::Zero);
        }
        let action = match (raw.ignore, raw.host_port) {
            (true, None) => PortAction::Ignore,
            (false, Some(_)) if raw.guest_ports.is_some() => {
                return Err(PortRuleError::RangeHostPort)
            }
            (false, Some(port)) => PortAction::HostPort(port),
            (true, Some(_)) => return Err(PortRuleError::Both),
            (false, None) => return Err(PortRuleError::NoAction),
        };
        Ok(PortRule {
            first,
            last,
            action,
        })
    }
}

/// What to do with `guest_port` under `rules`: the first matching rule's
/// action, else forwarding on the same port.
pub fn decide(rules: &[PortRule], guest_port: u16) -> PortAction {
    rules
        .iter()
        .find(|r| (r.first..=r.last).contains(&guest_port))
        .map_or(PortAction::HostPort(guest_port), |r| r.action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Rules {
        port_forward: Vec<PortRule>,
    }

    fn parse(text: &str) -> Result<Vec<PortRule>, String> {
        toml::from_str::<Rules>(text)
            .map(|r| r.port_forward)
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn first_matching_rule_decides_and_other_ports_keep_their_number() {
        let rules = parse(
            "[[port_forward]]\nguest_port = 8080\nhost_port = 18080\n\
             [[port_forward]]\nguest_ports = [8000, 8100]\nignore = true\n",
        )
        .unwrap();

        assert_eq!(decide(&rules, 8080), PortAction::HostPort(18080));
        assert_eq!(decide(&rules, 8000), PortAction::Ignore);
        assert_eq!(decide(&rules, 8100), PortAction::Ignore);
        assert_eq!(decide(&rules, 8101), PortAction::HostPort(8101));
        assert_eq!(decide(&[], 22), PortAction::HostPort(22));
    }

    #[test]
    fn contradictory_or_incomplete_entries_are_refused_with_the_reason() {
        let cases = [
            ("ignore = true", PortRuleError::GuestPorts.to_string()),
            (
                "guest_port = 1\nguest_ports = [1, 2]\nignore = true",
                PortRuleError::GuestPorts.to_string(),
            ),
            (
                "guest_ports = [9, 2]\nignore = true",
                PortRuleError::Range(9, 2).to_string(),
            ),
            (
                "guest_port = 0\nignore = true",
                PortRuleError::Zero.to_string(),
            ),
            ("guest_port = 80", PortRuleError::NoAction.to_string()),
            (
                "guest_port = 80\nhost_port = 8080\nignore = true",
                PortRuleError::Both.to_string(),
            ),
            (
                "guest_ports = [80, 90]\nhost_port = 8080",
                PortRuleError::RangeHostPort.to_string(),
            ),
            (
                "guest_port = 70000\nignore = true",
                "expected u16".to_owned(),
            ),
            (
                "guest_port = 80\nignored = true",
                "unknown field".to_owned(),
            ),
        ];
        for (entry, expected) in cases {
            let err = parse(&format!("[[port_forward]]\n{entry}\n")).unwrap_err();
            assert!(err.contains(&expected), "{entry:?}: {err}");
        }
    }
}
