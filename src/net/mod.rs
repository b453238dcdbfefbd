//! Host side of the VM's networking: automatic localhost forwarding of the
//! guest's listening ports, byte-stream relays to guest ports, and the
//! commands built on them (`port-forward`, `ports`, `proxy`).

pub mod commands;
pub mod forward;
pub mod forward_table;
pub mod port_rules;
pub mod relay;

/// Where a foreground forwarder publishes its forwards for `distroctl ports`.
pub fn state_file() -> std::path::PathBuf {
    crate::paths::runtime_dir().join("ports.json")
}
