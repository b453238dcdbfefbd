//! The typed messages carried in handshake, request and response frames.
//! They travel as JSON so that fields can be added without a new frame kind.

use serde::{Deserialize, Serialize};

/// Version of this protocol. The agent refuses a client whose version differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// Fixed marker in every [`Hello`], so that a peer speaking something else is
/// recognised at the first frame.
pub const HELLO_MAGIC: &str = "distroctl";

/// First frame on every connection, sent by both sides: the client first, the
/// agent in reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`HELLO_MAGIC`].
    pub magic: String,
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Free-form software name and version, for logs and `distroctl status`.
    pub software: String,
    /// The sender's wall clock when it sent the hello. The host sends it;
    /// the agent sets the guest clock from it when the two differ by more
    /// than a small skew (a VM that was suspended with its host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_clock: Option<WallClock>,
}

/// A point in time as seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WallClock {
    /// Whole seconds since 1970-01-01 UTC.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl WallClock {
    /// The current time of this machine's realtime clock.
    pub fn now() -> WallClock {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            secs: since.as_secs() as i64,
            nanos: since.subsec_nanos(),
        }
    }

    /// `self - other` in nanoseconds (saturating).
    pub fn nanos_since(&self, other: &WallClock) -> i128 {
        let ns = |c: &WallClock| i128::from(c.secs) * 1_000_000_000 + i128::from(c.nanos);
        ns(self) - ns(other)
    }
}

impl Hello {
    /// The hello this build sends, naming `software`.
    pub fn new(software: impl Into<String>) -> Self {
        Hello {
            magic: HELLO_MAGIC.to_string(),
            protocol: PROTOCOL_VERSION,
            software: software.into(),
            wall_clock: None,
        }
    }

    /// The hello this build sends, naming `software` and carrying the
    /// current wall clock.
    pub fn with_wall_clock(software: impl Into<String>) -> Self {
        Hello {
            wall_clock: Some(WallClock::now()),
            ..Hello::new(software)
        }
    }
}

/// Compression of a tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Plain tar.
    #[default]
    None,
    /// gzip (`.tar.gz`, `.tgz`).
    Gzip,
    /// xz (`.tar.xz`).
    Xz,
    /// Zstandard (`.tar.zst`).
    Zstd,
}

/// Resource limits of a distro, applied through its cgroup v2 group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `memory.max` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU (`1500` = 1.5 CPUs), for `cpu.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// `pids.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl Limits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpu_millis.is_none() && self.pids.is_none()
    }
}

/// Settings stored with each distro.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistroSettings {
    /// Run the distro's own `/sbin/init` (systemd) as its PID 1 instead of
    /// the agent's reaper.
    #[serde(default)]
    pub systemd: bool,
    /// User that exec and shell use when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// Whose network the distro uses.
    #[serde(default, skip_serializing_if = "NetworkMode::is_shared")]
    pub network: NetworkMode,
    /// Whether the host directories shared with the VM (the user's home,
    /// `[[mount]]` entries) appear in this distro.
    #[serde(default, skip_serializing_if = "HostMounts::is_on")]
    pub mounts: HostMounts,
}

/// Whether a distro sees the host directories shared with the VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMounts {
    /// Every share at its guest path (the default).
    #[default]
    On,
    /// None: the distro sees only its own files.
    Off,
}

impl HostMounts {
    /// True for the default, on.
    pub fn is_on(&self) -> bool {
        *self == HostMounts::On
    }
}

/// A distro's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The VM's network namespace, shared with every other shared distro
    /// (as in WSL2): one loopback, one address, ports forwarded to the host.
    #[default]
    Shared,
    /// A network namespace of its own, with its own address on a private
    /// link to the VM and outbound traffic translated to the VM's address.
    Isolated,
}

impl NetworkMode {
    /// True for the default, shared mode.
    pub fn is_shared(&self) -> bool {
        *self == NetworkMode::Shared
    }
}

