//! What the CLI and the manager say to each other: one JSON message per
//! line over the manager's Unix socket. The manager never carries a
//! distro's byte streams; it hands out the agent's address and keeps the
//! connection as a lease that holds the VM up while the command runs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request from the CLI; one per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToManager {
    /// Make sure the VM runs and lease it for as long as this connection
    /// stays open. Answered with progress lines, then `Ready` or `Failed`.
    Acquire {
        /// Backend the user asked for on the command line, if any.
        backend: Option<String>,
    },
    /// Stop the VM (every distro, clean flush). Answered with `Done`.
    Shutdown,
    /// Describe the manager and its VM. Answered with `Status`.
    Status,
}

/// A message from the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromManager {
    /// Something the user waits for is under way (boot steps).
    Progress {
        /// One line for the user.
        message: String,
    },
    /// Something the user should know whatever the terminal (a host share
    /// left out, say); printed on stderr.
    Warning {
        /// One line for the user.
        message: String,
    },
    /// The VM runs; its agent is reached through this hybrid vsock socket.
    Ready {
        /// The VM's vsock Unix socket.
        vsock: PathBuf,
        /// The agent's guest port.
        port: u32,
    },
    /// The request failed; the text is the whole error line.
    Failed {
        /// What failed and what to do.
        message: String,
    },
    /// The VM under this lease is going away (shutdown, crash).
    Stopping {
        /// Why, for the user.
        reason: String,
    },
    /// The request is complete.
    Done {
        /// Whether it changed anything (`Shutdown`: a VM was running).
        changed: bool,
    },
    /// The answer to `Status`.
    Status(ManagerStatus),
}

/// What `distroctl status` shows about the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    /// The manager's process ID.
    pub pid: u32,
    /// Commands holding the VM up right now.
    pub leases: usize,
    /// Idle time after which the VM stops; `None` = never.
    pub idle_timeout_secs: Option<u64>,
    /// The last unexpected VM exit, if any, in words.
    pub last_crash: Option<String>,
}
