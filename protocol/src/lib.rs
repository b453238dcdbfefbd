//! The host↔agent wire protocol of distroctl.
//!
//! Every connection to the guest agent carries a sequence of [`Frame`]s in
//! both directions: a versioned handshake ([`Hello`]), one [`Request`], the
//! agent's [`Response`], and — for exec, import and export — binary stream
//! frames. `README.md` next to this crate documents the byte layout.
//!
//! Decoding is written for untrusted input: any byte string either yields
//! frames or a [`FrameError`], never a panic (see the fuzz target in `fuzz/`).

pub mod frame;
pub mod message;

pub use frame::{Frame, FrameCodec, FrameError, FrameKind, HEADER_LEN, MAX_PAYLOAD};
pub use message::{
    AgentError, Compression, DistroInfo, DistroSettings, DistroState, DistroStats, ErrorKind,
    ExecRequest, GuestMemory, Hello, HostMounts, Limits, Listener, NetworkMode, PortChange,
    Request, Response, TtyRequest, WallClock, HELLO_MAGIC, PROTOCOL_VERSION,
};

/// vsock port the agent listens on inside the utility VM.
pub const AGENT_VSOCK_PORT: u32 = 1024;