/// Terminal requested for an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyRequest {
    /// Rows at start.
    pub rows: u16,
    /// Columns at start.
    pub cols: u16,
    /// `TERM` for the process, when the client knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// Run a process in a distro.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Distro to run in; started first if it is not running.
    pub distro: String,
    /// Program and arguments; empty means the user's login shell.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Extra environment, applied over the defaults (`PATH`, `HOME`, …).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the distro; the user's home when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User name or numeric uid, looked up in the distro's `/etc/passwd`;
    /// the distro's default user (else root) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A PTY with this size, or plain pipes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtyRequest>,
}

/// What a client asks the agent to do. One request per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Import a distro from the tar stream that follows in `Data` frames
    /// (compression is detected). The agent answers `Ready` first, then
    /// `Imported` or an error once it has seen `DataEnd`.
    Import {
        /// Name of the new distro.
        name: String,
        /// Settings stored with it.
        #[serde(default)]
        settings: DistroSettings,
        /// A directory at the top of the archive that holds the root file
        /// system (e.g. `root.x86_64`); everything else is dropped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_dir: Option<String>,
    },
    /// Export a distro: the agent answers `Ready`, then sends the tar stream
    /// in `Data` frames and ends with `DataEnd` (or an error response).
    Export {
        /// Distro to export.
        name: String,
        /// Compression of the stream.
        #[serde(default)]
        compression: Compression,
    },
    /// Start a distro; a no-op when it runs already.
    Start {
        /// Distro to start.
        name: String,
    },
    /// Run a process; answered by `ExecStarted`, then stream frames until
    /// `Exit`.
    Exec(ExecRequest),
    /// Kill every process of a distro and unmount it; its files stay.
    Terminate {
        /// Distro to terminate.
        name: String,
    },
    /// List the distros with their state.
    List,
    /// Change the settings stored with a distro; they apply at its next start.
    Configure {
        /// Distro to change.
        name: String,
        /// The new settings, replacing the old ones.
        settings: DistroSettings,
    },
    /// Terminate a distro and delete its files.
    Unregister {
        /// Distro to delete.
        name: String,
    },
    /// Terminate every distro and flush the data disk; the agent then stops
    /// accepting work.
    Shutdown,
    /// Watch the VM's listening TCP sockets: the agent answers with one
    /// `port_event` per listener present now, then one per change, until
    /// the client disconnects.
    WatchPorts,
    /// Relay a byte stream to a TCP port inside the VM: the agent connects
    /// to 127.0.0.1 (else ::1) on `port`, answers `connected`, then both
    /// sides send `Data` frames; `DataEnd` half-closes that direction.
    Connect {
        /// When given, the distro must exist and is started first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        distro: Option<String>,
        /// TCP port inside the VM (distros share its network).
        port: u16,
    },
    /// Resource use of distros, read from their cgroups, and of the VM's
    /// memory; answered by `stats`.
    Stats {
        /// These distros, running or stopped; every running one when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
    },
    /// The last lines of a distro's console: what its own systemd printed
    /// as it booted and stopped (its latest start); answered by
    /// `console_log`.
    ConsoleLog {
        /// Distro to show.
        name: String,
        /// At most this many lines, the last ones.
        lines: u32,
    },
    /// Drop the guest's clean page cache and compact its free memory, so
    /// that free page reporting hands it back to the host; answered by
    /// `memory_trimmed`. The manager sends it when the VM is idle.
    TrimMemory,
}

/// Whether a listener appeared or went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortChange {
    /// A socket started listening.
    Appeared,
    /// The socket stopped listening.
    Disappeared,
}

/// A listening TCP socket inside the VM that the host may forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Listener {
    /// The address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`, `::1`).
    pub address: std::net::IpAddr,
    /// Its port.
    pub port: u16,
}

/// State of a distro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistroState {
    /// Files present, no processes.
    Stopped,
    /// Its PID 1 runs.
    Running,
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistroInfo {
    /// Distro name.
    pub name: String,
    /// Running or stopped.
    pub state: DistroState,
    /// Processes in the distro (0 when stopped).
    pub pids: u32,
    /// Memory charged to the distro's cgroup, when cgroups allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Space its files use on the data disk.
    pub disk_bytes: u64,
    /// Its stored settings.
    #[serde(default)]
    pub settings: DistroSettings,
}

/// Resource use of one distro. Values come from its cgroup v2 group and
/// are absent when that file is (no cgroup, controller off, older kernel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistroStats {
    /// Distro name.
    pub name: String,
    /// Running or stopped (a stopped distro has no values).
    pub state: DistroState,
    /// CPU time used since it started (`cpu.stat` `usage_usec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_usec: Option<u64>,
    /// Memory charged now (`memory.current`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_current_bytes: Option<u64>,
    /// Most memory charged since it started (`memory.peak`, Linux 5.19+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// Its memory limit (`memory.max`); absent when there is none or the
    /// memory controller is off (then `memory_current_bytes` is absent too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max_bytes: Option<u64>,
    /// Processes (`pids.current`, else counted from `cgroup.procs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Bytes read from block devices (`io.stat` `rbytes`, all devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices (`io.stat` `wbytes`, all devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_write_bytes: Option<u64>,
}

impl DistroStats {
    /// A stopped distro: its name and state, no values.
    pub fn stopped(name: &str) -> Self {
        DistroStats {
            name: name.to_string(),
            state: DistroState::Stopped,
            cpu_usage_usec: None,
            memory_current_bytes: None,
            memory_peak_bytes: None,
            memory_max_bytes: None,
            pids: None,
            io_read_bytes: None,
            io_write_bytes: None,
        }
    }
}

/// The VM's memory as its kernel sees it (`/proc/meminfo`), in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemory {
    /// `MemTotal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// `MemAvailable`: what could be given to programs without swapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// `MemFree`: not used at all, not even as cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// `Cached`: the page cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_bytes: Option<u64>,
}

/// Category of an agent error, so that clients can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// The request was malformed or not allowed at this point.
    BadRequest,
    /// The distro name does not match `[a-z0-9][a-z0-9._-]{0,63}`.
    InvalidName,
    /// No distro of that name.
    NotFound,
    /// A distro of that name exists already (or is being imported).
    AlreadyExists,
    /// The archive is not a tar stream, is damaged, or breaks the policy.
    InvalidArchive,
    /// The user does not exist in the distro.
    NoSuchUser,
    /// The program to exec does not exist (clients exit with 127).
    CommandNotFound,
    /// The program to exec cannot be executed (clients exit with 126).
    NotExecutable,
    /// Starting the distro failed.
    StartFailed,
    /// The agent is shutting down.
    ShuttingDown,
    /// Nothing accepts connections on the requested port.
    ConnectionRefused,
    /// The server inside the VM reset a relayed connection: the stream
    /// ended abnormally, so the host side must not see a clean end.
    ConnectionReset,
    /// Anything else; the message says what.
    Internal,
}

/// An error reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// Category.
    pub kind: ErrorKind,
    /// One sentence for the user: what failed and, where known, what to do.
    pub message: String,
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgentError {}

/// The agent's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// Ready for (import) or about to send (export) the `Data` stream.
    Ready,
    /// The import finished.
    Imported {
        /// Bytes of tar stream received (after decompression).
        bytes: u64,
    },
    /// The distro runs.
    Started {
        /// It was running before this request.
        already_running: bool,
        /// Whether cgroup limits could be applied (false when cgroup v2 is
        /// not available; the distro runs without them).
        limits_available: bool,
    },
    /// The process runs; stream frames follow.
    ExecStarted {
        /// Its PID inside the distro.
        pid: u32,
    },
    /// The distros.
    Distros {
        /// One entry per distro, sorted by name.
        distros: Vec<DistroInfo>,
    },
    /// A listener appeared or disappeared (answer to `watch_ports`).
    PortEvent {
        /// Appeared or disappeared.
        change: PortChange,
        /// The listener.
        listener: Listener,
    },
    /// The relay to the port is open (answer to `connect`).
    Connected,
    /// Resource use (answer to `stats`).
    Stats {
        /// When the values were read, in microseconds of the VM's monotonic
        /// clock, so that rates need no host timing.
        sampled_at_usec: u64,
        /// The distros asked for, sorted by name.
        distros: Vec<DistroStats>,
        /// The VM's memory.
        guest: GuestMemory,
    },
    /// A distro's console (answer to `console_log`).
    ConsoleLog {
        /// The lines asked for; absent when the distro has no console log
        /// (it never ran its own systemd).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// The page cache was trimmed (answer to `trim_memory`).
    MemoryTrimmed {
        /// The guest's page cache (`Cached` in `/proc/meminfo`) before.
        cache_before_bytes: u64,
        /// And after.
        cache_after_bytes: u64,
    },
    /// The request failed.
    Error(AgentError),
}

impl Response {
    /// An error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error(AgentError {
            kind,
            message: message.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_names_the_operation() {
        let json = serde_json::to_string(&Request::Start {
            name: "debian".into(),
        })
        .unwrap();

        assert_eq!(json, r#"{"op":"start","name":"debian"}"#);
    }

    #[test]
    fn exec_request_defaults_missing_fields() {
        let req: Request = serde_json::from_str(r#"{"op":"exec","distro":"d"}"#).unwrap();

        assert_eq!(
            req,
            Request::Exec(ExecRequest {
                distro: "d".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn port_event_json_names_change_address_and_port() {
        let resp = Response::PortEvent {
            change: PortChange::Appeared,
            listener: Listener {
                address: "::1".parse().unwrap(),
                port: 8123,
            },
        };

        let json = serde_json::to_string(&resp).unwrap();

        assert_eq!(
            json,
            r#"{"type":"port_event","change":"appeared","listener":{"address":"::1","port":8123}}"#
        );
    }

    #[test]
    fn trim_memory_and_its_answer_have_stable_names() {
        let answer = Response::MemoryTrimmed {
            cache_before_bytes: 2,
            cache_after_bytes: 1,
        };

        assert_eq!(
            serde_json::to_string(&Request::TrimMemory).unwrap(),
            r#"{"op":"trim_memory"}"#
        );
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"type":"memory_trimmed","cache_before_bytes":2,"cache_after_bytes":1}"#
        );
    }

    #[test]
    fn hello_without_wall_clock_still_parses() {
        let hello: Hello =
            serde_json::from_str(r#"{"magic":"distroctl","protocol":1,"software":"x"}"#).unwrap();

        assert_eq!(hello.wall_clock, None);
    }

    #[test]
    fn wall_clock_difference_is_signed_nanoseconds() {
        let a = WallClock { secs: 10, nanos: 5 };
        let b = WallClock {
            secs: 9,
            nanos: 999_999_999,
        };

        assert_eq!(a.nanos_since(&b), 6);
        assert_eq!(b.nanos_since(&a), -6);
    }

    #[test]
    fn stats_request_without_names_parses_as_all_running() {
        let req: Request = serde_json::from_str(r#"{"op":"stats"}"#).unwrap();

        assert_eq!(req, Request::Stats { names: Vec::new() });
    }

    #[test]
    fn stats_response_leaves_out_values_the_agent_could_not_read() {
        let resp = Response::Stats {
            sampled_at_usec: 7,
            distros: vec![DistroStats::stopped("d")],
            guest: GuestMemory::default(),
        };

        let json = serde_json::to_string(&resp).unwrap();

        assert_eq!(
            json,
            r#"{"type":"stats","sampled_at_usec":7,"distros":[{"name":"d","state":"stopped"}],"guest":{}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), resp);
    }

    #[test]
    fn error_response_round_trips() {
        let resp = Response::error(ErrorKind::NotFound, "distro x is not installed");
        let json = serde_json::to_string(&resp).unwrap();

        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), resp);
    }
}
